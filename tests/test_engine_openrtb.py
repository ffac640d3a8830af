"""OpenRTB 2.5/2.6 bid requests through the engine, in full.

Every request in ../shared/data/openrtb/ has its expected reason written out below (a new file
there fails the suite until it gets one), and each rule of `Engine.check_openrtb` has its own
test: device.geo against user.geo, lastfix, geo.type, accuracy, ifa and lmt, malformed input,
no_location, and batches.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyproj
import pytest
import shapely
from conftest import BUNDLED_ZONES

from geofence import Category, Engine, Reason, ZoneSet
from geofence.beacons import load_beacon_registry
from geofence.policy import load_policy_text
from geofence.presence.memory import MemoryStore
from geofence.zones import Zone

GEOD = pyproj.Geod(ellps="WGS84")
ST_PAULS = {"lat": 51.5138028, "lon": -0.0983361}  # inside osm:pofw_a/369161987
FAR = {"lat": 51.4450, "lon": -0.2750}  # Richmond Park, ~6.8 km from every bundled zone

# --- every shared request, with its reason -----------------------------------------------------

# file (relative to openrtb/) -> (reason, why). No shared request lies near a bundled zone, so
# none names a zone.
EXPECTED: dict[str, tuple[Reason, str]] = {
    # Prebid Server fixtures (the request is under mockBidRequest).
    "prebid-server/adapters_bidmyadz_bidmyadztest_exemplary_banner.json": (
        Reason.ALLOWED,
        "device.geo Seattle 47.6275,-122.3462, no accuracy (1,000 m assumed), no zone there",
    ),
    "prebid-server/adapters_e_volution_evolutiontest_exemplary_video.json": (
        Reason.ALLOWED,
        "device.geo Guadalajara with accuracy 5, no type, no zone there",
    ),
    "prebid-server/adapters_infytv_infytvtest_exemplary_app.json": (
        Reason.ALLOWED,
        "the same Guadalajara device.geo in an app request",
    ),
    "prebid-server/adapters_rubicon_rubicontest_exemplary_simple-banner.json": (
        Reason.NO_LOCATION,
        "only user.geo (a home base, never used) and an ifa: no location, no beacon",
    ),
    "prebid-server/adapters_smartx_smartxtest_exemplary_03-device.json": (
        Reason.IMPRECISE_LOCATION,
        "device.geo type 2 (IP-derived, ipservice 3): rejected by the default policy",
    ),
    "prebid-server/adapters_stroeerCore_stroeercoretest_exemplary_mobile-banner-single.json": (
        Reason.ALLOWED,
        "device.geo Paris 48.860757,2.337562, no accuracy, no zone there",
    ),
    "prebid-server/endpoints_openrtb2_sample-requests_valid-whole_exemplary_device-sua.json": (
        Reason.INVALID_REQUEST,
        "device.geo lat 123.456 lon 678.9: out of range, though Prebid accepts it as valid",
    ),
    # The IAB specification's examples.
    "iab-spec-examples-mxmCherry/2.5_mobile.json": (
        Reason.ALLOWED,
        "device.geo 35.012345,-115.12345 (the Mojave, not the Los Angeles its city says)",
    ),
    "iab-spec-examples-mxmCherry/2.5_simple-banner.json": (Reason.NO_LOCATION, "no device.geo"),
    "iab-spec-examples-mxmCherry/2.5_video.json": (Reason.NO_LOCATION, "no device.geo"),
    "iab-spec-examples-mxmCherry/2.6_mobile.json": (
        Reason.NO_LOCATION,
        "an ifa but no device.geo",
    ),
    "iab-spec-examples-mxmCherry/2.6_video.json": (Reason.NO_LOCATION, "no device.geo"),
    # bsm/openrtb samples; device.json is a bare Device object, wrapped as {"device": ...}.
    "bsm-openrtb/breq.banner.json": (Reason.NO_LOCATION, "no device.geo"),
    "bsm-openrtb/breq.video.json": (Reason.NO_LOCATION, "no device.geo"),
    "bsm-openrtb/device.json": (
        Reason.ALLOWED,
        "wrapped Device: geo 35.012345,-115.12345 with no accuracy, no zone there",
    ),
    # JSON Schemas of BidRequest, not requests: fed as one, an object without a device.
    "iab-json-schemas/openrtb-schema_bid-request_v2-3.json": (
        Reason.NO_LOCATION,
        "a schema document: no device object",
    ),
    "iab-json-schemas/openrtb-schema_bid-request_v2-4.json": (
        Reason.NO_LOCATION,
        "a schema document: no device object",
    ),
}


def shared_request(root: Path, name: str) -> Any:
    data = json.loads((root / name).read_text(encoding="utf-8"))
    if name.startswith("prebid-server/"):
        return data["mockBidRequest"]
    if name == "bsm-openrtb/device.json":
        return {"device": data}
    return data


@pytest.fixture(scope="module")
def bundled_engine() -> Engine:
    return Engine.from_paths(BUNDLED_ZONES, presence=MemoryStore())


def test_every_shared_openrtb_file_has_an_expectation(shared_data: Path) -> None:
    root = shared_data / "openrtb"
    found = {p.relative_to(root).as_posix() for p in root.rglob("*.json")}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_openrtb_request(shared_data: Path, bundled_engine: Engine, name: str) -> None:
    root = shared_data / "openrtb"
    reason, why = EXPECTED[name]
    request = shared_request(root, name)
    for form in (request, json.dumps(request), json.dumps(request).encode()):
        d = bundled_engine.check_openrtb(form)
        assert (d.reason, d.allowed, d.zone_id) == (reason, reason is Reason.ALLOWED, None), why
        assert d.zone_set_version == bundled_engine.version
    if name.startswith("bsm-openrtb/breq") or name.startswith("iab-spec"):
        # The raw file's bytes, as they would arrive on the wire.
        assert bundled_engine.check_openrtb((root / name).read_bytes()).reason is reason


def test_shared_openrtb_requests_in_one_batch(shared_data: Path, bundled_engine: Engine) -> None:
    root = shared_data / "openrtb"
    names = sorted(EXPECTED)
    out = bundled_engine.check_openrtb_many([shared_request(root, n) for n in names])
    assert [d.reason for d in out] == [EXPECTED[n][0] for n in names]


def test_shared_no_location_requests_under_an_allowing_policy(shared_data: Path) -> None:
    zs = ZoneSet.from_paths(BUNDLED_ZONES)
    policy = load_policy_text(
        'pack = "us-strictest"\n[requests]\nno_location = "allow"\n', "<test>"
    )
    e = Engine(ZoneSet.compile(zs.zones, policy, "v-allow", beacons=zs.beacons))
    root = shared_data / "openrtb"
    for name, (reason, _) in EXPECTED.items():
        d = e.check_openrtb(shared_request(root, name))
        assert d.reason is reason
        assert d.allowed is (reason in (Reason.ALLOWED, Reason.NO_LOCATION))


def test_prebid_out_of_range_fixture_says_which_field(shared_data: Path) -> None:
    e = Engine.from_paths(BUNDLED_ZONES)
    name = "prebid-server/endpoints_openrtb2_sample-requests_valid-whole_exemplary_device-sua.json"
    d = e.check_openrtb(shared_request(shared_data / "openrtb", name))
    assert "device.geo.lat" in d.detail and "out of range" in d.detail


def test_shared_requests_moved_into_a_zone_are_rejected(
    shared_data: Path, bundled_engine: Engine
) -> None:
    """The real requests decide by their own geo: the same request at St Paul's is rejected."""
    root = shared_data / "openrtb"
    moved = 0
    for name, (reason, _) in EXPECTED.items():
        if reason is not Reason.ALLOWED:
            continue
        request = shared_request(root, name)
        request["device"]["geo"].update(ST_PAULS)
        d = bundled_engine.check_openrtb(request)
        assert (d.reason, d.zone_id) == (Reason.INSIDE_ZONE, "osm:pofw_a/369161987"), name
        moved += 1
    assert moved == 6


# --- a small zone set for the rules ------------------------------------------------------------


def small_engine(policy: str = "", tmp_path: Path | None = None, **kw: Any) -> Engine:
    now = time.time()
    zones = [
        Zone("clinic", "", Category.REPRODUCTIVE_HEALTH, shapely.Point(-122.33, 47.61), 30.0),
        Zone(
            "church", "", Category.PLACE_OF_WORSHIP, shapely.box(-122.40, 47.60, -122.399, 47.601)
        ),
        # A rally that began ten minutes ago and lasts an hour.
        Zone(
            "rally",
            "",
            Category.ASSEMBLY,
            shapely.box(-122.50, 47.60, -122.499, 47.601),
            valid_from=now - 600,
            valid_until=now + 3600,
        ),
    ]
    beacons = None
    if tmp_path is not None:
        path = tmp_path / "beacons.csv"
        path.write_text(
            "beacon_id,type,lat,lon,range_m,status,zone_id\n"
            "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d:1:1,ibeacon,47.6005,-122.4995,5,active,\n"
        )
        beacons = load_beacon_registry(path, {z.id for z in zones})
    zs = ZoneSet.compile(
        zones, load_policy_text('pack = "us-strictest"\n' + policy, "<test>"), "v", beacons=beacons
    )
    kw.setdefault("presence", MemoryStore())
    return Engine(zs, **kw)


def req(
    geo: dict[str, Any] | None = None, user_geo: dict[str, Any] | None = None, **dev: Any
) -> Any:
    r: dict[str, Any] = {"id": "r"}
    device = dict(dev)
    if geo is not None:
        device["geo"] = geo
    r["device"] = device
    if user_geo is not None:
        r["user"] = {"geo": user_geo}
    return r


CLINIC = {"lat": 47.61, "lon": -122.33}
CLEAR = {"lat": 40.0, "lon": -100.0}
RALLY = {"lat": 47.6005, "lon": -122.4995}


def test_device_geo_is_used_and_user_geo_never() -> None:
    e = small_engine()
    home_in_zone = req({**CLEAR, "accuracy": 5, "type": 1}, {**CLINIC, "type": 3})
    assert e.check_openrtb(home_in_zone).reason is Reason.ALLOWED
    here_in_zone = req({**CLINIC, "accuracy": 5, "type": 1}, {**CLEAR, "type": 3})
    d = e.check_openrtb(here_in_zone)
    assert (d.reason, d.zone_id) == (Reason.INSIDE_ZONE, "clinic")
    only_home = {"id": "r", "user": {"geo": {**CLINIC, "accuracy": 5, "type": 1}}}
    assert e.check_openrtb(only_home).reason is Reason.NO_LOCATION
    # user.geo is not even validated: a broken home base does not matter.
    broken_home = req({**CLEAR, "accuracy": 5}, {"lat": 999, "lon": "x"})
    assert e.check_openrtb(broken_home).reason is Reason.ALLOWED


def test_lastfix_judges_the_fix_at_the_time_it_was_taken() -> None:
    e = small_engine()
    # The rally zone became active 600 s ago.
    now_fix = e.check_openrtb(req({**RALLY, "accuracy": 5, "type": 1}))
    assert (now_fix.reason, now_fix.zone_id) == (Reason.INSIDE_ZONE, "rally")
    recent = e.check_openrtb(req({**RALLY, "accuracy": 5, "type": 1, "lastfix": 300}))
    assert recent.reason is Reason.INSIDE_ZONE
    old = e.check_openrtb(req({**RALLY, "accuracy": 5, "type": 1, "lastfix": 3600}))
    assert (old.allowed, old.reason) == (True, Reason.ALLOWED)
    assert e.check_openrtb(req({**RALLY, "accuracy": 5, "lastfix": 0})).reason is (
        Reason.INSIDE_ZONE
    )


def test_lastfix_dates_the_presence_record() -> None:
    store = MemoryStore()
    e = small_engine(presence=store)
    before = time.time()
    d = e.check_openrtb(req({**CLINIC, "accuracy": 5, "type": 1, "lastfix": 7200}, ifa="ifa-1"))
    after = time.time()
    assert d.reason is Reason.INSIDE_ZONE
    ((_, records),) = store.dump().items()
    ((cat, (when, _)),) = records.items()
    assert cat == Category.REPRODUCTIVE_HEALTH.code
    assert before - 7200 <= when <= after - 7200


def test_beacons_are_judged_now_not_at_the_gps_fix_time(tmp_path: Path) -> None:
    e = small_engine(tmp_path=tmp_path)
    r = req({**CLEAR, "accuracy": 5, "type": 1, "lastfix": 3600})
    r["device"]["ext"] = {"beacons": [{"id": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d:1:1"}]}
    assert e.check_openrtb(r).reason is Reason.BEACON_IN_ZONE


def test_location_type() -> None:
    e = small_engine()
    clear = {**CLEAR, "accuracy": 20}
    assert e.check_openrtb(req({**clear, "type": 1})).reason is Reason.ALLOWED
    ip = e.check_openrtb(req({**clear, "type": 2}))
    assert (ip.allowed, ip.reason) == (False, Reason.IMPRECISE_LOCATION)
    assert e.check_openrtb(req({**clear, "type": 3})).reason is Reason.ALLOWED
    assert e.check_openrtb(req(clear)).reason is Reason.ALLOWED  # absent: judged as a circle
    assert e.check_openrtb(req({**clear, "type": 99})).reason is Reason.ALLOWED  # unknown code
    # User-provided and untyped fixes inside a zone are rejected like GPS ones.
    for kind in (1, 3, None, 99):
        geo = {**CLINIC, "accuracy": 20, **({"type": kind} if kind is not None else {})}
        assert e.check_openrtb(req(geo)).reason is Reason.INSIDE_ZONE, kind
    # Under ip_location = "circle" an IP fix is a circle of at least ip_accuracy_m (5 km here;
    # test_ip_circle_policy_with_default_sizes_judges_a_circle covers the 25 km default).
    circle = small_engine('[requests]\nip_location = "circle"\nip_accuracy_m = 5000.0\n')
    assert circle.check_openrtb(req({**clear, "type": 2})).reason is Reason.ALLOWED
    lon, lat, _ = GEOD.fwd(CLINIC["lon"], CLINIC["lat"], 0.0, 5_000.0)  # 5 km north
    d = circle.check_openrtb(req({"lat": lat, "lon": lon, "accuracy": 10, "type": 2}))
    assert (d.reason, d.zone_id) == (Reason.NEAR_ZONE, "clinic")
    gps = circle.check_openrtb(req({"lat": lat, "lon": lon, "accuracy": 10, "type": 1}))
    assert gps.reason is Reason.ALLOWED


def test_ip_circle_policy_with_default_sizes_judges_a_circle() -> None:
    circle = small_engine('[requests]\nip_location = "circle"\n')
    d = circle.check_openrtb(req({**CLEAR, "accuracy": 20, "type": 2}))
    assert d.reason is Reason.ALLOWED  # 40N 100W: no zone within 25 km


def test_accuracy_present_absent_and_too_large() -> None:
    """The clinic: 30 m radius + 609.6 m buffer; the fix is 700 m east of its centre."""
    lon, lat, _ = GEOD.fwd(CLINIC["lon"], CLINIC["lat"], 90.0, 700.0)
    e = small_engine()
    assert e.check_openrtb(req({"lat": lat, "lon": lon, "accuracy": 50})).reason is Reason.ALLOWED
    assert e.check_openrtb(req({"lat": lat, "lon": lon, "accuracy": 70})).reason is (
        Reason.NEAR_ZONE
    )
    assert e.check_openrtb(req({"lat": lat, "lon": lon, "accuracy": 0})).reason is Reason.ALLOWED
    # Absent: 1,000 m assumed, which reaches the buffer.
    absent = e.check_openrtb(req({"lat": lat, "lon": lon}))
    assert (absent.reason, absent.zone_id) == (Reason.NEAR_ZONE, "clinic")
    assert e.check_openrtb(req({"lat": lat, "lon": lon, "accuracy": None})).reason is (
        Reason.NEAR_ZONE
    )
    assert e.check_openrtb(req({**CLEAR, "accuracy": 10_001})).reason is (Reason.IMPRECISE_LOCATION)
    strict = small_engine('[requests]\nmissing_accuracy_m = "reject"\n')
    assert strict.check_openrtb(req(CLEAR)).reason is Reason.IMPRECISE_LOCATION
    assert strict.check_openrtb(req({**CLEAR, "accuracy": 5})).reason is Reason.ALLOWED


def test_ifa_absent_or_zeroed_is_no_device() -> None:
    store = MemoryStore()
    e = small_engine(presence=store)
    for ifa in (None, "", "00000000-0000-0000-0000-000000000000"):
        d = e.check_openrtb(req({**CLINIC, "accuracy": 5}, ifa=ifa))
        assert d.reason is Reason.INSIDE_ZONE
    assert len(store) == 0
    strict = small_engine('[requests]\nno_device_id = "reject"\n')
    d = strict.check_openrtb(req({**CLEAR, "accuracy": 5}))
    assert (d.allowed, d.reason) == (False, Reason.INVALID_REQUEST)
    assert strict.check_openrtb(req({**CLEAR, "accuracy": 5}, ifa="ifa-1")).allowed


def test_ifa_carries_presence_between_requests() -> None:
    e = small_engine()
    assert e.check_openrtb(req({**CLINIC, "accuracy": 5}, ifa="ifa-1")).reason is (
        Reason.INSIDE_ZONE
    )
    later = e.check_openrtb(req({**CLEAR, "accuracy": 5}, ifa="ifa-1"))
    assert (later.reason, later.category) == (
        Reason.RECENTLY_INSIDE,
        Category.REPRODUCTIVE_HEALTH,
    )
    assert later.until is not None and later.until > time.time() + 59 * 86_400
    assert e.check_openrtb(req({**CLEAR, "accuracy": 5}, ifa="ifa-2")).allowed


def test_lmt_judges_on_location_alone_without_presence() -> None:
    """lmt = 1: no presence is read or written for the user (README, Engine.check_openrtb)."""
    store = MemoryStore()
    e = small_engine(presence=store)
    inside = e.check_openrtb(req({**CLINIC, "accuracy": 5}, ifa="ifa-1", lmt=1))
    assert inside.reason is Reason.INSIDE_ZONE
    assert len(store) == 0  # not written
    # Tainted by an earlier request without lmt ...
    e.check_openrtb(req({**CLINIC, "accuracy": 5}, ifa="ifa-2", lmt=0))
    assert len(store) == 1
    # ... but with lmt = 1 the history is not read either.
    assert e.check_openrtb(req({**CLEAR, "accuracy": 5}, ifa="ifa-2", lmt=1)).allowed
    assert e.check_openrtb(req({**CLEAR, "accuracy": 5}, ifa="ifa-2", lmt=0)).reason is (
        Reason.RECENTLY_INSIDE
    )
    assert len(store) == 1


@pytest.mark.parametrize(
    "request_",
    [
        b"{",
        b"",
        "",
        "not json",
        "null",
        "[]",
        "42",
        '"a string"',
        42,
        3.5,
        None,
        [],
        b"\xff\xfe{}",
        object(),
        '{"device": {"geo": {"lat": NaN, "lon": 0}}}',
        '{"device": {"geo": {"lat": Infinity, "lon": 0}}}',
        '{"device": {"geo": {"lat": 1, "lat": 2, "lon": 0}}}',
        '{"device": {"geo": {"lat": 1e400, "lon": 0}}}',
        {"device": []},
        {"device": "phone"},
        {"device": {"geo": "here"}},
        {"device": {"geo": {"lat": "51.5", "lon": 0}}},
        {"device": {"geo": {"lat": True, "lon": 0}}},
        {"device": {"geo": {"lat": 51.5}}},
        {"device": {"geo": {"lon": 0.0}}},
        {"device": {"geo": {"lat": 90.0001, "lon": 0}}},
        {"device": {"geo": {"lat": -91, "lon": 0}}},
        {"device": {"geo": {"lat": 0, "lon": 180.5}}},
        {"device": {"geo": {"lat": 0, "lon": -181}}},
        {"device": {"geo": {"lat": 0, "lon": 10**400}}},
        {"device": {"geo": {"lat": 0, "lon": 0, "accuracy": -1}}},
        {"device": {"geo": {"lat": 0, "lon": 0, "accuracy": "5"}}},
        {"device": {"geo": {"lat": 0, "lon": 0, "lastfix": -5}}},
        {"device": {"geo": {"lat": 0, "lon": 0, "type": "1"}}},
        {"device": {"geo": {"lat": 0, "lon": 0, "type": 1.0}}},
        {"device": {"geo": {"lat": 0, "lon": 0}, "lmt": 2}},
        {"device": {"geo": {"lat": 0, "lon": 0}, "lmt": True}},
        {"device": {"geo": {"lat": 0, "lon": 0}, "ifa": 12345}},
        {"device": {"geo": {"lat": 0, "lon": 0}, "ext": []}},
        {"id": 5, "device": {"geo": {"lat": 0, "lon": 0}}},
    ],
)
def test_malformed_requests_are_invalid_request(request_: Any) -> None:
    store = MemoryStore()
    e = small_engine(presence=store)
    d = e.check_openrtb(request_)
    assert (d.allowed, d.reason) == (False, Reason.INVALID_REQUEST)
    assert len(store) == 0


def test_boundary_coordinates_are_valid() -> None:
    e = small_engine()
    for lat, lon in ((90, 180), (-90, -180), (90.0, -180.0), (0, 0)):
        d = e.check_openrtb(req({"lat": lat, "lon": lon, "accuracy": 5}))
        assert d.reason is Reason.ALLOWED, (lat, lon)


def test_no_location_follows_the_policy() -> None:
    e = small_engine()
    allow = small_engine('[requests]\nno_location = "allow"\n')
    r: Any
    for r in (
        {"id": "r"},
        {},
        {"device": {}},
        {"device": None},
        {"device": {"geo": {"country": "USA", "city": "Seattle"}}},
        {"device": {"geo": {"lat": None, "lon": None}}},
        {"device": {"ifa": "ifa-1", "ext": {"beacons": []}}},
        {"device": {"ifa": "ifa-1"}, "user": {"geo": CLINIC}},
    ):
        d = e.check_openrtb(r)
        assert (d.allowed, d.reason) == (False, Reason.NO_LOCATION), r
        d = allow.check_openrtb(r)
        assert (d.allowed, d.reason) == (True, Reason.NO_LOCATION), r
    # Only requests without a location: the allowing policy does not loosen anything else.
    assert allow.check_openrtb(req({**CLINIC, "accuracy": 5})).reason is Reason.INSIDE_ZONE
    assert allow.check_openrtb(b"{").reason is Reason.INVALID_REQUEST


def test_check_openrtb_many() -> None:
    e = small_engine()
    batch = [
        req({**CLINIC, "accuracy": 5}, ifa="a"),
        json.dumps(req({**CLEAR, "accuracy": 5}, ifa="a")),
        json.dumps(req({**CLEAR, "accuracy": 5}, ifa="b")).encode(),
        b"{",
        {"id": "none"},
        req({**CLEAR, "type": 2}),
    ]
    out = e.check_openrtb_many(batch)
    assert [d.reason for d in out] == [
        Reason.INSIDE_ZONE,
        Reason.RECENTLY_INSIDE,
        Reason.ALLOWED,
        Reason.INVALID_REQUEST,
        Reason.NO_LOCATION,
        Reason.IMPRECISE_LOCATION,
    ]
    assert {d.zone_set_version for d in out} == {e.version}
    assert e.check_openrtb_many([]) == []
    gen = e.check_openrtb_many(req({**CLEAR, "accuracy": 5}) for _ in range(3))
    assert [d.reason for d in gen] == [Reason.ALLOWED] * 3
    for not_a_list in (5, None):
        out = e.check_openrtb_many(not_a_list)
        assert [(d.allowed, d.reason) for d in out] == [(False, Reason.INVALID_REQUEST)]


def test_check_openrtb_many_agrees_with_check_openrtb() -> None:
    requests = [
        req({**CLINIC, "accuracy": 5}),
        req({**CLEAR, "accuracy": 5}),
        req({**CLEAR}),
        req({**RALLY, "accuracy": 5, "lastfix": 3600}),
        req({**RALLY, "accuracy": 5}),
        req({"lat": 100, "lon": 0}),
        {"id": "x"},
    ]
    single = small_engine()
    many = small_engine().check_openrtb_many(requests)
    assert [d.reason for d in many] == [single.check_openrtb(r).reason for r in requests]
    assert [d.zone_id for d in many] == [single.check_openrtb(r).zone_id for r in requests]


def test_internal_error_is_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    e = small_engine()

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(e, "_openrtb", boom)
    d = e.check_openrtb(req({**CLEAR, "accuracy": 5}))
    assert (d.allowed, d.reason) == (False, Reason.INTERNAL_ERROR)
    out = e.check_openrtb_many([req({**CLEAR, "accuracy": 5})] * 2)
    assert [d.reason for d in out] == [Reason.INTERNAL_ERROR] * 2

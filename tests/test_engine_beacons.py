"""Beacon-triggered requests through the engine: the bundled registry, every path of
`check_beacon`, `check_beacons_many`, and beacons reported in OpenRTB `device.ext.beacons`.

Expected outcomes are derived in the tests from the registry rows and from distances computed
here with pyproj's geodesic (not with the engine's own frames), so a wrong engine answer fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import shapely
from conftest import BUNDLED_ZONES, FakeClock

from geofence import Category, Engine, Reason, ZoneSet
from geofence.beacons import load_beacon_registry
from geofence.engine import MAX_CLOCK_SKEW_S, MAX_DEVICE_ID
from geofence.errors import PresenceUnavailable
from geofence.policy import load_policy_text
from geofence.presence.memory import MemoryStore
from geofence.zones import Zone

T0 = float(int(time.time()))  # the memory store expires records by the wall clock
DAY = 86_400.0
GEOD = pyproj.Geod(ellps="WGS84")

# The bundled registry, zones/beacons.csv.
UUID = "3d1f8a2e-6b7c-4e59-a0d4-5c2b9e7f1a63"
NS = "8b0ca750e7a74e14bd99"
ST_PAULS = f"{UUID}:1:1"  # positioned inside St Paul's Cathedral
RICHMOND = f"{UUID}:1:2"  # positioned far from every zone, default range
COURT_LINKED = f"{UUID}:2:1"  # linked to a Helsinki court, no position
MONACO_LINKED = f"{UUID}:2:2"  # linked to a Monaco hospital, positioned there too
ABBEY_INACTIVE = f"{UUID}:3:1"  # inside Westminster Abbey, inactive
ABBEY_DECOMMISSIONED = f"{UUID}:3:2"  # inside Westminster Abbey, decommissioned
DIACOR = f"{NS}:000000000001"  # inside the Helsinki clinic osm:node/1985597270
CORTALS_NEAR = f"{NS}:000000000002"  # 150 m from the centre of a 50 m chapel: in its buffer
RICHMOND_GATE = f"{NS}:000000000003"  # far from every zone
UNREGISTERED = f"{UUID}:9:9"  # well formed, not in the registry

ST_PAULS_ZONE = "osm:pofw_a/369161987"
ABBEY_ZONE = "osm:pofw_a/364313092"
FAR = {"lat": 51.4450, "lon": -0.2750, "accuracy_m": 20.0}  # Richmond Park: ~6.8 km from zones


@pytest.fixture(scope="module")
def bundled() -> ZoneSet:
    return ZoneSet.from_paths(BUNDLED_ZONES)


def engine_for(zs: ZoneSet, policy: str = "", **kw: Any) -> Engine:
    """The zone set's zones and beacons under another policy, with a fresh memory store."""
    text = 'pack = "us-strictest"\n' + policy
    compiled = ZoneSet.compile(
        zs.zones, load_policy_text(text, "<test>"), "v-test", beacons=zs.beacons
    )
    kw.setdefault("presence", MemoryStore())
    return Engine(compiled, **kw)


# --- the bundled registry ----------------------------------------------------------------------


def test_bundled_registry_loads_with_the_zones(bundled: ZoneSet) -> None:
    assert len(bundled) == 675
    reg = bundled.beacons
    assert reg is not None and len(reg) == 9
    assert not [w for w in bundled.warnings if "beacons.csv" in w.file]
    statuses = {b.beacon_id: b.status for b in reg.beacons}
    assert statuses[ABBEY_INACTIVE] == "inactive"
    assert statuses[ABBEY_DECOMMISSIONED] == "decommissioned"
    assert sum(s == "active" for s in statuses.values()) == 7
    types = {b.type for b in reg.beacons}
    assert types == {"ibeacon", "eddystone_uid"}
    court = reg.get(COURT_LINKED)
    assert court is not None and court.lat is None and court.zone_id == "osm:way/123921809"
    assert bundled.zone_position("osm:way/123921809") >= 0
    richmond = reg.get(RICHMOND)
    assert richmond is not None and richmond.range_m == 70.0  # the default for an empty cell
    for b in reg.beacons:
        if b.zone_id:
            assert bundled.zone_position(b.zone_id) >= 0


def test_bundled_registry_positions_are_where_the_names_say(bundled: ZoneSet) -> None:
    """Independent of the engine: shapely containment and geodesic distances."""
    reg = bundled.beacons
    assert reg is not None
    zones = {z.id: z for z in bundled.zones}
    for beacon_id, zone_id in (
        (ST_PAULS, ST_PAULS_ZONE),
        (ABBEY_INACTIVE, ABBEY_ZONE),
        (ABBEY_DECOMMISSIONED, ABBEY_ZONE),
    ):
        b = reg.get(beacon_id)
        assert b is not None and b.lat is not None and b.lon is not None
        assert zones[zone_id].geometry.contains(shapely.Point(b.lon, b.lat))
    diacor = reg.get(DIACOR)
    assert diacor is not None and diacor.lat is not None and diacor.lon is not None
    clinic = zones["osm:node/1985597270"]
    c: Any = clinic.geometry
    assert GEOD.inv(c.x, c.y, diacor.lon, diacor.lat)[2] < 1.0
    near = reg.get(CORTALS_NEAR)
    assert near is not None and near.lat is not None and near.lon is not None
    chapel = zones["osm:node/4073385731"]
    centre: Any = chapel.geometry
    d = GEOD.inv(centre.x, centre.y, near.lon, near.lat)[2]
    gap = d - chapel.radius_m  # from the chapel's perimeter
    buffer = bundled.buffer_m[bundled.zone_position(chapel.id)]
    assert near.range_m < gap  # the range circle does not reach the chapel itself ...
    assert gap - near.range_m < buffer  # ... but reaches into its buffer


EXPECTED_BUNDLED = [
    (ST_PAULS, Reason.BEACON_IN_ZONE, ST_PAULS_ZONE, Category.PLACE_OF_WORSHIP),
    (RICHMOND, Reason.ALLOWED, None, None),
    (COURT_LINKED, Reason.BEACON_IN_ZONE, "osm:way/123921809", Category.COURT),
    (MONACO_LINKED, Reason.BEACON_IN_ZONE, "osm:node/1794111144", Category.HOSPITAL),
    (ABBEY_INACTIVE, Reason.UNKNOWN_BEACON, None, None),
    (ABBEY_DECOMMISSIONED, Reason.UNKNOWN_BEACON, None, None),
    (DIACOR, Reason.BEACON_IN_ZONE, "osm:node/1985597270", Category.CLINIC),
    (CORTALS_NEAR, Reason.BEACON_IN_ZONE, "osm:node/4073385731", Category.PLACE_OF_WORSHIP),
    (RICHMOND_GATE, Reason.ALLOWED, None, None),
    (UNREGISTERED, Reason.UNKNOWN_BEACON, None, None),
]


@pytest.mark.parametrize(("beacon_id", "reason", "zone_id", "category"), EXPECTED_BUNDLED)
def test_every_bundled_beacon(
    bundled: ZoneSet,
    beacon_id: str,
    reason: Reason,
    zone_id: str | None,
    category: Category | None,
) -> None:
    e = engine_for(bundled)
    d = e.check_beacon(beacon_id, device_id="ifa-1", at=T0)
    assert (d.allowed, d.reason, d.zone_id, d.category) == (
        reason is Reason.ALLOWED,
        reason,
        zone_id,
        category,
    )
    assert d.zone_set_version == e.version
    # Ids are matched case- and whitespace-insensitively, as the registry normalises them.
    assert e.check_beacon(f"  {beacon_id.upper()} ", at=T0).reason is reason


def test_bundled_engine_from_paths_decides_beacons() -> None:
    e = Engine.from_paths(BUNDLED_ZONES)
    assert len(e.zone_set) == 675
    d = e.check_beacon(beacon_id=ST_PAULS)
    assert (d.allowed, d.reason, d.zone_id) == (False, Reason.BEACON_IN_ZONE, ST_PAULS_ZONE)
    assert e.check_beacon(beacon_id=RICHMOND).allowed


def test_linked_beacon_says_so_and_positioned_beacon_says_how(bundled: ZoneSet) -> None:
    e = engine_for(bundled)
    assert "linked" in e.check_beacon(COURT_LINKED, at=T0).detail
    assert "inside_zone" in e.check_beacon(ST_PAULS, at=T0).detail
    assert "near_zone" in e.check_beacon(CORTALS_NEAR, at=T0).detail


# --- policy: unknown, inactive, decommissioned -------------------------------------------------


def test_unknown_beacon_follows_the_policy(bundled: ZoneSet) -> None:
    store = MemoryStore()
    strict = engine_for(bundled, presence=store)
    d = strict.check_beacon(UNREGISTERED, device_id="ifa-1", at=T0)
    assert (d.allowed, d.reason) == (False, Reason.UNKNOWN_BEACON)
    lax_store = MemoryStore()
    lax = engine_for(bundled, '[beacons]\nunknown = "allow"\n', presence=lax_store)
    d = lax.check_beacon(UNREGISTERED, device_id="ifa-1", at=T0)
    assert (d.allowed, d.reason) == (True, Reason.ALLOWED)
    # An unknown beacon says nothing about where the device is: no presence either way.
    assert len(store) == 0 and len(lax_store) == 0
    # "allow" is about unknown ids only: a registered beacon in a zone still rejects.
    assert lax.check_beacon(ST_PAULS, at=T0).reason is Reason.BEACON_IN_ZONE


def test_no_registry_makes_every_beacon_unknown(bundled: ZoneSet) -> None:
    zs = ZoneSet.compile(bundled.zones, bundled.policy, "v-none")
    e = Engine(zs)
    assert e.check_beacon(ST_PAULS).reason is Reason.UNKNOWN_BEACON


def test_inactive_beacon_follows_the_policy(bundled: ZoneSet, fake_clock: FakeClock) -> None:
    d = engine_for(bundled).check_beacon(ABBEY_INACTIVE, at=T0)
    assert (d.allowed, d.reason, d.detail) == (False, Reason.UNKNOWN_BEACON, "beacon is inactive")
    e = engine_for(bundled, '[beacons]\ninactive = "as_active"\n', clock=fake_clock)
    d = e.check_beacon(ABBEY_INACTIVE, device_id="ifa-1", at=T0)
    assert (d.reason, d.zone_id) == (Reason.BEACON_IN_ZONE, ABBEY_ZONE)
    # Judged as active, it is presence like any other.
    fake_clock.to(T0 + DAY)
    later = e.check_location(**FAR, device_id="ifa-1", at=T0 + DAY)
    assert (later.reason, later.category) == (Reason.RECENTLY_INSIDE, Category.PLACE_OF_WORSHIP)
    # as_active applies to inactive beacons only.
    assert e.check_beacon(ABBEY_DECOMMISSIONED, at=T0).reason is Reason.UNKNOWN_BEACON


def test_decommissioned_beacon_follows_the_policy(bundled: ZoneSet) -> None:
    d = engine_for(bundled).check_beacon(ABBEY_DECOMMISSIONED, at=T0)
    assert (d.allowed, d.reason) == (False, Reason.UNKNOWN_BEACON)
    assert d.detail == "beacon is decommissioned"
    store = MemoryStore()
    ignore = engine_for(bundled, '[beacons]\ndecommissioned = "ignore"\n', presence=store)
    d = ignore.check_beacon(ABBEY_DECOMMISSIONED, device_id="ifa-1", at=T0)
    # Ignored: the sighting says nothing, so the request has no location at all.
    assert (d.allowed, d.reason, d.zone_id) == (False, Reason.NO_LOCATION, None)
    assert len(store) == 0
    both = engine_for(
        bundled,
        '[beacons]\ndecommissioned = "ignore"\n[requests]\nno_location = "allow"\n',
    )
    d = both.check_beacon(ABBEY_DECOMMISSIONED, at=T0)
    assert (d.allowed, d.reason) == (True, Reason.NO_LOCATION)


# --- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "beacon_id",
    [
        "",
        "   ",
        "not-a-beacon",
        f"{UUID}:1",
        f"{UUID}:1:2:3",
        f"{UUID}:65536:1",
        f"{UUID}:1:-1",
        f"{UUID}:1:x",
        f"{UUID[:-1]}:1:1",
        "3d1f8a2e6b7c4e59a0d45c2b9e7f1a63:1:1",
        f"{NS[:-1]}:000000000001",
        f"{NS}:00000000000g",
        None,
        42,
        1.5,
        True,
        b"3d1f8a2e-6b7c-4e59-a0d4-5c2b9e7f1a63:1:1",
        [ST_PAULS],
        {"id": ST_PAULS},
    ],
)
def test_malformed_beacon_id_is_invalid_request(bundled: ZoneSet, beacon_id: Any) -> None:
    store = MemoryStore()
    d = engine_for(bundled, presence=store).check_beacon(beacon_id, device_id="ifa-1", at=T0)
    assert (d.allowed, d.reason) == (False, Reason.INVALID_REQUEST)
    assert len(store) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rssi": "-60"},
        {"rssi": True},
        {"rssi": float("nan")},
        {"rssi": float("inf")},
        {"rssi": [-60]},
        {"at": "now"},
        {"at": float("nan")},
        {"at": float("inf")},
        {"at": -float("inf")},
        {"at": True},
        {"at": [T0, T0]},
        {"at": "1700000000"},
        {"at": T0 + 1e12},  # far in the future (the engine runs on the real clock here)
        {"device_id": 42},
        {"device_id": b"ifa-1"},
        {"device_id": ["ifa-1"]},
        {"device_id": "x" * (MAX_DEVICE_ID + 1)},  # as check_location judges it
    ],
)
def test_malformed_rssi_time_or_device_is_invalid_request(
    bundled: ZoneSet, kwargs: dict[str, Any]
) -> None:
    e = engine_for(bundled)
    # Even for a beacon in a zone: a malformed request is not decided on its beacon.
    for beacon_id in (ST_PAULS, RICHMOND, COURT_LINKED):
        d = e.check_beacon(beacon_id, **kwargs)
        assert (d.allowed, d.reason) == (False, Reason.INVALID_REQUEST), beacon_id


@pytest.mark.parametrize("rssi", [None, -60, -60.5, 0, -127, np.float64(-70.0)])
def test_valid_rssi_does_not_change_the_decision(bundled: ZoneSet, rssi: Any) -> None:
    e = engine_for(bundled)
    for beacon_id, reason, _, _ in EXPECTED_BUNDLED:
        assert e.check_beacon(beacon_id, at=T0, rssi=rssi).reason is reason


def test_numpy_time_and_default_time_are_accepted(bundled: ZoneSet) -> None:
    e = engine_for(bundled)
    assert e.check_beacon(RICHMOND, at=np.float64(T0)).reason is Reason.ALLOWED
    assert e.check_beacon(RICHMOND, at=np.int64(T0)).reason is Reason.ALLOWED
    assert e.check_beacon(RICHMOND).reason is Reason.ALLOWED


def test_internal_error_is_a_rejection(bundled: ZoneSet, monkeypatch: pytest.MonkeyPatch) -> None:
    e = engine_for(bundled)

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(e, "_beacon", boom)
    d = e.check_beacon(ST_PAULS)
    assert (d.allowed, d.reason) == (False, Reason.INTERNAL_ERROR)


# --- presence ----------------------------------------------------------------------------------


def test_beacon_in_zone_records_presence_for_the_category_lookback(
    bundled: ZoneSet, fake_clock: FakeClock
) -> None:
    e = engine_for(bundled, clock=fake_clock)
    assert e.check_beacon(ST_PAULS, device_id="ifa-1", at=T0).reason is Reason.BEACON_IN_ZONE
    # place_of_worship: 30 days' lookback (baseline, unchanged by the state packs).
    lookback = bundled.policy.rule(Category.PLACE_OF_WORSHIP).lookback_days * DAY
    assert lookback == 30 * DAY
    fake_clock.to(T0 + 29 * DAY)
    later = e.check_location(**FAR, device_id="ifa-1", at=T0 + 29 * DAY)
    assert (later.allowed, later.reason) == (False, Reason.RECENTLY_INSIDE)
    assert later.category is Category.PLACE_OF_WORSHIP
    assert later.until == pytest.approx(T0 + lookback)
    fake_clock.to(T0 + lookback)
    assert e.check_location(**FAR, device_id="ifa-1", at=T0 + lookback).reason is Reason.ALLOWED
    # Elsewhere, including by another beacon far from every zone.
    far_beacon = e.check_beacon(RICHMOND, device_id="ifa-1", at=T0 + DAY)
    assert far_beacon.reason is Reason.RECENTLY_INSIDE
    # Only that device.
    assert e.check_location(**FAR, device_id="ifa-2", at=T0 + DAY).reason is Reason.ALLOWED
    assert e.check_beacon(RICHMOND, device_id="ifa-2", at=T0 + DAY).reason is Reason.ALLOWED
    # A presence record never outlives a deletion request.
    e.forget("ifa-1")
    assert e.check_location(**FAR, device_id="ifa-1", at=T0 + DAY).reason is Reason.ALLOWED


def test_clinic_beacon_taints_for_sixty_days(bundled: ZoneSet, fake_clock: FakeClock) -> None:
    e = engine_for(bundled, clock=fake_clock)
    assert e.check_beacon(DIACOR, device_id="ifa-1", at=T0).category is Category.CLINIC
    fake_clock.to(T0 + 59 * DAY)
    d = e.check_location(**FAR, device_id="ifa-1", at=T0 + 59 * DAY)
    assert (d.reason, d.category) == (Reason.RECENTLY_INSIDE, Category.CLINIC)
    fake_clock.to(T0 + 60 * DAY)
    assert e.check_location(**FAR, device_id="ifa-1", at=T0 + 60 * DAY).allowed


def test_linked_beacon_records_presence_in_the_linked_zone(
    bundled: ZoneSet, fake_clock: FakeClock
) -> None:
    e = engine_for(bundled, clock=fake_clock)
    assert e.check_beacon(COURT_LINKED, device_id="ifa-1", at=T0).reason is Reason.BEACON_IN_ZONE
    fake_clock.to(T0 + DAY)
    d = e.check_location(**FAR, device_id="ifa-1", at=T0 + DAY)
    assert (d.reason, d.category) == (Reason.RECENTLY_INSIDE, Category.COURT)


def test_no_presence_without_a_device_near_a_zone_or_far(bundled: ZoneSet) -> None:
    store = MemoryStore()
    e = engine_for(bundled, presence=store)
    # Anonymous: rejected, nothing recorded.
    assert e.check_beacon(ST_PAULS, at=T0).reason is Reason.BEACON_IN_ZONE
    assert e.check_beacon(COURT_LINKED, device_id="", at=T0).reason is Reason.BEACON_IN_ZONE
    assert len(store) == 0
    # Near (in the buffer, not in the zone): rejected, but the device was not inside.
    assert e.check_beacon(CORTALS_NEAR, device_id="ifa-1", at=T0).reason is Reason.BEACON_IN_ZONE
    assert e.check_beacon(RICHMOND_GATE, device_id="ifa-1", at=T0).reason is Reason.ALLOWED
    assert len(store) == 0
    assert e.check_location(**FAR, device_id="ifa-1", at=T0 + 1).reason is Reason.ALLOWED


def test_presence_is_stored_under_a_keyed_hash_at_the_sighting_time(bundled: ZoneSet) -> None:
    store = MemoryStore()
    e = engine_for(bundled, presence=store)
    e.check_beacon(ST_PAULS, device_id="ifa-secret", at=T0 - 3600)
    dump = store.dump()
    assert len(dump) == 1
    ((key, records),) = dump.items()
    assert b"ifa-secret" not in key
    ((cat, (when, expires)),) = records.items()
    assert cat == Category.PLACE_OF_WORSHIP.code
    assert when == T0 - 3600
    assert expires == pytest.approx(T0 - 3600 + bundled.policy.max_lookback_s)


def test_store_down_fails_closed_for_beacons_that_need_history(bundled: ZoneSet) -> None:
    class Down(MemoryStore):
        def latest_many(self, keys: Any) -> Any:
            raise PresenceUnavailable("down")

        def record_many(self, *a: Any, **k: Any) -> None:
            raise PresenceUnavailable("down")

    e = engine_for(bundled, presence=Down(), presence_secret="0123456789abcdef0123")
    d = e.check_beacon(RICHMOND, device_id="ifa-1", at=T0)
    assert (d.allowed, d.reason) == (False, Reason.STATE_UNAVAILABLE)
    assert e.check_beacon(RICHMOND, at=T0).reason is Reason.ALLOWED  # no history needed
    assert e.check_beacon(ST_PAULS, device_id="ifa-1", at=T0).reason is Reason.BEACON_IN_ZONE
    assert e.check_beacon(COURT_LINKED, device_id="ifa-1", at=T0).reason is Reason.BEACON_IN_ZONE


# --- a small zone set: linking rules and temporary zones ---------------------------------------


SMALL_UUID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def small_engine(tmp_path: Path, rows: list[str], policy: str = "", **kw: Any) -> Engine:
    zones = [
        Zone("clinic", "", Category.REPRODUCTIVE_HEALTH, shapely.Point(-122.33, 47.61), 30.0),
        Zone(
            "church", "", Category.PLACE_OF_WORSHIP, shapely.box(-122.40, 47.60, -122.399, 47.601)
        ),
        Zone(
            "rally",
            "",
            Category.ASSEMBLY,
            shapely.box(-122.50, 47.60, -122.499, 47.601),
            valid_from=T0,
            valid_until=T0 + 3 * 3600,
        ),
    ]
    path = tmp_path / "beacons.csv"
    path.write_text("beacon_id,type,lat,lon,range_m,status,zone_id\n" + "\n".join(rows) + "\n")
    registry = load_beacon_registry(path, {z.id for z in zones})
    policy_obj = load_policy_text('pack = "us-strictest"\n' + policy, "<test>")
    return Engine(ZoneSet.compile(zones, policy_obj, "v-small", beacons=registry), **kw)


def test_link_wins_over_a_far_position(tmp_path: Path) -> None:
    e = small_engine(tmp_path, [f"{SMALL_UUID}:1:1,ibeacon,40.0,-100.0,5,active,church"])
    d = e.check_beacon(f"{SMALL_UUID}:1:1", device_id="d", at=T0)
    assert (d.reason, d.zone_id, d.category) == (
        Reason.BEACON_IN_ZONE,
        "church",
        Category.PLACE_OF_WORSHIP,
    )


def test_range_decides_near_or_clear(tmp_path: Path) -> None:
    """The clinic: 30 m radius + 609.6 m buffer. A beacon 700 m east: clear at 50 m, near at 70."""
    lon, lat, _ = GEOD.fwd(-122.33, 47.61, 90.0, 700.0)
    e = small_engine(
        tmp_path,
        [
            f"{SMALL_UUID}:2:1,ibeacon,{lat:.9f},{lon:.9f},50,active,",
            f"{SMALL_UUID}:2:2,ibeacon,{lat:.9f},{lon:.9f},70,active,",
            f"{SMALL_UUID}:2:3,ibeacon,{lat:.9f},{lon:.9f},,active,",
        ],
    )
    assert e.check_beacon(f"{SMALL_UUID}:2:1", at=T0).reason is Reason.ALLOWED
    near = e.check_beacon(f"{SMALL_UUID}:2:2", at=T0)
    assert (near.reason, near.zone_id) == (Reason.BEACON_IN_ZONE, "clinic")
    # An empty range is the 70 m default: near too.
    assert e.check_beacon(f"{SMALL_UUID}:2:3", at=T0).reason is Reason.BEACON_IN_ZONE


def test_temporary_zone_counts_only_while_active(tmp_path: Path, fake_clock: FakeClock) -> None:
    e = small_engine(
        tmp_path,
        [
            f"{SMALL_UUID}:3:1,ibeacon,47.6005,-122.4995,5,active,rally",
            f"{SMALL_UUID}:3:2,ibeacon,47.6005,-122.4995,5,active,",
        ],
        clock=fake_clock,
    )
    for beacon_id in (f"{SMALL_UUID}:3:1", f"{SMALL_UUID}:3:2"):
        during = e.check_beacon(beacon_id, at=T0 + 60)
        assert (during.reason, during.zone_id) == (Reason.BEACON_IN_ZONE, "rally")
        assert e.check_beacon(beacon_id, at=T0 - 60).reason is Reason.ALLOWED
        fake_clock.to(T0 + 3 * 3600)  # the second beacon's "during" is then an hour-old fix
        assert e.check_beacon(beacon_id, at=T0 + 3 * 3600).reason is Reason.ALLOWED


def test_linked_beacon_without_position_outside_its_zones_hours(tmp_path: Path) -> None:
    e = small_engine(tmp_path, [f"{SMALL_UUID}:4:1,ibeacon,,,,active,rally"])
    assert e.check_beacon(f"{SMALL_UUID}:4:1", at=T0 + 60).reason is Reason.BEACON_IN_ZONE
    before = e.check_beacon(f"{SMALL_UUID}:4:1", device_id="d", at=T0 - 60)
    # A well-formed request about a place that is not protected right now: judged on the
    # device's history alone (allowed here), never invalid_request.
    assert before.reason is Reason.ALLOWED


def test_no_device_id_reject_policy_applies_to_beacons(tmp_path: Path) -> None:
    e = small_engine(
        tmp_path,
        [f"{SMALL_UUID}:5:1,ibeacon,40.0,-100.0,5,active,"],
        '[requests]\nno_device_id = "reject"\n',
    )
    assert e.check_beacon(f"{SMALL_UUID}:5:1", at=T0).reason is Reason.INVALID_REQUEST
    assert e.check_beacon(f"{SMALL_UUID}:5:1", device_id="d", at=T0).reason is Reason.ALLOWED


# --- batches -----------------------------------------------------------------------------------


def test_check_beacons_many_matches_check_beacon(bundled: ZoneSet) -> None:
    ids = [b for b, *_ in EXPECTED_BUNDLED] + ["garbage", None]
    batch = engine_for(bundled).check_beacons_many(ids, at=T0)
    single = engine_for(bundled)
    assert len(batch) == len(ids)
    for beacon_id, d in zip(ids, batch, strict=True):
        s = single.check_beacon(beacon_id, at=T0)
        assert (d.allowed, d.reason, d.zone_id, d.category) == (
            s.allowed,
            s.reason,
            s.zone_id,
            s.category,
        )
    assert [d.reason for d in batch[-2:]] == [Reason.INVALID_REQUEST] * 2


def test_check_beacons_many_presence_flows_in_order(bundled: ZoneSet) -> None:
    e = engine_for(bundled)
    out = e.check_beacons_many(
        [RICHMOND, ST_PAULS, RICHMOND, RICHMOND],
        device_ids=["a", "a", "a", "b"],
        at=np.array([T0, T0 + 10, T0 + 20, T0 + 30]),
    )
    assert [d.reason for d in out] == [
        Reason.ALLOWED,
        Reason.BEACON_IN_ZONE,
        Reason.RECENTLY_INSIDE,
        Reason.ALLOWED,
    ]


@pytest.mark.parametrize("beacon_id", [RICHMOND, ST_PAULS, COURT_LINKED, ABBEY_DECOMMISSIONED])
def test_a_sighting_after_the_clock_plus_the_skew_is_invalid_request(
    bundled: ZoneSet, fake_clock: FakeClock, beacon_id: str
) -> None:
    """Every kind of beacon (positioned far, positioned in a zone, linked, decommissioned and
    ignored by the policy): a time from the future is refused before the beacon is looked at."""
    store = MemoryStore()
    policy = '[beacons]\ndecommissioned = "ignore"\n'
    e = engine_for(bundled, policy, presence=store, clock=fake_clock)
    late = fake_clock.now + MAX_CLOCK_SKEW_S + 1.0
    d = e.check_beacon(beacon_id, device_id="ifa-late", at=late)
    assert (d.allowed, d.reason) == (False, Reason.INVALID_REQUEST)
    assert d.detail == f"time is more than {MAX_CLOCK_SKEW_S:.0f} s after the engine's clock"
    assert len(store) == 0  # and no presence is recorded at that time
    edge = e.check_beacon(beacon_id, device_id="ifa-edge", at=fake_clock.now + MAX_CLOCK_SKEW_S)
    assert edge.reason is not Reason.INVALID_REQUEST
    fake_clock.advance(1.0)
    assert e.check_beacon(beacon_id, at=late).reason is not Reason.INVALID_REQUEST


@pytest.mark.parametrize("beacon_id", [RICHMOND, ST_PAULS, COURT_LINKED, ABBEY_DECOMMISSIONED])
def test_a_sighting_older_than_the_longest_lookback_is_invalid_request(
    bundled: ZoneSet, fake_clock: FakeClock, beacon_id: str
) -> None:
    """Every kind of beacon: a time before the clock minus the policy's longest lookback is
    refused before the beacon is looked at, and records nothing (it would expire at once)."""
    store = MemoryStore()
    policy = '[beacons]\ndecommissioned = "ignore"\n'
    e = engine_for(bundled, policy, presence=store, clock=fake_clock)
    lookback = e.zone_set.policy.max_lookback_s
    assert lookback == 60 * DAY
    earliest = fake_clock.now - lookback
    for old in (earliest - 1.0, 0.0, -1e300):
        d = e.check_beacon(beacon_id, device_id="ifa-old", at=old)
        assert (d.allowed, d.reason) == (False, Reason.INVALID_REQUEST), old
        assert d.detail == (
            f"time is more than {lookback:.0f} s before the engine's clock "
            "(the policy's longest lookback)"
        )
    assert len(store) == 0
    edge = e.check_beacon(beacon_id, device_id="ifa-edge", at=earliest)
    assert edge.reason is not Reason.INVALID_REQUEST
    fake_clock.advance(1.0)  # the bound follows the engine's clock
    assert e.check_beacon(beacon_id, at=earliest).reason is Reason.INVALID_REQUEST


_OK, _BAD = Reason.ALLOWED, Reason.INVALID_REQUEST


@pytest.mark.parametrize(
    ("times", "want"),
    [
        # Before the window (the policy's longest lookback); ST_PAULS's sighting at 0.0 is
        # refused, not judged in its zone.
        (lambda now: [now - 60 * DAY, now - 60 * DAY - 1, 0.0, now - 59 * DAY],
         [_OK, _BAD, _BAD, _OK]),
        # After it: MAX_CLOCK_SKEW_S ahead of the clock.
        (lambda now: [now, now + MAX_CLOCK_SKEW_S + 1, now + 1e12, now - DAY],
         [_OK, _BAD, _BAD, _OK]),
    ],
    ids=["early", "late"],
)  # fmt: skip
def test_check_beacons_many_rejects_only_sightings_outside_the_window(
    bundled: ZoneSet,
    fake_clock: FakeClock,
    times: Callable[[float], list[float]],
    want: list[Reason],
) -> None:
    e = engine_for(bundled, clock=fake_clock)
    out = e.check_beacons_many(
        [RICHMOND, RICHMOND, ST_PAULS, RICHMOND], device_ids="ifa-1", at=times(fake_clock.now)
    )
    assert [d.reason for d in out] == want


def test_blank_device_id_on_a_beacon_is_no_id(bundled: ZoneSet) -> None:
    """As for check_location: blank text is "no id", so nothing is recorded under it."""
    store = MemoryStore()
    e = engine_for(bundled, presence=store)
    for beacon_id in (ST_PAULS, COURT_LINKED):
        assert e.check_beacon(beacon_id, device_id="   ", at=T0).reason is Reason.BEACON_IN_ZONE
    assert len(store) == 0
    out = e.check_beacons_many([ST_PAULS, COURT_LINKED], device_ids=["", " \t"], at=T0)
    assert [d.reason for d in out] == [Reason.BEACON_IN_ZONE] * 2
    assert len(store) == 0


def test_check_beacons_many_time_forms(bundled: ZoneSet) -> None:
    e = engine_for(bundled)
    assert [d.reason for d in e.check_beacons_many([RICHMOND] * 2, at=T0)] == [Reason.ALLOWED] * 2
    out = e.check_beacons_many([RICHMOND] * 2, at=[T0, "bad"])
    assert [d.reason for d in out] == [Reason.ALLOWED, Reason.INVALID_REQUEST]
    assert e.check_beacons_many([], at=None) == []


@pytest.mark.parametrize(
    ("ids", "kwargs"),
    [
        ([ST_PAULS, RICHMOND], {"device_ids": ["a"]}),
        ([ST_PAULS, RICHMOND], {"at": [T0]}),
        ([ST_PAULS], {"device_ids": 5}),
        (None, {}),
        (iter([ST_PAULS]), {}),
    ],
)
def test_check_beacons_many_mismatched_input_is_one_invalid_request(
    bundled: ZoneSet, ids: Any, kwargs: dict[str, Any]
) -> None:
    out = engine_for(bundled).check_beacons_many(ids, **kwargs)
    assert [(d.allowed, d.reason) for d in out] == [(False, Reason.INVALID_REQUEST)]


def test_check_beacons_many_single_device_id_string(bundled: ZoneSet) -> None:
    e = engine_for(bundled)
    out = e.check_beacons_many([ST_PAULS] * 5, device_ids="ifa-1", at=T0)
    if all(d.reason is Reason.INVALID_REQUEST for d in out):
        return  # refusing the shape is acceptable too
    assert e.check_location(**FAR, device_id="ifa-1", at=T0 + 1).reason is Reason.RECENTLY_INSIDE


# --- OpenRTB device.ext.beacons ----------------------------------------------------------------


def bid(beacons: list[Any] | None, geo: dict[str, Any] | None = None, **device: Any) -> Any:
    dev: dict[str, Any] = dict(device)
    if geo is not None:
        dev["geo"] = geo
    if beacons is not None:
        dev["ext"] = {"beacons": beacons}
    return {"id": "req", "device": dev}


FAR_GEO = {"lat": FAR["lat"], "lon": FAR["lon"], "accuracy": 20, "type": 1}


def test_openrtb_beacon_only_request_is_decided_by_its_beacons(bundled: ZoneSet) -> None:
    e = engine_for(bundled)
    d = e.check_openrtb(bid([{"id": ST_PAULS, "rssi": -70}]))
    assert (d.allowed, d.reason, d.zone_id) == (False, Reason.BEACON_IN_ZONE, ST_PAULS_ZONE)
    assert e.check_openrtb(bid([{"id": RICHMOND}])).reason is Reason.ALLOWED
    assert e.check_openrtb(bid([{"id": UNREGISTERED}])).reason is Reason.UNKNOWN_BEACON
    assert e.check_openrtb(bid([{"id": ABBEY_INACTIVE}])).reason is Reason.UNKNOWN_BEACON
    assert e.check_openrtb(bid([{"id": COURT_LINKED.upper()}])).zone_id == "osm:way/123921809"
    # An empty list is no beacon at all.
    assert e.check_openrtb(bid([])).reason is Reason.NO_LOCATION


def test_openrtb_beacon_overrides_a_clear_gps_fix(bundled: ZoneSet) -> None:
    e = engine_for(bundled)
    assert e.check_openrtb(bid(None, FAR_GEO)).reason is Reason.ALLOWED
    d = e.check_openrtb(bid([{"id": RICHMOND}, {"id": DIACOR, "rssi": -80}], FAR_GEO))
    assert (d.reason, d.zone_id, d.category) == (
        Reason.BEACON_IN_ZONE,
        "osm:node/1985597270",
        Category.CLINIC,
    )
    # A location rejection comes first when both reject.
    inside_geo = {"lat": 51.5138, "lon": -0.0984, "accuracy": 5, "type": 1}
    d = e.check_openrtb(bid([{"id": DIACOR}], inside_geo))
    assert (d.reason, d.zone_id) == (Reason.INSIDE_ZONE, ST_PAULS_ZONE)


def test_openrtb_beacon_records_presence_for_the_ifa(bundled: ZoneSet) -> None:
    e = engine_for(bundled)
    first = e.check_openrtb(bid([{"id": ST_PAULS}], ifa="ifa-7"))
    assert first.reason is Reason.BEACON_IN_ZONE
    d = e.check_openrtb(bid(None, FAR_GEO, ifa="ifa-7"))
    assert (d.reason, d.category) == (Reason.RECENTLY_INSIDE, Category.PLACE_OF_WORSHIP)
    assert e.check_openrtb(bid(None, FAR_GEO, ifa="ifa-8")).reason is Reason.ALLOWED


def test_openrtb_beacon_with_lmt_records_nothing(bundled: ZoneSet) -> None:
    store = MemoryStore()
    e = engine_for(bundled, presence=store)
    d = e.check_openrtb(bid([{"id": ST_PAULS}], ifa="ifa-7", lmt=1))
    assert d.reason is Reason.BEACON_IN_ZONE
    d = e.check_openrtb(bid([{"id": COURT_LINKED}], ifa="ifa-7", lmt=1))
    assert d.reason is Reason.BEACON_IN_ZONE
    assert len(store) == 0
    assert e.check_openrtb(bid(None, FAR_GEO, ifa="ifa-7")).reason is Reason.ALLOWED


@pytest.mark.parametrize(
    "beacons",
    [
        "not a list",
        [ST_PAULS],
        [{"rssi": -60}],
        [{"id": ""}],
        [{"id": 5}],
        [{"id": ST_PAULS, "rssi": "-60"}],
        [{"id": ST_PAULS, "rssi": True}],
        [{"id": "garbage"}],
        [{"id": RICHMOND}] * 65,
    ],
)
def test_openrtb_malformed_beacons_are_invalid_request(bundled: ZoneSet, beacons: Any) -> None:
    d = engine_for(bundled).check_openrtb(bid(beacons, FAR_GEO))
    assert (d.allowed, d.reason) == (False, Reason.INVALID_REQUEST)


def test_openrtb_many_with_beacons(bundled: ZoneSet) -> None:
    e = engine_for(bundled)
    out = e.check_openrtb_many(
        [
            bid([{"id": RICHMOND}], ifa="x"),
            bid([{"id": ST_PAULS}], ifa="x"),
            bid([{"id": RICHMOND}], ifa="x"),
            bid([{"id": "bad"}]),
        ]
    )
    assert [d.reason for d in out] == [
        Reason.ALLOWED,
        Reason.BEACON_IN_ZONE,
        Reason.RECENTLY_INSIDE,
        Reason.INVALID_REQUEST,
    ]


def test_openrtb_ignored_decommissioned_beacon_leaves_the_location_decision(
    bundled: ZoneSet,
) -> None:
    e = engine_for(bundled, '[beacons]\ndecommissioned = "ignore"\n')
    d = e.check_openrtb(bid([{"id": ABBEY_DECOMMISSIONED}], FAR_GEO))
    assert (d.allowed, d.reason) == (True, Reason.ALLOWED)

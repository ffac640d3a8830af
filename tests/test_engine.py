"""The engine end to end: decisions, fail-closed input handling, presence, reload, OpenRTB."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import shapely
from conftest import BUNDLED_ZONES, FakeClock, audit_text_without_clock
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence import Category, CompiledFileError, Engine, Reason, ZoneFileError
from geofence.audit import AuditLog
from geofence.engine import MAX_CLOCK_SKEW_S, MAX_DEVICE_ID
from geofence.errors import PresenceUnavailable
from geofence.policy import load_policy_text
from geofence.presence.memory import MemoryStore
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

ST_PAULS = (51.5138028, -0.0983361)  # inside osm:pofw_a/369161987
HELSINKI_CLINIC = (60.1695572, 24.9435041)  # centre of osm:node/1985597270, radius 50 m
RICHMOND_PARK = (51.4450, -0.2750)  # ~6.8 km from every bundled zone
T0 = float(int(time.time()))  # presence stores expire records by the wall clock
DAY = 86_400.0


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_paths(BUNDLED_ZONES)


def small_engine(policy: str = 'pack = "us-strictest"\n', **kw: Any) -> Engine:
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
    zs = ZoneSet.compile(zones, load_policy_text(policy, "<test>"), "v-test")
    return Engine(zs, **kw)


# --- location decisions ------------------------------------------------------------------------


def test_inside_near_and_clear(engine: Engine) -> None:
    inside = engine.check_location(lat=ST_PAULS[0], lon=ST_PAULS[1], accuracy_m=5.0)
    assert (inside.allowed, inside.reason) == (False, Reason.INSIDE_ZONE)
    assert inside.zone_id == "osm:pofw_a/369161987"
    assert inside.category is Category.PLACE_OF_WORSHIP
    assert inside.zone_set_version == engine.version
    clinic = engine.check_location(lat=HELSINKI_CLINIC[0], lon=HELSINKI_CLINIC[1], accuracy_m=5.0)
    assert clinic.reason is Reason.INSIDE_ZONE and clinic.category is Category.CLINIC
    far = engine.check_location(lat=RICHMOND_PARK[0], lon=RICHMOND_PARK[1], accuracy_m=20.0)
    assert (far.allowed, far.reason, far.zone_id) == (True, Reason.ALLOWED, None)


def test_accuracy_circle_reaches_the_buffer() -> None:
    """609.6 m buffer + 30 m radius: a fix 700 m away is clear at 50 m accuracy, not at 70 m."""
    e = small_engine()
    lon, lat, _ = pyproj.Geod(ellps="WGS84").fwd(-122.33, 47.61, 90.0, 700.0)
    assert e.check_location(lat=lat, lon=lon, accuracy_m=50.0).reason is Reason.ALLOWED
    near = e.check_location(lat=lat, lon=lon, accuracy_m=70.0)
    assert (near.reason, near.zone_id) == (Reason.NEAR_ZONE, "clinic")


def test_single_rejections_are_made_once_per_zone_set() -> None:
    """check_location reuses a zone's rejection, equal to the batch's; a zone set with the same
    version string but other zones never sees another set's decisions."""
    e = small_engine()
    lat, lon = 47.61, -122.33
    first = e.check_location(lat=lat, lon=lon, accuracy_m=5.0)
    again = e.check_location(lat=lat, lon=lon, accuracy_m=5.0)
    assert again is first and (first.reason, first.zone_id) == (Reason.INSIDE_ZONE, "clinic")
    batch = e.check_many(np.array([lat]), np.array([lon]), np.array([5.0]))
    assert batch.decision(0) == first
    # Same version, "v-test", and same place: another zone's id and category.
    other = Zone("shelter", "", Category.SHELTER, shapely.Point(-122.33, 47.61), 30.0)
    zs = ZoneSet.compile([other], load_policy_text('pack = "us-strictest"\n', "<t>"), "v-test")
    swapped = Engine(zs).check_location(lat=lat, lon=lon, accuracy_m=5.0)
    assert (swapped.zone_id, swapped.category) == ("shelter", Category.SHELTER)


def test_missing_accuracy_and_ip_follow_the_policy() -> None:
    lon, lat, _ = pyproj.Geod(ellps="WGS84").fwd(-122.33, 47.61, 0.0, 1500.0)
    default = small_engine()
    # Missing accuracy assumes 1,000 m: 1,500 m <= 30 + 609.6 + 1000.
    assert default.check_location(lat=lat, lon=lon).reason is Reason.NEAR_ZONE
    assert default.check_location(lat=lat, lon=lon, source="ip").reason is Reason.IMPRECISE_LOCATION
    strict = small_engine('pack = "us-strictest"\n[requests]\nmissing_accuracy_m = "reject"\n')
    assert strict.check_location(lat=lat, lon=lon).reason is Reason.IMPRECISE_LOCATION
    lenient = small_engine(
        '[requests]\nmissing_accuracy_m = 10\nip_location = "circle"\nip_accuracy_m = 100\n'
    )
    assert lenient.check_location(lat=lat, lon=lon).reason is Reason.ALLOWED
    assert lenient.check_location(lat=lat, lon=lon, source="ip").reason is Reason.ALLOWED
    huge = default.check_location(lat=lat + 1, lon=lon, accuracy_m=50_000.0)
    assert huge.reason is Reason.IMPRECISE_LOCATION


def test_temporary_zone_through_the_engine(fake_clock: FakeClock) -> None:
    e = small_engine(clock=fake_clock)
    args = {"lat": 47.6005, "lon": -122.4995, "accuracy_m": 5.0}
    assert e.check_location(**args, at=T0 - 1).reason is Reason.ALLOWED
    during = e.check_location(**args, at=T0 + 60)
    assert (during.reason, during.zone_id) == (Reason.INSIDE_ZONE, "rally")
    fake_clock.to(T0 + 3 * 3600)
    assert e.check_location(**args, at=T0 + 3 * 3600).reason is Reason.ALLOWED


# --- fail closed -------------------------------------------------------------------------------

BAD_SCALARS: list[dict[str, Any]] = [
    {"lat": math.nan, "lon": 0.0},
    {"lat": 0.0, "lon": math.inf},
    {"lat": 90.0001, "lon": 0.0},
    {"lat": 0.0, "lon": -180.5},
    {"lat": None, "lon": 0.0},
    {"lat": "51.5", "lon": 0.0},
    {"lat": True, "lon": 0.0},
    {"lat": [1.0], "lon": 0.0},
    {"lat": 1.0, "lon": 0.0, "accuracy_m": -1.0},
    {"lat": 1.0, "lon": 0.0, "accuracy_m": math.nan},
    {"lat": 1.0, "lon": 0.0, "accuracy_m": math.inf},
    {"lat": 1.0, "lon": 0.0, "accuracy_m": "5"},
    {"lat": 1.0, "lon": 0.0, "at": math.nan},
    {"lat": 1.0, "lon": 0.0, "at": "yesterday"},
    {"lat": 1.0, "lon": 0.0, "device_id": 12345},
    {"lat": 1.0, "lon": 0.0, "source": "wifi"},
]


@pytest.mark.parametrize("kwargs", BAD_SCALARS, ids=lambda k: repr(k)[:60])
def test_malformed_input_is_invalid_request(engine: Engine, kwargs: dict[str, Any]) -> None:
    d = engine.check_location(**kwargs)
    assert (d.allowed, d.reason) == (False, Reason.INVALID_REQUEST)


def test_internal_error_is_a_rejection(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    e = Engine(engine.zone_set)

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(e.zone_set.index, "locate", boom)
    monkeypatch.setattr(e.zone_set.index, "locate_one", boom)  # the single-request path
    monkeypatch.setattr(e.zone_set.index, "locate_present_one", boom)  # ... with a device id
    d = e.check_location(lat=1.0, lon=1.0, accuracy_m=1.0)
    assert (d.allowed, d.reason) == (False, Reason.INTERNAL_ERROR)
    d = e.check_location(lat=1.0, lon=1.0, accuracy_m=1.0, device_id="ifa-1")
    assert (d.allowed, d.reason) == (False, Reason.INTERNAL_ERROR)
    b = e.check_many(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert b.allowed.tolist() == [False, False]
    assert b.reasons() == [Reason.INTERNAL_ERROR] * 2


@settings(max_examples=200, deadline=None)
@given(
    lat=st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.none(), st.booleans()),
    lon=st.one_of(st.floats(), st.integers(), st.none()),
    acc=st.one_of(st.floats(), st.none(), st.integers(-5, 10**6)),
    at=st.one_of(st.floats(), st.none()),
)
def test_any_scalar_input_gives_a_decision(lat: Any, lon: Any, acc: Any, at: Any) -> None:
    e = _shared_engine()
    d = e.check_location(lat=lat, lon=lon, accuracy_m=acc, at=at)
    assert isinstance(d.reason, Reason)
    valid = (
        isinstance(lat, int | float)
        and not isinstance(lat, bool)
        and math.isfinite(lat)
        and abs(lat) <= 90
        and isinstance(lon, int | float)
        and math.isfinite(lon)
        and abs(lon) <= 180
        and (acc is None or (math.isfinite(acc) and acc >= 0))
        and (at is None or math.isfinite(at))
    )
    if not valid:
        assert (d.allowed, d.reason) == (False, Reason.INVALID_REQUEST)


_ENGINE: list[Engine] = []


def _shared_engine() -> Engine:
    if not _ENGINE:
        _ENGINE.append(small_engine())
    return _ENGINE[0]


# --- batches -----------------------------------------------------------------------------------


def test_check_many_matches_check_location(engine: Engine) -> None:
    rng = np.random.default_rng(5)
    n = 3000
    lat = rng.uniform(51.48, 51.535, n)
    lon = rng.uniform(-0.21, -0.06, n)
    acc = rng.choice([0.0, 10.0, 100.0], n)
    batch = engine.check_many(lat, lon, acc)
    assert len(batch) == n
    assert batch.allowed.dtype == bool
    assert 0 < batch.allowed.sum() < n  # the sample straddles zones and clear ground
    for i in rng.choice(n, 300, replace=False):
        single = engine.check_location(lat=lat[i], lon=lon[i], accuracy_m=acc[i])
        assert batch.decision(int(i)) == single


def test_check_many_flags_bad_elements_and_shapes(engine: Engine) -> None:
    lat = np.array([ST_PAULS[0], np.nan, 91.0, RICHMOND_PARK[0]])
    lon = np.array([ST_PAULS[1], 0.0, 0.0, RICHMOND_PARK[1]])
    acc = np.array([5.0, 5.0, 5.0, -3.0])
    b = engine.check_many(lat, lon, acc)
    assert b.reasons() == [Reason.INSIDE_ZONE] + [Reason.INVALID_REQUEST] * 3
    mismatched = engine.check_many(lat, lon[:2])
    assert mismatched.reasons() == [Reason.INVALID_REQUEST] * 4
    matrix = engine.check_many(np.zeros((2, 2)), np.zeros((2, 2)))
    assert not matrix.allowed.any()
    strings = engine.check_many(np.array(["a", "b"]), np.array([1.0, 2.0]))
    assert strings.reasons() == [Reason.INVALID_REQUEST] * 2
    assert engine.check_many([], []).allowed.shape == (0,)


def test_batch_wide_source_and_device_ids_are_checked_per_batch_and_element() -> None:
    """One source for a whole batch and an all-text id column take shortcuts in check_many: a
    bad source still rejects every element, and one malformed id only its own element."""
    e = small_engine()
    lat, lon = np.full(3, 10.0), np.full(3, 10.0)  # far from the test zones: allowed
    assert e.check_many(lat, lon, 5.0, source="gps").reasons() == [Reason.ALLOWED] * 3
    assert e.check_many(lat, lon, 5.0, source="wifi").reasons() == [Reason.INVALID_REQUEST] * 3
    ip = e.check_many(lat, lon, 5.0, source="ip")  # IP fixes are rejected by default
    assert ip.reasons() == [Reason.IMPRECISE_LOCATION] * 3
    good = ["ifa-1", "ifa-2", "ifa-3"]
    assert e.check_many(lat, lon, 5.0, good).reasons() == [Reason.ALLOWED] * 3
    for bad in ("ifa-\ud800", "x" * 257, 12345):
        ids = np.array(["ifa-1", bad, "ifa-3"], dtype=object)
        assert e.check_many(lat, lon, 5.0, ids).reasons() == [
            Reason.ALLOWED,
            Reason.INVALID_REQUEST,
            Reason.ALLOWED,
        ], bad
    blank = e.check_many(lat, lon, 5.0, ["ifa-1", "   ", "ifa-3"])  # blank: no id, not bad
    assert blank.reasons() == [Reason.ALLOWED] * 3


def test_masked_entries_are_missing_not_their_data() -> None:
    """A masked lat or lon is invalid_request and a masked accuracy or time is a missing one,
    whatever data lies under the mask (here values that would be allowed if read)."""
    e = small_engine()
    # 700 m east of the clinic (30 m radius + 609.6 m buffer): clear at 5 m, near at the
    # 1,000 m that a missing accuracy assumes.
    lon, lat, _ = pyproj.Geod(ellps="WGS84").fwd(-122.33, 47.61, 90.0, 700.0)
    plain = e.check_many(np.full(3, lat), np.full(3, lon), np.full(3, 5.0))
    assert plain.reasons() == [Reason.ALLOWED] * 3
    lats = np.ma.masked_array(np.full(3, lat), mask=[False, True, False])
    lons = np.ma.masked_array(np.full(3, lon), mask=[False, False, True])
    assert e.check_many(lats, lons, np.full(3, 5.0)).reasons() == [
        Reason.ALLOWED,
        Reason.INVALID_REQUEST,
        Reason.INVALID_REQUEST,
    ]
    acc = np.ma.masked_array(np.full(3, 5.0), mask=[False, True, False])
    assert e.check_many(np.full(3, lat), np.full(3, lon), acc).reasons() == [
        Reason.ALLOWED,
        Reason.NEAR_ZONE,
        Reason.ALLOWED,
    ]
    assert e.check_many([lat], [lon], [np.ma.masked]).reasons() == [Reason.NEAR_ZONE]
    strict = small_engine('pack = "us-strictest"\n[requests]\nmissing_accuracy_m = "reject"\n')
    assert strict.check_many(np.full(3, lat), np.full(3, lon), acc).reasons() == [
        Reason.ALLOWED,
        Reason.IMPRECISE_LOCATION,
        Reason.ALLOWED,
    ]
    everything = np.ma.masked_array(np.full(2, lat), mask=True)
    assert e.check_many(everything, np.full(2, lon), 5.0).reasons() == [Reason.INVALID_REQUEST] * 2
    # A masked time is "now", even over a time far in the future.
    at = np.ma.masked_array([T0, T0 + 1e9], mask=[False, True])
    assert (
        e.check_many(np.full(2, lat), np.full(2, lon), 5.0, at=at).reasons() == [Reason.ALLOWED] * 2
    )


# --- request times: from the clock minus the longest lookback to the clock plus the skew -------

FAR_AWAY = {"lat": 40.0, "lon": -100.0, "accuracy_m": 5.0}
LOCATION_CALLS = ["check_location", "observe", "check_many", "observe_many"]


def decide_far_away(e: Engine, call: str, device: str | None, at: float) -> Reason:
    """The reason one location entry point gives a request far from every zone at `at`."""
    lat, lon, acc = FAR_AWAY["lat"], FAR_AWAY["lon"], FAR_AWAY["accuracy_m"]
    if call == "check_location":
        return e.check_location(lat, lon, acc, device, at).reason
    if call == "observe":
        return e.observe(device, lat, lon, acc, at).reason
    ids = None if device is None else [device]
    if call == "check_many":
        return e.check_many([lat], [lon], [acc], ids, [at]).reasons()[0]
    b = e.observe_many(ids, np.array([lat]), np.array([lon]), acc, np.array([at]))
    return b.reasons()[0]


def test_the_skew_allowance_is_a_few_minutes() -> None:
    """Long enough for a device clock that drifts, far shorter than any lookback (days)."""
    assert 60.0 <= MAX_CLOCK_SKEW_S <= 3600.0


@pytest.mark.parametrize("device", [None, "ifa-late"])
@pytest.mark.parametrize("call", LOCATION_CALLS)
def test_a_time_after_the_clock_plus_the_skew_is_invalid_request(
    fake_clock: FakeClock, call: str, device: str | None
) -> None:
    e = small_engine(clock=fake_clock)
    edge, late = fake_clock.now + MAX_CLOCK_SKEW_S, fake_clock.now + MAX_CLOCK_SKEW_S + 1.0

    def decide(at: float) -> Reason:
        return decide_far_away(e, call, device, at)

    assert decide(late) is Reason.INVALID_REQUEST
    assert decide(fake_clock.now + 1e12) is Reason.INVALID_REQUEST
    assert decide(edge) is Reason.ALLOWED  # within the allowance: a device clock running fast
    assert decide(fake_clock.now - 30 * DAY) is Reason.ALLOWED
    fake_clock.advance(1.0)  # the bound follows the engine's clock
    assert decide(late) is Reason.ALLOWED


@pytest.mark.parametrize("device", [None, "ifa-old"])
@pytest.mark.parametrize("call", LOCATION_CALLS)
def test_a_time_older_than_the_longest_lookback_is_invalid_request(
    fake_clock: FakeClock, call: str, device: str | None
) -> None:
    """A time before the clock minus the policy's longest lookback is refused; one at the bound
    is judged.

    Judged, such a fix would record presence that has already expired (a clinic visit leaving no
    trace), judge temporary zones at a moment long gone, and say nothing of where the device is.
    """
    e = small_engine(clock=fake_clock)
    lookback = e.zone_set.policy.max_lookback_s
    assert lookback == 60 * DAY  # us-strictest: the health categories' 60 days
    earliest = fake_clock.now - lookback

    def decide(at: float) -> Reason:
        return decide_far_away(e, call, device, at)

    assert decide(earliest - 1.0) is Reason.INVALID_REQUEST
    assert decide(0.0) is Reason.INVALID_REQUEST  # a device clock reading 1970
    assert decide(-1e300) is Reason.INVALID_REQUEST
    assert decide(earliest) is Reason.ALLOWED
    assert decide(earliest + 1.0) is Reason.ALLOWED
    fake_clock.advance(1.0)  # the bound follows the engine's clock
    assert decide(earliest) is Reason.INVALID_REQUEST


def test_the_window_follows_the_policy_s_longest_lookback(fake_clock: FakeClock) -> None:
    """The past bound is the policy's longest lookback, not a fixed 60 days.

    A policy that lengthens a lookback keeps presence that long, so fixes that old still count.
    """
    e = small_engine('pack = "us-strictest"\n[defaults]\nlookback_days = 400\n', clock=fake_clock)
    assert e.zone_set.policy.max_lookback_s == 400 * DAY
    now = fake_clock.now
    assert decide_far_away(e, "check_location", None, now - 399 * DAY) is Reason.ALLOWED
    assert decide_far_away(e, "check_many", None, now - 399 * DAY) is Reason.ALLOWED
    assert decide_far_away(e, "check_location", None, now - 401 * DAY) is Reason.INVALID_REQUEST
    assert decide_far_away(e, "check_many", None, now - 401 * DAY) is Reason.INVALID_REQUEST


_OK, _BAD = Reason.ALLOWED, Reason.INVALID_REQUEST


@pytest.mark.parametrize(
    ("times", "want"),
    [
        # Before the window: the policy's longest lookback (60 days) back from the clock.
        (lambda now: [now - 60 * DAY, now - 60 * DAY - 1, 0.0, -np.inf, now - DAY],
         [_OK, _BAD, _BAD, _BAD, _OK]),
        # After it: MAX_CLOCK_SKEW_S ahead of the clock.
        (lambda now: [now, now + MAX_CLOCK_SKEW_S + 1, now - DAY, np.inf, now + 1e300],
         [_OK, _BAD, _OK, _BAD, _BAD]),
    ],
    ids=["early", "late"],
)  # fmt: skip
def test_a_batch_rejects_only_its_elements_outside_the_window(
    fake_clock: FakeClock, times: Callable[[float], list[float]], want: list[Reason]
) -> None:
    e = small_engine(clock=fake_clock)
    at = np.array(times(fake_clock.now))
    b = e.check_many(np.full(5, 40.0), np.full(5, -100.0), 5.0, ["d"] * 5, at)
    assert b.reasons() == want


def test_an_ancient_time_neither_erases_a_visit_nor_escapes_a_temporary_zone(
    fake_clock: FakeClock,
) -> None:
    """The two ways a time before the window failed open: a clinic visit dated then recorded
    presence that had already expired, and a temporary zone active now was judged inactive."""
    store = MemoryStore()
    fake_clock.to(T0 + 3600)  # the rally zone is active from T0 for three hours
    e = small_engine(presence=store, presence_secret="0123456789abcdef0123", clock=fake_clock)
    clinic = {"lat": 47.61, "lon": -122.33, "accuracy_m": 5.0}
    # Refused, and nothing recorded that would expire at once.
    assert e.observe("ifa-1970", **clinic, at=0.0).reason is Reason.INVALID_REQUEST
    assert e.observe("ifa-1970", **clinic, at=T0 - 61 * DAY).reason is Reason.INVALID_REQUEST
    assert len(store) == 0
    rally = {"lat": 47.6005, "lon": -122.4995, "accuracy_m": 5.0}
    assert e.check_location(**rally).reason is Reason.INSIDE_ZONE
    assert e.check_location(**rally, at=T0 - 61 * DAY).reason is Reason.INVALID_REQUEST
    assert e.check_many([rally["lat"]], [rally["lon"]], 5.0, at=[0.0]).reasons() == [
        Reason.INVALID_REQUEST
    ]


def test_a_fix_from_the_future_neither_blocks_nor_outruns_the_lookback(
    fake_clock: FakeClock,
) -> None:
    """The two ways a future time failed: presence recorded "then" blocked too late and for too
    long, and a request judged "then" had outlived a real, recent presence."""
    store = MemoryStore()
    e = small_engine(presence=store, presence_secret="0123456789abcdef0123", clock=fake_clock)
    now = fake_clock.now
    clinic = {"lat": 47.61, "lon": -122.33, "accuracy_m": 5.0}
    # A future visit is refused, and records nothing.
    assert e.observe("ifa-a", **clinic, at=now + 90 * DAY).reason is Reason.INVALID_REQUEST
    assert len(store) == 0
    assert e.check_location(**FAR_AWAY, device_id="ifa-a").reason is Reason.ALLOWED
    # A real visit now is not escaped by claiming a time after its lookback.
    assert e.observe("ifa-b", **clinic).reason is Reason.INSIDE_ZONE
    escape = e.check_location(**FAR_AWAY, device_id="ifa-b", at=now + 61 * DAY)
    assert escape.reason is Reason.INVALID_REQUEST
    assert e.check_location(**FAR_AWAY, device_id="ifa-b").reason is Reason.RECENTLY_INSIDE
    fake_clock.advance(61 * DAY)  # once the lookback has really passed, the device is allowed
    assert e.check_location(**FAR_AWAY, device_id="ifa-b", at=now + 61 * DAY).allowed


def test_openrtb_is_judged_at_the_clock_minus_lastfix(fake_clock: FakeClock) -> None:
    """lastfix is an age, so a bid request's time is never after the engine's clock."""
    e = small_engine(clock=fake_clock)
    now = fake_clock.now
    assert e.observe("ifa-o", 47.61, -122.33, 5.0, now).reason is Reason.INSIDE_ZONE

    def bid(lastfix: float) -> dict[str, Any]:
        geo = {"lat": 40.0, "lon": -100.0, "accuracy": 5, "type": 1, "lastfix": lastfix}
        return {"id": "r", "device": {"ifa": "ifa-o", "geo": geo}}

    fake_clock.advance(61 * DAY)
    assert e.check_openrtb(bid(0)).reason is Reason.ALLOWED  # judged at the clock: lookback over
    d = e.check_openrtb(bid(2 * DAY))  # a fix two days old: inside that device's lookback
    assert (d.reason, d.until) == (Reason.RECENTLY_INSIDE, now + 60 * DAY)
    assert e.check_openrtb(bid(-1)).reason is Reason.INVALID_REQUEST


def test_openrtb_with_a_lastfix_older_than_the_longest_lookback_is_invalid_request(
    fake_clock: FakeClock,
) -> None:
    """A lastfix beyond the longest lookback is refused, naming the field; one at it is judged.

    Judged, a fix that old would record presence already expired (a bid from inside a clinic
    leaving no trace) and say nothing of where the device is now.
    """
    store = MemoryStore()
    e = small_engine(presence=store, presence_secret="0123456789abcdef0123", clock=fake_clock)
    lookback = e.zone_set.policy.max_lookback_s

    def bid(lat: float, lon: float, lastfix: float, lmt: int = 0) -> dict[str, Any]:
        geo = {"lat": lat, "lon": lon, "accuracy": 5, "type": 1, "lastfix": lastfix}
        return {"id": "r", "device": {"ifa": "ifa-old", "lmt": lmt, "geo": geo}}

    for lastfix in (lookback + 1, 1e12, 1e300):
        for lmt in (0, 1):
            d = e.check_openrtb(bid(47.61, -122.33, lastfix, lmt))
            assert (d.allowed, d.reason) == (False, Reason.INVALID_REQUEST), (lastfix, lmt)
            prefix = f"device.geo.lastfix: time is more than {lookback:.0f} s before"
            assert d.detail.startswith(prefix), d.detail
    assert e.check_openrtb_many([bid(40.0, -100.0, 1e12)])[0].reason is Reason.INVALID_REQUEST
    assert len(store) == 0  # nothing recorded that would expire at once
    assert e.check_openrtb(bid(40.0, -100.0, lookback)).reason is Reason.ALLOWED
    assert e.check_openrtb(bid(47.61, -122.33, lookback)).reason is Reason.INSIDE_ZONE
    # Without a position, lastfix dates nothing: the request is decided as having no location.
    no_fix = {"id": "r", "device": {"ifa": "ifa-old", "geo": {"lastfix": 1e12}}}
    assert e.check_openrtb(no_fix).reason is Reason.NO_LOCATION


def test_openrtb_lastfix_is_refused_even_beside_a_beacon(engine: Engine) -> None:
    """A beacon heard now does not rescue a stale fix in the same request: any doubt rejects."""
    far_beacon = "3d1f8a2e-6b7c-4e59-a0d4-5c2b9e7f1a63:1:2"  # positioned far from every zone
    geo = {"lat": RICHMOND_PARK[0], "lon": RICHMOND_PARK[1], "accuracy": 5, "lastfix": 1e12}
    device = {"ifa": "ifa-b", "geo": geo, "ext": {"beacons": [{"id": far_beacon}]}}
    d = engine.check_openrtb({"id": "r", "device": device})
    assert (d.reason, d.detail.split(":")[0]) == (Reason.INVALID_REQUEST, "device.geo.lastfix")
    geo["lastfix"] = 60.0
    assert engine.check_openrtb({"id": "r", "device": device}).reason is Reason.ALLOWED


# --- device ids: one rule for every entry point -----------------------------------------------


def test_device_id_length_limit_is_the_same_everywhere(engine: Engine) -> None:
    longest, too_long = "x" * MAX_DEVICE_ID, "y" * (MAX_DEVICE_ID + 1)
    far_beacon = "3d1f8a2e-6b7c-4e59-a0d4-5c2b9e7f1a63:1:2"  # positioned far from every zone
    lat, lon = RICHMOND_PARK

    def bid(ifa: str, lmt: int) -> dict[str, Any]:
        geo = {"lat": lat, "lon": lon, "accuracy": 5, "type": 1}
        return {"id": "r", "device": {"ifa": ifa, "lmt": lmt, "geo": geo}}

    for device, want in ((longest, Reason.ALLOWED), (too_long, Reason.INVALID_REQUEST)):
        assert engine.check_location(lat, lon, 5.0, device).reason is want
        assert engine.check_many([lat], [lon], 5.0, [device]).reasons() == [want]
        assert engine.check_beacon(far_beacon, device_id=device).reason is want
        assert [d.reason for d in engine.check_beacons_many([far_beacon], [device])] == [want]
        assert engine.check_openrtb(bid(device, 0)).reason is want
        assert engine.check_openrtb(bid(device, 1)).reason is want  # malformed, lmt or not
    detail = engine.check_beacon(far_beacon, device_id=too_long).detail
    assert detail == "bad device id"


# --- presence ----------------------------------------------------------------------------------


def test_recently_inside_for_the_lookback_then_allowed(fake_clock: FakeClock) -> None:
    e = small_engine(clock=fake_clock)
    inside = e.check_location(lat=47.61, lon=-122.33, accuracy_m=5.0, device_id="ifa-1", at=T0)
    assert inside.reason is Reason.INSIDE_ZONE
    far = {"lat": 40.0, "lon": -100.0, "accuracy_m": 5.0, "device_id": "ifa-1"}
    fake_clock.to(T0 + 59 * DAY)
    later = e.check_location(**far, at=T0 + 59 * DAY)
    assert (later.reason, later.category) == (Reason.RECENTLY_INSIDE, Category.REPRODUCTIVE_HEALTH)
    assert later.until == pytest.approx(T0 + 60 * DAY)
    fake_clock.to(T0 + 60 * DAY)
    assert e.check_location(**far, at=T0 + 60 * DAY).reason is Reason.ALLOWED
    other = e.check_location(**{**far, "device_id": "ifa-2"}, at=T0 + DAY)
    assert other.reason is Reason.ALLOWED
    e.forget("ifa-1")
    assert e.check_location(**far, at=T0 + DAY).reason is Reason.ALLOWED


def test_presence_within_one_batch_counts_for_later_pings() -> None:
    e = small_engine()
    lat = np.array([47.61, 40.0, 40.0])
    lon = np.array([-122.33, -100.0, -100.0])
    at = np.array([T0, T0 + 10, T0 - 10])
    b = e.check_many(lat, lon, np.full(3, 5.0), device_ids=["d", "d", "e"], at=at)
    assert b.reasons() == [Reason.INSIDE_ZONE, Reason.RECENTLY_INSIDE, Reason.ALLOWED]


def test_store_down_fails_closed_only_where_history_is_needed() -> None:
    class Down(MemoryStore):
        def latest_many(self, keys: Any) -> Any:
            raise PresenceUnavailable("down")

    e = small_engine(presence=Down(), presence_secret="0123456789abcdef0123")
    d = e.check_location(lat=40.0, lon=-100.0, accuracy_m=5.0, device_id="x", at=T0)
    assert (d.allowed, d.reason) == (False, Reason.STATE_UNAVAILABLE)
    anonymous = e.check_location(lat=40.0, lon=-100.0, accuracy_m=5.0, at=T0)
    assert anonymous.reason is Reason.ALLOWED
    inside = e.check_location(lat=47.61, lon=-122.33, accuracy_m=5.0, device_id="x", at=T0)
    assert inside.reason is Reason.INSIDE_ZONE


def test_no_device_id_policy() -> None:
    e = small_engine('[requests]\nno_device_id = "reject"\n')
    assert e.check_location(lat=40.0, lon=-100.0, accuracy_m=5.0).reason is Reason.INVALID_REQUEST
    assert (
        e.check_location(lat=40.0, lon=-100.0, accuracy_m=5.0, device_id="a").reason
        is Reason.ALLOWED
    )


# --- reload ------------------------------------------------------------------------------------


def test_reload_swaps_and_a_bad_set_never_replaces_a_good_one(tmp_path: Path) -> None:
    folder = tmp_path / "zones"
    shutil.copytree(BUNDLED_ZONES, folder)
    e = Engine.from_paths(folder)
    v1 = e.version
    assert e.check_location(lat=ST_PAULS[0], lon=ST_PAULS[1], accuracy_m=5.0).reason is (
        Reason.INSIDE_ZONE
    )
    gj = folder / "london_places_of_worship.geojson"
    good = gj.read_text()
    data = json.loads(good)
    data["features"][0]["properties"]["category"] = "hospitl"
    gj.write_text(json.dumps(data))
    with pytest.raises(ZoneFileError, match="hospitl"):
        e.reload(folder)
    assert e.version == v1
    assert e.check_location(lat=ST_PAULS[0], lon=ST_PAULS[1], accuracy_m=5.0).zone_set_version == v1
    data = json.loads(good)
    data["features"] = [
        f for f in data["features"] if f["properties"]["id"] != "osm:pofw_a/369161987"
    ]
    gj.write_text(json.dumps(data))
    v2 = e.reload(folder)
    assert v2 != v1
    d = e.check_location(lat=ST_PAULS[0], lon=ST_PAULS[1], accuracy_m=5.0)
    assert d.zone_set_version == v2 and d.zone_id != "osm:pofw_a/369161987"


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(BUNDLED_ZONES, a)
    shutil.copytree(BUNDLED_ZONES, b)
    assert ZoneSet.from_paths(a).version == ZoneSet.from_paths(b).version
    (b / "policy.toml").write_text('pack = "washington"\n')
    assert ZoneSet.from_paths(a).version != ZoneSet.from_paths(b).version


# --- OpenRTB -----------------------------------------------------------------------------------


def test_openrtb_uses_device_geo_lastfix_and_ifa() -> None:
    e = small_engine()
    req = {
        "id": "r1",
        "device": {"ifa": "ifa-9", "geo": {"lat": 47.61, "lon": -122.33, "accuracy": 5, "type": 1}},
    }
    d = e.check_openrtb(json.dumps(req).encode())
    assert (d.reason, d.zone_id) == (Reason.INSIDE_ZONE, "clinic")
    later = {
        "id": "r2",
        "device": {"ifa": "ifa-9", "geo": {"lat": 40.0, "lon": -100.0, "accuracy": 5, "type": 1}},
    }
    assert e.check_openrtb(later).reason is Reason.RECENTLY_INSIDE
    home_only = {"id": "r3", "user": {"geo": {"lat": 47.61, "lon": -122.33}}}
    assert e.check_openrtb(home_only).reason is Reason.NO_LOCATION
    assert not e.check_openrtb(home_only).allowed
    ip = {"id": "r4", "device": {"geo": {"lat": 40.0, "lon": -100.0, "type": 2}}}
    assert e.check_openrtb(ip).reason is Reason.IMPRECISE_LOCATION
    for bad in (b"{not json", "[]", {"device": {"geo": {"lat": 123.4, "lon": 0}}}, 42):
        assert e.check_openrtb(bad).reason is Reason.INVALID_REQUEST  # type: ignore[arg-type]
    rally = {
        "id": "r5",
        "device": {
            "geo": {"lat": 47.6005, "lon": -122.4995, "accuracy": 5, "type": 1, "lastfix": 0}
        },
    }
    assert e.check_openrtb(rally).reason is Reason.INSIDE_ZONE  # the rally is on now


def test_openrtb_many_never_raises() -> None:
    e = small_engine()
    out = e.check_openrtb_many([b"{", {"id": "x"}, None])
    assert [d.reason for d in out] == [
        Reason.INVALID_REQUEST,
        Reason.NO_LOCATION,
        Reason.INVALID_REQUEST,
    ]
    assert e.check_openrtb_many(5)[0].reason is Reason.INVALID_REQUEST  # type: ignore[arg-type]


def test_shared_openrtb_fixtures_decide(shared_data: Path, engine: Engine) -> None:
    """Every Prebid fixture gives a decision; the out-of-range one is invalid_request."""
    seen = {}
    for f in sorted((shared_data / "openrtb" / "prebid-server").glob("*.json")):
        req = json.loads(f.read_text())["mockBidRequest"]
        seen[f.name] = engine.check_openrtb(req).reason
    assert seen["endpoints_openrtb2_sample-requests_valid-whole_exemplary_device-sua.json"] is (
        Reason.INVALID_REQUEST
    )
    assert seen["adapters_smartx_smartxtest_exemplary_03-device.json"] is Reason.IMPRECISE_LOCATION
    assert seen["adapters_rubicon_rubicontest_exemplary_simple-banner.json"] is Reason.NO_LOCATION
    assert all(isinstance(r, Reason) for r in seen.values()) and len(seen) == 7


# --- compiled files ----------------------------------------------------------------------------


def test_compiled_file_round_trip_and_refusals(tmp_path: Path, engine: Engine) -> None:
    path = engine.save(tmp_path / "zones.gfz")
    loaded = Engine.load(path)
    assert loaded.version == engine.version and len(loaded.zone_set) == len(engine.zone_set)
    rng = np.random.default_rng(2)
    lat, lon = rng.uniform(51.48, 51.535, 2000), rng.uniform(-0.21, -0.06, 2000)
    a, b = engine.check_many(lat, lon, 15.0), loaded.check_many(lat, lon, 15.0)
    assert a.reason.tolist() == b.reason.tolist()
    assert a.zone_index.tolist() == b.zone_index.tolist()

    raw = bytearray(path.read_bytes())
    corrupt = tmp_path / "corrupt.gfz"
    corrupt.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CompiledFileError):
        Engine.load(corrupt)
    pickled = tmp_path / "evil.gfz"
    pickled.write_bytes(pickle.dumps({"format": "geofence-zoneset"}))
    with pytest.raises(CompiledFileError, match="not a readable"):
        Engine.load(pickled)
    altered = tmp_path / "altered.gfz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(altered, "w") as dst:
        dst.writestr("manifest.json", src.read("manifest.json"))
        dst.writestr("zoneset.json", src.read("zoneset.json").replace(b"hospital", b"clinic"))
    with pytest.raises(CompiledFileError, match="checksum"):
        Engine.load(altered)


def test_presence_seen_during_an_outage_is_written_when_the_store_returns() -> None:
    """Failing open after recovery would let a device seen inside be targeted early."""

    class Flaky(MemoryStore):
        down = True

        def record_many(self, *a: Any, **k: Any) -> None:
            if self.down:
                raise PresenceUnavailable("down")
            super().record_many(*a, **k)

        def latest_many(self, keys: Any) -> Any:
            if self.down:
                raise PresenceUnavailable("down")
            return super().latest_many(keys)

    store = Flaky()
    e = small_engine(presence=store, presence_secret="0123456789abcdef0123")
    inside = e.check_location(lat=47.61, lon=-122.33, accuracy_m=5.0, device_id="d", at=T0)
    assert inside.reason is Reason.INSIDE_ZONE
    far = {"lat": 40.0, "lon": -100.0, "accuracy_m": 5.0, "device_id": "d"}
    assert e.check_location(**far, at=T0 + 60).reason is Reason.STATE_UNAVAILABLE
    store.down = False
    later = e.check_location(**far, at=T0 + 120)
    assert (later.reason, later.category) == (Reason.RECENTLY_INSIDE, Category.REPRODUCTIVE_HEALTH)
    assert len(store) == 1


def test_audit_log_gets_rejections_with_hashed_devices_only(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog(log_path, flush_interval_s=0.05)
    e = small_engine(audit=audit)
    e.check_location(lat=47.61, lon=-122.33, accuracy_m=5.0, device_id="ifa-AUDIT-1", at=T0)
    e.check_location(lat=40.0, lon=-100.0, accuracy_m=5.0, device_id="ifa-AUDIT-2", at=T0)
    e.check_many(
        np.array([47.61, 40.0]),
        np.array([-122.33, -100.0]),
        5.0,
        device_ids=["ifa-AUDIT-3", None],
        at=T0,
    )
    e.check_openrtb(
        {
            "id": "r",
            "device": {"ifa": "ifa-AUDIT-4", "geo": {"lat": 47.61, "lon": -122.33, "accuracy": 5}},
        }
    )
    audit.close()
    text = audit_text_without_clock(log_path)
    records = [json.loads(line) for line in text.splitlines() if '"reason"' in line]
    assert [r["reason"] for r in records] == ["inside_zone", "inside_zone", "inside_zone"]
    assert {r["zone_id"] for r in records} == {"clinic"}
    assert records[0]["device"] == e._hasher.key("ifa-AUDIT-1").hex()
    assert records[2]["device"] == e._hasher.key("ifa-AUDIT-4").hex()
    assert "ifa-AUDIT" not in text and "47.61" not in text and "122.33" not in text


def test_rejected_beacon_input_reaches_the_audit_log(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog(log_path, flush_interval_s=0.05)
    e = small_engine(audit=audit)
    d = e.check_beacon("f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:7", device_id="ifa-B", rssi="x")
    assert d.reason is Reason.INVALID_REQUEST
    audit.close()
    records = [json.loads(x) for x in log_path.read_text().splitlines() if '"reason"' in x]
    assert [(r["reason"], r["device"]) for r in records] == [
        ("invalid_request", e._hasher.key("ifa-B").hex())
    ]

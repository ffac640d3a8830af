"""Issue 3 acceptance: real phone traces replayed through the engine, on every presence backend.

The Go!Track traces (../shared/data/traces/go_track_uci: 18,107 pings of 28 Android phones in
Aracaju, 2014-2016) are replayed in time order. Zones are put where phones stopped (runs of pings
that stay within 50 m), some as point zones and some as small lon/lat boxes, in four categories
with lookbacks of 1 to 3 days, so blocks start, expire and restart within the trace. Every
decision is compared with a reference computed here in plain Python: pyproj.Geod distances for
inside/near/presence, and per-device latest presence per category for the [T, T + lookback)
windows. Nothing of the engine (index, lookback table, hasher) is used by the reference.

Times: stores expire records by the wall clock, and the trace spans 16 months against lookbacks of
days, so no shift can make it end near now without the store dropping the early records before the
pings that need them arrive. The replay therefore *starts* at now: every record is live when it is
needed, and expiry inside the trace is decided by the engine's `at < T + lookback`. The engine's
own clock (a FakeClock) follows the trace, as a server's would while the pings arrive: the engine
refuses request times ahead of its clock, and times older than its longest lookback (3 days here).
So a batch spans at most BATCH_SPAN_S, and each device's window is checked as the clock passes
its end rather than after the whole trace.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyproj
import pytest
import shapely
from conftest import FakeClock

from geofence import Category, Engine, Reason
from geofence.decision import NO_CATEGORY
from geofence.policy import load_policy_text
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

F64 = npt.NDArray[np.float64]

GEOD = pyproj.Geod(ellps="WGS84")
DAY = 86_400.0
SECRET = "replay-test-secret-0123456789abcdef"
# No ping is closer than this to any threshold (radius, radius + accuracy, radius + buffer +
# accuracy, a box edge): the engine is conservative by at most 1 cm + 3e-5 of the distance, so
# the reference's answer is then the only right one.
MARGIN_M = 0.25

# The reference's own copy of the policy below (checked against the parsed policy once).
LOOKBACK_DAYS = {
    Category.REPRODUCTIVE_HEALTH: 3.0,
    Category.PLACE_OF_WORSHIP: 1.0,
    Category.SCHOOL_CHILDCARE: 2.0,
    Category.COURT: 1.5,
}
BUFFER_M = {
    Category.REPRODUCTIVE_HEALTH: 15.0,
    Category.PLACE_OF_WORSHIP: 10.0,
    Category.SCHOOL_CHILDCARE: 15.0,
    Category.COURT: 25.0,
}
POLICY = """
pack = "none"
[defaults]
buffer_m = 15.0
lookback_days = 3.0
[categories.place_of_worship]
buffer_m = 10.0
lookback_days = 1.0
[categories.school_childcare]
lookback_days = 2.0
[categories.court]
buffer_m = 25.0
lookback_days = 1.5
"""
CATEGORY_CYCLE = list(LOOKBACK_DAYS)
MAX_ZONES = 16
MIN_ZONE_SEPARATION_M = 600.0  # so a ping reaches at most one zone's near limit (< 150 m)
PROBE = (-10.80, -36.80)  # at sea, tens of km from every zone: decided by history alone
# A batch's pings span at most this: the batch is sent once its last ping is in, and the engine
# refuses pings older than the longest lookback (3 days) by then.
BATCH_SPAN_S = 86_400.0

CLEAR, INSIDE, NEAR = 0, 1, 2


@dataclass(frozen=True)
class Pings:
    """The trace in replay order (time, then device), with shifted times and chosen accuracies."""

    device: list[str]
    lat: F64
    lon: F64
    at: F64
    acc: F64


@dataclass(frozen=True)
class RefZone:
    id: str
    category: Category
    lat: float
    lon: float
    radius_m: float  # > 0: a point zone (a circle); 0: the box below
    box: tuple[float, float, float, float] | None  # lon0, lat0, lon1, lat1


@dataclass(frozen=True)
class Expected:
    reason: list[Reason]
    zone: list[str | None]
    category: list[Category | None]
    until: list[float | None]
    last_presence: dict[str, dict[Category, float]]  # after the replay, per device


@dataclass(frozen=True)
class Replay:
    pings: Pings
    zones: list[RefZone]
    zone_set: ZoneSet
    expected: Expected


# --- reading the trace -------------------------------------------------------------------------


def read_trace(folder: Path) -> tuple[list[str], list[str], F64, F64, F64]:
    """(device, track, lat, lon, unix time) per ping, in file order."""
    with (folder / "go_track_tracks.csv").open(newline="") as f:
        device_of = {row["id"]: row["id_android"] for row in csv.DictReader(f)}
    devices, tracks, lat, lon, at = [], [], [], [], []
    with (folder / "go_track_trackspoints.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            tracks.append(row["track_id"])
            # Distinctive ids: the privacy tests look for them in the stores.
            devices.append(f"go-track-android-{device_of[row['track_id']]}")
            lat.append(float(row["latitude"]))
            lon.append(float(row["longitude"]))
            # Local time without a zone in the file; read as UTC (only differences matter).
            at.append(datetime.fromisoformat(row["time"] + "+00:00").timestamp())
    return devices, tracks, np.array(lat), np.array(lon), np.array(at)


def dwell_centres(
    tracks: list[str], lat: F64, lon: F64, at: F64, radius_m: float = 50.0, min_pings: int = 12
) -> list[tuple[int, float, float]]:
    """(pings, lat, lon) of every stop: a run of >= min_pings consecutive pings of one track that
    stay within radius_m of the run's first ping (flat-earth metres; this only places zones)."""
    out = []
    order = sorted(range(len(at)), key=lambda i: (tracks[i], at[i]))
    runs: dict[str, list[int]] = {}
    for i in order:
        runs.setdefault(tracks[i], []).append(i)
    for idx in runs.values():
        ix = np.array(idx)
        y = lat[ix] * 111_320.0
        x = lon[ix] * 111_320.0 * math.cos(math.radians(float(lat[ix].mean())))
        i = 0
        while i < len(ix):
            j = i + 1
            while j < len(ix) and math.hypot(x[j] - x[i], y[j] - y[i]) <= radius_m:
                j += 1
            if j - i >= min_pings:
                out.append((j - i, float(lat[ix[i:j]].mean()), float(lon[ix[i:j]].mean())))
                i = j
            else:
                i += 1
    return out


# --- the reference -----------------------------------------------------------------------------


def distances(z: RefZone, lat: F64, lon: F64) -> tuple[F64, F64]:
    """(distance to the zone's geometry, distance to its nearest edge) in metres, by geodesics.

    Point zone: distance to the centre (the edge is at radius). Box: 0 inside; outside, the
    geodesic to the clamped point (the nearest point of a lon/lat-aligned box, since the local
    metric of lon/lat is diagonal); the second value is the distance to the nearest edge, for
    points inside (to check that none sits on the edge).
    """
    if z.box is None:
        d = GEOD.inv(np.full_like(lon, z.lon), np.full_like(lat, z.lat), lon, lat)[2]
        return d, np.abs(d - z.radius_m)
    lon0, lat0, lon1, lat1 = z.box
    clon, clat = np.clip(lon, lon0, lon1), np.clip(lat, lat0, lat1)
    d = GEOD.inv(lon, lat, clon, clat)[2]
    inside = (lon > lon0) & (lon < lon1) & (lat > lat0) & (lat < lat1)
    d = np.where(inside, 0.0, d)
    edge = np.min(
        [GEOD.inv(lon, lat, np.full_like(lon, edge_lon), lat)[2] for edge_lon in (lon0, lon1)]
        + [GEOD.inv(lon, lat, lon, np.full_like(lat, edge_lat))[2] for edge_lat in (lat0, lat1)],
        axis=0,
    )
    return d, np.where(inside, edge, d)


def reference(p: Pings, zones: list[RefZone]) -> Expected:
    """What the engine must answer for each ping, by plain Python over the time-ordered pings."""
    n = len(p.device)
    kind = np.zeros(n, dtype=np.int8)
    hit_zone = np.full(n, -1)
    present_zone = np.full(n, -1)
    for zi, z in enumerate(zones):
        d, _ = distances(z, p.lat, p.lon)
        inside = d <= z.radius_m if z.box is None else d == 0.0
        near = d <= z.radius_m + BUFFER_M[z.category] + p.acc
        present = d <= z.radius_m + p.acc
        assert not np.any(near & (hit_zone >= 0)), "zones are too close: a ping is near two"
        kind[near] = np.where(inside[near], INSIDE, NEAR)
        hit_zone[near] = zi
        present_zone[present] = zi
    reason: list[Reason] = []
    zone: list[str | None] = []
    category: list[Category | None] = []
    until: list[float | None] = []
    last: dict[str, dict[Category, float]] = {}
    for i in range(n):
        history = last.setdefault(p.device[i], {})
        if kind[i] != CLEAR:
            z = zones[hit_zone[i]]
            reason.append(Reason.INSIDE_ZONE if kind[i] == INSIDE else Reason.NEAR_ZONE)
            zone.append(z.id)
            category.append(z.category)
            until.append(None)
        else:
            ends = {c: t + LOOKBACK_DAYS[c] * DAY for c, t in history.items()}
            best = max(ends, key=lambda c: ends[c], default=None)
            if best is not None and p.at[i] < ends[best]:
                reason.append(Reason.RECENTLY_INSIDE)
                category.append(best)
                until.append(ends[best])
            else:
                reason.append(Reason.ALLOWED)
                category.append(None)
                until.append(None)
            zone.append(None)
        if present_zone[i] >= 0:
            c = zones[present_zone[i]].category
            history[c] = max(history.get(c, -math.inf), float(p.at[i]))
    return Expected(reason, zone, category, until, last)


# --- building the replay -----------------------------------------------------------------------


def choose_zones(stops: list[tuple[int, float, float]], lat: F64, lon: F64) -> list[RefZone]:
    """Zones on the longest stops, far apart; sizes nudged so no ping sits on an edge."""
    chosen: list[tuple[float, float]] = []
    for _, slat, slon in sorted(stops, reverse=True):
        far = all(GEOD.inv(slon, slat, c[1], c[0])[2] >= MIN_ZONE_SEPARATION_M for c in chosen)
        if far:
            chosen.append((slat, slon))
        if len(chosen) == MAX_ZONES:
            break
    zones = []
    for k, (zlat, zlon) in enumerate(chosen):
        cat = CATEGORY_CYCLE[k % len(CATEGORY_CYCLE)]
        for step in range(200):
            size = 25.0 + 7.0 * (k % 3) + 0.137 * step
            if k % 2 == 0:
                z = RefZone(f"stop-{k}", cat, zlat, zlon, size, None)
            else:
                dlat = size / 110_600.0
                dlon = size / (111_320.0 * math.cos(math.radians(zlat)))
                box = (zlon - dlon, zlat - dlat, zlon + dlon, zlat + dlat)
                z = RefZone(f"stop-{k}", cat, zlat, zlon, 0.0, box)
            _, edge = distances(z, lat, lon)
            if np.all(edge > MARGIN_M):
                break
        else:
            raise AssertionError(f"no size for zone {k} keeps every ping off its edge")
        zones.append(z)
    return zones


def choose_accuracies(zones: list[RefZone], lat: F64, lon: F64, seed: int = 3) -> F64:
    """Accuracies of 5-35 m, each nudged until its ping is off every presence and near limit."""
    acc = np.round(np.random.default_rng(seed).uniform(5.0, 35.0, len(lat)), 1)
    dist = [(z, distances(z, lat, lon)[0]) for z in zones]
    for _ in range(50):
        bad = np.zeros(len(lat), dtype=bool)
        for z, d in dist:
            for extra in (0.0, BUFFER_M[z.category]):
                bad |= np.abs(d - (z.radius_m + extra + acc)) <= MARGIN_M
        if not bad.any():
            return acc
        acc[bad] += 2 * MARGIN_M + 0.05
    raise AssertionError("accuracies did not settle off the thresholds")


def zone_objects(zones: list[RefZone]) -> list[Zone]:
    return [
        Zone(z.id, z.id, z.category, shapely.Point(z.lon, z.lat), z.radius_m)
        if z.box is None
        else Zone(z.id, z.id, z.category, shapely.box(*z.box))
        for z in zones
    ]


@cache
def build_replay(folder: Path, start: float) -> Replay:
    devices, tracks, lat, lon, at = read_trace(folder)
    stops = dwell_centres(tracks, lat, lon, at)
    # Replay order: time, then device, then file order. Pings of one device with equal times are
    # spread by a millisecond each, so "at or after T" means the same in one batch and in a loop.
    order = sorted(range(len(at)), key=lambda i: (at[i], devices[i], i))
    t = at[order]
    dev = [devices[i] for i in order]
    seen: dict[tuple[str, float], int] = {}
    shifted = np.empty(len(order))
    for k, (d, ti) in enumerate(zip(dev, t.tolist(), strict=True)):
        dup = seen.get((d, ti), 0)
        seen[(d, ti)] = dup + 1
        shifted[k] = ti + dup * 1e-3
    shifted = shifted - shifted[0] + start
    lat, lon = lat[order], lon[order]
    zones = choose_zones(stops, lat, lon)
    acc = choose_accuracies(zones, lat, lon)
    pings = Pings(dev, lat, lon, shifted, acc)
    policy = load_policy_text(POLICY, "<replay policy>")
    for c, days in LOOKBACK_DAYS.items():
        assert policy.rule(c).lookback_days == days and policy.rule(c).buffer_m == BUFFER_M[c]
    zs = ZoneSet.compile(zone_objects(zones), policy, "v-replay")
    return Replay(pings, zones, zs, reference(pings, zones))


START = float(int(time.time()))


@pytest.fixture(scope="module")
def replay(shared_data: Path) -> Replay:
    return build_replay(shared_data / "traces" / "go_track_uci", START)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def engine(
    request: pytest.FixtureRequest, replay: Replay, tmp_path: Path, fake_clock: FakeClock
) -> Iterator[Engine]:
    url = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp_path}/presence.db",
        "redis": "",
    }[request.param]
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    e = Engine(replay.zone_set, presence=url, presence_secret=SECRET, clock=fake_clock)
    yield e
    e.close()


# --- the reference itself must be a real test ---------------------------------------------------


def test_the_replay_exercises_presence_and_expiry(replay: Replay) -> None:
    """The trace and zones give a test that could fail: many blocks, several devices and
    categories, blocks that expire inside the trace and start again, and zones that catch
    devices other than the one whose stop placed them."""
    exp, p = replay.expected, replay.pings
    assert len(p.device) == 18_107 and len(set(p.device)) == 28
    assert len(replay.zones) == MAX_ZONES
    assert {z.box is None for z in replay.zones} == {True, False}
    counts = {r: exp.reason.count(r) for r in Reason}
    assert counts[Reason.RECENTLY_INSIDE] > 1000
    assert counts[Reason.INSIDE_ZONE] > 500 and counts[Reason.NEAR_ZONE] > 50
    assert counts[Reason.ALLOWED] > 5000
    blocked = {d for d, r in zip(p.device, exp.reason, strict=True) if r is Reason.RECENTLY_INSIDE}
    assert len(blocked) >= 5
    cats = {c for c, r in zip(exp.category, exp.reason, strict=True) if r is Reason.RECENTLY_INSIDE}
    assert len(cats) >= 3
    # A device blocked, then allowed again because its window ended, then blocked again.
    cycles = 0
    state: dict[str, str] = {}
    for d, r in zip(p.device, exp.reason, strict=True):
        s = state.get(d, "")
        if r is Reason.RECENTLY_INSIDE and s == "expired":
            cycles += 1
        if r is Reason.RECENTLY_INSIDE:
            state[d] = "blocked"
        elif r is Reason.ALLOWED and s == "blocked":
            state[d] = "expired"
    assert cycles >= 3
    # Devices that are inside or near zones but never blocked: the blocks are not universal.
    touched = {d for d, r in zip(p.device, exp.reason, strict=True) if r is not Reason.ALLOWED}
    assert len(set(p.device) - blocked) >= 5 and touched >= blocked


def decided(d: object) -> tuple[Reason, str | None, Category | None, float | None]:
    from geofence import Decision  # noqa: PLC0415

    assert isinstance(d, Decision)
    return d.reason, d.zone_id, d.category, d.until


def compare(
    replay: Replay, got: list[tuple[Reason, str | None, Category | None, float | None]]
) -> None:
    exp, p = replay.expected, replay.pings
    wrong = []
    for i, (reason, zone, cat, until) in enumerate(got):
        want = (exp.reason[i], exp.zone[i], exp.category[i], exp.until[i])
        same = (reason, zone, cat) == want[:3] and (
            (until is None and want[3] is None)
            or (until is not None and want[3] is not None and abs(until - want[3]) < 1e-3)
        )
        if not same:
            wrong.append((i, p.device[i], float(p.at[i] - START), (reason, zone, cat, until), want))
    assert not wrong, f"{len(wrong)} decisions differ from the reference, first: {wrong[:5]}"


@dataclass(frozen=True)
class WindowProbe:
    """One device's check after its last presence block: blocked until `end`, then allowed."""

    end: float  # the end of the device's last block, or just after the trace if never present
    device: str
    category: Category | None  # the block's category; None: never present


def window_probes(replay: Replay) -> list[WindowProbe]:
    """Every device's window check, in time order.

    A device's check is due once the replay passes its end: all its presence lies at least a
    lookback (a day or more) before that end, so the replay has recorded it all by then, and the
    probe's times are still inside the engine's accepted window.
    """
    after = float(replay.pings.at[-1]) + 1.0
    probes = []
    for device, history in replay.expected.last_presence.items():
        ends = {c: t + LOOKBACK_DAYS[c] * DAY for c, t in history.items()}
        if not ends:
            probes.append(WindowProbe(after, device, None))
            continue
        best = max(ends, key=lambda c: ends[c])
        probes.append(WindowProbe(ends[best], device, best))
    return sorted(probes, key=lambda w: w.end)


def check_windows_before(
    probes: list[WindowProbe], until: float, engine: Engine, clock: FakeClock
) -> None:
    """Run, and remove, the probes that end before `until`: each device is blocked until exactly
    its reference end, then allowed (and a device never present is allowed after the trace)."""
    while probes and probes[0].end < until:
        w = probes.pop(0)
        clock.to(w.end)  # the clock only moves forward; in a batch replay it may be a day ahead
        probe = {"lat": PROBE[0], "lon": PROBE[1], "accuracy_m": 10.0, "device_id": w.device}
        if w.category is None:
            assert engine.check_location(**probe, at=w.end).reason is Reason.ALLOWED
            continue
        d = engine.check_location(**probe, at=w.end - 1.0)
        assert (d.reason, d.category, d.until) == (Reason.RECENTLY_INSIDE, w.category, w.end)
        assert engine.check_location(**probe, at=w.end).reason is Reason.ALLOWED


def time_ordered_batches(at: F64, size: int) -> list[slice]:
    """Consecutive slices of at most `size` pings spanning at most BATCH_SPAN_S each."""
    slices, lo = [], 0
    while lo < len(at):
        hi = lo + 1
        while hi < min(len(at), lo + size) and at[hi] - at[lo] <= BATCH_SPAN_S:
            hi += 1
        slices.append(slice(lo, hi))
        lo = hi
    return slices


def test_replay_one_request_at_a_time(
    replay: Replay, engine: Engine, fake_clock: FakeClock
) -> None:
    p = replay.pings
    probes = window_probes(replay)
    assert len(probes) == len(replay.expected.last_presence)
    got = []
    for i in range(len(p.device)):
        check_windows_before(probes, float(p.at[i]), engine, fake_clock)
        fake_clock.to(float(p.at[i]))  # the ping arrives now
        args = (float(p.lat[i]), float(p.lon[i]), float(p.acc[i]))
        if i % 2:
            d = engine.observe(p.device[i], *args, at=float(p.at[i]))
        else:
            d = engine.check_location(*args, device_id=p.device[i], at=float(p.at[i]))
        got.append(decided(d))
    compare(replay, got)
    check_windows_before(probes, math.inf, engine, fake_clock)
    assert not probes


@pytest.mark.parametrize("size", [997])
def test_replay_in_time_ordered_batches(
    replay: Replay, engine: Engine, size: int, fake_clock: FakeClock
) -> None:
    p = replay.pings
    probes = window_probes(replay)
    assert len(probes) == len(replay.expected.last_presence)
    batches = time_ordered_batches(p.at, size)
    assert max(sl.stop - sl.start for sl in batches) == size  # some batches are full
    got = []
    for k, sl in enumerate(batches):
        check_windows_before(probes, float(p.at[sl.start]), engine, fake_clock)
        fake_clock.to(float(p.at[sl].max()))  # the batch is sent once its last ping is in
        ids = np.array(p.device[sl], dtype=object)
        if k % 2:
            b = engine.observe_many(ids, p.lat[sl], p.lon[sl], p.acc[sl], at=p.at[sl])
        else:
            b = engine.check_many(p.lat[sl], p.lon[sl], p.acc[sl], device_ids=ids, at=p.at[sl])
        for j in range(len(b)):
            assert (int(b.category[j]) == NO_CATEGORY) == (b.decision(j).category is None)
            got.append(decided(b.decision(j)))
    compare(replay, got)
    check_windows_before(probes, math.inf, engine, fake_clock)
    assert not probes

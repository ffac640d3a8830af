"""The accelerated grid against the exact index, point by point, where mistakes would hide."""

from __future__ import annotations

import gc
import itertools
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyogrio
import pyproj
import pytest
import shapely
from conftest import BUNDLED_ZONES
from hypothesis import given, settings
from hypothesis import strategies as st

import geofence.grid as grid_module
from geofence.categories import Category
from geofence.engine import Engine
from geofence.geodesy import (
    FRAME_SLACK_M,
    FRAME_STRETCH,
    M_PER_DEG_LAT_MIN,
    Frames,
    tile_center,
    tile_key,
)
from geofence.grid import (
    _TABLE_FIELDS,
    AHEAD,
    COARSE_COLS,
    COARSE_PER_DEG,
    COARSE_ROWS,
    FINE_COLS,
    FINE_PER_DEG,
    FINE_STEP,
    LIST_M,
    NO_PRESENCE,
    ROW_REACH,
    STATE_CLEAR,
    STATE_SUB,
    SUB,
    SUB_COLS,
    SUB_PAIR_BUDGET,
    SUB_PER_DEG,
    GridIndex,
    Level,
    _big_parts,
    _build_coarse,
    _build_levels,
    _cells_of_boxes,
    _coarse_keys,
    _float32_map,
    _forward_distinct,
    _nearest_first,
    _piece_distance,
    _piece_rows,
    _with_antimeridian_twins,
    child_keys_of,
    coarse_reach,
    f32_down,
    f32_up,
    grid_kernel,
    grid_one,
    grid_one_present,
    grid_presence,
    grid_presence_one,
    grid_presence_zones,
)
from geofence.index import INTERIOR, KIND_CLEAR, KIND_INSIDE, KIND_NEAR, ExactIndex
from geofence.kernels import (
    EMPTY_KEY,
    KEY_BITS,
    LOAD,
    FlatParts,
    HashTable,
    _hash,
    find,
    groups,
    point_distance,
)
from geofence.policy import load_policy_text
from geofence.reasons import Reason
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

ACCURACIES = np.array([0.0, 5.0, 20.0, 50.0, 150.0])


def band_points(
    zs: ZoneSet, rng: np.random.Generator, per_zone: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points at reach + accuracy +/- 0.5 m, and at the zone outline +/- 0.5 m, of every zone."""
    lons, lats, accs = [], [], []
    for i, z in enumerate(zs.zones):
        c = z.geometry.centroid
        crs = pyproj.CRS.from_proj4(f"+proj=aeqd +lat_0={c.y} +lon_0={c.x} +ellps=WGS84")
        fwd = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        inv = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        local = shapely.transform(
            shapely.segmentize(z.geometry, 0.0002),
            lambda xy, t=fwd: np.column_stack(t.transform(xy[:, 0], xy[:, 1])),
        )
        acc = rng.choice(ACCURACIES, per_zone)
        target = np.where(
            rng.random(per_zone) < 0.8, z.radius_m + zs.buffer_m[i] + acc, z.radius_m
        ) + rng.choice([-0.5, 0.5], per_zone)
        for a, dist in zip(acc, target, strict=True):
            ring = local.buffer(max(dist, 0.05), quad_segs=8).boundary
            x, y = shapely.line_interpolate_point(ring, rng.random(), normalized=True).coords[0]
            lo, la = inv.transform(x, y)
            lons.append(lo)
            lats.append(la)
            accs.append(a)
    return np.array(lons), np.array(lats), np.array(accs)


def assert_grid_matches_exact(
    grid: GridIndex, exact: ExactIndex, lon: np.ndarray, lat: np.ndarray, acc: np.ndarray
) -> dict[str, int]:
    n = len(lon)
    at = np.zeros(n)
    fast = grid.locate(lon, lat, acc, at)
    ref = exact.locate(lon, lat, acc, at)
    false_allow = (fast.kind == KIND_CLEAR) & (ref.kind != KIND_CLEAR)
    assert not false_allow.any(), f"{false_allow.sum()} points allowed by the grid only"
    # Where the grid is stricter, it must be by at most 1 m: 1 m less accuracy clears the point.
    stricter = np.flatnonzero((fast.kind != KIND_CLEAR) & (ref.kind == KIND_CLEAR))
    if stricter.size:
        again = exact.locate(lon[stricter], lat[stricter], acc[stricter] + 1.0, at[stricter])
        assert np.all(again.kind != KIND_CLEAR), "grid stricter than exact by more than 1 m"
    both = (fast.kind != KIND_CLEAR) & (ref.kind != KIND_CLEAR)
    # Inside is inside, of the same zone; near stays near, though it may name another zone. The
    # one exception: within the affine map's error (centimetres) of a zone's outline, the grid
    # may call inside what the exact index calls near, or the reverse; both reject.
    swapped = np.flatnonzero(both & ((fast.kind == KIND_INSIDE) != (ref.kind == KIND_INSIDE)))
    if swapped.size:
        z = np.where(fast.kind[swapped] == KIND_INSIDE, fast.zone[swapped], ref.zone[swapped])
        parts = np.array([np.flatnonzero(exact.part_zone == zz)[0] for zz in z])
        d = exact.distances(lon, lat, swapped, parts) - exact.radius_m[z]
        assert np.all(np.abs(d) <= 0.1), "inside/near differ farther than 10 cm from an outline"
    same_inside = both & (ref.kind == KIND_INSIDE) & (fast.kind == KIND_INSIDE)
    assert np.array_equal(fast.zone[same_inside], ref.zone[same_inside])
    other = np.flatnonzero(both & (ref.kind == KIND_NEAR) & (fast.zone != ref.zone))
    if other.size:
        # The zone the grid names must itself be within reach of the point.
        parts = np.flatnonzero(np.isin(exact.part_zone, fast.zone[other]))
        pts, prt = np.repeat(other, len(parts)), np.tile(parts, len(other))
        keep = exact.part_zone[prt] == fast.zone[pts]
        pts, prt = pts[keep], prt[keep]
        d = exact.distances(lon, lat, pts, prt)
        z = exact.part_zone[prt]
        limit = exact.radius_m[z] + exact.buffer_m[z] + acc[pts]
        ok = np.zeros(n, dtype=bool)
        ok[pts[d <= limit * FRAME_STRETCH + FRAME_SLACK_M]] = True
        assert ok[other].all(), "the grid named a zone whose buffer does not reach the point"
    return {
        "points": n,
        "stricter": int(stricter.size),
        "other_zone": int(other.size),
        "inside_near_swapped": int(swapped.size),
    }


@pytest.fixture(scope="module")
def bundled() -> ZoneSet:
    return ZoneSet.from_paths(BUNDLED_ZONES)


def test_grid_equals_exact_in_the_boundary_band(bundled: ZoneSet) -> None:
    """100k points at buffer +/- 0.5 m (and outline +/- 0.5 m) around 675 real zones."""
    rng = np.random.default_rng(42)
    lon, lat, acc = band_points(bundled, rng, per_zone=150)
    assert len(lon) >= 100_000
    grid = bundled.index
    assert isinstance(grid, GridIndex)
    report = assert_grid_matches_exact(grid, bundled.exact, lon, lat, acc)
    assert report["stricter"] < 0.01 * report["points"]


def test_grid_equals_exact_on_uniform_points(bundled: ZoneSet) -> None:
    rng = np.random.default_rng(9)
    n = 100_000
    lat = np.concatenate([rng.uniform(51.48, 51.535, n // 2), rng.uniform(3.11, 3.18, n // 2)])
    lon = np.concatenate([rng.uniform(-0.21, -0.06, n // 2), rng.uniform(101.64, 101.73, n // 2)])
    acc = rng.choice(np.array([0.0, 5.0, 20.0, 100.0, 1000.0, 5000.0]), n)
    assert isinstance(bundled.index, GridIndex)
    assert_grid_matches_exact(bundled.index, bundled.exact, lon, lat, acc)


def test_one_point_path_equals_the_batch_path(bundled: ZoneSet) -> None:
    """locate_one (check_location's path) answers as locate does, or defers where locate must.

    The one-point path runs the kernel's code, inlined, on the arrays it holds in one numba
    object (`_Tables`): a point decided differently from the batch build, or a field handed
    over in the wrong place, would show here.
    """
    rng = np.random.default_rng(77)
    lon, lat, acc = band_points(bundled, rng, per_zone=6)
    far = rng.uniform(-170, 170, 500), rng.uniform(-60, 60, 500)
    lon, lat = np.concatenate([lon, far[0]]), np.concatenate([lat, far[1]])
    acc = np.concatenate([acc, rng.choice([0.0, 20.0, 9000.0], 500)])
    acc[::17] = 5000.0  # large circles: some points defer to the exact index
    grid = bundled.index
    assert isinstance(grid, GridIndex)
    n = len(lon)
    kind = np.empty(n, dtype=np.int8)
    zone = np.empty(n, dtype=np.int32)
    todo = np.empty(n, dtype=np.bool_)
    grid_kernel(lon, lat, acc, *grid._packed, kind, zone, todo, *NO_PRESENCE)
    deferred = 0
    for i in range(n):
        one = grid.locate_one(float(lon[i]), float(lat[i]), float(acc[i]))
        if one is None:
            assert todo[i], i
            deferred += 1
        else:
            assert not todo[i] and one == (int(kind[i]), int(zone[i])), i
    assert 0 < deferred < n and (kind != KIND_CLEAR).sum() > n // 4
    assert set((kind[~todo] == KIND_INSIDE).tolist()) == {False, True}


@pytest.mark.parametrize("staged", [True, False])
def test_a_points_answer_does_not_depend_on_its_batch(bundled: ZoneSet, staged: bool) -> None:
    """The batch kernel looks points up ahead (grid.AHEAD apart; where its tables are large)
    and keeps what it found in its output array until each point is decided: every batch
    length around those stages, any order, and whatever the output arrays held before give
    each point the same answer, with the stages and without."""
    rng = np.random.default_rng(80)
    lon, lat, acc = band_points(bundled, rng, per_zone=2)
    grid = bundled.index
    assert isinstance(grid, GridIndex)
    assert not grid._packed[1][2]  # the bundled zones' tables are small: no stages
    packed = list(grid._packed)
    packed[1] = np.array([*packed[1][:2], float(staged)])

    def run(idx: np.ndarray, fill: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = len(idx)
        kind = np.full(m, fill, dtype=np.int8)
        zone = np.full(m, fill, dtype=np.int32)
        todo = np.full(m, fill != 0, dtype=np.bool_)
        lo, la, ac = (np.ascontiguousarray(v[idx]) for v in (lon, lat, acc))
        grid_kernel(lo, la, ac, *packed, kind, zone, todo, *NO_PRESENCE)
        return kind, zone, todo

    everything = np.arange(len(lon))
    want = run(everything, 0)
    one_by_one = [run(everything[i : i + 1], 0) for i in range(0, len(lon), 7)]
    for i, got in zip(range(0, len(lon), 7), one_by_one, strict=True):
        assert (got[0][0], got[1][0], got[2][0]) == (want[0][i], want[1][i], want[2][i]), i
    assert (want[0] != KIND_CLEAR).any() and (want[0] == KIND_CLEAR).any()
    lengths = sorted({1, 2, 3, *(k * AHEAD + d for k in (1, 2, 3, 4) for d in (-1, 0, 1)), 100})
    for m in lengths:
        for start in (0, 5, 37):
            idx = everything[start : start + m]
            got = run(idx, 7 if m % 2 else -3)  # stale values in the outputs
            for g, w in zip(got, want, strict=True):
                assert np.array_equal(g, w[idx]), (m, start)
    order = rng.permutation(len(lon))
    for g, w in zip(run(order, 0), want, strict=True):
        assert np.array_equal(g, w[order])


@pytest.mark.parametrize("center_only", [False, True])
def test_one_point_presence_equals_the_batch_path(bundled: ZoneSet, center_only: bool) -> None:
    """presence_one (check_location's path) lists the zones the batch path lists, each once,
    and None exactly where the lists cannot tell.

    Against the batch kernel for every point (the same unsure points, the same zones), and
    against locate(..., need_presence=...) for the points check_location asks about: those
    locate_one settles and rejects. One zone, two and more come back by different ways (the
    last by a second call); a zone with pieces in several tiles is listed twice by the kernel.
    """
    rng = np.random.default_rng(78)
    lon, lat, acc = band_points(bundled, rng, per_zone=6)
    grid = bundled.index
    assert isinstance(grid, GridIndex)
    n = len(lon)
    _, _, unsure = grid_presence(
        lon, lat, acc, np.arange(n, dtype=np.int64), center_only, *grid._packed
    )
    kernel_pairs = grid.locate(  # every point: the kernel's lists, or the exact index
        lon, lat, acc, np.zeros(n), center_only, need_presence=np.ones(n, dtype=bool)
    )
    batch: dict[int, list[int]] = {}
    for p, z in zip(kernel_pairs.present_point.tolist(), kernel_pairs.present_zone.tolist(),
                    strict=True):  # fmt: skip
        batch.setdefault(p, []).append(z)
    asked = 0
    counts: set[int] = set()
    for i in range(n):
        x, y, a = float(lon[i]), float(lat[i]), float(acc[i])
        one = grid.presence_one(x, y, a, center_only)
        assert (one is None) == bool(unsure[i]), i
        if one is None:
            continue
        assert one.dtype == np.int64 and one.ndim == 1, i
        zones = one.tolist()
        assert len(set(zones)) == len(zones), (i, zones)  # each zone once
        counts.add(min(len(zones), 3))
        located = grid.locate_one(x, y, a)
        if located is not None and located[0] != KIND_CLEAR:
            asked += 1
            assert sorted(zones) == batch.get(i, []), (i, zones)
    assert unsure.any() and counts == {0, 1, 2, 3} and asked > n // 4


@pytest.mark.parametrize("center_only", [False, True])
def test_one_call_locates_and_tells_presence_as_the_two_calls_do(
    bundled: ZoneSet, center_only: bool
) -> None:
    """locate_present_one (a request with a device id) is locate_one and, where that names a
    zone, presence_one; None wherever either is None, and no zones where the point is clear."""
    rng = np.random.default_rng(79)
    lon, lat, acc = band_points(bundled, rng, per_zone=6)
    acc[::13] = 5000.0  # large circles: some points defer to the exact index
    grid = bundled.index
    assert isinstance(grid, GridIndex)
    seen = set()
    for x, y, a in zip(lon.tolist(), lat.tolist(), acc.tolist(), strict=True):
        both = grid.locate_present_one(x, y, a, center_only)
        located = grid.locate_one(x, y, a)
        if located is None:
            assert both is None
            seen.add("deferred")
            continue
        if located[0] == KIND_CLEAR:
            assert both is not None and both[:2] == located and both[2].size == 0
            seen.add("clear")
            continue
        present = grid.presence_one(x, y, a, center_only)
        if present is None:
            assert both is None
            seen.add("presence deferred")
            continue
        assert both is not None and both[:2] == located
        assert both[2].tolist() == present.tolist()
        seen.add(f"zones {min(len(present), 3)}")
    assert {"deferred", "clear", "zones 1", "zones 2"} <= seen, seen


def test_one_point_functions_hold_the_gil() -> None:
    """The single-point functions write into their tables' scratch arrays (grid._scratch):
    safe only while two threads never run them at once, that is while they hold the GIL."""
    for f in (grid_one, grid_one_present, grid_presence_one, grid_presence_zones):
        assert not f.targetoptions.get("nogil", False), f


def test_one_point_tables_keep_their_arrays_alive() -> None:
    """The single-point path's numba object holds the arrays it reads (numba does not count
    references to them): it answers after its GridIndex and zone set are gone."""
    zones = [Zone("dot", "", Category.CLINIC, shapely.Point(2.2, 48.2), radius_m=40.0)]
    zs = _zone_set(zones, 100.0)
    grid = zs.index
    assert isinstance(grid, GridIndex)
    want = grid.locate_one(2.2, 48.2, 5.0), grid.presence_one(2.2, 48.2, 5.0)
    single = grid._single
    assert single is not None  # bound by the first request
    one, presence, tables = single.one, single.presence, single.tables
    arrays = [weakref.ref(a) for a in grid._packed]
    del zs, grid
    gc.collect()
    assert all(a() is not None for a in arrays)
    assert want[0] is not None and want[0][0] == KIND_INSIDE
    assert want[1] is not None and want[1].tolist() == [0]
    assert one(2.2, 48.2, 5.0, tables) == (KIND_INSIDE << 32) | 1
    assert presence(2.2, 48.2, 5.0, False, tables) == 1  # zone 0, alone


def assert_presence_matches_exact(
    zs: ZoneSet, lon: np.ndarray, lat: np.ndarray, acc: np.ndarray, center_only: bool
) -> None:
    """Presence pairs from the cells' lists: every exact pair, and extra ones only within the
    affine map's error (centimetres) of the presence limit; nearly no point goes exact."""
    n = len(lon)
    at = np.zeros(n)
    grid, exact = zs.index, zs.exact
    assert isinstance(grid, GridIndex)
    calls: list[int] = []
    original = exact.locate

    def counting(lo: npt.NDArray[np.float64], *a: object, **k: object):  # type: ignore[no-untyped-def]
        calls.append(len(lo))
        return original(lo, *a, **k)  # type: ignore[arg-type]

    need = np.ones(n, dtype=bool)
    try:
        exact.locate = counting  # type: ignore[method-assign]
        fast = grid.locate(lon, lat, acc, at, center_only, need_presence=need)
    finally:
        del exact.locate  # type: ignore[method-assign]
    ref = exact.locate(lon, lat, acc, at, center_only)
    got = set(zip(fast.present_point.tolist(), fast.present_zone.tolist(), strict=True))
    want = set(zip(ref.present_point.tolist(), ref.present_zone.tolist(), strict=True))
    assert want and want <= got, sorted(want - got)[:5]
    extra = sorted(got - want)
    if extra:
        pts = np.array([p for p, _ in extra])
        zones = np.array([z for _, z in extra])
        parts = np.array([np.flatnonzero(exact.part_zone == z)[0] for z in zones])
        d = exact.distances(lon, lat, pts, parts)
        r = exact.radius_m[zones]
        limit = r if center_only else r + acc[pts]
        assert np.all(d <= limit * FRAME_STRETCH + 0.1), "presence recorded beyond 10 cm"
    assert len(fast.present_point) == len(got)  # one pair per (point, zone)
    # Lists hold the pieces within LIST_M: a larger circle needs the exact index.
    large = int(np.sum(acc > LIST_M))
    assert sum(calls) <= large + 0.01 * n, f"{sum(calls)} of {n} points needed the exact index"


@pytest.mark.parametrize("center_only", [False, True])
def test_grid_presence_equals_exact_presence(bundled: ZoneSet, center_only: bool) -> None:
    """Presence from the cells' lists against the exact index, on band points."""
    rng = np.random.default_rng(11)
    lon, lat, acc = band_points(bundled, rng, per_zone=40)
    assert_presence_matches_exact(bundled, lon, lat, acc, center_only)


@pytest.mark.parametrize("center_only", [False, True])
def test_presence_clearance_is_below_every_area_distance(
    bundled: ZoneSet, center_only: bool
) -> None:
    """Oracle: anywhere in a cell that is not CLEAR, a circle whose accuracy is the cell's
    presence clearance (floats[:, 0]; at most its list_valid, beyond which the list is not
    read) is present in no zone by the exact index; with center_only, any point of a cell whose
    presence clearance is >= 0. And grid_presence, which skips such points, gives the very
    pairs it gives with every presence clearance withdrawn (-1)."""
    grid, ex = bundled.index, bundled.exact
    assert isinstance(grid, GridIndex)
    rng = np.random.default_rng(5)
    fine_keys = grid.fine.table.slot_keys()
    split = fine_keys[grid.fine.ints[:, 0] == STATE_SUB]
    n = 2000
    for keys, level, per_deg, cols in (
        (fine_keys, grid.fine, FINE_PER_DEG, FINE_COLS),
        (child_keys_of(split).ravel(), grid.sub, SUB_PER_DEG, SUB_COLS),
    ):
        state, clear, valid = level.ints[:, 0], level.floats[:, 0], level.floats[:, 2]
        acc = np.minimum(clear, valid)
        cells = np.flatnonzero((state != STATE_CLEAR) & (state != STATE_SUB) & (acc >= 0.0))
        assert len(cells) > 200
        pick = rng.choice(cells, n)
        step = 1.0 / per_deg
        u = np.where(rng.random((2, n)) < 0.6, rng.random((2, n)), rng.choice([0.0, 1.0], (2, n)))
        lon = (keys[pick] % cols) * step - 180.0 + u[0] * step * (1 - 1e-12)
        lat = (keys[pick] // cols) * step - 90.0 + u[1] * step * (1 - 1e-12)
        a = np.zeros(n) if center_only else acc[pick]
        ref = ex.locate(lon, lat, a, np.zeros(n), center_only)
        assert ref.present_point.size == 0, f"{ref.present_point.size} points present"

    lon, lat, acc = band_points(bundled, rng, per_zone=40)
    ask = np.arange(len(lon), dtype=np.int64)
    packed = list(grid._packed)
    withdrawn = list(packed)
    for i in (_TABLE_FIELDS.index("f_floats"), _TABLE_FIELDS.index("s_floats")):
        floats = packed[i].copy()  # packed[i - 1]: the level's ints
        floats[packed[i - 1][:, 0] != STATE_CLEAR, 0] = -1.0
        withdrawn[i] = floats
    got = grid_presence(lon, lat, acc, ask, center_only, *packed)
    want = grid_presence(lon, lat, acc, ask, center_only, *withdrawn)
    assert len(want[0]) > 1000
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


def test_most_points_never_reach_the_exact_index(
    bundled: ZoneSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The design claim, as a count: ordinary accuracies are settled by the tables and lists."""
    rng = np.random.default_rng(1)
    n = 50_000
    lat = rng.uniform(51.48, 51.535, n)
    lon = rng.uniform(-0.21, -0.06, n)
    seen: list[int] = []
    original = bundled.exact.locate

    def counting(lo: npt.NDArray[np.float64], *a: object, **k: object):  # type: ignore[no-untyped-def]
        seen.append(len(lo))
        return original(lo, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(bundled.exact, "locate", counting)
    bundled.index.locate(lon, lat, np.full(n, 20.0), np.zeros(n))
    assert sum(seen) < 0.01 * n


def _zone_set(zones: list[Zone], buffer_m: float) -> ZoneSet:
    policy = load_policy_text(
        f'pack = "none"\n[defaults]\nbuffer_m = {buffer_m}\nlookback_days = 30\n', "<t>"
    )
    return ZoneSet.compile(zones, policy, "t")


def test_special_zones_go_exact() -> None:
    """Temporary zones, zones across tile edges and huge zones keep exact answers."""
    zones = [
        Zone(
            "rally",
            "",
            Category.ASSEMBLY,
            shapely.box(2.0, 48.0, 2.001, 48.001),
            valid_from=100.0,
            valid_until=200.0,
        ),
        Zone("edge", "", Category.COURT, shapely.box(2.4995, 48.4995, 2.5005, 48.5005)),
        Zone("base", "", Category.MILITARY, shapely.box(3.0, 47.0, 3.6, 47.4)),
        Zone("dot", "", Category.CLINIC, shapely.Point(2.2, 48.2), radius_m=40.0),
    ]
    zs = _zone_set(zones, 300.0)
    rng = np.random.default_rng(3)
    n = 40_000
    lon = rng.uniform(1.99, 3.7, n)
    lat = rng.uniform(46.9, 48.6, n)
    acc = rng.choice(ACCURACIES, n)
    assert isinstance(zs.index, GridIndex)
    for at in (150.0, 250.0):
        fast = zs.index.locate(lon, lat, acc, np.full(n, at))
        ref = zs.exact.locate(lon, lat, acc, np.full(n, at))
        assert np.array_equal(fast.kind, ref.kind)
    assert zs.index.stats()["forced_boxes"] >= 1  # the 45 km base is left to the exact index


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-1, 40), max_size=300), st.sampled_from([None, 259_199, 1 << 40]))
def test_groups_equal_a_scan_per_key(values: list[int], scale: int | None) -> None:
    """groups() gives the groups a flatnonzero scan per unique key gives, in the same order."""
    keys = np.array(values, dtype=np.int64) * (scale or 1)
    got = [(k, sel.tolist()) for k, sel in groups(keys)]
    want = [(int(k), np.flatnonzero(keys == k).tolist()) for k in np.unique(keys)]
    assert got == want
    for _, sel in groups(keys):
        assert sel.dtype == np.int64


_MAGNITUDES = st.one_of(
    st.floats(-3e5, 3e5), st.sampled_from([0.0, -1.0, 60.0, np.inf, 1e-30, 123456.789])
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_MAGNITUDES, min_size=1, max_size=50))
def test_float32_thresholds_round_outward_to_the_nearest_float32(values: list[float]) -> None:
    """f32_down gives the largest float32 at most v, f32_up the smallest at least v."""
    v = np.array(values)
    down, up = f32_down(v), f32_up(v)
    assert down.dtype == up.dtype == np.float32
    assert (down.astype(np.float64) <= v).all() and (up.astype(np.float64) >= v).all()
    finite = np.isfinite(v)
    assert (np.nextafter(down, np.float32(np.inf))[finite].astype(np.float64) > v[finite]).all()
    assert (np.nextafter(up, np.float32(-np.inf))[finite].astype(np.float64) < v[finite]).all()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-3e5, 3e5), min_size=6, max_size=6),
    st.floats(0.0, 2.0),
    st.floats(-0.5, 0.5),
    st.floats(-0.5, 0.5),
)
def test_float32_maps_widen_their_error_by_what_rounding_moves(
    values: list[float], err: float, u: float, v: float
) -> None:
    """Anywhere in a fine cell, the stored (float32) map lands within err32 - err of the map
    as computed: so err32 bounds the stored map's distance from the true projection."""
    cx, cy = np.array(values[:1]), np.array(values[1:2])
    jac = np.array([values[2:]])
    cx32, cy32, jac32, err32 = _float32_map(cx, cy, jac, np.array([err]))
    for a in (cx32, cy32, jac32, err32):
        assert np.array_equal(a.astype(np.float32), a)  # float32 holds them exactly
    dl, dt = u * FINE_STEP, v * FINE_STEP
    x, y = cx + jac[:, 0] * dl + jac[:, 1] * dt, cy + jac[:, 2] * dl + jac[:, 3] * dt
    x32 = cx32 + jac32[:, 0] * dl + jac32[:, 1] * dt
    y32 = cy32 + jac32[:, 2] * dl + jac32[:, 3] * dt
    assert np.hypot(x32 - x, y32 - y)[0] <= err32[0] - err + 1e-9


def test_stored_frames_bound_their_error_from_the_true_projection(bundled: ZoneSet) -> None:
    """At the corners and inside a listed fine cell, the kernels' float32 map is within the
    frame's stored error of pyproj's projection: the bound every shortcut adds."""
    grid, ex = bundled.index, bundled.exact
    assert isinstance(grid, GridIndex)
    fine = grid.fine
    keys = fine.table.slot_keys()
    cell = np.repeat(np.arange(len(keys)), fine.ints[:, 4] - fine.ints[:, 3])
    tile = ex.part_tile[fine.entries[:, 0]]
    rng = np.random.default_rng(17)
    pick = rng.choice(np.flatnonzero(tile != INTERIOR), 4000)
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    uv = np.concatenate([corners[rng.integers(0, 4, 2000)], rng.uniform(-0.5, 0.5, (2000, 2))])
    key, combo = keys[cell[pick]], fine.combos[fine.entries[pick, 1]].astype(np.float64)
    dl, dt = uv[:, 0] * FINE_STEP, uv[:, 1] * FINE_STEP
    lon = (key % FINE_COLS) * FINE_STEP - 180.0 + FINE_STEP / 2 + dl
    lat = (key // FINE_COLS) * FINE_STEP - 90.0 + FINE_STEP / 2 + dt
    x = combo[:, 0] + combo[:, 2] * dl + combo[:, 3] * dt
    y = combo[:, 1] + combo[:, 4] * dl + combo[:, 5] * dt
    gap = np.empty(len(pick))
    for t, sel in groups(tile[pick]):
        tx, ty = ex.frames.forward(int(t), lon[sel], lat[sel])
        gap[sel] = np.hypot(x[sel] - tx, y[sel] - ty)
    assert (gap <= combo[:, 6]).all()
    assert gap.max() > 0.0


def test_projecting_distinct_corners_once_changes_no_bit() -> None:
    """_forward_distinct equals projecting every pair: cell corners as _frames makes them."""
    rng = np.random.default_rng(11)
    step = 1.0 / FINE_PER_DEG
    n = 3_000
    lon0 = (rng.integers(0, 40, n) + 2.0 * FINE_PER_DEG + 180 * FINE_PER_DEG) * step - 180.0
    lat0 = (rng.integers(0, 40, n) + 48.0 * FINE_PER_DEG + 90 * FINE_PER_DEG) * step - 90.0
    lons = np.concatenate([lon0 + step / 2, lon0, lon0 + step, lon0 + step, lon0])
    lats = np.concatenate([lat0 + step / 2, lat0, lat0, lat0 + step, lat0 + step])
    frames = Frames()
    key = int(tile_key(lon0[0], lat0[0]))
    x, y = _forward_distinct(frames, key, lons, lats)
    ref_x, ref_y = frames.forward(key, lons, lats)
    assert x.tobytes() == ref_x.tobytes()
    assert y.tobytes() == ref_y.tobytes()
    assert len(np.unique(lons + 1j * lats)) < len(lons) / 2  # corners were shared


@pytest.mark.parametrize("threads", [2, 3])
def test_frames_on_threads_equal_frames_on_one(
    bundled: ZoneSet, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_frames measures its tile batches on threads: the same frames, bit for bit, as one
    thread, with batches small enough that several tiles and batches run at once."""
    ex = bundled.exact
    rng = np.random.default_rng(5)
    centre = np.array([z.geometry.centroid.coords[0] for z in bundled.zones])
    pick = rng.integers(0, len(centre), 4000)
    step = 1.0 / FINE_PER_DEG
    lon0 = np.floor((centre[pick, 0] + 180.0) * FINE_PER_DEG) * step - 180.0
    lat0 = np.floor((centre[pick, 1] + 90.0) * FINE_PER_DEG) * step - 90.0
    tiles = tile_key(lon0 + step / 2, lat0 + step / 2).astype(np.int64)
    assert len(np.unique(tiles)) > 5
    monkeypatch.setattr(grid_module, "FRAME_BATCH", 100)
    monkeypatch.setattr(grid_module, "FRAME_THREADS", 1)
    one = grid_module._frames(ex, lon0, lat0, step, tiles)
    monkeypatch.setattr(grid_module, "FRAME_THREADS", threads)
    monkeypatch.setattr(grid_module, "FRAME_THREADS_MIN_CELLS", 1)
    heard: list[str] = []
    forward = ex.frames.forward

    def spy(*args: Any) -> Any:
        heard.append(threading.current_thread().name)
        return forward(*args)

    monkeypatch.setattr(ex.frames, "forward", spy)
    many = grid_module._frames(ex, lon0, lat0, step, tiles)
    assert any(name.startswith("geofence-frames") for name in heard)
    for field in ("cx", "cy", "jac", "err", "half_diag"):
        assert getattr(many, field).tobytes() == getattr(one, field).tobytes(), field


def test_presence_in_blocks_equals_one_pass(
    bundled: ZoneSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """locate with presence runs kernel and presence a block at a time: the same answers as
    one pass over the batch, whatever the block (one that splits every list, a partial last)."""
    rng = np.random.default_rng(9)
    n = 20_000
    centre = np.array([z.geometry.centroid.coords[0] for z in bundled.zones])
    pick = rng.integers(0, len(centre), n)
    lat = centre[pick, 1] + rng.uniform(-300, 300, n) / M_PER_DEG_LAT_MIN
    m_per_deg_lon = M_PER_DEG_LAT_MIN * np.cos(np.radians(lat))
    lon = centre[pick, 0] + rng.uniform(-300, 300, n) / m_per_deg_lon
    acc = rng.choice([0.0, 5.0, 20.0, 150.0], n)
    need = rng.random(n) < 0.8
    grid = bundled.index
    assert isinstance(grid, GridIndex)
    monkeypatch.setattr(grid_module, "PRESENCE_BLOCK", 10**9)
    whole = grid.locate(lon, lat, acc, np.zeros(n), False, need_presence=need)
    assert len(whole.present_point) > 1000
    for block in (7, 1500):
        monkeypatch.setattr(grid_module, "PRESENCE_BLOCK", block)
        got = grid.locate(lon, lat, acc, np.zeros(n), False, need_presence=need)
        for field in ("kind", "zone", "present_point", "present_zone"):
            assert np.array_equal(getattr(got, field), getattr(whole, field)), (block, field)


def test_frames_in_batches_change_no_bit(
    bundled: ZoneSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_frames projects a tile's cells a batch at a time: the same frames as all at once."""
    ex = bundled.exact
    rng = np.random.default_rng(3)
    tiles = rng.choice(np.unique(ex.part_tile), 4000)
    lon_c, lat_c = np.array([tile_center(int(t)) for t in tiles]).T
    step = 1.0 / FINE_PER_DEG
    lon0 = np.floor((lon_c + rng.uniform(-0.25, 0.25, len(tiles))) / step) * step
    lat0 = np.floor((lat_c + rng.uniform(-0.25, 0.25, len(tiles))) / step) * step
    whole = grid_module._frames(ex, lon0, lat0, step, tiles)
    monkeypatch.setattr(grid_module, "FRAME_BATCH", 7)
    batched = grid_module._frames(ex, lon0, lat0, step, tiles)
    for name in ("cx", "cy", "jac", "err", "half_diag"):
        assert getattr(whole, name).tobytes() == getattr(batched, name).tobytes(), name


@pytest.mark.extended
@pytest.mark.shared
def test_grid_equals_exact_a_million_band_points(shared_data: Path) -> None:
    """Extended profile (-m extended): 1M points around the London places of worship."""
    shp = shared_data / "zones" / "london_osm_pofw_a" / "gis_osm_pofw_a_free_1.shp"
    geoms = pyogrio.read_dataframe(shp).geometry.values
    zones = [Zone(f"z{i}", "", Category.PLACE_OF_WORSHIP, g) for i, g in enumerate(geoms)]
    zs = _zone_set(zones, 150.0)
    lon, lat, acc = band_points(zs, np.random.default_rng(5), per_zone=470)
    assert len(lon) >= 1_000_000
    assert isinstance(zs.index, GridIndex)
    assert_grid_matches_exact(zs.index, zs.exact, lon, lat, acc)
    # Presence too, on a fifth of them (the exact index's presence is slow).
    fifth = slice(0, None, 5)
    assert_presence_matches_exact(zs, lon[fifth], lat[fifth], acc[fifth], center_only=False)


# --- the coarse table --------------------------------------------------------------------------


def _build_coarse_pairwise(
    ex: ExactIndex, max_accuracy_m: float, big: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The coarse table as it was built before the bitmap: every (piece, cell) pair listed, then
    np.unique, and all cells measured at once by an STRtree's nearest box. Kept as the
    reference the build must equal (its distances, up to their cap)."""
    boxes, (r0, r1, c0, c1), (mlon, _) = coarse_reach(ex, np.flatnonzero(~big), max_accuracy_m)
    twins = _with_antimeridian_twins(boxes, mlon)
    _, key = _cells_of_boxes(r0, r1, c0, c1, COARSE_COLS)
    keys = np.unique(key)
    step = 1.0 / COARSE_PER_DEG
    lat0 = (keys // COARSE_COLS) * step - 90.0
    lon0 = (keys % COARSE_COLS) * step - 180.0
    tree = shapely.STRtree(np.asarray(shapely.box(*twins.T), dtype=object))
    cells = shapely.box(lon0, lat0, lon0 + step, lat0 + step)
    _, dist_deg = tree.query_nearest(cells, return_distance=True, all_matches=False)
    worst = np.minimum(np.maximum(np.abs(lat0), np.abs(lat0 + step)) + 0.01, 90.0)
    scale = np.minimum(M_PER_DEG_LAT_MIN, 111_319.0 * np.cos(np.radians(worst))) / 1.01
    return keys, dist_deg * scale - 1.0


def _edge_zone_set() -> ZoneSet:
    """Zones by the antimeridian, far north and far south, where boxes wrap or span the globe."""
    zones = [
        Zone("east", "", Category.CLINIC, shapely.box(179.95, -16.80, 179.999, -16.79)),
        Zone("west", "", Category.CLINIC, shapely.box(-179.999, -16.70, -179.98, -16.69)),
        Zone("north", "", Category.SCHOOL_CHILDCARE, shapely.box(20.0, 84.90, 20.01, 84.905)),
        Zone("dot", "", Category.CLINIC, shapely.Point(179.9, 10.0), radius_m=40.0),
        Zone("paris", "", Category.COURT, shapely.box(2.35, 48.85, 2.352, 48.851)),
    ]
    return _zone_set(zones, 300.0)


def test_coarse_keys_equal_every_pair_listed() -> None:
    """The bitmap marks the same cells as listing every (box, cell) pair, wraps included."""
    rng = np.random.default_rng(11)
    n = 3000
    r0 = rng.integers(0, COARSE_ROWS, n)
    r1 = np.minimum(r0 + rng.integers(0, 30, n), COARSE_ROWS - 1)
    c0 = rng.integers(-2 * COARSE_PER_DEG, COARSE_COLS + COARSE_PER_DEG, n)
    width = rng.integers(1, 40, n)
    width[:5] = [COARSE_COLS - 1, COARSE_COLS, COARSE_COLS + 1, 2 * COARSE_COLS + 7, 64]
    c1 = c0 + width - 1
    r0[:3], r1[:3] = 0, [0, 3, 1]
    r0[5:8], r1[5:8] = [0, COARSE_ROWS - 5, 0], COARSE_ROWS - 1  # width < 40: few pairs
    got = _coarse_keys(r0, r1, c0, c1)
    assert np.array_equal(got, np.unique(_cells_of_boxes(r0, r1, c0, c1, COARSE_COLS)[1]))
    assert len(_coarse_keys(r0[:0], r1[:0], c0[:0], c1[:0])) == 0


@pytest.mark.parametrize("which", ["bundled", "edges"])
def test_coarse_table_equals_the_pairwise_build(
    bundled: ZoneSet, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same cells as the pairwise build the bitmap replaced, and the same clearances (the
    STRtree's nearest box) wherever they could clear an accuracy the engine judges; beyond,
    never more, so a cap can only send a point to the exact index."""
    zs = bundled if which == "bundled" else _edge_zone_set()
    ex = zs.exact
    big = _big_parts(ex)
    max_acc = zs.policy.requests.max_accuracy_m
    keys, clearance = _build_coarse_pairwise(ex, max_acc, big)
    assert isinstance(zs.index, GridIndex)
    assert np.array_equal(zs.index.coarse.slot_keys(), keys)
    got = zs.index.coarse_clearance
    assert np.all(got <= clearance + 1e-6)
    # Up to 0.9 max_accuracy_m: far from the equator the cap falls a few percent below it
    # (~9.3 km by the edge set's zone at 84.9 degrees), which defers a point, never clears it.
    judged = clearance <= 0.9 * max_acc
    assert judged.sum() > 1000  # (the polar rows of the edge set are mostly far from all)
    np.testing.assert_allclose(got[judged], clearance[judged], rtol=0, atol=1e-6)
    # And in bands of a few rows, so band borders are crossed: the same values.
    monkeypatch.setattr("geofence.grid.COARSE_BAND_ROWS", 3)
    table, banded = _build_coarse(ex, max_acc, big)
    assert np.array_equal(table.slot_keys(), keys)
    assert banded.tobytes() == got.tobytes()


def _level_bytes(fine: Level, sub: Level) -> dict[str, bytes]:
    """Every array of both levels (tables included), as bytes with their dtype and shape."""
    out = {}
    for name, level in (("fine", fine), ("sub", sub)):
        fields = ("table", "ints", "floats", "entries", "combos")
        for field, a in zip(fields, (level.table.array, *level.packed()[1:]), strict=True):
            out[f"{name}.{field}"] = f"{a.dtype}{a.shape}".encode() + a.tobytes()
    return out


@pytest.mark.parametrize("which", ["bundled", "edges"])
@pytest.mark.parametrize("tight", [False, True])
def test_fine_cells_classified_in_chunks_equal_one_chunk(
    bundled: ZoneSet, which: str, tight: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Classifying cells in chunks (fine rows, split cells) changes no bit of either level.

    A small budget makes the choice of cells to split span chunks (it must pick the same ones).
    """
    zs = bundled if which == "bundled" else _edge_zone_set()
    ex = zs.exact
    flat = ex.flat
    big = _big_parts(ex)
    monkeypatch.setattr("geofence.grid.CHUNK_PAIRS", 1 << 40)
    whole_fine, whole_sub = _build_levels(ex, flat, big)
    n_split = int(np.count_nonzero(whole_fine.state == STATE_SUB))
    assert 0 < n_split * SUB * SUB < SUB_PAIR_BUDGET  # cells split, and room for all of them
    if tight:  # a budget for about half of those cells' subcells: it leaves some whole
        monkeypatch.setattr("geofence.grid.SUB_PAIR_BUDGET", n_split * SUB * SUB // 2)
        whole_fine, whole_sub = _build_levels(ex, flat, big)
        assert 0 < np.count_nonzero(whole_fine.state == STATE_SUB) < n_split
    whole = _level_bytes(whole_fine, whole_sub)
    calls = 0
    classify = grid_module._classify

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return classify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("geofence.grid._classify", counting)
    # 1: a fine row, or a split cell, at a time; 300: a few rows, or five split cells.
    for size in (1, 300):
        monkeypatch.setattr("geofence.grid.CHUNK_PAIRS", size)
        calls = 0
        chunked = _level_bytes(*_build_levels(ex, flat, big))
        assert calls > (100 if which == "bundled" else 3) // size  # many chunks
        assert chunked.keys() == whole.keys()
        for name, value in whole.items():
            assert chunked[name] == value, (size, name)


def test_build_reports_every_stage_to_its_end(
    bundled: ZoneSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compile's progress: each stage in order, moving forward chunk by chunk to its total;
    and reporting changes no table."""
    ex = bundled.exact
    max_acc = bundled.policy.requests.max_accuracy_m
    quiet = GridIndex(ex, max_acc)
    monkeypatch.setattr("geofence.grid.CHUNK_PAIRS", 3000)
    monkeypatch.setattr("geofence.grid.COARSE_BAND_ROWS", 2)
    heard: list[tuple[str, int, int]] = []
    grid = GridIndex(ex, max_acc, progress=lambda *args: heard.append(args))
    stages = list(dict.fromkeys(stage for stage, _, _ in heard))
    assert stages == ["coarse cells", "fine cells", "subcells"]
    for stage in stages:
        done = [d for s, d, _ in heard if s == stage]
        totals = {t for s, _, t in heard if s == stage}
        assert len(done) > 2, stage  # several chunks, each reported
        assert len(totals) == 1 and done[-1] == totals.pop() > 0, stage
        assert all(a < b for a, b in itertools.pairwise(done)), stage
    assert _level_bytes(grid.fine, grid.sub) == _level_bytes(quiet.fine, quiet.sub)
    assert np.array_equal(grid.coarse_clearance, quiet.coarse_clearance)


@pytest.mark.parametrize("which", ["bundled", "edges"])
def test_coarse_clearance_is_below_every_true_distance(bundled: ZoneSet, which: str) -> None:
    """Oracle: anywhere in a coarse cell that clears anything (clearance >= 0), every zone's
    reach is at least the clearance away, and the exact index clears a point there whose
    accuracy is the clearance.

    Distances are the exact index's, in each piece's tile frame: true near the tile, distorted
    hundreds of km away, so they are compared only below 50 km (clearances are capped at about
    max_accuracy_m + 1 km); the exact index is asked up to 30 km,
    past any accuracy the engine passes (max_accuracy_m, or an IP circle of 25 km)."""
    zs = bundled if which == "bundled" else _edge_zone_set()
    ex = zs.exact
    assert isinstance(zs.index, GridIndex)
    keys = zs.index.coarse.slot_keys()
    clearance = zs.index.coarse_clearance
    rng = np.random.default_rng(7)
    n = 1500
    # Half of the cells anywhere, half among those below 0.9 max_accuracy_m: the rest are
    # capped near max_accuracy_m (_build_coarse), and the edge set's polar rows, which span the
    # globe, are mostly far from every zone.
    close = np.flatnonzero(clearance < 0.9 * zs.policy.requests.max_accuracy_m)
    pick = np.concatenate([rng.integers(0, len(keys), n // 2), rng.choice(close, n - n // 2)])
    step = 1.0 / COARSE_PER_DEG
    # Corners and edges of cells as well as their insides: the bound is for every point.
    u = np.where(rng.random((2, n)) < 0.6, rng.random((2, n)), rng.choice([0.0, 1.0], (2, n)))
    lon = (keys[pick] % COARSE_COLS) * step - 180.0 + u[0] * step * (1 - 1e-12)
    lat = (keys[pick] // COARSE_COLS) * step - 90.0 + u[1] * step * (1 - 1e-12)
    c = clearance[pick]
    parts = np.flatnonzero(~_big_parts(ex))
    pts, prt = np.repeat(np.arange(n), len(parts)), np.tile(parts, n)
    z = ex.part_zone[prt]
    margin = ex.distances(lon, lat, pts, prt) - ex.radius_m[z] - ex.buffer_m[z]
    worst = np.full(n, np.inf)
    np.minimum.at(worst, pts, margin)
    checked = (c >= 0.0) & (worst < 50_000.0)
    assert checked.sum() > n // 4
    bad = checked & (c > worst)
    assert not bad.any(), f"clearance above the true distance at {bad.sum()} points"
    ok = c >= 0.0
    acc = np.minimum(c[ok], 30_000.0)
    ref = ex.locate(lon[ok], lat[ok], acc, np.zeros(int(ok.sum())))
    assert np.all(ref.kind == KIND_CLEAR)


def test_points_outside_the_coarse_table_are_clear_at_max_accuracy(bundled: ZoneSet) -> None:
    """The kernel allows a point in a coarse cell the table lacks (and no fine cell stores)
    at any accuracy: the exact index must agree at max_accuracy_m in the cells just outside."""
    zs = bundled.index
    assert isinstance(zs, GridIndex)
    keys = zs.coarse.slot_keys()
    rows, cols = keys // COARSE_COLS, keys % COARSE_COLS
    ring = np.unique(
        np.concatenate(
            [(rows + dr) * COARSE_COLS + (cols + dc) % COARSE_COLS for dr in (-1, 0, 1)
             for dc in (-1, 0, 1)]
        )
    )  # fmt: skip
    ring = np.setdiff1d(ring, keys)
    assert ring.size > 0
    rng = np.random.default_rng(9)
    n = 20_000
    pick = rng.integers(0, len(ring), n)
    step = 1.0 / COARSE_PER_DEG
    lon = (ring[pick] % COARSE_COLS + rng.random(n)) * step - 180.0
    lat = (ring[pick] // COARSE_COLS + rng.random(n)) * step - 90.0
    acc = np.full(n, bundled.policy.requests.max_accuracy_m)
    ref = bundled.exact.locate(lon, lat, acc, np.zeros(n))
    assert np.all(ref.kind == KIND_CLEAR)
    # And the grid answers like the exact index at every accuracy up to the largest, in the
    # table's cells and just outside them.
    inside = rng.integers(0, len(keys), n)
    lon2 = (keys[inside] % COARSE_COLS + rng.random(n)) * step - 180.0
    lat2 = (keys[inside] // COARSE_COLS + rng.random(n)) * step - 90.0
    acc2 = rng.uniform(0.0, bundled.policy.requests.max_accuracy_m, 2 * n)
    assert_grid_matches_exact(
        zs, bundled.exact, np.concatenate([lon, lon2]), np.concatenate([lat, lat2]), acc2
    )


def test_circles_wider_than_the_tables_were_built_for_go_exact(tmp_path: Path) -> None:
    """An IP fix judged as a circle (ip_accuracy_m 25 km) exceeds max_accuracy_m (10 km), for
    which the coarse table and forced boxes were built: the grid must not clear it, compiled or
    loaded from a .gfz, and the engine rejects it near a zone, small or wide."""
    policy = load_policy_text(
        'pack = "none"\n[defaults]\nbuffer_m = 100\nlookback_days = 30\n'
        '[requests]\nip_location = "circle"\n',
        "<t>",
    )
    assert policy.requests.ip_accuracy_m > policy.requests.max_accuracy_m
    zones = [
        Zone("clinic", "", Category.CLINIC, shapely.box(2.0, 48.0, 2.001, 48.001)),
        # Wide enough for forced boxes (over 20 km), whose margin is max_accuracy_m.
        Zone("wide", "", Category.SCHOOL_CHILDCARE, shapely.box(1.0, 47.0, 1.4, 47.3)),
    ]
    zs = ZoneSet.compile(zones, policy, "t")
    east = np.array([15_000.0, 20_000.0, 24_000.0, 40_000.0])
    lon = np.append(2.0005 + east / (111_320 * np.cos(np.radians(48.0))), 1.2)
    lat = np.append(np.full(len(east), 48.0005), 47.3 + 15_000 / 111_000)  # 15 km north of wide
    acc, at = np.full(len(lon), policy.requests.ip_accuracy_m), np.zeros(len(lon))
    want = zs.exact.locate(lon, lat, acc, at).kind
    assert want.tolist() == [KIND_NEAR, KIND_NEAR, KIND_NEAR, KIND_CLEAR, KIND_NEAR]
    assert zs.index.locate(lon, lat, acc, at).kind.tolist() == want.tolist()
    engine = Engine(zs)
    engine.save(tmp_path / "z.gfz")
    loaded = Engine.load(tmp_path / "z.gfz")
    for e in (engine, loaded):
        got = [e.check_location(a, o, source="ip").reason for a, o in zip(lat, lon, strict=True)]
        near, allowed = Reason.NEAR_ZONE, Reason.ALLOWED
        assert got == [near, near, near, allowed, near]
        assert e.zone_set.index.locate(lon, lat, acc, at).kind.tolist() == want.tolist()


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_circles_across_the_antimeridian_reach_zones_on_the_other_side(side: float) -> None:
    """A zone at 179.94-179.95 E (Taveuni, Fiji) and fixes at 179.99 W: a 9 km circle reaches it
    across the antimeridian (about 6.3 km beyond its 100 m buffer), a 6 km one does not; the
    mirror image likewise. Exact and grid agree."""
    zone = shapely.box(side * 179.94, -16.801, side * 179.95, -16.8)
    zs = _zone_set([Zone("taveuni", "", Category.CLINIC, zone)], 100.0)
    lon = np.array([-179.99, -179.99, 179.99, -179.9999]) * side
    lat = np.full(len(lon), -16.8)
    acc, at = np.array([9000.0, 6000.0, 9000.0, 7000.0]), np.zeros(len(lon))
    want = [KIND_NEAR, KIND_CLEAR, KIND_NEAR, KIND_NEAR]
    assert zs.exact.locate(lon, lat, acc, at).kind.tolist() == want
    assert zs.index.locate(lon, lat, acc, at).kind.tolist() == want
    for i in range(len(lon)):
        engine_reason = Engine(zs).check_location(lat[i], lon[i], acc[i]).reason
        assert engine_reason is (Reason.ALLOWED if want[i] == KIND_CLEAR else Reason.NEAR_ZONE)


def test_hash_table_finds_every_key_and_refuses_keys_it_cannot_pack() -> None:
    """Packed entries (key and slot in one int64): each key finds its slot, others find none."""
    rng = np.random.default_rng(5)
    # Distinct keys in random order, the smallest and largest a table holds among them.
    drawn = np.concatenate([rng.integers(0, 1 << KEY_BITS, 50_000), [0, (1 << KEY_BITS) - 1]])
    keys = rng.permutation(np.unique(drawn)).astype(np.int64)
    table = HashTable(keys)
    assert np.array_equal(table.slot_keys(), keys)
    size = len(table.array)
    assert len(keys) / size == pytest.approx(LOAD, rel=1e-4)
    found = [find(table.array, size, k) for k in keys[:2000].tolist()]
    assert found == list(range(2000))
    absent = np.setdiff1d(rng.integers(0, 1 << KEY_BITS, 2000), keys)
    assert all(find(table.array, size, k) == -1 for k in absent.tolist())
    for bad in ([-1], [1 << KEY_BITS]):
        with pytest.raises(ValueError):
            HashTable(np.array(bad, dtype=np.int64))


def test_hash_table_probes_wrap_around_the_end() -> None:
    """Keys whose first probe is the last entry spill over to the table's start, and are found."""
    n = 3
    size = len(HashTable(np.arange(n, dtype=np.int64)).array)
    last = [k for k in range(200_000) if _hash(np.int64(k), np.int64(size)) == size - 1]
    keys, absent = np.array(last[:n], dtype=np.int64), last[n]
    table = HashTable(keys)
    assert len(table.array) == size
    assert (table.array[: n - 1] != EMPTY_KEY).all()  # two of the three wrapped around
    assert [find(table.array, np.int64(size), k) for k in keys.tolist()] == [0, 1, 2]
    assert find(table.array, np.int64(size), absent) == -1


def test_fine_level_keeps_only_the_frames_lists_name(bundled: ZoneSet) -> None:
    """Every frame the fine level keeps is read by some fine or sub list entry."""
    assert isinstance(bundled.index, GridIndex)
    fine, sub = bundled.index.fine, bundled.index.sub
    named = np.zeros(len(fine.combos), dtype=bool)
    named[fine.entries[:, 1]] = True
    named[sub.entries[:, 1]] = True
    assert len(sub.entries) and named.all()


def test_built_pieces_hand_the_kernels_their_own_coordinates(bundled: ZoneSet) -> None:
    """The kernels get FlatParts' own (2, n) coordinates (no copy); xs and ys are its rows."""
    grid = bundled.index
    assert isinstance(grid, GridIndex)
    flat = grid.flat
    assert any(a is flat.xy for a in grid._packed)
    assert np.shares_memory(flat.xy, flat.xs) and np.shares_memory(flat.xy, flat.ys)
    assert flat.xy.shape == (2, len(flat.xs)) and flat.xy.flags.c_contiguous


def test_piece_rows_measure_every_kind_of_piece_as_point_distance() -> None:
    """A piece's row (box, radius, reach, zone, coordinates' span) gives the distance
    `point_distance` gives, on the fast path (one ring, a point) and the fallback (holes,
    several rings, a ring over CODE_COUNT coordinates); rows start on cache lines."""
    ring = np.column_stack([np.cos(t := np.linspace(0, 2 * np.pi, 70_000)), np.sin(t)]) * 500
    geoms = np.array(
        [
            shapely.box(0, 0, 100, 60),
            shapely.Point(30, -40),
            shapely.box(-200, -200, 200, 200).difference(shapely.box(-50, -50, 50, 50)),
            shapely.Polygon(ring[:-1]),  # over CODE_COUNT coordinates
        ],
        dtype=object,
    )
    flat = FlatParts.build(geoms)
    part_zone = np.array([3, 0, 1, 2], dtype=np.int64)
    radius, buffer = np.array([5.0, 0.0, 7.5, 0.0]), np.array([100.0, 150.0, 304.8, 50.0])
    rows = _piece_rows(flat, part_zone, radius, buffer)
    assert rows.ctypes.data % 64 == 0 and rows.shape == (4, grid_module.ROW_WIDTH)
    assert rows[:, grid_module.ROW_ZONE].tolist() == part_zone.tolist()
    assert rows[:, grid_module.ROW_R].tolist() == radius[part_zone].tolist()
    assert rows[:, grid_module.ROW_REACH].tolist() == (radius + buffer)[part_zone].tolist()
    assert rows[:, :4].tolist() == shapely.bounds(geoms).tolist()
    code = rows[:, grid_module.ROW_CODE]
    assert (code >= 0).tolist() == [True, True, False, False]  # the hole, the huge ring: -1
    first = flat.coord_start[flat.ring_start[:2]]
    count = np.diff(flat.coord_start[flat.ring_start[:3]])
    assert code[:2].tolist() == (first * 2.0**grid_module.CODE_SHIFT + count).tolist()
    rng = np.random.default_rng(3)
    points = np.vstack([rng.uniform(-600, 600, (400, 2)), [[0, 0], [10, 10], [100, 30]]])
    for p in range(len(geoms)):
        for x, y in points:
            want = point_distance(
                x, y, p, flat.is_point, flat.ring_start, flat.coord_start, flat.xs, flat.ys
            )[0]
            got = _piece_distance(x, y, p, rows, flat.ring_start, flat.coord_start, flat.xs,
                                  flat.ys)  # fmt: skip
            assert got == want, (p, x, y)


@pytest.mark.parametrize("center_only", [False, True])
def test_presence_told_by_the_kernel_equals_grid_presence(
    bundled: ZoneSet, monkeypatch: pytest.MonkeyPatch, center_only: bool
) -> None:
    """The kernel tells the presence of the points its lists settle, grid_presence the others:
    the very answers and pairs that grid_presence alone gives (no room for pairs in the
    kernel), whatever the room (some lists overflow it) and the block."""
    rng = np.random.default_rng(21)
    lon, lat, acc = band_points(bundled, rng, per_zone=30)
    n = len(lon)
    acc[::13] = 150.0  # beyond some lists' validity: the exact index
    need = rng.random(n) < 0.9
    grid = bundled.index
    assert isinstance(grid, GridIndex)

    asked: list[int] = []  # points grid_presence was asked about, per locate
    presence = grid_module.grid_presence

    def counting(*a: Any) -> Any:  # (lon, lat, acc, points, ...)
        asked[-1] += len(a[3])
        return presence(*a)

    monkeypatch.setattr(grid_module, "grid_presence", counting)

    def located(per_point: int, block: int) -> tuple[np.ndarray, ...]:
        monkeypatch.setattr(grid_module, "PRESENCE_PAIRS_PER_POINT", per_point)
        monkeypatch.setattr(grid_module, "PRESENCE_BLOCK", block)
        asked.append(0)
        got = grid.locate(lon, lat, acc, np.zeros(n), center_only, need_presence=need)
        return got.kind, got.zone, got.present_point, got.present_zone

    alone = located(0, 4096)
    assert len(alone[2]) > 1000 and len(np.unique(alone[2])) < len(alone[2])  # some in 2 zones
    for per_point, block in ((4, 4096), (1, 4096), (4, 7), (64, 10**6)):
        got = located(per_point, block)
        for name, g, w in zip(("kind", "zone", "point", "zone present"), got, alone, strict=True):
            assert np.array_equal(g, w), (per_point, block, name)
    # The kernel told the points its lists settle (here about half of those asked about; the
    # rest lie in cells a state settles), and a block of 7 (room for 28 pairs) overflowed.
    assert asked[1] < 0.6 * asked[0] and asked[1] == asked[4] < asked[3] < asked[0], asked


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(-3, 3), max_size=8), min_size=1, max_size=6),
    st.randoms(use_true_random=False),
)
def test_nearest_first_sorts_each_list_by_distance_less_reach(
    lists: list[list[int]], rnd: Any
) -> None:
    """Within each cell's span: a permutation of its pairs, by distance - reach, ties in pair
    order; no pair leaves its cell's span."""
    counts = [len(x) for x in lists]
    n = sum(counts)
    list_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    order = np.arange(n, dtype=np.int64)
    rnd.shuffle(order)  # the pairs of a cell need not be in pair order, nor contiguous numbers
    pair_part = np.arange(n, dtype=np.int64)[::-1].copy()
    part_zone = (np.arange(n, dtype=np.int64) * 7) % max(n, 1)
    radius_m = np.zeros(max(n, 1))
    buffer_m = np.array([rnd.choice([0.0, 1.0]) for _ in range(max(n, 1))])
    d = np.zeros(n)
    for j, v in enumerate(itertools.chain.from_iterable(lists)):
        d[order[j]] = float(v)
    before = order.copy()
    _nearest_first(order, list_start, d, pair_part, part_zone, radius_m, buffer_m)
    key = d - buffer_m[part_zone[pair_part]]
    for a, b in itertools.pairwise(list_start.tolist()):
        expected = sorted(before[a:b].tolist(), key=lambda i: key[i])  # stable: ties keep order
        assert order[a:b].tolist() == expected


def test_fine_lists_are_nearest_piece_first(bundled: ZoneSet) -> None:
    """A compiled fine cell lists its pieces by their distance from its centre less their
    zone's reach (the order list points measure them in), the distance as the kernel takes it."""
    grid = bundled.index
    assert isinstance(grid, GridIndex)
    prow, fl = grid._packed[-1], grid.flat
    ints, entries, combos = grid.fine.ints, grid.fine.entries, grid.fine.combos
    longer = np.flatnonzero(ints[:, 4] - ints[:, 3] >= 2)
    assert len(longer) > 100
    for c in longer[:: max(1, len(longer) // 1500)]:
        span = entries[ints[c, 3] : ints[c, 4]]
        key = [
            _piece_distance(
                float(combos[k, 0]), float(combos[k, 1]), np.int64(p), prow,
                fl.ring_start, fl.coord_start, fl.xy[0], fl.xy[1],
            ) - prow[p, ROW_REACH]
            for p, k in span
        ]  # fmt: skip
        assert np.all(np.diff(key) >= -1e-6), f"cell {c}: {key}"

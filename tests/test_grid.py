"""The accelerated grid against the exact index, point by point, where mistakes would hide."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyogrio
import pyproj
import pytest
import shapely
from conftest import BUNDLED_ZONES
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.categories import Category
from geofence.geodesy import FRAME_SLACK_M, FRAME_STRETCH, Frames, tile_key
from geofence.grid import (
    FINE_PER_DEG,
    LIST_M,
    GridIndex,
    _forward_distinct,
    grid_kernel,
    grid_presence,
)
from geofence.index import KIND_CLEAR, KIND_INSIDE, KIND_NEAR, ExactIndex
from geofence.kernels import groups
from geofence.policy import load_policy_text
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
    grid_kernel(lon, lat, acc, *grid._packed, kind, zone, todo)
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


@pytest.mark.parametrize("center_only", [False, True])
def test_grid_presence_equals_exact_presence(bundled: ZoneSet, center_only: bool) -> None:
    """Presence pairs from the cells' lists: every exact pair, and extra ones only within the
    affine map's error (centimetres) of the presence limit; nearly no point goes exact."""
    rng = np.random.default_rng(11)
    lon, lat, acc = band_points(bundled, rng, per_zone=40)
    n = len(lon)
    at = np.zeros(n)
    grid, exact = bundled.index, bundled.exact
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
        zs = np.array([z for _, z in extra])
        parts = np.array([np.flatnonzero(exact.part_zone == z)[0] for z in zs])
        d = exact.distances(lon, lat, pts, parts)
        r = exact.radius_m[zs]
        limit = r if center_only else r + acc[pts]
        assert np.all(d <= limit * FRAME_STRETCH + 0.1), "presence recorded beyond 10 cm"
    assert len(fast.present_point) == len(got)  # one pair per (point, zone)
    # Lists hold the pieces within LIST_M: a larger circle needs the exact index.
    large = int(np.sum(acc > LIST_M))
    assert sum(calls) <= large + 0.01 * n, f"{sum(calls)} of {n} points needed the exact index"


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


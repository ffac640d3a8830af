"""The exact index against independent oracles: per-zone AEQD shapely, pyproj.Geod, and Turf."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pyogrio
import pyproj
import pytest
import shapely
from conftest import BUNDLED_ZONES
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.categories import Category
from geofence.index import (
    INTERIOR,
    KIND_CLEAR,
    KIND_INSIDE,
    KIND_NEAR,
    ExactIndex,
    _split_by_tile,
    project_pieces,
    unique_pairs,
)
from geofence.kernels import groups
from geofence.policy import load_policy_text
from geofence.zones import Zone, read_zones
from geofence.zoneset import ZoneSet

GEOD = pyproj.Geod(ellps="WGS84")


def policy_with_buffer(buffer_m: float):  # type: ignore[no-untyped-def]
    return load_policy_text(
        f'pack = "none"\n[defaults]\nbuffer_m = {buffer_m}\nlookback_days = 30\n', "<test>"
    )


def compile_zones(zones: list[Zone], buffer_m: float) -> ZoneSet:
    return ZoneSet.compile(zones, policy_with_buffer(buffer_m), "test")


@functools.cache
def _aeqd(lon: float, lat: float) -> tuple[pyproj.Transformer, pyproj.Transformer]:
    crs = pyproj.CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +ellps=WGS84 +units=m")
    fwd = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    inv = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return fwd, inv


def aeqd_at(geom: shapely.Geometry) -> tuple[pyproj.Transformer, pyproj.Transformer]:
    """The oracle's own frame: an AEQD centred on this zone (not geofence's tile frames)."""
    c = geom.centroid
    return _aeqd(c.x, c.y)


def project(geom: shapely.Geometry, t: pyproj.Transformer) -> shapely.Geometry:
    dense = shapely.segmentize(geom, 0.0002)
    return shapely.transform(dense, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def points_at_distance(
    zone: Zone, distance_m: float, rng: np.random.Generator, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """k points exactly `distance_m` from the zone's perimeter (vertices of a buffer ring)."""
    fwd, inv = aeqd_at(zone.geometry)
    local = project(zone.geometry, fwd)
    ring = shapely.get_coordinates(local.buffer(distance_m, quad_segs=32).exterior)
    pick = ring[rng.choice(len(ring), size=min(k, len(ring)), replace=False)]
    lon, lat = inv.transform(pick[:, 0], pick[:, 1])
    return np.asarray(lon), np.asarray(lat)


def oracle_min_excess(
    zones: list[Zone], buffers: np.ndarray, lon: float, lat: float, acc: float
) -> float:
    """min over zones of (distance to zone - buffer - accuracy), each in the zone's own AEQD."""
    best = np.inf
    for i in _near(zones, lon, lat, 0.05):
        z, b = zones[i], buffers[i]
        fwd, _ = aeqd_at(z.geometry)
        if z.radius_m > 0:
            _, _, d = GEOD.inv(z.geometry.x, z.geometry.y, lon, lat)
            d = max(0.0, d - z.radius_m)
        else:
            x, y = fwd.transform(lon, lat)
            d = shapely.distance(project(z.geometry, fwd), shapely.Point(x, y))
        best = min(best, d - b - acc)
    return best


def _near(zones: list[Zone], lon: float, lat: float, reach_deg: float) -> list[int]:
    return [
        i
        for i, z in enumerate(zones)
        if shapely.distance(z.geometry, shapely.Point(lon, lat)) <= reach_deg
    ]


@pytest.fixture(scope="module")
def bundled() -> list[Zone]:
    zones, problems = read_zones([BUNDLED_ZONES])
    assert not [p for p in problems if p.severity == "error"]
    return zones


def test_oracle_buffer_plus_minus_one_metre(bundled: list[Zone]) -> None:
    """Points at buffer - 1 m are rejected (zero false negatives); at buffer + 1 m allowed."""
    rng = np.random.default_rng(7)
    buffer_m = 150.0
    sample = [bundled[i] for i in rng.choice(len(bundled), size=40, replace=False)]
    zs = compile_zones(sample, buffer_m)
    buffers = zs.buffer_m
    lon_in, lat_in, lon_out, lat_out, acc_in, acc_out = [], [], [], [], [], []
    for z in sample:
        acc = float(rng.choice([0.0, 5.0, 65.0]))
        reach = buffer_m + acc + z.radius_m
        a, b = points_at_distance(z, reach - 1.0, rng, 6)
        lon_in += list(a)
        lat_in += list(b)
        acc_in += [acc] * len(a)
        a, b = points_at_distance(z, reach + 1.0, rng, 6)
        lon_out += list(a)
        lat_out += list(b)
        acc_out += [acc] * len(a)

    def run(lon: list[float], lat: list[float], acc: list[float]):  # type: ignore[no-untyped-def]
        n = len(lon)
        return zs.index.locate(np.array(lon), np.array(lat), np.array(acc), np.zeros(n))

    inner = run(lon_in, lat_in, acc_in)
    assert np.all(inner.kind != KIND_CLEAR), "a point inside buffer - 1 m was allowed"
    outer = run(lon_out, lat_out, acc_out)
    for i in range(len(lon_out)):
        truth = oracle_min_excess(sample, buffers, lon_out[i], lat_out[i], acc_out[i])
        if truth <= 0:  # another zone of the sample is close: the oracle rejects too
            assert outer.kind[i] != KIND_CLEAR
        else:
            assert truth >= 0.9  # the point really is ~1 m outside every zone's reach
            assert outer.kind[i] == KIND_CLEAR, f"over-conservative at {truth:.3f} m outside"


def test_point_zones_match_geodesic_distance() -> None:
    """Circle zones: rejected exactly when the geodesic distance <= radius + buffer + accuracy."""
    rng = np.random.default_rng(3)
    centres = [(-122.33, 47.61), (24.94, 60.17), (151.2, -33.87), (-0.1, 0.0), (18.0, 78.2)]
    zones = [
        Zone(f"p{i}", "", Category.CLINIC, shapely.Point(lon, lat), radius_m=40.0)
        for i, (lon, lat) in enumerate(centres)
    ]
    zs = compile_zones(zones, 609.6)
    n = 4000
    which = rng.integers(0, len(centres), n)
    az = rng.uniform(-180, 180, n)
    acc = rng.choice([0.0, 10.0, 300.0], n)
    limit = 40.0 + 609.6 + acc
    dist = limit + rng.choice([-1.0, 1.0], n) * rng.uniform(0.05, 1.0, n)
    lon0 = np.array([centres[w][0] for w in which])
    lat0 = np.array([centres[w][1] for w in which])
    lon, lat, _ = GEOD.fwd(lon0, lat0, az, dist)
    loc = zs.index.locate(np.asarray(lon), np.asarray(lat), acc, np.zeros(n))
    _, _, true_d = GEOD.inv(lon0, lat0, lon, lat)
    inside = true_d <= limit
    assert np.all(loc.kind[inside] != KIND_CLEAR), "false negative against pyproj.Geod"
    # Conservative by at most the documented slack (3e-5 * limit + 1 cm), never by 1 m.
    slack = limit * 3e-5 + 0.01
    clearly_out = true_d > limit + slack
    assert np.all(loc.kind[clearly_out] == KIND_CLEAR)


def test_exact_distances_equal_shapely_on_the_same_pieces(bundled: list[Zone]) -> None:
    """The exact index's compiled loop measures every (point, piece) pair as shapely measures
    the projected piece: the same distance to a micrometre, 0 inside and on the boundary.

    Pieces: real zones, a zone with a hole across a tile edge, and one wide enough to have an
    INTERIOR piece (lon/lat, inside or not). Points: anywhere near each piece, its vertices
    (on the boundary), and points a hair off its edges.
    """
    ring = [(-0.3, 51.3), (0.3, 51.3), (0.3, 51.7), (-0.3, 51.7)]
    hole = [(-0.1, 51.45), (0.1, 51.45), (0.1, 51.55), (-0.1, 51.55)]
    geoms = np.array(
        [z.geometry for z in bundled[:300]]
        + [shapely.Polygon(ring, [hole]), shapely.box(-1.2, 50.8, 1.3, 52.2)],
        dtype=object,
    )
    n = len(geoms)
    ex = ExactIndex(geoms, np.zeros(n), np.zeros(n), np.full(n, -np.inf), np.full(n, np.inf))
    _, tiles, wgs = _split_by_tile(geoms)
    assert np.array_equal(tiles, ex.part_tile) and (tiles == INTERIOR).any()
    projected = project_pieces(ex.frames, wgs, tiles)
    rng = np.random.default_rng(3)
    b = shapely.bounds(wgs)
    span = np.maximum(b[:, 2:] - b[:, :2], 1e-4)
    part = np.repeat(np.arange(len(wgs)), 20)
    xy = b[part, :2] - span[part] * 0.2 + rng.random((len(part), 2)) * span[part] * 1.4
    vertices, owner = shapely.get_coordinates(shapely.get_exterior_ring(
        shapely.get_geometry(wgs, 0)), return_index=True)  # fmt: skip
    pick = rng.choice(len(vertices), 3000)
    near = vertices[pick] + rng.normal(0.0, 1e-6, (len(pick), 2))
    part = np.concatenate([part, owner[pick], owner[pick]])
    xy = np.concatenate([xy, vertices[pick], near])
    got = ex.distances(xy[:, 0], xy[:, 1], np.arange(len(part)), part)
    want = np.empty(len(part))
    for t, sel in groups(tiles[part]):
        if t == INTERIOR:
            inside = shapely.intersects(wgs[part[sel]], shapely.points(xy[sel]))
            want[sel] = np.where(inside, 0.0, np.inf)
            continue
        x, y = ex.frames.forward(int(t), xy[sel, 0], xy[sel, 1])
        want[sel] = shapely.distance(projected[part[sel]], shapely.points(x, y))
    assert np.array_equal(got == 0.0, want == 0.0)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert np.abs(got[finite] - want[finite]).max() <= 1e-6
    assert 0 < np.count_nonzero(want == 0.0) < len(want)  # both sides of the boundary asked


def test_inside_beats_near_and_boundary_counts_as_inside() -> None:
    square = shapely.box(10.0, 50.0, 10.001, 50.001)
    zones = [
        Zone("a", "", Category.COURT, square),
        Zone("b", "", Category.HOSPITAL, shapely.box(10.002, 50.0, 10.003, 50.001)),
    ]
    zs = compile_zones(zones, 200.0)
    lon = np.array([10.0005, 10.001, 10.0015, 10.0005])
    lat = np.array([50.0005, 50.0005, 50.0005, 50.1])
    loc = zs.index.locate(lon, lat, np.zeros(4), np.zeros(4))
    assert loc.kind.tolist() == [KIND_INSIDE, KIND_INSIDE, KIND_NEAR, KIND_CLEAR]
    assert loc.zone.tolist()[:2] == [0, 0]
    assert loc.zone[3] == -1


def test_zone_spanning_tiles_is_measured_piecewise() -> None:
    """A 60 km zone crosses several 0.5 degree tiles; distances stay exact on every side."""
    big = shapely.box(-0.4, 51.2, 0.45, 51.7)
    zs = compile_zones([Zone("big", "", Category.MILITARY, big)], 500.0)
    fwd, inv = aeqd_at(big)
    local = project(big, fwd)
    ring = shapely.get_coordinates(local.buffer(499.0, quad_segs=16).exterior)
    lon, lat = inv.transform(ring[:, 0], ring[:, 1])
    loc = zs.index.locate(
        np.asarray(lon), np.asarray(lat), np.zeros(len(ring)), np.zeros(len(ring))
    )
    assert np.all(loc.kind == KIND_NEAR)
    ring = shapely.get_coordinates(local.buffer(502.0, quad_segs=16).exterior)
    lon, lat = inv.transform(ring[:, 0], ring[:, 1])
    loc = zs.index.locate(
        np.asarray(lon), np.asarray(lat), np.zeros(len(ring)), np.zeros(len(ring))
    )
    assert np.all(loc.kind == KIND_CLEAR)


def test_antimeridian_neighbours_are_found() -> None:
    zone = Zone("fiji", "", Category.SHELTER, shapely.Point(179.9995, -17.0), radius_m=10.0)
    zs = compile_zones([zone], 300.0)
    lon = np.array([-179.9995, -179.99])
    lat = np.array([-17.0, -17.0])
    loc = zs.index.locate(lon, lat, np.zeros(2), np.zeros(2))
    assert loc.kind.tolist() == [KIND_NEAR, KIND_CLEAR]  # ~106 m vs ~1.1 km across the line


def test_temporary_zone_is_active_only_in_its_window() -> None:
    rally = Zone(
        "rally",
        "",
        Category.ASSEMBLY,
        shapely.box(2.0, 48.0, 2.001, 48.001),
        valid_from=1000.0,
        valid_until=2000.0,
    )
    zs = compile_zones([rally], 200.0)
    at = np.array([999.0, 1000.0, 1999.0, 2000.0])
    loc = zs.index.locate(np.full(4, 2.0005), np.full(4, 48.0005), np.zeros(4), at)
    assert loc.kind.tolist() == [KIND_CLEAR, KIND_INSIDE, KIND_INSIDE, KIND_CLEAR]


# --- Turf's point-in-polygon fixtures, with boundary-counts-as-inside ---------------------------


def _turf_cases(root: Path) -> list[tuple[str, dict, dict, bool | None]]:
    cases = []
    for f in sorted(root.rglob("*.geojson")):
        rel = f.relative_to(root).parts
        predicate = rel[0].removeprefix("turf-boolean-")
        data = json.loads(f.read_text())
        if data.get("type") == "FeatureCollection":
            a, b = data["features"][0]["geometry"], data["features"][1]["geometry"]
            expected = rel[2] == "true"
        else:  # point-in-polygon/test/in: a polygon with its own test points in properties
            continue
        cases.append((f"{predicate}/{'/'.join(rel[2:])}", a, b, expected))
    return cases


def _inside_under_our_semantics(predicate: str, points_first: bool, expected: bool) -> bool | None:
    """What Turf's verdict says about 'some point is inside or on the boundary' (None: unknown)."""
    if predicate == "intersects":
        return expected
    if predicate == "disjoint":
        return not expected
    if predicate == "touches" and expected:
        return True  # on the boundary, which counts as inside
    if predicate in ("within", "contains") and expected:
        return True
    return None


def test_turf_fixtures(shared_data: Path) -> None:
    root = shared_data / "pip_tests" / "turf"
    checked = 0
    for name, a, b, expected in _turf_cases(root):
        ga, gb = shapely.geometry.shape(a), shapely.geometry.shape(b)
        points_first = ga.geom_type in ("Point", "MultiPoint")
        pts, poly = (ga, gb) if points_first else (gb, ga)
        if poly.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        zs = compile_zones([Zone("z", "", Category.COURT, poly)], 0.0)
        xy = shapely.get_coordinates(pts)
        loc = zs.index.locate(xy[:, 0], xy[:, 1], np.zeros(len(xy)), np.zeros(len(xy)))
        ours = loc.kind == KIND_INSIDE
        # Independent oracle for every point: planar lon/lat, boundary inclusive.
        truth = shapely.intersects(poly, shapely.points(xy))
        assert ours.tolist() == truth.tolist(), name
        verdict = _inside_under_our_semantics(name.split("/")[0], points_first, expected)
        if verdict is not None:
            assert bool(ours.any()) == verdict, name
        checked += 1
    assert checked >= 40


def test_turf_point_in_polygon_fixtures(shared_data: Path) -> None:
    """Turf's own 'in' fixtures: polygons (with holes) whose features say in/out per point."""
    folder = shared_data / "pip_tests" / "turf" / "turf-boolean-point-in-polygon" / "test" / "in"
    for f in sorted(folder.glob("*.geojson")):
        poly = shapely.geometry.shape(json.loads(f.read_text())["geometry"])
        zs = compile_zones([Zone("z", "", Category.COURT, poly)], 0.0)
        rng = np.random.default_rng(1)
        x0, y0, x1, y1 = poly.bounds
        lon, lat = rng.uniform(x0, x1, 3000), rng.uniform(y0, y1, 3000)
        loc = zs.index.locate(lon, lat, np.zeros(3000), np.zeros(3000))
        truth = shapely.intersects(poly, shapely.points(lon, lat))
        assert (loc.kind == KIND_INSIDE).tolist() == truth.tolist(), f.name


@pytest.mark.shared
def test_oracle_on_london_places_of_worship(shared_data: Path) -> None:
    """Every 10th London polygon, points at buffer - 1 m: all rejected."""
    shp = shared_data / "zones" / "london_osm_pofw_a" / "gis_osm_pofw_a_free_1.shp"
    df = pyogrio.read_dataframe(shp)
    geoms = df.geometry.values[::10]
    zones = [Zone(f"z{i}", "", Category.PLACE_OF_WORSHIP, g) for i, g in enumerate(geoms)]
    zs = compile_zones(zones, 150.0)
    rng = np.random.default_rng(11)
    lons, lats = [], []
    for z in zones:
        a, b = points_at_distance(z, 149.0, rng, 4)
        lons += list(a)
        lats += list(b)
    n = len(lons)
    loc = zs.index.locate(np.array(lons), np.array(lats), np.zeros(n), np.zeros(n))
    assert np.all(loc.kind != KIND_CLEAR)


_INDEX = st.integers(0, 2**31 - 1) | st.integers(0, 5)  # small ones repeat


@settings(deadline=None)  # the first example loads the compiled pass
@given(st.lists(st.tuples(_INDEX, _INDEX), max_size=60))
def test_unique_pairs_are_uniques_rows(pairs: list[tuple[int, int]]) -> None:
    """unique_pairs gives what np.unique(..., axis=0) gives of the two columns, in its order."""
    assert_unique_pairs_are_uniques_rows(pairs)


def assert_unique_pairs_are_uniques_rows(pairs: list[tuple[int, int]]) -> None:
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    got_a, got_b = unique_pairs(a, b)
    want = np.unique(np.column_stack([a, b]).reshape(-1, 2), axis=0)
    assert got_a.dtype == got_b.dtype == np.int64
    assert got_a.tolist() == want[:, 0].tolist() and got_b.tolist() == want[:, 1].tolist()


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), _INDEX), max_size=80))
def test_unique_pairs_of_pairs_ordered_by_point_are_uniques_rows(
    pairs: list[tuple[int, int]],
) -> None:
    """Pairs already ordered by their first column (presence, point by point) take the pass
    without a sort: the same rows, in the same order, as np.unique(..., axis=0)."""
    # By point only: each point's zones in any order, repeated.
    assert_unique_pairs_are_uniques_rows(sorted(pairs, key=lambda p: p[0]))

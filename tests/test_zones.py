"""Tests for geofence.zones: reading zone files and reporting every defect precisely.

The defective files live in tests/data/zones_bad/ (regenerate them with its make.py); each test
names the exact problems its file must produce: file, feature index, id and message.
"""

from __future__ import annotations

import calendar
import csv
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import shapely
from conftest import BUNDLED_ZONES
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.categories import Category
from geofence.errors import Problem, ZoneFileError
from geofence.zones import Zone, load_zones, read_zones

BAD = Path(__file__).resolve().parent / "data" / "zones_bad"

# The 17 categories of DESIGN.md, written out here rather than taken from the module.
VALID = (
    "hospital, clinic, reproductive_health, mental_health, addiction_treatment, "
    "place_of_worship, court, correctional, shelter, school_childcare, military, union_office, "
    "lgbtq_services, immigration_services, ethnic_services, debt_services, assembly"
)
UNKNOWN_HOSPITL = (
    f"unknown category 'hospitl' (did you mean 'hospital'?); valid categories: {VALID}"
)
NEEDS_RADIUS = "a Point zone needs radius_m > 0 (metres)"

Found = tuple[str, int | None, str | None, str]


def check(*names: str) -> tuple[list[str], list[Found]]:
    """Read files from zones_bad: (ids of the good zones, every error as (file, index, id, text)).

    Also asserts that load_zones raises one ZoneFileError listing exactly the same errors.
    """
    paths = [BAD / n for n in names]
    zones, problems = read_zones(paths)
    errors = [p for p in problems if p.severity == "error"]
    assert errors, "a defective file must give at least one error"
    with pytest.raises(ZoneFileError) as info:
        load_zones(paths)
    assert info.value.problems == errors
    for p in errors:  # the exception's text carries every problem too
        assert str(p) in str(info.value)
    return [z.id for z in zones], [(p.file, p.feature, p.zone_id, p.message) for p in errors]


def write_geojson(path: Path, features: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def feature(props: dict[str, Any], geometry: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "Feature", "properties": props, "geometry": geometry}


def square(x: float, y: float, d: float) -> list[list[list[float]]]:
    return [[[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]]


# --- one test per defect -----------------------------------------------------------------------


def test_missing_id() -> None:
    ids, found = check("missing_id.geojson")
    assert ids == ["ok-1"]
    assert found == [
        ("missing_id.geojson", 1, None, "missing id"),
        ("missing_id.geojson", 2, None, "missing id"),  # an id of blanks is no id
    ]


def test_duplicate_id_within_one_file() -> None:
    ids, found = check("duplicate_id.geojson")
    assert ids == ["clinic-1", "clinic-2"]  # the first claim keeps the id
    assert found == [
        (
            "duplicate_id.geojson",
            2,
            "clinic-1",
            "duplicate id 'clinic-1': also duplicate_id.geojson feature 0",
        )
    ]


def test_duplicate_id_across_two_files() -> None:
    ids, found = check("duplicate_across_a.geojson", "duplicate_across_b.geojson")
    assert ids == ["shared-1", "a-only", "b-only"]
    assert found == [
        (
            "duplicate_across_b.geojson",
            1,
            "shared-1",
            "duplicate id 'shared-1': also duplicate_across_a.geojson feature 0",
        )
    ]
    # Each file alone is clean: the problem is only in their union.
    for name in ("duplicate_across_a.geojson", "duplicate_across_b.geojson"):
        assert read_zones([BAD / name])[1] == []


def test_duplicate_id_across_layers_names_both_layers() -> None:
    ids, found = check("duplicate_layers.gpkg")
    assert ids == ["x-1", "x-2", "x-3"]
    assert found == [
        (
            "duplicate_layers.gpkg:second",
            1,
            "x-2",
            "duplicate id 'x-2': also duplicate_layers.gpkg:first feature 1",
        )
    ]


def test_unknown_category_lists_valid_ones_and_suggests_the_closest() -> None:
    ids, found = check("unknown_category.geojson")
    assert ids == ["ok-1"]
    assert found == [("unknown_category.geojson", 1, "typo-1", UNKNOWN_HOSPITL)]
    for c in Category:  # the list in the message is complete
        assert c.value in found[0][3]


def test_empty_geometry_null_and_empty() -> None:
    ids, found = check("empty_geometry.geojson")
    assert ids == ["ok-1"]
    assert found == [
        ("empty_geometry.geojson", 1, "null-geom", "empty geometry"),
        ("empty_geometry.geojson", 2, "empty-geom", "empty geometry"),
    ]


def test_invalid_geometry_says_why() -> None:
    ids, found = check("invalid_geometry.geojson")
    assert ids == ["ok-1"]
    bowtie = shapely.Polygon([(-122.5, 47.5), (-122.25, 47.75), (-122.25, 47.5), (-122.5, 47.75)])
    reason = shapely.is_valid_reason(bowtie)
    assert reason == "Self-intersection[-122.375 47.625]"  # where the two edges cross
    assert found == [("invalid_geometry.geojson", 1, "bowtie", f"invalid geometry: {reason}")]


def test_coordinates_out_of_range() -> None:
    ids, found = check("out_of_range.geojson")
    assert ids == ["ok-1"]
    tail = " exceed longitude [-180, 180] / latitude [-90, 90]"
    assert found == [
        (
            "out_of_range.geojson",
            1,
            "lon-200",
            "coordinates out of range: bounds (200.0, 10.0, 201.0, 11.0)" + tail,
        ),
        (
            "out_of_range.geojson",
            2,
            "lat-95",
            "coordinates out of range: bounds (100.0, 95.0, 100.0, 95.0)" + tail,
        ),
    ]


def test_swapped_lat_lon() -> None:
    ids, found = check("swapped.geojson")
    assert ids == ["ok-1"]
    assert found == [
        (
            "swapped.geojson",
            1,
            "seattle-swapped",
            "coordinates out of range (latitude up to 122.34); "
            "latitude and longitude appear swapped",
        )
    ]


def test_projected_shapefile_without_prj_names_the_missing_crs() -> None:
    assert not (BAD / "projected_no_crs.prj").exists()
    ids, found = check("projected_no_crs.shp")
    assert ids == []
    assert found == [
        (
            "projected_no_crs.shp",
            None,
            None,
            "no CRS declared and the coordinates are not longitude/latitude "
            "(x up to 531050): a projected file needs its CRS",
        )
    ]


def test_same_shapefile_with_its_prj_loads_in_london(tmp_path: Path) -> None:
    """The defect above is only the missing .prj: restoring it gives two zones in London."""
    for suffix in (".shp", ".shx", ".dbf", ".cpg"):
        shutil.copy(BAD / f"projected_no_crs{suffix}", tmp_path / f"bng{suffix}")
    (tmp_path / "bng.prj").write_text(pyproj.CRS.from_epsg(27700).to_wkt("WKT1_ESRI"))
    zones, problems = load_zones([tmp_path / "bng.shp"])
    assert problems == []
    assert [z.id for z in zones] == ["bng-1", "bng-2"]
    to_wgs = pyproj.Transformer.from_crs("EPSG:27700", "EPSG:4326", always_xy=True)
    lon, lat = to_wgs.transform(530000.0, 180000.0)
    ring = shapely.get_coordinates(zones[0].geometry)
    assert np.min(np.hypot(ring[:, 0] - lon, ring[:, 1] - lat)) < 1e-9  # corner (530000, 180000)
    assert -0.2 < lon < -0.1 and 51.4 < lat < 51.6


def test_shapefile_without_prj_in_lon_lat_is_a_warning(tmp_path: Path) -> None:
    df = gpd.GeoDataFrame(
        {"id": ["w-1"], "category": ["court"]},
        geometry=[shapely.box(-122.34, 47.60, -122.33, 47.61)],
        crs="EPSG:4326",
    )
    df.to_file(tmp_path / "lonlat.shp", engine="pyogrio")
    (tmp_path / "lonlat.prj").unlink()
    zones, warnings = load_zones([tmp_path / "lonlat.shp"])  # does not raise
    assert [z.id for z in zones] == ["w-1"]
    assert zones[0].geometry.bounds == pytest.approx((-122.34, 47.60, -122.33, 47.61), abs=1e-12)
    assert [(w.file, w.feature, w.severity, w.message) for w in warnings] == [
        (
            "lonlat.shp",
            None,
            "warning",
            "no CRS declared; coordinates fit longitude/latitude, so WGS84 is assumed",
        )
    ]


def test_point_without_radius() -> None:
    ids, found = check("point_without_radius.geojson")
    assert ids == ["ok-1"]
    assert found == [
        ("point_without_radius.geojson", 1, "no-radius", NEEDS_RADIUS),
        ("point_without_radius.geojson", 2, "zero-radius", NEEDS_RADIUS),
    ]


def test_bad_radius_negative_and_text() -> None:
    ids, found = check("bad_radius.geojson")
    assert ids == ["ok-1"]
    # The column mixes numbers and text, so GDAL reads it as text: values are quoted.
    assert found == [
        ("bad_radius.geojson", 1, "negative", "radius_m must be finite and >= 0, not '-5'"),
        ("bad_radius.geojson", 1, "negative", NEEDS_RADIUS),
        ("bad_radius.geojson", 2, "text", "radius_m is not a number: 'ten'"),
        ("bad_radius.geojson", 2, "text", NEEDS_RADIUS),
    ]


def test_bad_buffer_negative_and_text() -> None:
    ids, found = check("bad_buffer.geojson")
    assert ids == ["ok-1"]
    assert found == [
        ("bad_buffer.geojson", 1, "negative", "buffer_m must be finite and >= 0, not '-1'"),
        ("bad_buffer.geojson", 2, "text", "buffer_m is not a number: 'wide'"),
    ]


def test_valid_from_without_utc_offset() -> None:
    ids, found = check("naive_time.geojson")
    assert ids == ["ok-1"]
    assert found == [
        ("naive_time.geojson", 1, "local", "valid_from '2026-05-01T09:00:00' has no UTC offset"),
        ("naive_time.geojson", 2, "words", "valid_from is not an ISO 8601 time: 'next tuesday'"),
    ]


def test_valid_until_not_after_valid_from() -> None:
    ids, found = check("until_before_from.geojson")
    assert ids == []
    text = "valid_until is not after valid_from"
    assert found == [
        ("until_before_from.geojson", 0, "backwards", text),
        ("until_before_from.geojson", 1, "zero-length", text),  # 09:00-07:00 is 16:00Z
    ]


def test_unsupported_geometry_type() -> None:
    ids, found = check("linestring.geojson")
    assert ids == ["ok-1"]
    assert found == [
        (
            "linestring.geojson",
            1,
            "street",
            "unsupported geometry type LineString; zones are Polygon, MultiPolygon, or Point "
            "with radius_m",
        )
    ]


def test_csv_missing_column() -> None:
    ids, found = check("missing_column.csv")
    assert ids == []
    assert found == [
        (
            "missing_column.csv",
            None,
            None,
            "missing column(s) radius_m; a zone CSV has columns id,category,lat,lon,radius_m "
            "(name, buffer_m, valid_from, valid_until, jurisdiction optional)",
        )
    ]


def test_csv_non_numeric_missing_and_nan_lat() -> None:
    ids, found = check("bad_lat.csv")
    assert ids == ["c-1"]
    assert found == [
        ("bad_lat.csv", 1, "c-2", "lat is not a number: 'north'"),
        ("bad_lat.csv", 2, "c-3", "missing lat"),
        ("bad_lat.csv", 3, "c-4", "lat must be finite, not 'nan'"),  # no ">= 0" for a latitude
    ]


def test_csv_rows_out_of_range_are_reported_per_row() -> None:
    """One bad CSV row must not hide the file's other rows and problems (it once dropped all)."""
    ids, found = check("csv_out_of_range.csv")
    assert ids == ["c-1"]
    assert found == [
        (
            "csv_out_of_range.csv",
            1,
            "c-2",
            "coordinates out of range (latitude up to 122.33); "
            "latitude and longitude appear swapped",
        ),
        (
            "csv_out_of_range.csv",
            2,
            "c-3",
            "coordinates out of range: bounds (100.0, 95.0, 100.0, 95.0) exceed longitude "
            "[-180, 180] / latitude [-90, 90]",
        ),
        ("csv_out_of_range.csv", 3, "c-4", UNKNOWN_HOSPITL),
    ]


def test_every_problem_in_a_file_is_listed() -> None:
    """One defect per feature: the error lists them all, in feature order, not just the first."""
    ids, found = check("many_problems.geojson")
    assert ids == ["m-4"]
    f = "many_problems.geojson"
    assert found == [
        (f, 0, None, "missing id"),
        (f, 1, "m-1", UNKNOWN_HOSPITL),
        (f, 2, "m-2", "empty geometry"),
        (f, 3, "m-3", "invalid geometry: Self-intersection[-122.375 47.625]"),
        (f, 5, "m-5", NEEDS_RADIUS),
        # Feature 1 was rejected for its category but still holds the id "m-1".
        (f, 6, "m-1", "duplicate id 'm-1': also many_problems.geojson feature 1"),
    ]


def test_problems_carry_hints() -> None:
    _, problems = read_zones([BAD / "swapped.geojson", BAD / "missing_id.geojson"])
    hints = {p.message: p.hint for p in problems}
    assert hints["missing id"] == "every feature needs a unique, stable 'id' property"
    swapped = next(p for p in problems if "swapped" in p.message)
    assert swapped.hint == "GeoJSON and WKT order is (longitude, latitude)"
    assert str(swapped) == (
        "swapped.geojson: feature 1 (id 'seattle-swapped'): error: coordinates out of range "
        "(latitude up to 122.34); latitude and longitude appear swapped "
        "[hint: GeoJSON and WKT order is (longitude, latitude)]"
    )


def test_a_missing_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    zones, problems = read_zones([tmp_path / "nope.geojson"])
    assert zones == []
    assert [(p.file, p.message) for p in problems] == [
        ("nope.geojson", f"no such file: {tmp_path / 'nope.geojson'}")
    ]


# --- good files --------------------------------------------------------------------------------


def test_good_geojson_reads_every_field(tmp_path: Path) -> None:
    path = write_geojson(
        tmp_path / "good.geojson",
        [
            feature(
                {
                    "id": "h-1",
                    "name": "Harborview",
                    "category": "hospital",
                    "jurisdiction": "US-WA",
                    "buffer_m": 800,
                },
                {"type": "Polygon", "coordinates": square(-122.33, 47.60, 0.01)},
            ),
            feature(
                {"id": "c-1", "name": "Two sites", "category": "Clinic"},  # case-insensitive
                {
                    "type": "MultiPolygon",
                    "coordinates": [square(-122.30, 47.60, 0.01), square(-122.20, 47.60, 0.01)],
                },
            ),
            feature(
                {"id": "p-1", "category": "place_of_worship", "radius_m": 75},
                {"type": "Point", "coordinates": [-122.31, 47.62]},
            ),
        ],
    )
    zones, problems = load_zones([path])
    assert problems == []
    by_id = {z.id: z for z in zones}
    assert list(by_id) == ["h-1", "c-1", "p-1"]
    h = by_id["h-1"]
    assert (h.name, h.category, h.jurisdiction, h.buffer_m) == (
        "Harborview",
        Category.HOSPITAL,
        "US-WA",
        800.0,
    )
    assert (h.radius_m, h.valid_from, h.valid_until, h.source) == (0.0, None, None, "good.geojson")
    assert h.geometry.equals(shapely.Polygon(square(-122.33, 47.60, 0.01)[0]))
    c = by_id["c-1"]
    assert c.category is Category.CLINIC and c.geometry.geom_type == "MultiPolygon"
    assert (
        shapely.get_num_geometries(c.geometry) == 2
        and c.buffer_m is None
        and c.jurisdiction is None
    )
    p = by_id["p-1"]
    assert (*shapely.get_coordinates(p.geometry)[0], p.radius_m, p.name) == (
        -122.31,
        47.62,
        75.0,
        "",
    )


def test_numeric_ids_read_back_as_strings(tmp_path: Path) -> None:
    # 12 and 13.0 make GDAL type the column as Real: both come back as floats, 12.0 and 13.0.
    point = {"type": "Point", "coordinates": [1, 2]}
    path = write_geojson(
        tmp_path / "numeric.geojson",
        [
            feature({"id": 12, "category": "court", "radius_m": 10}, point),
            feature({"id": 13.0, "category": "court", "radius_m": 10}, point),
        ],
    )
    zones, problems = load_zones([path])
    assert problems == []
    assert [z.id for z in zones] == ["12", "13"]


def test_temporary_zone_times_are_unix_seconds(tmp_path: Path) -> None:
    path = write_geojson(
        tmp_path / "rally.geojson",
        [
            feature(
                {
                    "id": "rally-1",
                    "category": "assembly",
                    "valid_from": "2026-05-01T09:00:00-07:00",
                    "valid_until": "2026-05-01T18:00:00Z",
                },
                {"type": "Polygon", "coordinates": square(-122.33, 47.60, 0.01)},
            )
        ],
    )
    (zone,), problems = load_zones([path])
    assert problems == []
    assert zone.valid_from == calendar.timegm((2026, 5, 1, 16, 0, 0))  # 09:00 at -07:00
    assert zone.valid_until == calendar.timegm((2026, 5, 1, 18, 0, 0))
    assert zone.valid_until - zone.valid_from == 2 * 3600


@pytest.mark.parametrize(
    ("epsg", "driver", "suffix", "origin", "where"),
    [
        # Helsinki in ETRS-TM35FIN, and London in British National Grid.
        (3067, "ESRI Shapefile", ".shp", (385000.0, 6672000.0), ((24.8, 25.1), (60.1, 60.3))),
        (27700, "GPKG", ".gpkg", (530000.0, 180000.0), ((-0.2, -0.1), (51.4, 51.6))),
    ],
)
def test_projected_file_is_reprojected_exactly(
    tmp_path: Path,
    epsg: int,
    driver: str,
    suffix: str,
    origin: tuple[float, float],
    where: tuple[tuple[float, float], tuple[float, float]],
) -> None:
    x0, y0 = origin
    polys = [
        shapely.Polygon([(x0, y0), (x0 + 120, y0), (x0 + 120, y0 + 80), (x0, y0 + 80)]),
        shapely.Polygon([(x0 + 500, y0), (x0 + 560, y0 + 30), (x0 + 500, y0 + 60)]),
    ]
    df = gpd.GeoDataFrame(
        {
            "id": [101.0, 102.0],  # a Real field: ids must still read back as "101", "102"
            "name": ["Töölön terveysasema", "Kallio"],
            "category": ["clinic", "mental_health"],
        },
        geometry=polys,
        crs=f"EPSG:{epsg}",
    )
    path = tmp_path / f"projected{suffix}"
    df.to_file(path, driver=driver, engine="pyogrio")
    zones, problems = load_zones([path])
    assert problems == []
    assert [(z.id, z.name, z.category) for z in zones] == [
        ("101", "Töölön terveysasema", Category.CLINIC),
        ("102", "Kallio", Category.MENTAL_HEALTH),
    ]
    to_wgs = pyproj.Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    for zone, poly in zip(zones, polys, strict=True):
        got = shapely.get_coordinates(zone.geometry)
        src = np.asarray(poly.exterior.coords)
        lon, lat = to_wgs.transform(src[:, 0], src[:, 1])
        # The writer may reverse the ring's orientation: compare as sets of vertices.
        expected = sorted(zip(np.round(lon, 9), np.round(lat, 9), strict=True))
        assert len(got) == len(src)
        assert np.allclose(sorted(map(tuple, got)), expected, rtol=0, atol=1e-9)
    # The first vertex, checked on its own against pyproj.
    lon0, lat0 = to_wgs.transform(x0, y0)
    ring0 = shapely.get_coordinates(zones[0].geometry)
    assert np.min(np.hypot(ring0[:, 0] - lon0, ring0[:, 1] - lat0)) < 1e-9
    (lon_lo, lon_hi), (lat_lo, lat_hi) = where
    assert lon_lo < lon0 < lon_hi and lat_lo < lat0 < lat_hi  # not swapped, right place


def test_geopackage_with_two_layers() -> None:
    zones, problems = read_zones([BAD / "two_layers.gpkg"])
    assert [(z.id, z.category, z.source) for z in zones] == [
        ("h-1", Category.HOSPITAL, "two_layers.gpkg:hospitals"),
        ("h-2", Category.HOSPITAL, "two_layers.gpkg:hospitals"),
        ("c-1", Category.CLINIC, "two_layers.gpkg:clinics"),
    ]
    # Feature indexes count within a layer, so the problem names its layer.
    assert [(p.file, p.feature, p.zone_id, p.message) for p in problems] == [
        ("two_layers.gpkg:clinics", 1, None, "missing id")
    ]


# --- property: CSV point zones round-trip ------------------------------------------------------

ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_:/."
point_zone = st.fixed_dictionaries(
    {
        "id": st.text(ID_CHARS, min_size=1, max_size=12),
        "name": st.text(
            st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
        ),
        "category": st.sampled_from([c.value for c in Category]),
        "lat": st.floats(-90, 90, allow_nan=False),
        "lon": st.floats(-180, 180, allow_nan=False),
        "radius_m": st.floats(0.01, 100_000, allow_nan=False),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(point_zone, min_size=1, max_size=15, unique_by=lambda z: z["id"]))
def test_csv_point_zones_round_trip(rows: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "points.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, ["id", "name", "category", "lat", "lon", "radius_m"])
            writer.writeheader()
            writer.writerows(
                {k: repr(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows
            )
        zones, problems = read_zones([path])
    assert problems == []
    assert len(zones) == len(rows)
    for z, r in zip(zones, rows, strict=True):
        assert (z.id, z.category.value, z.radius_m) == (r["id"], r["category"], r["radius_m"])
        assert z.name == r["name"].strip()
        assert z.geometry.geom_type == "Point"
        ((x, y),) = shapely.get_coordinates(z.geometry)
        assert abs(x - r["lon"]) <= 1e-9 and abs(y - r["lat"]) <= 1e-9


# --- the bundled zones -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled() -> tuple[list[Zone], list[Problem]]:
    return read_zones([BUNDLED_ZONES])


def test_bundled_zones_load_clean(bundled: tuple[list[Zone], list[Problem]]) -> None:
    zones, problems = bundled
    assert [p for p in problems if p.severity == "error"] == []
    assert len(zones) == 675
    loaded, warnings = load_zones([BUNDLED_ZONES])
    assert [z.id for z in loaded] == [z.id for z in zones]
    assert all(w.severity == "warning" for w in warnings)


def test_bundled_zones_are_valid_wgs84_with_unique_ids(
    bundled: tuple[list[Zone], list[Problem]],
) -> None:
    zones, _ = bundled
    assert len({z.id for z in zones}) == len(zones)
    assert all(isinstance(z.category, Category) for z in zones)
    assert {z.category.value for z in zones} <= set(VALID.split(", "))
    geoms = np.array([z.geometry for z in zones], dtype=object)
    assert shapely.is_valid(geoms).all() and not shapely.is_empty(geoms).any()
    b = shapely.bounds(geoms)
    assert (b[:, [0, 2]] >= -180).all() and (b[:, [0, 2]] <= 180).all()
    assert (b[:, [1, 3]] >= -90).all() and (b[:, [1, 3]] <= 90).all()
    for z in zones:
        if z.geometry.geom_type == "Point":
            assert z.radius_m > 0
        else:
            assert z.geometry.geom_type in ("Polygon", "MultiPolygon") and z.radius_m == 0.0
    # Every file in the folder contributed, the projected Helsinki shapefile in Helsinki.
    sources = {z.source for z in zones}
    assert sources == {
        "london_places_of_worship.geojson",
        "kuala_lumpur_schools.gpkg",
        "health_points_osm.csv",
        "helsinki_health_etrs-tm35fin.shp",
    }
    helsinki = [z for z in zones if z.source.startswith("helsinki")]
    assert all(
        24.5 < z.geometry.centroid.x < 25.5 and 60 < z.geometry.centroid.y < 60.5 for z in helsinki
    )

"""Regenerate the defective zone files in this folder: one small file per defect.

Run from anywhere: `.venv/bin/python tests/data/zones_bad/make.py`. GeoJSON is written by hand
(json) so each feature is exactly what the test expects; the Shapefile and GeoPackages, whose
defects need those formats, are written with geopandas/pyogrio. tests/test_zones.py says what
each file must produce.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import shapely

HERE = Path(__file__).resolve().parent

# A small square near Seattle (lon, lat): the "good" feature most files carry beside the defect.
SEATTLE = [[-122.34, 47.60], [-122.33, 47.60], [-122.33, 47.61], [-122.34, 47.61], [-122.34, 47.60]]
# A bow-tie whose two edges cross at (-122.375, 47.625), a point exact in binary floating point.
BOWTIE = [[-122.5, 47.5], [-122.25, 47.75], [-122.25, 47.5], [-122.5, 47.75], [-122.5, 47.5]]


def polygon(ring: list[list[float]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [ring]}


def point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


def feature(props: dict[str, Any], geometry: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "Feature", "properties": props, "geometry": geometry}


def good(zid: str, category: str = "hospital") -> dict[str, Any]:
    return feature({"id": zid, "name": f"good {zid}", "category": category}, polygon(SEATTLE))


def write_geojson(name: str, features: list[dict[str, Any]]) -> None:
    lines = ",\n".join(json.dumps(f) for f in features)
    text = f'{{"type": "FeatureCollection", "features": [\n{lines}\n]}}\n'
    (HERE / name).write_text(text, encoding="utf-8")


def write_csv(name: str, rows: list[list[str]]) -> None:
    with (HERE / name).open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def geojson_files() -> None:
    write_geojson(
        "missing_id.geojson",
        [
            good("ok-1"),
            feature({"name": "no id at all", "category": "clinic"}, polygon(SEATTLE)),
            feature({"id": "  ", "name": "blank id", "category": "clinic"}, polygon(SEATTLE)),
        ],
    )
    write_geojson("duplicate_id.geojson", [good("clinic-1"), good("clinic-2"), good("clinic-1")])
    write_geojson("duplicate_across_a.geojson", [good("shared-1"), good("a-only")])
    write_geojson("duplicate_across_b.geojson", [good("b-only"), good("shared-1")])
    write_geojson(
        "unknown_category.geojson",
        [
            good("ok-1"),
            feature({"id": "typo-1", "category": "hospitl"}, polygon(SEATTLE)),
        ],
    )
    write_geojson(
        "empty_geometry.geojson",
        [
            good("ok-1"),
            feature({"id": "null-geom", "category": "hospital"}, None),
            feature(
                {"id": "empty-geom", "category": "hospital"},
                {"type": "Polygon", "coordinates": []},
            ),
        ],
    )
    write_geojson(
        "invalid_geometry.geojson",
        [good("ok-1"), feature({"id": "bowtie", "category": "clinic"}, polygon(BOWTIE))],
    )
    write_geojson(
        "out_of_range.geojson",
        [
            good("ok-1"),
            feature(
                {"id": "lon-200", "category": "court"},
                polygon([[200.0, 10.0], [201.0, 10.0], [201.0, 11.0], [200.0, 10.0]]),
            ),
            feature({"id": "lat-95", "category": "court", "radius_m": 50}, point(100.0, 95.0)),
        ],
    )
    # Seattle written as (lat, lon): x = 47.6, y = -122.3, a latitude no place has.
    swapped = [[lat, lon] for lon, lat in SEATTLE]
    write_geojson(
        "swapped.geojson",
        [
            good("ok-1"),
            feature({"id": "seattle-swapped", "category": "hospital"}, polygon(swapped)),
        ],
    )
    write_geojson(
        "point_without_radius.geojson",
        [
            feature({"id": "ok-1", "category": "clinic", "radius_m": 30}, point(-122.33, 47.61)),
            feature({"id": "no-radius", "category": "clinic"}, point(-122.33, 47.61)),
            feature(
                {"id": "zero-radius", "category": "clinic", "radius_m": 0}, point(-122.33, 47.61)
            ),
        ],
    )
    write_geojson(
        "bad_radius.geojson",
        [
            feature({"id": "ok-1", "category": "clinic", "radius_m": 30}, point(-122.33, 47.61)),
            feature(
                {"id": "negative", "category": "clinic", "radius_m": -5}, point(-122.33, 47.61)
            ),
            feature({"id": "text", "category": "clinic", "radius_m": "ten"}, point(-122.33, 47.61)),
        ],
    )
    write_geojson(
        "bad_buffer.geojson",
        [
            feature({"id": "ok-1", "category": "court", "buffer_m": 800}, polygon(SEATTLE)),
            feature({"id": "negative", "category": "court", "buffer_m": -1}, polygon(SEATTLE)),
            feature({"id": "text", "category": "court", "buffer_m": "wide"}, polygon(SEATTLE)),
        ],
    )
    rally = {"category": "assembly", "valid_until": "2026-05-01T18:00:00Z"}
    write_geojson(
        "naive_time.geojson",
        [
            feature(
                {"id": "ok-1", **rally, "valid_from": "2026-05-01T09:00:00Z"}, polygon(SEATTLE)
            ),
            feature(
                {"id": "local", **rally, "valid_from": "2026-05-01T09:00:00"}, polygon(SEATTLE)
            ),
            feature({"id": "words", **rally, "valid_from": "next tuesday"}, polygon(SEATTLE)),
        ],
    )
    write_geojson(
        "until_before_from.geojson",
        [
            feature(
                {
                    "id": "backwards",
                    "category": "assembly",
                    "valid_from": "2026-05-01T18:00:00Z",
                    "valid_until": "2026-05-01T09:00:00Z",
                },
                polygon(SEATTLE),
            ),
            feature(
                {
                    "id": "zero-length",
                    "category": "assembly",
                    "valid_from": "2026-05-01T09:00:00-07:00",
                    "valid_until": "2026-05-01T16:00:00Z",
                },
                polygon(SEATTLE),
            ),
        ],
    )
    write_geojson(
        "linestring.geojson",
        [
            good("ok-1"),
            feature(
                {"id": "street", "category": "court"},
                {"type": "LineString", "coordinates": [[-122.34, 47.60], [-122.33, 47.61]]},
            ),
        ],
    )
    # One defect per feature: a loader that stops at the first problem fails this file's test.
    write_geojson(
        "many_problems.geojson",
        [
            feature({"name": "no id", "category": "clinic"}, polygon(SEATTLE)),
            feature({"id": "m-1", "category": "hospitl"}, polygon(SEATTLE)),
            feature({"id": "m-2", "category": "clinic"}, None),
            feature({"id": "m-3", "category": "clinic"}, polygon(BOWTIE)),
            good("m-4"),
            feature({"id": "m-5", "category": "clinic"}, point(-122.33, 47.61)),
            good("m-1"),
        ],
    )


def csv_files() -> None:
    write_csv(
        "missing_column.csv",
        [
            ["id", "name", "category", "lat", "lon"],
            ["c-1", "Clinic", "clinic", "47.61", "-122.33"],
        ],
    )
    write_csv(
        "bad_lat.csv",
        [
            ["id", "name", "category", "lat", "lon", "radius_m"],
            ["c-1", "Clinic", "clinic", "47.61", "-122.33", "40"],
            ["c-2", "Clinic", "clinic", "north", "-122.33", "40"],
            ["c-3", "Clinic", "clinic", "", "-122.33", "40"],
            ["c-4", "Clinic", "clinic", "nan", "-122.33", "40"],
        ],
    )
    write_csv(
        "csv_out_of_range.csv",
        [
            ["id", "name", "category", "lat", "lon", "radius_m"],
            ["c-1", "Clinic", "clinic", "47.61", "-122.33", "40"],
            ["c-2", "Seattle swapped", "clinic", "-122.33", "47.61", "40"],
            ["c-3", "Nowhere", "clinic", "95", "100", "40"],
            ["c-4", "Typo", "hospitl", "47.61", "-122.33", "40"],
        ],
    )


def shapefile() -> None:
    # London squares in British National Grid (EPSG:27700) metres, then the .prj is removed:
    # the classic "projected shapefile sent without its CRS".
    squares = [
        shapely.box(530000, 180000, 530100, 180100),
        shapely.box(531000, 181000, 531050, 181050),
    ]
    df = gpd.GeoDataFrame(
        {"id": ["bng-1", "bng-2"], "name": ["a", "b"], "category": ["hospital", "clinic"]},
        geometry=squares,
        crs="EPSG:27700",
    )
    stem = HERE / "projected_no_crs"
    for suffix in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
        stem.with_suffix(suffix).unlink(missing_ok=True)
    df.to_file(stem.with_suffix(".shp"), engine="pyogrio")
    stem.with_suffix(".prj").unlink()


def geopackages() -> None:
    path = HERE / "two_layers.gpkg"
    path.unlink(missing_ok=True)
    square = shapely.Polygon(SEATTLE[:-1])
    hospitals = gpd.GeoDataFrame(
        {"id": ["h-1", "h-2"], "name": ["H1", "H2"], "category": ["hospital", "hospital"]},
        geometry=[square, square],
        crs="EPSG:4326",
    )
    clinics = gpd.GeoDataFrame(
        {"id": ["c-1", None], "name": ["C1", "C2"], "category": ["clinic", "clinic"]},
        geometry=[square, square],
        crs="EPSG:4326",
    )
    hospitals.to_file(path, layer="hospitals", engine="pyogrio")
    clinics.to_file(path, layer="clinics", engine="pyogrio")

    path = HERE / "duplicate_layers.gpkg"
    path.unlink(missing_ok=True)
    first = gpd.GeoDataFrame(
        {"id": ["x-1", "x-2"], "category": ["school_childcare"] * 2},
        geometry=[square, square],
        crs="EPSG:4326",
    )
    second = gpd.GeoDataFrame(
        {"id": ["x-3", "x-2"], "category": ["school_childcare"] * 2},
        geometry=[square, square],
        crs="EPSG:4326",
    )
    first.to_file(path, layer="first", engine="pyogrio")
    second.to_file(path, layer="second", engine="pyogrio")


def main() -> None:
    geojson_files()
    csv_files()
    shapefile()
    geopackages()


if __name__ == "__main__":
    main()

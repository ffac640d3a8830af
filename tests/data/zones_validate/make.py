"""Regenerate the files `geofence validate` is tested on: one small file per defect.

Run from anywhere: `.venv/bin/python tests/data/zones_validate/make.py`. Each file holds one good
feature (where it helps) and the defect; tests/test_cli_validate.py asserts the exact message and
location each must produce. GeoJSON is written by hand (json) so every position is exactly what the
test expects; the GeoPackages are written with pyogrio, the ring defect as hand-made WKB (shapely
refuses to build such a ring).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyogrio.raw
import shapely

HERE = Path(__file__).resolve().parent

# A small square near Seattle (lon, lat).
SEATTLE = [[-122.34, 47.60], [-122.33, 47.60], [-122.33, 47.61], [-122.34, 47.61], [-122.34, 47.60]]
# A bow-tie whose two edges cross at (-122.375, 47.625), exact in binary floating point.
BOWTIE = [[-122.5, 47.5], [-122.25, 47.75], [-122.25, 47.5], [-122.5, 47.75], [-122.5, 47.5]]


def polygon(*rings: list[list[float]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": list(rings)}


def feature(props: dict[str, Any], geometry: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "Feature", "properties": props, "geometry": geometry}


def good(zid: str, category: str = "clinic") -> dict[str, Any]:
    return feature({"id": zid, "name": f"good {zid}", "category": category}, polygon(SEATTLE))


def write_geojson(path: Path, features: list[dict[str, Any]]) -> None:
    lines = ",\n".join(json.dumps(f) for f in features)
    path.write_text(f'{{"type": "FeatureCollection", "features": [\n{lines}\n]}}\n')


def square_km(lon: float, lat: float, km: float) -> list[list[float]]:
    """A square about `km` on a side (in degrees, so approximate), closed, counter-clockwise."""
    dlat = km / 111.32
    dlon = km / (111.32 * np.cos(np.radians(lat)))
    return [
        [lon, lat],
        [round(lon + dlon, 6), lat],
        [round(lon + dlon, 6), round(lat + dlat, 6)],
        [lon, round(lat + dlat, 6)],
        [lon, lat],
    ]


def geojson_files() -> None:
    write_geojson(
        HERE / "unclosed_ring.geojson",
        [good("ok-1"), feature({"id": "open-1", "category": "clinic"}, polygon(SEATTLE[:-1]))],
    )
    write_geojson(
        HERE / "short_ring.geojson",
        [
            good("ok-1"),
            feature(
                {"id": "short-1", "category": "clinic"},
                polygon([[-122.34, 47.60], [-122.33, 47.60], [-122.34, 47.60]]),
            ),
        ],
    )
    write_geojson(
        HERE / "self_intersection.geojson",
        [good("ok-1"), feature({"id": "bowtie-1", "category": "clinic"}, polygon(BOWTIE))],
    )
    swapped = [[lat, lon] for lon, lat in SEATTLE]
    write_geojson(
        HERE / "swapped.geojson",
        [good("ok-1"), feature({"id": "swapped-1", "category": "hospital"}, polygon(swapped))],
    )
    write_geojson(
        HERE / "unknown_category.geojson",
        [good("ok-1"), feature({"id": "typo-1", "category": "clnic"}, polygon(SEATTLE))],
    )
    # Fiji's Taveuni straddles 180°: written once with both signs, once running past 180.
    write_geojson(
        HERE / "antimeridian.geojson",
        [
            good("ok-1"),
            feature(
                {"id": "wraps-1", "category": "school_childcare"},
                polygon(
                    [[179.99, -16.8], [-179.99, -16.8], [-179.99, -16.79], [179.99, -16.79],
                     [179.99, -16.8]]
                ),
            ),
            feature(
                {"id": "past-180", "category": "school_childcare"},
                polygon(
                    [[179.99, -16.7], [180.01, -16.7], [180.01, -16.69], [179.99, -16.69],
                     [179.99, -16.7]]
                ),
            ),
        ],
    )  # fmt: skip
    write_geojson(
        HERE / "large_zone.geojson",
        [
            good("ok-1"),
            feature(
                {"id": "big-1", "category": "military"}, polygon(square_km(-122.0, 47.0, 10.0))
            ),
            feature(
                {"id": "big-circle", "category": "clinic", "radius_m": 5000},
                {"type": "Point", "coordinates": [-122.5, 47.2]},
            ),
        ],
    )


def wkb_polygon(ring: list[tuple[float, float]]) -> bytes:
    """Little-endian WKB Polygon with one ring, written as given (even if unclosed or short)."""
    out = struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring))
    for x, y in ring:
        out += struct.pack("<dd", x, y)
    return out


def geopackages() -> None:
    # A ring of three positions that does not close: shapely cannot build it, GDAL passes it on.
    path = HERE / "short_ring.gpkg"
    path.unlink(missing_ok=True)
    good_ring = [tuple(p) for p in SEATTLE]
    bad_ring = [(-122.34, 47.60), (-122.33, 47.60), (-122.33, 47.61)]
    geometry = np.array([wkb_polygon(good_ring), wkb_polygon(bad_ring)], dtype=object)
    pyogrio.raw.write(
        path,
        geometry,
        [
            np.array(["ok-1", "gpkg-short"], dtype=object),
            np.array(["clinic", "clinic"], dtype=object),
        ],
        ["id", "category"],
        driver="GPKG",
        geometry_type="Polygon",
        crs="EPSG:4326",
        layer="zones",
    )
    # Declared British National Grid (metres), but written in lon/lat degrees (London).
    import geopandas as gpd  # noqa: PLC0415

    london = shapely.box(-0.10, 51.51, -0.09, 51.52)
    path = HERE / "crs_projected_lonlat.gpkg"
    path.unlink(missing_ok=True)
    gpd.GeoDataFrame(
        {"id": ["bng-deg-1"], "category": ["court"]}, geometry=[london], crs="EPSG:27700"
    ).to_file(path, layer="zones", engine="pyogrio")
    # Declared ETRS-TM35FIN (Finland), but the numbers are British National Grid metres: they
    # reproject to the equator, in range, so only the CRS's area of use gives them away.
    path = HERE / "crs_wrong_projection.gpkg"
    path.unlink(missing_ok=True)
    gpd.GeoDataFrame(
        {"id": ["fin-1"], "category": ["court"]},
        geometry=[shapely.box(530000, 180000, 530100, 180100)],
        crs="EPSG:3067",
    ).to_file(path, layer="zones", engine="pyogrio")


def folders() -> None:
    # A clean zone file with a defective policy and a defective beacon registry beside it.
    for name in ("bad_policy", "bad_beacons", "fixable"):
        shutil.rmtree(HERE / name, ignore_errors=True)
        (HERE / name).mkdir()
    write_geojson(HERE / "bad_policy" / "zones.geojson", [good("ok-1")])
    (HERE / "bad_policy" / "policy.toml").write_text('pack = "oregon"\n')
    write_geojson(HERE / "bad_beacons" / "zones.geojson", [good("ok-1")])
    (HERE / "bad_beacons" / "beacons.csv").write_text(
        "beacon_id,type,lat,lon,range_m,status,zone_id,floor,name\n"
        "a1b2c3d4-0000-4000-8000-00000000abcd:1:1,ibeacon,47.605,-122.335,20,active,ok-1,,\n"
        "a1b2c3d4-0000-4000-8000-00000000abcd:1:2,ibeacon,47.605,-122.335,20,active,nope-9,,\n"
    )
    # One feature per repair `validate --fix` makes, plus one it cannot make.
    write_geojson(
        HERE / "fixable" / "zones.geojson",
        [
            good("ok-1"),
            feature({"id": "bowtie-1", "category": "clinic"}, polygon(BOWTIE)),
            feature({"id": "open-1", "category": "clinic"}, polygon(SEATTLE[:-1])),
            feature(
                {"id": "swapped-1", "category": "hospital"},
                polygon([[lat, lon] for lon, lat in SEATTLE]),
            ),
            feature({"id": "typo-1", "category": "clnic"}, polygon(SEATTLE)),
            feature(
                {"id": "wraps-1", "category": "school_childcare"},
                polygon(
                    [[179.99, -16.8], [-179.99, -16.8], [-179.99, -16.79], [179.99, -16.79],
                     [179.99, -16.8]]
                ),
            ),
            feature({"category": "clinic"}, polygon(SEATTLE)),  # no id: dropped
        ],
    )  # fmt: skip
    (HERE / "fixable" / "policy.toml").write_text('pack = "us-strictest"\n')


def main() -> None:
    geojson_files()
    geopackages()
    folders()


if __name__ == "__main__":
    main()

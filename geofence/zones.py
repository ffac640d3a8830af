"""Zones: the protected places, read from GIS files and checked feature by feature.

Reads GeoJSON, GeoPackage, Shapefile (through geopandas/pyogrio) and CSV points, in any CRS
(reprojected to WGS84 with pyproj), and reports every defect with file, feature index and id.
"""

from __future__ import annotations

import csv
import hashlib
import math
import struct
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyproj
import shapely
from shapely.geometry.base import BaseGeometry

from geofence.categories import Category, parse_category
from geofence.errors import Problem, ZoneFileError

GIS_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp")
CSV_SUFFIX = ".csv"
# Files in a zone folder that are not zone files.
NOT_ZONE_FILES = frozenset({"beacons.csv", "policy.toml"})
# Sidecar files whose bytes change a shapefile's meaning, hashed into the version.
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
CSV_REQUIRED = ("id", "category", "lat", "lon", "radius_m")
POLYGONAL = ("Polygon", "MultiPolygon")

# Limits on what one load may ask of the process, so a hostile or broken file gets a clear error
# instead of exhausting memory or time. Each is far above any real zone set: the bundled London
# places of worship average 30 vertices a zone, a detailed national park a few tens of thousands.
MAX_FILE_BYTES = 512 * 1024 * 1024  # one zone file (a shapefile counts its sidecars too)
MAX_VERTICES_PER_ZONE = 250_000  # coordinates in one zone's geometry, every ring and part
MAX_ZONES = 2_000_000  # features in one file, and zones across all the files of a set


@dataclass(frozen=True, slots=True)
class Zone:
    """One protected place. Geometry is in WGS84 lon/lat."""

    id: str
    name: str
    category: Category
    geometry: BaseGeometry  # Polygon, MultiPolygon, or Point (with radius_m > 0)
    radius_m: float = 0.0
    buffer_m: float | None = None  # per-zone override; may only widen the policy's buffer
    valid_from: float | None = None  # Unix seconds; the zone is active from this time...
    valid_until: float | None = None  # ...until (excluding) this time
    jurisdiction: str | None = None
    source: str = ""  # the file it came from


def zone_files(paths: Iterable[str | Path]) -> list[Path]:
    """The zone files named by `paths` (files, or folders searched one level deep), sorted."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for child in sorted(p.iterdir()):
                if child.name in NOT_ZONE_FILES or child.name.startswith("."):
                    continue
                if child.suffix.lower() in (*GIS_SUFFIXES, CSV_SUFFIX):
                    found.append(child)
        else:
            found.append(p)
    return sorted(set(found))


def content_hash(files: Sequence[Path], extra: Iterable[bytes] = ()) -> str:
    """A short, stable hash of files' names and bytes (plus `extra`): the zone-set version."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        parts = [f]
        if f.suffix.lower() == ".shp":
            parts += [f.with_suffix(s) for s in SHAPEFILE_SIDECARS if f.with_suffix(s).exists()]
        for part in parts:
            h.update(part.name.encode() + b"\0")
            h.update(part.read_bytes() if part.exists() else b"<missing>")
            h.update(b"\0")
    for blob in extra:
        h.update(blob)
        h.update(b"\0")
    return h.hexdigest()[:16]


def read_zones(
    paths: Iterable[str | Path], *, progress: Callable[[Path], None] | None = None
) -> tuple[list[Zone], list[Problem]]:
    """Read and check every zone file; return the good zones and every problem (never raises).

    `progress`, when given, is called with each file's path just after it has been read.
    """
    zones: list[Zone] = []
    problems: list[Problem] = []
    seen: dict[str, tuple[str, int]] = {}
    total_features = 0
    for f in zone_files(paths):
        file_zones, file_problems = read_zone_file(f)
        total_features += len(file_zones)
        if total_features > MAX_ZONES:
            problems.append(
                Problem(
                    f.name,
                    f"the zone files hold more than {MAX_ZONES} zones (the limit, "
                    "geofence.zones.MAX_ZONES); reading stopped here",
                    hint="split the set, or raise the limit if the machine can hold it",
                )
            )
            break
        if progress is not None:
            progress(f)
        problems += file_problems
        # Every feature with an id claims it, including features rejected for another defect,
        # so a duplicate is reported now rather than after the first defect is fixed.
        claims: dict[tuple[str, int], tuple[str, Zone | None]] = {}
        for z, index in file_zones:
            claims[(z.source, index)] = (z.id, z)
        for p in file_problems:
            if p.severity == "error" and p.zone_id is not None and p.feature is not None:
                claims.setdefault((p.file, p.feature), (p.zone_id, None))
        layer_rank = {label: rank for rank, label in enumerate(dict.fromkeys(k[0] for k in claims))}
        for (label, index), (zid, zone) in sorted(
            claims.items(), key=lambda item: (layer_rank[item[0][0]], item[0][1])
        ):
            if zid in seen:
                other_label, other_index = seen[zid]
                problems.append(
                    Problem(
                        label,
                        f"duplicate id {zid!r}: also {other_label} feature {other_index}",
                        index,
                        zid,
                        hint="ids must be unique across every zone file",
                    )
                )
                continue
            seen[zid] = (label, index)
            if zone is not None:
                zones.append(zone)
    return zones, problems


def load_zones(
    paths: Iterable[str | Path], *, progress: Callable[[Path], None] | None = None
) -> tuple[list[Zone], list[Problem]]:
    """Read every zone file; raise ZoneFileError listing every error. Returns zones and warnings."""
    zones, problems = read_zones(paths, progress=progress)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ZoneFileError(errors)
    return zones, problems


def read_zone_file(path: Path) -> tuple[list[tuple[Zone, int]], list[Problem]]:
    """Read one file: (zone, feature index) pairs that passed, and the problems found."""
    name = path.name
    if not path.exists():
        return [], [Problem(name, f"no such file: {path}")]
    suffix = path.suffix.lower()
    size = _file_bytes(path)
    if size > MAX_FILE_BYTES:
        return [], [
            Problem(
                name,
                f"file is {size} bytes, over the limit of {MAX_FILE_BYTES} "
                "(geofence.zones.MAX_FILE_BYTES); not read",
                hint="split the file, or raise the limit if the machine can hold it",
            )
        ]
    if suffix == CSV_SUFFIX:
        return _read_csv(path)
    if suffix not in GIS_SUFFIXES:
        return [], [Problem(name, f"not a zone file (expected {', '.join(GIS_SUFFIXES)}, .csv)")]
    return _read_gis(path)


def _file_bytes(path: Path) -> int:
    """Bytes a reader would take in: the file, plus a shapefile's sidecars."""
    try:
        size = path.stat().st_size
        if path.suffix.lower() == ".shp":
            for s in SHAPEFILE_SIDECARS:
                sidecar = path.with_suffix(s)
                if sidecar.exists():
                    size += sidecar.stat().st_size
    except OSError:
        return 0  # unreadable: the reader reports it
    return size


def _too_many_features(label: str, count: int) -> Problem:
    return Problem(
        label,
        f"{count} features, over the limit of {MAX_ZONES} zones "
        "(geofence.zones.MAX_ZONES); not read",
        hint="split the file, or raise the limit if the machine can hold it",
    )


# --- GIS files ---------------------------------------------------------------------------------


def _read_gis(path: Path) -> tuple[list[tuple[Zone, int]], list[Problem]]:
    name = path.name
    problems: list[Problem] = []
    out: list[tuple[Zone, int]] = []
    try:
        layers = [str(row[0]) for row in pyogrio.list_layers(path)]
    except Exception as exc:
        return [], [Problem(name, f"cannot be read as a GIS file: {exc}")]
    for layer in layers:
        unreadable: dict[int, str] = {}
        label = name if len(layers) == 1 else f"{name}:{layer}"
        try:
            count = int(pyogrio.read_info(path, layer=layer).get("features", 0))
        except Exception:
            count = 0  # unknown here; the read below reports any problem
        if count > MAX_ZONES:
            problems.append(_too_many_features(label, count))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                df = pyogrio.read_dataframe(path, layer=layer, datetime_as_string=True)
        except shapely.errors.GEOSException:
            # Some feature's geometry cannot be built (an unclosed ring, a ring of two points):
            # read the layer again, find those features and say what is wrong with each.
            try:
                df, unreadable = _read_layer_per_feature(path, layer)
            except Exception as exc:
                problems.append(Problem(name, f"layer {layer!r} cannot be read: {exc}"))
                continue
        except Exception as exc:
            problems.append(Problem(name, f"layer {layer!r} cannot be read: {exc}"))
            continue
        records = df.drop(columns="geometry").to_dict("records")
        geoms = np.asarray(df.geometry.values, dtype=object)
        zones, layer_problems = _check_features(label, records, geoms, df.crs, unreadable)
        out += zones
        problems += layer_problems
    return out, problems


def _read_layer_per_feature(path: Path, layer: str) -> tuple[Any, dict[int, str]]:
    """Read a layer whose WKB shapely refuses: (frame, {feature index: what is wrong})."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = pyogrio.read_dataframe(path, layer=layer, datetime_as_string=True, on_invalid="ignore")
        _, _, wkbs, _ = pyogrio.raw.read(path, layer=layer, columns=[])
    unreadable: dict[int, str] = {}
    for i, (geom, wkb) in enumerate(zip(df.geometry.values, wkbs, strict=True)):
        if geom is None and wkb is not None:
            unreadable[i] = wkb_ring_defect(bytes(wkb)) or "geometry cannot be read (bad WKB)"
    return df, unreadable


RING_HINT = (
    "a ring lists at least 3 distinct corners and repeats its first position at the end; "
    "`geofence validate --fix` closes open rings and drops degenerate ones"
)


def ring_defect(coords: Sequence[Sequence[float]], ring: int, part: int | None) -> str | None:
    """What is wrong with one polygon ring given as positions, or None.

    The text is the same whether it comes from WKB (any GIS file) or from a GeoJSON file's raw
    coordinates (`geofence validate`), so the two never disagree about a ring.
    """
    where = f"ring {ring}" if part is None else f"polygon {part} ring {ring}"
    where += " (outer)" if ring == 0 else " (hole)"
    n = len(coords)
    if n == 0:
        return None
    if n < 4:
        return (
            f"too-short {where}: {n} position(s); a ring needs at least 4 (3 corners and the "
            "first repeated at the end)"
        )
    first, last = tuple(coords[0][:2]), tuple(coords[-1][:2])
    if first != last:
        return (
            f"unclosed {where}: starts at ({_fmt(first[0])}, {_fmt(first[1])}) and ends at "
            f"({_fmt(last[0])}, {_fmt(last[1])})"
        )
    return None


def _fmt(v: float) -> str:
    return repr(round(float(v), 9))


def geometry_ring_defect(geom: BaseGeometry) -> str | None:
    """The first too-short or unclosed ring of a shapely (Multi)Polygon, or None."""
    parts: list[Any]
    if geom.geom_type == "Polygon":
        parts, multi = [geom], False
    elif geom.geom_type == "MultiPolygon":
        parts, multi = list(getattr(geom, "geoms", [])), True
    else:
        return None
    for k, poly in enumerate(parts):
        rings = [poly.exterior, *poly.interiors]
        for r, ring in enumerate(rings):
            defect = ring_defect(list(ring.coords), r, k if multi else None)
            if defect:
                return defect
    return None


def wkb_ring_defect(wkb: bytes) -> str | None:
    """The first unclosed or too-short ring in a WKB Polygon/MultiPolygon, or None.

    Reads ISO and EWKB headers (Z, M, SRID) without building geometry, so it works on rings that
    shapely refuses to construct.
    """
    try:
        defects, _ = _wkb_polygonal(wkb, 0, None)
    except (struct.error, ValueError):
        return None
    return defects[0] if defects else None


def _wkb_header(wkb: bytes, pos: int) -> tuple[str, int, int, int]:
    order = "<" if wkb[pos] == 1 else ">"
    (code,) = struct.unpack_from(order + "I", wkb, pos + 1)
    pos += 5
    dims = 2
    if code & 0x80000000:
        dims += 1
    if code & 0x40000000:
        dims += 1
    if code & 0x20000000:
        pos += 4  # SRID
    code &= 0x0FFFFFFF
    if code >= 1000:
        dims = 2 + {1: 1, 2: 1, 3: 2}.get(code // 1000, 0)
        code %= 1000
    return order, code, dims, pos


def _wkb_polygonal(wkb: bytes, pos: int, part: int | None) -> tuple[list[str], int]:
    order, code, dims, pos = _wkb_header(wkb, pos)
    defects: list[str] = []
    if code == 3:
        (nrings,) = struct.unpack_from(order + "I", wkb, pos)
        pos += 4
        for r in range(nrings):
            (npts,) = struct.unpack_from(order + "I", wkb, pos)
            pos += 4
            flat = struct.unpack_from(order + "d" * (npts * dims), wkb, pos)
            pos += 8 * npts * dims
            coords = [flat[k * dims : k * dims + 2] for k in range(npts)]
            defect = ring_defect(coords, r, part)
            if defect:
                defects.append(defect)
        return defects, pos
    if code == 6:
        (nparts,) = struct.unpack_from(order + "I", wkb, pos)
        pos += 4
        for k in range(nparts):
            more, pos = _wkb_polygonal(wkb, pos, k)
            defects += more
        return defects, pos
    raise ValueError("not polygonal")


def _check_features(
    label: str,
    records: list[dict[str, Any]],
    geoms: np.ndarray,
    crs: Any,
    unreadable: Mapping[int, str] | None = None,
) -> tuple[list[tuple[Zone, int]], list[Problem]]:
    problems: list[Problem] = []
    n = len(records)
    present = np.array([g is not None for g in geoms], dtype=bool)
    geom_arr = np.where(present, geoms, shapely.Point())  # type: ignore[call-overload]
    # Over-large geometries are set aside before any costly check (validity, reprojection).
    vertices = shapely.get_num_coordinates(geom_arr)
    too_large = vertices > MAX_VERTICES_PER_ZONE
    if too_large.any():
        geom_arr = geom_arr.copy()
        geom_arr[too_large] = shapely.Point()
    empty = shapely.is_empty(geom_arr)
    bounds = shapely.bounds(geom_arr)
    finite = np.all(np.isfinite(bounds), axis=1) | empty

    # CRS: geographic files are checked for range; a file without a CRS is taken as WGS84 only
    # when its coordinates fit lon/lat ranges (a shapefile without .prj is the usual case).
    geographic = crs is None or crs.is_geographic
    if crs is None:
        xs = bounds[~empty & finite]
        if xs.size and (
            np.nanmax(np.abs(xs[:, [0, 2]])) > 180 or np.nanmax(np.abs(xs[:, [1, 3]])) > 90
        ):
            return [], [
                Problem(
                    label,
                    "no CRS declared and the coordinates are not longitude/latitude "
                    f"(x up to {np.nanmax(np.abs(xs[:, [0, 2]])):.0f}): a projected file needs "
                    "its CRS",
                    hint="add the .prj file or declare the CRS, e.g. with ogr2ogr -a_srs",
                )
            ]
        problems.append(
            Problem(
                label,
                "no CRS declared; coordinates fit longitude/latitude, so WGS84 is assumed",
                severity="warning",
                hint="declare EPSG:4326 explicitly",
            )
        )

    valid = shapely.is_valid(geom_arr)
    wgs = geom_arr
    if crs is not None and not crs.equals("EPSG:4326"):
        try:
            wgs = to_wgs84(geom_arr, crs)
        except Exception as exc:
            return [], [Problem(label, f"cannot reproject from {crs} to WGS84: {exc}")]
    wb = shapely.bounds(wgs)

    zones: list[tuple[Zone, int]] = []
    for i in range(n):
        rec = records[i]
        index = i  # per layer; a multi-layer file's label names the layer
        before = len(problems)
        zid = _text(rec.get("id"))
        if zid is None:
            problems.append(
                Problem(
                    label,
                    "missing id",
                    index,
                    None,
                    hint="every feature needs a unique, stable 'id' property",
                )
            )
        category = _category(rec.get("category"), label, index, zid, problems)
        if too_large[i]:
            problems.append(
                Problem(
                    label,
                    f"geometry has {int(vertices[i])} vertices, over the limit of "
                    f"{MAX_VERTICES_PER_ZONE} (geofence.zones.MAX_VERTICES_PER_ZONE)",
                    index,
                    zid,
                    hint="simplify it (e.g. shapely.simplify with a tolerance of a metre or two)",
                )
            )
        elif unreadable and i in unreadable:
            problems.append(Problem(label, unreadable[i], index, zid, hint=RING_HINT))
        elif not present[i] or empty[i]:
            problems.append(Problem(label, "empty geometry", index, zid))
        else:
            type_name = geom_arr[i].geom_type
            if type_name not in (*POLYGONAL, "Point"):
                problems.append(
                    Problem(
                        label,
                        f"unsupported geometry type {type_name}; zones are "
                        "Polygon, MultiPolygon, or Point with radius_m",
                        index,
                        zid,
                    )
                )
            elif not finite[i]:
                problems.append(
                    Problem(label, "non-finite coordinates (NaN or infinity)", index, zid)
                )
            elif geographic and not _in_range(bounds[i]):
                problems.append(_range_problem(label, index, zid, bounds[i]))
            elif not valid[i] and (defect := geometry_ring_defect(geom_arr[i])) is not None:
                problems.append(Problem(label, defect, index, zid, hint=RING_HINT))
            elif not valid[i]:
                reason = shapely.is_valid_reason(geom_arr[i])
                problems.append(
                    Problem(
                        label,
                        f"invalid geometry: {reason}",
                        index,
                        zid,
                        hint="repair with shapely.make_valid or `geofence validate --fix`",
                    )
                )
            elif not geographic and not _in_range(wb[i]):
                problems.append(
                    Problem(
                        label,
                        f"coordinates fall outside longitude/latitude "
                        f"ranges after reprojection from {crs.to_string()}; the "
                        "declared CRS may be wrong",
                        index,
                        zid,
                    )
                )
        radius = _number(rec.get("radius_m"), "radius_m", label, index, zid, problems)
        is_point = present[i] and not empty[i] and geom_arr[i].geom_type == "Point"
        if is_point and (radius is None or radius <= 0):
            problems.append(Problem(label, "a Point zone needs radius_m > 0 (metres)", index, zid))
        buffer = _number(rec.get("buffer_m"), "buffer_m", label, index, zid, problems)
        valid_from = _time(rec.get("valid_from"), "valid_from", label, index, zid, problems)
        valid_until = _time(rec.get("valid_until"), "valid_until", label, index, zid, problems)
        if valid_from is not None and valid_until is not None and valid_until <= valid_from:
            problems.append(Problem(label, "valid_until is not after valid_from", index, zid))
        if len(problems) > before and any(p.severity == "error" for p in problems[before:]):
            continue
        assert zid is not None and category is not None
        zones.append(
            (
                Zone(
                    id=zid,
                    name=_text(rec.get("name")) or "",
                    category=category,
                    geometry=wgs[i],
                    radius_m=float(radius) if is_point and radius else 0.0,
                    buffer_m=buffer,
                    valid_from=valid_from,
                    valid_until=valid_until,
                    jurisdiction=_text(rec.get("jurisdiction")),
                    source=label,
                ),
                index,
            )
        )
    return zones, problems


def to_wgs84(geoms: np.ndarray, crs: Any) -> np.ndarray:
    """Reproject an array of geometries from `crs` to WGS84 lon/lat with pyproj."""
    transformer = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return np.asarray(shapely.transform(geoms, apply), dtype=object)


# --- CSV points --------------------------------------------------------------------------------


def _read_csv(path: Path) -> tuple[list[tuple[Zone, int]], list[Problem]]:
    name = path.name
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [], [Problem(name, f"cannot be read as CSV: {exc}")]
    if len(rows) > MAX_ZONES:
        return [], [_too_many_features(name, len(rows))]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        return [], [
            Problem(
                name,
                f"missing column(s) {', '.join(missing)}; a zone CSV has "
                f"columns {','.join(CSV_REQUIRED)} (name, buffer_m, valid_from, "
                "valid_until, jurisdiction optional)",
            )
        ]
    problems: list[Problem] = []
    geoms = np.empty(len(rows), dtype=object)
    records: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        zid = _text(row.get("id"))
        lat = _number(row.get("lat"), "lat", name, i, zid, problems, required=True)
        lon = _number(row.get("lon"), "lon", name, i, zid, problems, required=True)
        geoms[i] = shapely.Point(lon, lat) if lat is not None and lon is not None else None
        records.append(row)
    # A CSV is WGS84 lon/lat by definition: each row's range is checked on its own.
    zones, more = _check_features(name, records, geoms, pyproj.CRS.from_epsg(4326))
    # Rows that failed to parse lat/lon would be reported twice (bad number, empty geometry).
    bad_rows = {p.feature for p in problems}
    more = [p for p in more if not (p.feature in bad_rows and p.message == "empty geometry")]
    return zones, problems + more


# --- field parsing -----------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _text(value: Any) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # numeric ids read from GIS files come back as floats
    return str(value).strip()


def _category(
    value: Any, label: str, index: int, zid: str | None, problems: list[Problem]
) -> Category | None:
    if _missing(value):
        problems.append(Problem(label, "missing category", index, zid))
        return None
    try:
        return parse_category(value)
    except ValueError as exc:
        problems.append(Problem(label, str(exc), index, zid))
        return None


def _number(
    value: Any,
    field: str,
    label: str,
    index: int,
    zid: str | None,
    problems: list[Problem],
    required: bool = False,
) -> float | None:
    if _missing(value):
        if required:
            problems.append(Problem(label, f"missing {field}", index, zid))
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        problems.append(Problem(label, f"{field} is not a number: {value!r}", index, zid))
        return None
    if not math.isfinite(number) or (field not in ("lat", "lon") and number < 0):
        bound = "" if field in ("lat", "lon") else " and >= 0"
        problems.append(Problem(label, f"{field} must be finite{bound}, not {value!r}", index, zid))
        return None
    return number


def _time(
    value: Any, field: str, label: str, index: int, zid: str | None, problems: list[Problem]
) -> float | None:
    if _missing(value):
        return None
    text = str(value).strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        problems.append(
            Problem(
                label,
                f"{field} is not an ISO 8601 time: {text!r}",
                index,
                zid,
                hint="e.g. 2026-05-01T09:00:00-07:00",
            )
        )
        return None
    if moment.tzinfo is None:
        problems.append(
            Problem(
                label,
                f"{field} {text!r} has no UTC offset",
                index,
                zid,
                hint="add Z or an offset such as -07:00; a local time is ambiguous",
            )
        )
        return None
    return moment.timestamp()


def _in_range(b: np.ndarray) -> bool:
    return bool(
        -180 <= b[0] <= 180 and -180 <= b[2] <= 180 and -90 <= b[1] <= 90 and -90 <= b[3] <= 90
    )


def _range_problem(label: str, index: int, zid: str | None, b: np.ndarray) -> Problem:
    lon_fits_lat = b[0] >= -90 and b[2] <= 90
    lat_fits_lon = b[1] >= -180 and b[3] <= 180
    if lon_fits_lat and lat_fits_lon:
        return Problem(
            label,
            f"coordinates out of range (latitude up to "
            f"{max(abs(b[1]), abs(b[3])):g}); latitude and longitude appear swapped",
            index,
            zid,
            hint="GeoJSON and WKT order is (longitude, latitude)",
        )
    return Problem(
        label,
        f"coordinates out of range: bounds {tuple(round(float(v), 6) for v in b)}"
        " exceed longitude [-180, 180] / latitude [-90, 90]",
        index,
        zid,
        hint="is the file projected without a declared CRS?",
    )

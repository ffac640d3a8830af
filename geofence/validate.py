"""`geofence validate`: every defect of a zone folder, and a repaired copy on request.

The core loader (`geofence.zones`) already refuses what the engine cannot serve: missing or
duplicate ids, unknown categories (with the closest valid name), empty, unsupported, invalid,
out-of-range or unreadable geometry (unclosed and too-short rings named), swapped latitude and
longitude, a projected file without its CRS. This module adds the checks a person needs before
deploying, which the engine does not need to refuse a file:

- a GeoJSON file's raw rings (GDAL may close an open ring silently): `unclosed-ring`,
  `short-ring`;
- a declared CRS that does not match the coordinates (`crs-mismatch`);
- a zone crossing the antimeridian (`antimeridian`);
- a suspiciously large zone (`large-zone`, a warning: `--max-area-km2`, default 25 km²);
- `beacons.csv` and `policy.toml` problems.

`fix()` writes a repaired copy: every layer as WGS84 GeoJSON, invalid outlines made valid
(shapely.make_valid, polygonal parts kept), open rings closed, swapped coordinates swapped back,
antimeridian crossings split, a misspelt category replaced by its closest valid name; features
that cannot be repaired are dropped. Each repair and each drop is listed.

It also holds the metric helpers the tooling shares: geodesic areas, and buffers drawn in true
metres in each zone's tile frame (`geofence.geodesy`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyproj
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from geofence.beacons import load_beacon_registry
from geofence.categories import CATEGORIES
from geofence.errors import BeaconRegistryError, CompiledFileError, Problem, ProblemsError
from geofence.geodesy import Frames, tile_key
from geofence.policy import Policy
from geofence.zones import (
    CSV_SUFFIX,
    GIS_SUFFIXES,
    Zone,
    _text,
    read_zones,
    ring_defect,
    to_wgs84,
    zone_files,
)
from geofence.zoneset import BEACONS_FILE, _beside, _policy_path

DEFAULT_MAX_AREA_KM2 = 25.0
GEOD = pyproj.Geod(ellps="WGS84")
DENSIFY_DEG = 0.002  # as the index does: edges follow the lon/lat lines the files describe

# --- problem codes ------------------------------------------------------------------------------

# (code, how the message starts or a regex), first match wins. zones/README.md explains each code.
_CODES: tuple[tuple[str, str], ...] = (
    ("missing-id", r"missing id$"),
    ("duplicate-id", r"duplicate id "),
    ("unknown-category", r"(unknown|missing) category"),
    ("empty-geometry", r"empty geometry"),
    ("unsupported-geometry", r"unsupported geometry type"),
    ("non-finite", r"non-finite coordinates"),
    ("swapped-lat-lon", r"coordinates out of range \(latitude up to"),
    ("out-of-range", r"coordinates out of range"),
    ("self-intersection", r"invalid geometry: (Ring )?Self-intersection"),
    ("invalid-geometry", r"invalid geometry"),
    ("unclosed-ring", r"unclosed (polygon \d+ )?ring"),
    ("short-ring", r"too-short (polygon \d+ )?ring"),
    ("missing-crs", r"no CRS declared and the coordinates"),
    ("assumed-wgs84", r"no CRS declared; coordinates fit"),
    ("crs-mismatch", r"(declared CRS|coordinates fall outside longitude/latitude ranges after)"),
    ("antimeridian", r"zone crosses the antimeridian"),
    ("large-zone", r"suspiciously large zone"),
    ("point-radius", r"a Point zone needs radius_m"),
    (
        "bad-number",
        r"(radius_m|buffer_m|lat|lon) (is not a number|must be finite)|missing (lat|lon)",
    ),
    ("bad-time", r"valid_(from|until)"),
    ("csv-columns", r"missing column\(s\)"),
    ("unreadable-file", r"(no such file|not a zone file|cannot be read|no zone files found)"),
    ("compiled-file", r"(not a geofence compiled|checksum mismatch|format version|not a readable)"),
)


def problem_code(p: Problem) -> str:
    """A short stable code for a problem, for `--json` and zones/README.md."""
    name = Path(p.file.split(":")[0]).name
    if name == BEACONS_FILE:
        return "beacons"
    if name == "policy.toml" or p.file.startswith("pack ") or p.file == "<default policy>":
        return "policy"
    for code, pattern in _CODES:
        if re.match(pattern, p.message):
            return code
    if p.message.startswith("buffer_m ") and "below the policy" in p.message:
        return "buffer-below-policy"
    return "other"


def problem_dict(p: Problem) -> dict[str, Any]:
    return {
        "file": p.file,
        "feature": p.feature,
        "id": p.zone_id,
        "severity": p.severity,
        "code": problem_code(p),
        "message": p.message,
        "hint": p.hint,
    }


# --- measuring -----------------------------------------------------------------------------------


def geodesic_area_km2(geom: BaseGeometry) -> float:
    """Area on the WGS84 ellipsoid of a lon/lat (Multi)Polygon, in km² (0 for other types)."""
    parts: list[Any]
    if isinstance(geom, Polygon):
        parts = [geom]
    elif isinstance(geom, MultiPolygon):
        parts = list(geom.geoms)
    elif geom.geom_type == "GeometryCollection":
        return sum(geodesic_area_km2(g) for g in getattr(geom, "geoms", []))
    else:
        return 0.0
    total = 0.0
    for poly in parts:
        area, _ = GEOD.geometry_area_perimeter(orient(poly, 1.0))
        total += abs(area)
    return total / 1e6


def zone_area_km2(geometry: BaseGeometry, radius_m: float = 0.0) -> float:
    """A zone's own area: geodesic for outlines, pi r² for a point's circle."""
    if geometry.geom_type == "Point":
        return math.pi * radius_m * radius_m / 1e6
    return geodesic_area_km2(geometry)


class Buffers:
    """Zones widened by true metres, drawn in the AEQD frame of the tile holding each zone.

    A tile frame stretches lengths by under 3e-5 within 80 km of its centre, so for zones of
    ordinary size the outline is metre-exact. The result is lon/lat, densified like the index.
    """

    def __init__(self) -> None:
        self.frames = Frames()

    def widen(self, geometry: BaseGeometry, metres: float, quad_segs: int = 8) -> BaseGeometry:
        if geometry.is_empty:
            return geometry
        c = geometry.centroid
        key = int(tile_key(c.x, c.y))
        dense = shapely.segmentize(geometry, DENSIFY_DEG)

        def fwd(xy: np.ndarray) -> np.ndarray:
            x, y = self.frames.forward(key, xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        def inv(xy: np.ndarray) -> np.ndarray:
            lon, lat = self.frames.inverse(key, xy[:, 0], xy[:, 1])
            return np.column_stack([lon, lat])

        local = shapely.transform(dense, fwd)
        widened = shapely.buffer(local, metres, quad_segs=quad_segs) if metres > 0 else local
        return shapely.transform(widened, inv)

    def zone(self, zone: Zone, buffer_m: float, quad_segs: int = 8) -> BaseGeometry:
        """The zone with its buffer (and a point's radius) as a lon/lat polygon."""
        return self.widen(zone.geometry, zone.radius_m + buffer_m, quad_segs)


def protected_area_km2(
    zones: Sequence[Zone],
    buffer_m: Sequence[float],
    progress: Callable[[int], None] | None = None,
) -> tuple[float, float]:
    """(area of the union of the zones, area of the union of zones with buffers), km².

    Buffers are drawn in true metres (see `Buffers`); the union is taken in lon/lat and its area
    measured on the ellipsoid with pyproj.Geod, so overlapping zones count once.
    """
    b = Buffers()
    plain: list[BaseGeometry] = []
    wide: list[BaseGeometry] = []
    for i, (z, buf) in enumerate(zip(zones, buffer_m, strict=True)):
        plain.append(b.widen(z.geometry, z.radius_m, 8) if z.radius_m > 0 else z.geometry)
        wide.append(b.zone(z, float(buf)))
        if progress is not None:
            progress(i)
    if not zones:
        return 0.0, 0.0
    return (
        geodesic_area_km2(shapely.union_all(plain)),
        geodesic_area_km2(shapely.union_all(wide)),
    )


# --- reading features as they are written --------------------------------------------------------


@dataclass
class Layer:
    """One layer of a zone file, every feature kept (defective ones too), for checks and fixes."""

    path: Path
    label: str  # the `file` the core's problems carry: "name" or "name:layer"
    name: str | None  # the GDAL layer name
    records: list[dict[str, Any]]
    geoms: list[Any]  # in the file's CRS; None where absent or unreadable
    wgs: list[Any]  # reprojected to lon/lat (None where unavailable)
    crs: Any
    raw_rings: dict[int, list[Any]] = field(default_factory=dict)  # GeoJSON: index -> polygons

    def zone_id(self, i: int) -> str | None:
        return _text(self.records[i].get("id"))


def read_layers(path: Path) -> list[Layer]:
    """Every layer of a zone file, all features, or [] when it cannot be read (the core says)."""
    suffix = path.suffix.lower()
    if not path.exists():
        return []
    if suffix == CSV_SUFFIX:
        return _csv_layer(path)
    if suffix not in GIS_SUFFIXES:
        return []
    try:
        names = [str(row[0]) for row in pyogrio.list_layers(path)]
    except Exception:
        return []
    layers = []
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                df = pyogrio.read_dataframe(
                    path, layer=name, datetime_as_string=True, on_invalid="ignore"
                )
        except Exception:
            continue
        geoms = list(df.geometry.values)
        wgs: list[Any] = list(geoms)
        if df.crs is not None and not df.crs.equals("EPSG:4326"):
            try:
                arr = np.empty(len(geoms), dtype=object)
                arr[:] = geoms
                wgs = list(to_wgs84(arr, df.crs))
            except Exception:
                wgs = [None] * len(geoms)
        label = path.name if len(names) == 1 else f"{path.name}:{name}"
        layer = Layer(
            path, label, name, df.drop(columns="geometry").to_dict("records"), geoms, wgs, df.crs
        )
        if suffix in (".geojson", ".json"):
            layer.raw_rings = _geojson_rings(path)
        layers.append(layer)
    return layers


def _csv_layer(path: Path) -> list[Layer]:
    import csv  # noqa: PLC0415

    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    geoms: list[Any] = []
    for row in rows:
        try:
            lon, lat = float(row.get("lon") or "nan"), float(row.get("lat") or "nan")
            geoms.append(shapely.Point(lon, lat) if math.isfinite(lon + lat) else None)
        except ValueError:
            geoms.append(None)
    crs = pyproj.CRS.from_epsg(4326)
    return [Layer(path, path.name, None, [dict(r) for r in rows], geoms, list(geoms), crs)]


def _geojson_rings(path: Path) -> dict[int, list[Any]]:
    """Feature index -> list of polygons (each a list of rings of positions), from raw JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    feats = data.get("features") if isinstance(data, dict) else None
    if not isinstance(feats, list):
        return {}
    out: dict[int, list[Any]] = {}
    for i, f in enumerate(feats):
        g = f.get("geometry") if isinstance(f, dict) else None
        if not isinstance(g, dict):
            continue
        coords = g.get("coordinates")
        if g.get("type") == "Polygon" and isinstance(coords, list):
            out[i] = [coords]
        elif g.get("type") == "MultiPolygon" and isinstance(coords, list):
            out[i] = list(coords)
    return out


def _raw_ring_defects(polys: list[Any]) -> list[str]:
    multi = len(polys) > 1
    found = []
    for k, poly in enumerate(polys):
        if not isinstance(poly, list):
            continue
        for r, ring in enumerate(poly):
            if isinstance(ring, list) and all(isinstance(p, list) and len(p) >= 2 for p in ring):
                defect = ring_defect(ring, r, k if multi else None)
                if defect:
                    found.append(defect)
    return found


# --- validating ----------------------------------------------------------------------------------


@dataclass
class Report:
    """What `validate` found: the files read and every problem, in file and feature order."""

    files: list[Path]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]


def validate(
    paths: Iterable[str | Path],
    max_area_km2: float = DEFAULT_MAX_AREA_KM2,
    progress: Callable[[Path], None] | None = None,
) -> Report:
    """Check zone files, the folder's policy.toml and beacons.csv; a compiled `.gfz` is opened."""
    given = [Path(p) for p in paths]
    problems: list[Problem] = []
    compiled_files = [p for p in given if p.suffix.lower() == ".gfz"]
    sources = [p for p in given if p.suffix.lower() != ".gfz"]
    for gfz in compiled_files:
        from geofence import compiled  # noqa: PLC0415 - compiled imports zoneset

        try:
            compiled.load(gfz)
        except CompiledFileError as exc:
            problems.append(Problem(gfz.name, str(exc).removeprefix(f"{gfz}: ")))
    files = zone_files(sources) if sources else []
    if sources and not files:
        problems.append(Problem(" ".join(map(str, sources)), "no zone files found"))
    _, core = read_zones(files, progress=progress)

    extra: list[Problem] = []
    drop: set[tuple[str, int | None, str]] = set()  # core problems a sharper one replaces
    ids: set[str] = set()
    for f in files:
        for layer in read_layers(f):
            ids.update(i for i in (layer.zone_id(k) for k in range(len(layer.records))) if i)
            erring = {p.feature for p in core if p.file == layer.label and p.severity == "error"}
            extra += _crs_checks(layer)
            for i in range(len(layer.records)):
                zid = layer.zone_id(i)
                for defect in _raw_ring_defects(layer.raw_rings.get(i, [])):
                    extra.append(Problem(layer.label, defect, i, zid, hint=_ring_hint()))
                    for p in core:  # the raw ring says more than GDAL's reading of it
                        if (
                            p.file == layer.label
                            and p.feature == i
                            and (p.message.startswith(("invalid geometry", "empty geometry")))
                        ):
                            drop.add((p.file, p.feature, p.message))
                anti = _antimeridian(layer, i)
                if anti is not None:
                    extra.append(anti)
                    for p in core:
                        if (
                            p.file == layer.label
                            and p.feature == i
                            and p.message.startswith("coordinates out of range")
                        ):
                            drop.add((p.file, p.feature, p.message))
                    continue
                if i not in erring:
                    big = _large(layer, i, max_area_km2)
                    if big is not None:
                        extra.append(big)
    kept = [p for p in core if (p.file, p.feature, p.message) not in drop]
    seen = {(p.file, p.feature, p.message) for p in kept}
    for p in extra:
        if (p.file, p.feature, p.message) not in seen:
            seen.add((p.file, p.feature, p.message))
            kept.append(p)
    order = {f.name: n for n, f in enumerate(files)}
    kept.sort(
        key=lambda p: (
            order.get(p.file.split(":")[0], len(order)),
            p.file,
            -1 if p.feature is None else p.feature,
        )
    )
    problems += kept
    if sources:
        problems += _policy_and_beacons(sources, ids)
    return Report(files, problems)


def _ring_hint() -> str:
    from geofence.zones import RING_HINT  # noqa: PLC0415

    return RING_HINT


def _crs_checks(layer: Layer) -> list[Problem]:
    """A declared CRS that does not fit the coordinates written in it."""
    crs = layer.crs
    present = [g for g in layer.geoms if g is not None and not g.is_empty]
    if crs is None or not present:
        return []
    b = shapely.total_bounds(np.asarray(present, dtype=object))
    if not np.all(np.isfinite(b)):
        return []
    name = crs.to_string()
    looks_lonlat = b[0] >= -180 and b[2] <= 180 and b[1] >= -90 and b[3] <= 90
    if crs.is_projected and looks_lonlat:
        return [
            Problem(
                layer.label,
                f"declared CRS {name} is projected (metres) but the coordinates look like "
                f"longitude/latitude: x {b[0]:g}..{b[2]:g}, y {b[1]:g}..{b[3]:g}",
                hint="declare EPSG:4326 if the values are degrees; a wrong CRS moves every zone",
            )
        ]
    if crs.is_geographic and max(abs(b[0]), abs(b[2])) > 360 and max(abs(b[1]), abs(b[3])) > 90:
        return [
            Problem(
                layer.label,
                f"declared CRS {name} is longitude/latitude but the coordinates look projected "
                f"(metres): x {b[0]:.0f}..{b[2]:.0f}, y {b[1]:.0f}..{b[3]:.0f}",
                hint="declare the CRS the file was drawn in (e.g. EPSG:27700, EPSG:3067)",
            )
        ]
    area = crs.area_of_use
    if area is None or not crs.is_projected:
        return []
    wgs = [g for g in layer.wgs if g is not None and not g.is_empty]
    if not wgs:
        return []
    wb = shapely.total_bounds(np.asarray(wgs, dtype=object))
    margin = 1.0  # degrees: a CRS is often used a little beyond its nominal area
    inside = (
        area.west - margin <= wb[0]
        and wb[2] <= area.east + margin
        and area.south - margin <= wb[1]
        and wb[3] <= area.north + margin
    )
    if inside or area.west > area.east:  # areas across the antimeridian: not judged here
        return []
    return [
        Problem(
            layer.label,
            f"declared CRS {name} ({crs.name}) is meant for lon {area.west:g}..{area.east:g}, "
            f"lat {area.south:g}..{area.north:g}, but the zones land at lon "
            f"{wb[0]:.4f}..{wb[2]:.4f}, lat {wb[1]:.4f}..{wb[3]:.4f}",
            hint="check the CRS: a wrong one puts the zones somewhere else entirely",
        )
    ]


def _antimeridian(layer: Layer, i: int) -> Problem | None:
    g = layer.wgs[i]
    if g is None or g.is_empty or g.geom_type not in ("Polygon", "MultiPolygon"):
        return None
    b = g.bounds
    if not all(math.isfinite(v) for v in b) or abs(b[1]) > 90 or abs(b[3]) > 90:
        return None
    hint = "split it at ±180 into a MultiPolygon with a part on each side (`validate --fix` does)"
    if -180 <= b[0] <= 180 < b[2] < 360 or -360 < b[0] < -180 <= b[2] <= 180:
        past = b[2] if b[2] > 180 else b[0]
        return Problem(
            layer.label,
            f"zone crosses the antimeridian: longitudes run to {past:g}, past ±180",
            i,
            layer.zone_id(i),
            hint=hint,
        )
    if b[0] >= -180 and b[2] <= 180 and _widest_part(g) > 180:
        return Problem(
            layer.label,
            f"zone crosses the antimeridian: longitudes span {b[0]:g} to {b[2]:g} "
            f"({b[2] - b[0]:g}°), so as written it wraps the other way round the globe",
            i,
            layer.zone_id(i),
            hint=hint,
        )
    return None


def _widest_part(geom: BaseGeometry) -> float:
    """The largest longitude span of one polygon of `geom` (a split MultiPolygon is fine)."""
    parts = list(getattr(geom, "geoms", [geom]))
    return max(p.bounds[2] - p.bounds[0] for p in parts if not p.is_empty)


def _large(layer: Layer, i: int, limit_km2: float) -> Problem | None:
    g = layer.wgs[i]
    if g is None or g.is_empty:
        return None
    radius = 0.0
    if g.geom_type == "Point":
        try:
            radius = float(layer.records[i].get("radius_m") or 0.0)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(radius):
            return None
    area = zone_area_km2(g, radius)
    if area <= limit_km2:
        return None
    what = f"a circle of radius {radius:g} m" if g.geom_type == "Point" else "the outline"
    return Problem(
        layer.label,
        f"suspiciously large zone: {area:.1f} km² ({what}), over the {limit_km2:g} km² limit",
        i,
        layer.zone_id(i),
        severity="warning",
        hint="check the outline and radius_m (metres); raise the limit with --max-area-km2",
    )


def _policy_and_beacons(paths: Sequence[Path], zone_ids: set[str]) -> list[Problem]:
    problems: list[Problem] = []
    policy_path = _policy_path(paths)
    if policy_path is not None:
        try:
            problems += list(Policy.load(policy_path).warnings)
        except ProblemsError as exc:
            problems += exc.problems
    beacon_path = _beside(paths, BEACONS_FILE)
    if beacon_path is not None:
        try:
            found = list(load_beacon_registry(beacon_path, zone_ids).warnings)
        except BeaconRegistryError as exc:
            found = exc.problems
        problems += [dataclasses.replace(p, file=Path(p.file).name) for p in found]
    return problems


# --- repairing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repair:
    """One change `fix` made: a repair, or a feature dropped."""

    file: str
    feature: int | None
    zone_id: str | None
    action: str
    dropped: bool = False

    def __str__(self) -> str:
        where = self.file
        if self.feature is not None:
            where += f": feature {self.feature}"
        if self.zone_id is not None:
            where += f" (id {self.zone_id!r})"
        return f"{where}: {'dropped' if self.dropped else 'repaired'}: {self.action}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "feature": self.feature,
            "id": self.zone_id,
            "kind": "dropped" if self.dropped else "repaired",
            "action": self.action,
        }


# Problems no rewrite of the geometry can cure: the feature is dropped.
_UNFIXABLE = {
    "missing-id",
    "empty-geometry",
    "unsupported-geometry",
    "non-finite",
    "out-of-range",
    "point-radius",
    "bad-number",
    "bad-time",
    "crs-mismatch",
}


def fix(
    paths: Iterable[str | Path], out: str | Path, max_area_km2: float = DEFAULT_MAX_AREA_KM2
) -> tuple[list[Repair], Report]:
    """Write a repaired copy of the zone files into folder `out`; return repairs and its report.

    Every layer becomes `<stem>.geojson` (or `<stem>_<layer>.geojson`) in WGS84. policy.toml
    and beacons.csv are copied unchanged. The copy is validated again; any feature that still
    has an error is dropped, so the result has no zone errors (policy and beacon errors, which
    no rewrite of the zones cures, are reported as they are).
    """
    sources = [Path(p) for p in paths]
    out_dir = Path(out)
    for src in sources:
        folder = src if src.is_dir() else src.parent
        if out_dir.resolve() == folder.resolve():
            raise ValueError(f"--fix -o {out_dir}: write the repaired copy to another folder")
    report = validate(sources, max_area_km2)
    by_feature: dict[tuple[str, int | None], list[Problem]] = {}
    for p in report.problems:
        by_feature.setdefault((p.file, p.feature), []).append(p)
    out_dir.mkdir(parents=True, exist_ok=True)
    repairs: list[Repair] = []
    written: dict[Path, list[tuple[str, int, str | None]]] = {}
    for f in report.files:
        layers = read_layers(f)
        if not layers:
            repairs.append(Repair(f.name, None, None, "cannot be read: not copied", True))
            continue
        for layer in layers:
            file_level = [p for p in by_feature.get((layer.label, None), [])]
            if any(problem_code(p) in ("crs-mismatch", "missing-crs") for p in file_level):
                repairs.append(
                    Repair(layer.label, None, None, "the CRS does not fit: layer not copied", True)
                )
                continue
            if layer.crs is not None and not layer.crs.equals("EPSG:4326"):
                repairs.append(
                    Repair(
                        layer.label,
                        None,
                        None,
                        f"reprojected from {layer.crs.to_string()} to WGS84",
                    )
                )
            elif layer.crs is None:
                repairs.append(Repair(layer.label, None, None, "no CRS: written as WGS84"))
            name = layer.path.stem + (f"_{layer.name}" if layer.label != layer.path.name else "")
            target = out_dir / f"{name}.geojson"
            feats = []
            for i, rec in enumerate(layer.records):
                feat, done = _fix_feature(layer, i, rec, by_feature.get((layer.label, i), []))
                repairs += done
                if feat is not None:
                    feats.append(feat)
            _write_features(target, feats)
            written[target] = [(layer.label, i, layer.zone_id(i)) for i in range(len(feats))]
    for extra in ("policy.toml", BEACONS_FILE):
        src_file = _beside(sources, extra)
        if src_file is not None:
            shutil.copyfile(src_file, out_dir / extra)
    # Validate the copy; drop whatever still fails (e.g. a duplicate id), until it is clean.
    for _ in range(3):
        again = validate([out_dir], max_area_km2)
        bad = {
            (p.file, p.feature)
            for p in again.errors
            if p.feature is not None and p.file.endswith(".geojson")
        }
        if not bad:
            return repairs, again
        for target in list(written):
            data = json.loads(target.read_text(encoding="utf-8"))
            keep = []
            for k, feat in enumerate(data["features"]):
                if (target.name, k) in bad:
                    why = "; ".join(
                        p.message for p in again.errors if (p.file, p.feature) == (target.name, k)
                    )
                    props = feat.get("properties") or {}
                    repairs.append(
                        Repair(
                            target.name, k, _text(props.get("id")), f"still defective: {why}", True
                        )
                    )
                else:
                    keep.append(feat)
            _write_features(target, keep)
    return repairs, validate([out_dir], max_area_km2)


def _fix_feature(
    layer: Layer, i: int, rec: dict[str, Any], problems: list[Problem]
) -> tuple[dict[str, Any] | None, list[Repair]]:
    zid = layer.zone_id(i)
    label = layer.label
    codes = {problem_code(p) for p in problems if p.severity == "error"}
    done: list[Repair] = []

    def drop(why: str) -> tuple[None, list[Repair]]:
        return None, [*done, Repair(label, i, zid, why, True)]

    unfixable = sorted(codes & _UNFIXABLE)
    if unfixable:
        msgs = "; ".join(p.message for p in problems if problem_code(p) in _UNFIXABLE)
        return drop(msgs)
    props = {k: _plain(v) for k, v in rec.items() if _plain(v) is not None}
    if "unknown-category" in codes:
        close = difflib.get_close_matches(
            str(rec.get("category") or "").strip().lower(),
            [c.value for c in CATEGORIES],
            n=1,
            cutoff=0.75,
        )
        if not close:
            return drop(f"unknown category {rec.get('category')!r} with no close valid name")
        done.append(Repair(label, i, zid, f"category {rec.get('category')!r} -> {close[0]!r}"))
        props["category"] = close[0]
    geom = layer.wgs[i]
    if codes & {"unclosed-ring", "short-ring"}:
        polys = layer.raw_rings.get(i)
        rebuilt = _rebuild_rings(polys) if polys else None
        if rebuilt is None:
            return drop("rings cannot be rebuilt")
        geom = rebuilt
        done.append(Repair(label, i, zid, "closed open rings and dropped rings under 3 corners"))
    if geom is None:
        return drop("no geometry")
    if "swapped-lat-lon" in codes:
        geom = shapely.transform(geom, lambda xy: xy[:, ::-1])
        done.append(Repair(label, i, zid, "swapped latitude and longitude back"))
    if "antimeridian" in codes:
        geom = split_antimeridian(geom)
        done.append(Repair(label, i, zid, f"split at the antimeridian into {_parts(geom)}"))
    if geom.geom_type in ("Polygon", "MultiPolygon") and not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        geom = _polygonal(shapely.make_valid(geom))
        if geom is None:
            return drop(f"make_valid left no area ({reason})")
        done.append(Repair(label, i, zid, f"made valid ({reason}): now {_parts(geom)}"))
    return {
        "type": "Feature",
        "properties": props,
        "geometry": shapely.geometry.mapping(geom),
    }, done


def _parts(geom: BaseGeometry) -> str:
    if isinstance(geom, MultiPolygon):
        return f"a MultiPolygon of {len(geom.geoms)} parts"
    return f"a {geom.geom_type}"


def _plain(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    parts: list[Polygon] = []
    stack = [geom]
    while stack:
        g = stack.pop()
        if isinstance(g, Polygon):
            if not g.is_empty and g.area > 0:
                parts.append(g)
        elif hasattr(g, "geoms"):
            stack.extend(g.geoms)
    if not parts:
        return None
    merged = shapely.union_all(parts)
    return merged if not merged.is_empty else None


def _rebuild_rings(polys: list[Any]) -> BaseGeometry | None:
    out = []
    for poly in polys:
        rings = []
        for ring in poly:
            pts = [tuple(p[:2]) for p in ring]
            if pts and pts[0] != pts[-1]:
                pts.append(pts[0])
            if len(set(pts)) >= 3:
                rings.append(pts)
            elif not rings:
                break  # the outer ring is degenerate: the polygon is gone
        if rings:
            out.append(Polygon(rings[0], rings[1:]))
    if not out:
        return None
    return out[0] if len(out) == 1 else MultiPolygon(out)


def split_antimeridian(geom: BaseGeometry) -> BaseGeometry:
    """Split a lon/lat outline that crosses ±180 into parts on each side, in [-180, 180]."""
    b = geom.bounds
    if b[0] >= -180 and b[2] <= 180 and _widest_part(geom) > 180:
        # Written with longitudes on both sides (179 ... -179): move the west side east by 360.
        geom = shapely.transform(
            geom,
            lambda xy: np.column_stack(
                [np.where(xy[:, 0] < 0, xy[:, 0] + 360, xy[:, 0]), xy[:, 1]]
            ),
        )
    shifted = shapely.transform(
        geom, lambda xy: np.column_stack([xy[:, 0] + 360 if b[0] < -180 else xy[:, 0], xy[:, 1]])
    )
    east = shapely.intersection(shifted, shapely.box(-180, -90, 180, 90))
    west = shapely.intersection(shifted, shapely.box(180, -90, 540, 90))
    west = shapely.transform(west, lambda xy: np.column_stack([xy[:, 0] - 360, xy[:, 1]]))
    parts = [p for p in (_polygonal(east), _polygonal(west)) if p is not None]
    polys: list[Polygon] = []
    for p in parts:
        polys += list(p.geoms) if isinstance(p, MultiPolygon) else [p]  # type: ignore[list-item]
    return MultiPolygon(polys) if len(polys) > 1 else polys[0]


def _write_features(path: Path, feats: list[dict[str, Any]]) -> None:
    lines = ",\n".join(json.dumps(f, ensure_ascii=False, separators=(",", ":")) for f in feats)
    path.write_text(
        '{"type":"FeatureCollection","features":[\n' + lines + "\n]}\n", encoding="utf-8"
    )

"""Import OpenStreetMap extracts (`.osm.pbf`, `.osm`) as zone files: `geofence import-osm`.

Reads with GDAL's OSM driver through pyogrio:
- layer `multipolygons`: closed ways with an area tag and multipolygon relations (inner rings
  kept as holes). GDAL gives relations an `osm_id` and ways an `osm_way_id`, so the stable ids
  are `osm:relation/<id>` and `osm:way/<id>`;
- layer `lines`: closed ways whose only tags GDAL does not count as area tags (for example a way
  tagged just `healthcare=clinic`) become polygons, `osm:way/<id>`;
- layer `points`: nodes, written as Point zones with `radius_m`, `osm:node/<id>`.

Tags are mapped to categories by ONE table, `geofence/osm_categories.toml` (first matching rule
wins; see the comments in that file). Features whose tags no rule maps are not sensitive and are
counted as "unmapped"; features that map to a category but cannot be used (no geometry, an
invalid outline at the extract's edge, an open way) are counted as skipped, with the reason.
A defective outline is skipped, never repaired: a repaired outline is a guess about where a
protected place is, and the report names each one so it can be fixed in OSM.

Output is deterministic: features sorted by id, coordinates snapped to a 1e-7 degree grid
(about 1 cm), rings oriented as RFC 7946 asks.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pyogrio
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from geofence.categories import Category, parse_category
from geofence.errors import Problem, ProblemsError

MAPPING_FILE = "osm_categories.toml"
SKIP = "skip"
DEFAULT_RADIUS_M = 50.0
DEGREE_GRID = 1e-7
ODBL = "© OpenStreetMap contributors, ODbL 1.0"
# Columns of GDAL's OSM layers that are not tags.
NOT_TAG_COLUMNS = frozenset({"geometry", "other_tags", "osm_id", "osm_way_id", "name"})
LAYERS = ("multipolygons", "lines", "points")

# --- the mapping table -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the mapping: every key of `tags` must match, no key of `unless` may."""

    tags: Mapping[str, frozenset[str]]
    category: Category | None  # None: "skip", not a protected place
    unless: Mapping[str, frozenset[str]] = field(default_factory=dict)
    why: str = ""
    number: int = 0  # 1-based position in the table

    def matches(self, tags: Mapping[str, str]) -> bool:
        return all(_value_matches(tags.get(k), v) for k, v in self.tags.items()) and not any(
            _value_matches(tags.get(k), v) for k, v in self.unless.items()
        )

    def describe(self) -> str:
        def part(spec: Mapping[str, frozenset[str]]) -> str:
            return " and ".join(f"{k}={'|'.join(sorted(v))}" for k, v in spec.items())

        text = part(self.tags)
        if self.unless:
            text += f" (not {part(self.unless)})"
        return text

    def matched_tags(self, tags: Mapping[str, str]) -> str:
        """The feature's own tags that made this rule match, e.g. `amenity=doctors`."""
        return ";".join(f"{k}={tags[k]}" for k in self.tags if k in tags)


def _value_matches(value: str | None, allowed: frozenset[str]) -> bool:
    if value is None:
        return False
    values = [v.strip() for v in value.split(";")]
    if "*" in allowed and any(v and v != "no" for v in values):
        return True
    return any(v in allowed for v in values)


@dataclass(frozen=True, slots=True)
class CategoryMapping:
    """The ordered rules of a mapping table; the first rule that matches decides."""

    rules: tuple[Rule, ...]
    source: str

    def match(self, tags: Mapping[str, str]) -> Rule | None:
        for rule in self.rules:
            if rule.matches(tags):
                return rule
        return None

    def categorize(self, tags: Mapping[str, str]) -> Category | None:
        """The category of a feature with these tags, or None (skipped or unmapped)."""
        rule = self.match(tags)
        return rule.category if rule is not None else None

    def table(self) -> list[tuple[str, str, str]]:
        """(tags, category, why) per rule, in order: for documentation and --show-mapping."""
        return [(r.describe(), r.category.value if r.category else SKIP, r.why) for r in self.rules]


def load_mapping(path: str | Path | None = None) -> CategoryMapping:
    """Read a mapping table (the packaged one by default); raise ProblemsError on any defect."""
    if path is None:
        text = (resources.files("geofence") / MAPPING_FILE).read_text(encoding="utf-8")
        where = f"geofence/{MAPPING_FILE}"
    else:
        where = str(path)
        text = Path(path).read_text(encoding="utf-8")
    problems: list[Problem] = []
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problem = Problem(where, f"not valid TOML: {exc}")
        raise ProblemsError([problem], "mapping problem(s)") from None
    raw_rules = data.get("rule")
    if not isinstance(raw_rules, list) or not raw_rules:
        problems.append(Problem(where, "no [[rule]] tables", hint="see geofence/" + MAPPING_FILE))
        raw_rules = []
    rules: list[Rule] = []
    for n, raw in enumerate(raw_rules, start=1):
        here = f"{where}: rule {n}"
        if not isinstance(raw, dict):
            problems.append(Problem(here, "a rule must be a table"))
            continue
        unknown = set(raw) - {"tags", "unless", "category", "why"}
        if unknown:
            problems.append(Problem(here, f"unknown key(s) {', '.join(sorted(unknown))}"))
        tags = _tag_spec(raw.get("tags"), here, "tags", problems, required=True)
        unless = _tag_spec(raw.get("unless", {}), here, "unless", problems, required=False)
        cat_text = raw.get("category")
        category: Category | None = None
        if cat_text != SKIP:
            try:
                category = parse_category(cat_text)
            except ValueError as exc:
                problems.append(Problem(here, f"{exc} (or {SKIP!r})"))
                continue
        rules.append(Rule(tags, category, unless, str(raw.get("why", "")), n))
    if problems:
        raise ProblemsError(problems, "mapping problem(s)")
    return CategoryMapping(tuple(rules), where)


def _tag_spec(
    raw: Any, where: str, key: str, problems: list[Problem], required: bool
) -> dict[str, frozenset[str]]:
    if not isinstance(raw, dict) or (required and not raw):
        problems.append(
            Problem(where, f"{key!r} must be a table of tag = [values], e.g. {{ amenity = [...] }}")
        )
        return {}
    spec: dict[str, frozenset[str]] = {}
    for tag, given in raw.items():
        values = [given] if isinstance(given, str) else given
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) and v for v in values)
        ):
            problems.append(Problem(where, f"{key}.{tag} must be a list of non-empty strings"))
            continue
        spec[str(tag)] = frozenset(values)
    return spec


# --- reading tags ------------------------------------------------------------------------------

_HSTORE = re.compile(r'"((?:[^"\\]|\\.)*)"=>"((?:[^"\\]|\\.)*)"')


def parse_other_tags(text: object) -> dict[str, str]:
    """Parse GDAL's OSM `other_tags` (hstore text: "k"=>"v","k2"=>"v2") into a dict."""
    if not isinstance(text, str) or not text:
        return {}

    def unescape(s: str) -> str:
        return s.replace('\\"', '"').replace("\\\\", "\\")

    return {unescape(k): unescape(v) for k, v in _HSTORE.findall(text)}


def tag_columns(columns: Iterable[str]) -> list[str]:
    """The columns of a GDAL OSM layer that hold tags (besides `other_tags`)."""
    return [c for c in columns if c not in NOT_TAG_COLUMNS]


def tags_of(row: Mapping[str, Any], columns: Iterable[str]) -> dict[str, str]:
    """All tags of one OSM feature: the driver's own tag columns plus `other_tags`."""
    tags = parse_other_tags(row.get("other_tags"))
    for col in columns:
        value = row.get(col)
        if isinstance(value, str) and value:
            tags[col] = value
    return tags


@contextmanager
def gdal_config(options: dict[str, str]) -> Iterator[None]:
    """Set GDAL config options for the duration of a block."""
    previous = {k: pyogrio.get_gdal_config_option(k) for k in options}
    pyogrio.set_gdal_config_options(options)
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options(previous)


def read_osm_layer(path: str | Path, layer: str) -> Any:
    """One layer of an OSM extract as a GeoDataFrame; unusable WKB comes back as None.

    Unclosed rings are refused rather than silently closed (OGR_GEOMETRY_ACCEPT_UNCLOSED_RING
    = NO), so a relation broken at the extract's edge is skipped and reported, not guessed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with gdal_config({"OGR_GEOMETRY_ACCEPT_UNCLOSED_RING": "NO"}):
            return pyogrio.read_dataframe(path, layer=layer, on_invalid="ignore")


# --- importing ---------------------------------------------------------------------------------


@dataclass
class OsmImport:
    """The result of importing one extract."""

    source: str
    features: list[dict[str, Any]] = field(default_factory=list)  # id, name, category, geometry..
    categories: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # mapped, but unusable: reason -> n
    skipped_ids: list[tuple[str, str, str]] = field(default_factory=list)  # (id, category, why)
    not_sensitive: int = 0  # matched a "skip" rule (e.g. pharmacies)
    unmapped: int = 0  # no rule matched: not a protected place
    per_layer: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "zones": len(self.features),
            "categories": dict(sorted(self.categories.items())),
            "per_layer": dict(sorted(self.per_layer.items())),
            "skipped": sum(self.skipped.values()),
            "skipped_reasons": dict(sorted(self.skipped.items())),
            "skipped_features": [
                {"id": i, "category": c, "reason": r} for i, c, r in self.skipped_ids
            ],
            "not_sensitive": self.not_sensitive,
            "unmapped": self.unmapped,
        }


def import_osm(
    path: str | Path,
    radius_m: float = DEFAULT_RADIUS_M,
    mapping: CategoryMapping | None = None,
    progress: Callable[[str], None] | None = None,
) -> OsmImport:
    """Read an OSM extract and map its sensitive places to zones (see the module docstring)."""
    if not radius_m > 0:
        raise ValueError(f"radius_m must be > 0, not {radius_m!r}")
    p = Path(path)
    rules = mapping or load_mapping()
    result = OsmImport(source=f"OSM extract {p.name}, {ODBL}")
    seen: set[str] = set()
    for layer in LAYERS:
        if progress is not None:
            progress(layer)
        df = read_osm_layer(p, layer)
        columns = tag_columns(df.columns)
        for row in df.to_dict("records"):
            tags = tags_of(row, columns)
            if not tags:
                result.unmapped += 1
                continue
            rule = rules.match(tags)
            if rule is None:
                result.unmapped += 1
                continue
            if rule.category is None:
                result.not_sensitive += 1
                continue
            category = rule.category.value
            zid, geom, why = _zone_geometry(layer, row)
            if zid is None:
                continue
            if why is None and zid in seen:
                why = "duplicate OSM id"
            if why is not None:
                result.skipped[why] += 1
                result.skipped_ids.append((zid, category, why))
                continue
            seen.add(zid)
            name = row.get("name")
            feat: dict[str, Any] = {
                "id": zid,
                "name": name if isinstance(name, str) else "",
                "category": category,
                "geometry": geom,
                "osm_tags": rule.matched_tags(tags),
            }
            if geom is not None and geom.geom_type == "Point":
                feat["radius_m"] = radius_m
            result.features.append(feat)
            result.categories[category] += 1
            result.per_layer[layer] += 1
    result.features.sort(key=lambda f: f["id"])
    result.skipped_ids.sort()
    return result


def _osm_id(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if text.endswith(".0"):
        text = text[:-2]
    return text or None


def _zone_geometry(layer: str, row: Mapping[str, Any]) -> tuple[str | None, Any, str | None]:
    """(zone id, usable geometry or None, why it cannot be used or None)."""
    geom = row.get("geometry")
    if layer == "points":
        osm = _osm_id(row.get("osm_id"))
        if osm is None:
            return None, None, None
        zid = f"osm:node/{osm}"
        if geom is None or geom.is_empty:
            return zid, None, "null geometry"
        x, y = float(geom.x), float(geom.y)
        if not (-180 <= x <= 180 and -90 <= y <= 90):
            return zid, None, "coordinates out of range"
        return zid, shapely.Point(_r7(x), _r7(y)), None
    if layer == "lines":
        osm = _osm_id(row.get("osm_id"))
        if osm is None:
            return None, None, None
        zid = f"osm:way/{osm}"
        if geom is None or geom.is_empty:
            return zid, None, "null geometry"
        if geom.geom_type != "LineString" or not geom.is_closed or len(geom.coords) < 4:
            return zid, None, "open way: not an area"
        geom = Polygon(geom.coords)
    else:
        way = _osm_id(row.get("osm_way_id"))
        rel = _osm_id(row.get("osm_id"))
        if way is not None:
            zid = f"osm:way/{way}"
        elif rel is not None:
            zid = f"osm:relation/{rel}"
        else:
            return None, None, None
        if geom is None:
            return (
                zid,
                None,
                "null geometry (a broken or unclosed ring, e.g. at the extract's edge)",
            )
    if geom.is_empty:
        return zid, None, "empty geometry"
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        return zid, None, f"invalid geometry ({reason.split('[')[0]})"
    snapped = snap_area(geom)
    if snapped is None:
        return zid, None, "collapsed or invalid after snapping to 1e-7 degrees"
    return zid, snapped, None


def _r7(x: float) -> float:
    v = round(float(x), 7)
    return 0.0 if v == 0 else v


def snap_area(geom: BaseGeometry, grid: float = DEGREE_GRID) -> Polygon | MultiPolygon | None:
    """Snap a valid (Multi)Polygon to `grid`, one part becoming a Polygon; None if it breaks.

    Rings are oriented per RFC 7946 (exterior counter-clockwise, holes clockwise).
    """
    snapped = shapely.set_precision(geom, grid)
    if snapped.is_empty:
        return None
    out: Polygon | MultiPolygon
    if isinstance(snapped, Polygon):
        out = orient(snapped, 1.0)
    elif isinstance(snapped, MultiPolygon):
        parts = sorted((orient(p, 1.0) for p in snapped.geoms), key=lambda p: p.bounds)
        out = MultiPolygon(parts) if len(parts) > 1 else parts[0]
    else:
        return None
    return out if out.is_valid and not out.is_empty else None


def _rounded(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        if obj and isinstance(obj[0], (int, float)):
            return [_r7(c) for c in obj]
        return [_rounded(o) for o in obj]
    return obj


def geojson_geometry(geom: BaseGeometry) -> dict[str, Any]:
    m = mapping(geom)
    return {"type": m["type"], "coordinates": _rounded(m["coordinates"])}


def write_geojson(result: OsmImport, path: str | Path) -> Path:
    """Write the imported zones as a GeoJSON zone file, one feature per line, sorted by id."""
    out = Path(path)
    lines = []
    for f in result.features:
        props: dict[str, Any] = {"id": f["id"], "name": f["name"], "category": f["category"]}
        if "radius_m" in f:
            props["radius_m"] = f["radius_m"]
        props["source"] = result.source
        props["osm_tags"] = f["osm_tags"]
        feat = {"type": "Feature", "properties": props, "geometry": geojson_geometry(f["geometry"])}
        lines.append(json.dumps(feat, ensure_ascii=False, separators=(",", ":")))
    name = json.dumps(out.name.split(".")[0])
    text = (
        f'{{"type":"FeatureCollection","name":{name},"features":[\n' + ",\n".join(lines) + "\n]}\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out

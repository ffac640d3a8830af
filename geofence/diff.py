"""`geofence diff OLD NEW`: what changed between two zone sets (folders or compiled `.gfz`).

Zones are matched by id first. Of the ids in both sets, each is compared for:
- `moved`: the centroid moved more than `move_tolerance_m` (geodesic distance, pyproj.Geod);
- `reshaped`: with the move taken out, the outline differs by more than `shape_tolerance_m`
  (Hausdorff distance in metres, in an azimuthal equidistant frame on the zone), or a point's
  radius changed;
- `recategorised`: the category changed;
- `buffer`: the zone's effective buffer changed because of its own `buffer_m`;
- `attributes`: name, validity times, jurisdiction or source changed.
Ids only in NEW are `added` and only in OLD `removed`; but a removed zone that has an added twin
(same category, outline within `reid_tolerance_m`) is reported once, as `id_changed`. That
spatial match uses an rtree index, which takes inserts as the added zones are read.
A policy edit shows per category: `policy_buffer` and `policy_lookback`, with what set each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyproj
import shapely
from rtree import index as rtree_index
from shapely.geometry.base import BaseGeometry

from geofence.categories import Category
from geofence.geodesy import degree_margins
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

GEOD = pyproj.Geod(ellps="WGS84")
MOVE_TOLERANCE_M = 1.0
SHAPE_TOLERANCE_M = 1.0
REID_TOLERANCE_M = 5.0

KINDS = (
    "added",
    "removed",
    "id_changed",
    "moved",
    "reshaped",
    "recategorised",
    "buffer",
    "attributes",
    "policy_buffer",
    "policy_lookback",
)


@dataclass(frozen=True)
class Change:
    """One difference. `id` names the zone (or `category` the policy rule) it is about."""

    kind: str
    id: str | None = None
    category: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"change": self.kind}
        if self.id is not None:
            out["id"] = self.id
        if self.category is not None:
            out["category"] = self.category
        out.update(self.detail)
        return out

    def __str__(self) -> str:
        d = self.detail
        head = f"{self.kind:<15}"
        if self.kind in ("added", "removed"):
            return f"{head}{self.id}  {self.category}  {d.get('name', '')!r}  ({d.get('source')})"
        if self.kind == "id_changed":
            return f"{head}{d['old_id']} -> {self.id}  ({d['distance_m']:.1f} m apart)"
        if self.kind == "moved":
            return f"{head}{self.id}  {d['distance_m']:.1f} m (centroid)"
        if self.kind == "reshaped":
            parts = []
            if "hausdorff_m" in d:
                parts.append(f"outline off by up to {d['hausdorff_m']:.1f} m")
            if "old_area_m2" in d:
                parts.append(f"area {d['old_area_m2']:.0f} -> {d['new_area_m2']:.0f} m²")
            if "old_radius_m" in d:
                parts.append(f"radius {d['old_radius_m']:g} -> {d['new_radius_m']:g} m")
            return f"{head}{self.id}  " + ", ".join(parts)
        if self.kind == "recategorised":
            return f"{head}{self.id}  {d['old']} -> {d['new']}"
        if self.kind == "buffer":
            return f"{head}{self.id}  {d['old_m']:g} -> {d['new_m']:g} m"
        if self.kind == "attributes":
            fields = ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in d["fields"].items())
            return f"{head}{self.id}  {fields}"
        if self.kind == "policy_buffer":
            return (
                f"{head}{self.category}  {d['old_m']:g} -> {d['new_m']:g} m "
                f"({d['zones']} zone(s); now set by {d['set_by']})"
            )
        if self.kind == "policy_lookback":
            return f"{head}{self.category}  {d['old_days']:g} -> {d['new_days']:g} days"
        return f"{head}{self.id or self.category}  {d}"


@dataclass
class ZoneSetDiff:
    old_version: str
    new_version: str
    changes: list[Change]

    @property
    def equal(self) -> bool:
        return not self.changes

    def counts(self) -> dict[str, int]:
        return {k: sum(c.kind == k for c in self.changes) for k in KINDS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "old_version": self.old_version,
            "new_version": self.new_version,
            "equal": self.equal,
            "counts": self.counts(),
            "changes": [c.to_dict() for c in self.changes],
        }


def diff_zone_sets(
    old: ZoneSet,
    new: ZoneSet,
    move_tolerance_m: float = MOVE_TOLERANCE_M,
    shape_tolerance_m: float = SHAPE_TOLERANCE_M,
    reid_tolerance_m: float = REID_TOLERANCE_M,
) -> ZoneSetDiff:
    """Every difference between two compiled zone sets (see the module docstring)."""
    changes: list[Change] = []
    old_by = {z.id: i for i, z in enumerate(old.zones)}
    new_by = {z.id: i for i, z in enumerate(new.zones)}
    removed = [i for zid, i in old_by.items() if zid not in new_by]
    added = [i for zid, i in new_by.items() if zid not in old_by]

    # Re-identified zones: an added zone in the place of a removed one.
    twins = _match_spatially(
        [old.zones[i] for i in removed], [new.zones[i] for i in added], reid_tolerance_m
    )
    matched_old = {removed[a] for a, _, _ in twins}
    matched_new = {added[b] for _, b, _ in twins}
    for a, b, dist in twins:
        o, n = old.zones[removed[a]], new.zones[added[b]]
        changes.append(
            Change("id_changed", n.id, n.category.value, {"old_id": o.id, "distance_m": dist})
        )
    for i in added:
        if i not in matched_new:
            z = new.zones[i]
            changes.append(Change("added", z.id, z.category.value, _about(z)))
    for i in removed:
        if i not in matched_old:
            z = old.zones[i]
            changes.append(Change("removed", z.id, z.category.value, _about(z)))

    for zid, i in old_by.items():
        j = new_by.get(zid)
        if j is None:
            continue
        o, n = old.zones[i], new.zones[j]
        changes += _compare(o, n, move_tolerance_m, shape_tolerance_m)
        if o.buffer_m != n.buffer_m and float(old.buffer_m[i]) != float(new.buffer_m[j]):
            changes.append(
                Change(
                    "buffer",
                    zid,
                    n.category.value,
                    {"old_m": float(old.buffer_m[i]), "new_m": float(new.buffer_m[j])},
                )
            )

    counts = new.counts_by_category()
    for c in Category:
        ro, rn = old.policy.rule(c), new.policy.rule(c)
        if ro.buffer_m != rn.buffer_m:
            changes.append(
                Change(
                    "policy_buffer",
                    None,
                    c.value,
                    {
                        "old_m": ro.buffer_m,
                        "new_m": rn.buffer_m,
                        "old_set_by": ro.set_by,
                        "set_by": rn.set_by,
                        "zones": counts.get(c, 0),
                    },
                )
            )
        if ro.lookback_days != rn.lookback_days:
            changes.append(
                Change(
                    "policy_lookback",
                    None,
                    c.value,
                    {"old_days": ro.lookback_days, "new_days": rn.lookback_days},
                )
            )
    order = {k: n for n, k in enumerate(KINDS)}
    changes.sort(key=lambda ch: (order[ch.kind], ch.id or "", ch.category or ""))
    return ZoneSetDiff(old.version, new.version, changes)


def _about(z: Zone) -> dict[str, Any]:
    c = z.geometry.centroid
    return {"name": z.name, "source": z.source, "lon": round(c.x, 7), "lat": round(c.y, 7)}


def _compare(o: Zone, n: Zone, move_tol: float, shape_tol: float) -> list[Change]:
    out: list[Change] = []
    if o.category != n.category:
        out.append(
            Change(
                "recategorised",
                n.id,
                n.category.value,
                {"old": o.category.value, "new": n.category.value},
            )
        )
    if not o.geometry.equals_exact(n.geometry, 0.0) or o.radius_m != n.radius_m:
        co, cn = o.geometry.centroid, n.geometry.centroid
        _, _, dist = GEOD.inv(co.x, co.y, cn.x, cn.y)
        if dist > move_tol:
            out.append(Change("moved", n.id, n.category.value, {"distance_m": round(dist, 3)}))
        detail: dict[str, Any] = {}
        if o.geometry.geom_type != "Point" or n.geometry.geom_type != "Point":
            hd = _hausdorff_m(o.geometry, n.geometry, (cn.x - co.x, cn.y - co.y), cn)
            if hd > shape_tol:
                detail["hausdorff_m"] = round(hd, 3)
                detail["old_area_m2"] = round(_area_m2(o.geometry), 1)
                detail["new_area_m2"] = round(_area_m2(n.geometry), 1)
        if o.radius_m != n.radius_m:
            detail["old_radius_m"] = o.radius_m
            detail["new_radius_m"] = n.radius_m
        if detail:
            out.append(Change("reshaped", n.id, n.category.value, detail))
    fields = {
        k: (getattr(o, k), getattr(n, k))
        for k in ("name", "valid_from", "valid_until", "jurisdiction", "source")
        if getattr(o, k) != getattr(n, k)
    }
    if fields:
        out.append(Change("attributes", n.id, n.category.value, {"fields": fields}))
    return out


def _aeqd(center: Any) -> pyproj.Transformer:
    return pyproj.Transformer.from_proj(
        pyproj.Proj("EPSG:4326"),
        pyproj.Proj(proj="aeqd", lat_0=center.y, lon_0=center.x, ellps="WGS84"),
        always_xy=True,
    )


def _to_metres(geom: BaseGeometry, t: pyproj.Transformer) -> BaseGeometry:
    def fwd(xy: np.ndarray) -> np.ndarray:
        x, y = t.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, fwd)


def _hausdorff_m(
    old: BaseGeometry, new: BaseGeometry, shift: tuple[float, float], center: Any
) -> float:
    """Hausdorff distance in metres between `new` and `old` moved by `shift` degrees."""
    t = _aeqd(center)
    moved = shapely.transform(old, lambda xy: xy + np.asarray(shift))
    return float(shapely.hausdorff_distance(_to_metres(moved, t), _to_metres(new, t), densify=0.25))


def _area_m2(geom: BaseGeometry) -> float:
    if geom.geom_type == "Point":
        return 0.0
    area, _ = GEOD.geometry_area_perimeter(geom)
    return abs(area)


def _match_spatially(
    removed: list[Zone], added: list[Zone], tolerance_m: float
) -> list[tuple[int, int, float]]:
    """Pairs (removed index, added index, distance) of the same place under a new id."""
    if not removed or not added:
        return []
    idx = rtree_index.Index()
    for j, z in enumerate(added):
        idx.insert(j, z.geometry.bounds)
    pairs: list[tuple[int, int, float]] = []
    taken: set[int] = set()
    for i, z in enumerate(removed):
        b = z.geometry.bounds
        dlon, dlat = degree_margins(tolerance_m, max(abs(b[1]), abs(b[3])))
        box = (b[0] - float(dlon), b[1] - float(dlat), b[2] + float(dlon), b[3] + float(dlat))
        best: tuple[float, int] | None = None
        for j in idx.intersection(box):
            n = added[j]
            if j in taken or n.category != z.category or n.radius_m != z.radius_m:
                continue
            t = _aeqd(n.geometry.centroid)
            d = float(
                shapely.hausdorff_distance(_to_metres(z.geometry, t), _to_metres(n.geometry, t))
            )
            if d <= tolerance_m and (best is None or d < best[0]):
                best = (d, j)
        if best is not None:
            taken.add(best[1])
            idx.delete(best[1], added[best[1]].geometry.bounds)
            pairs.append((i, best[1], round(best[0], 3)))
    return pairs


def summary_line(d: ZoneSetDiff) -> str:
    counts = d.counts()
    parts = [f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if n]
    if not parts:
        return f"equal: {d.old_version} and {d.new_version} have the same zones and policy"
    return f"{d.old_version} -> {d.new_version}: " + ", ".join(parts)

"""Where is a point relative to the zones? The exact spatial index behind every decision.

`ExactIndex` answers, for arrays of (lon, lat, accuracy, time), which zone (if any) the accuracy
circle reaches within its buffer, whether the point is inside a zone, and which zones the device
was present in. Candidates come from a packed box tree (`BoxTree`: the zone set is static, it
is rebuilt, not edited, on reload) over each zone's reach box; each candidate is then measured
exactly, in true metres, in the AEQD frame of the zone's tile (see `geodesy`). Zones spanning
several tiles are cut at tile edges so every piece is measured in a frame centred near it; the
distance to a zone is the least distance to its pieces.

The pieces are kept as flat coordinate arrays (`FlatParts`), measured by a compiled loop over
their segments, not as shapely geometries: at 1M zones prepared geometries were 0.67 GB on top
of the arrays the grid reads anyway. tests/test_index.py holds that loop to shapely's distances
on the same projected pieces.

Anything faster must give the same `Located` answer or a more conservative one (issue 6 puts a
precomputed grid in front of this index; this class stays the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import shapely

from geofence.boxtree import BoxTree
from geofence.geodesy import (
    FRAME_SLACK_M,
    FRAME_STRETCH,
    TILE_DEG,
    Frames,
    degree_margins,
    tile_key,
)
from geofence.kernels import FlatParts, groups, pair_distances, unique_in_runs

# Polygon edges are straight in lon/lat (the GeoJSON convention). Densify them before projecting
# so that their image in a metric frame follows the same line. A parallel of latitude curves in an
# AEQD frame with curvature ~tan(lat)/R, so a chord of length L sags by L^2 tan(lat) / (8 R): at
# 0.002 deg (<= 222 m) that is under 1 mm at 45 deg and 6 mm at 80 deg, inside FRAME_SLACK_M.
SEGMENT_DEG = 0.002

INTERIOR = -1  # the tile of a piece that only answers "inside?" in lon/lat (see _split_by_tile)

KIND_CLEAR = 0
KIND_INSIDE = 1
KIND_NEAR = 2

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, eq=False)
class Located:
    """Per point: what the location says, before history and policy are applied."""

    kind: npt.NDArray[np.int8]  # KIND_CLEAR, KIND_INSIDE or KIND_NEAR
    zone: npt.NDArray[np.int32]  # the deciding zone's index, -1 when clear
    # Presence pairs: point index and zone index for every zone the device may have been in.
    present_point: I64
    present_zone: I64


class LocationIndex(Protocol):
    """What the engine needs of an index; implementations may be swapped (see issue 6)."""

    def locate(
        self,
        lon: F64,
        lat: F64,
        accuracy_m: F64,
        at: F64,
        presence_center_only: bool = False,
        need_presence: npt.NDArray[np.bool_] | None = None,
    ) -> Located:
        """Locate points; presence pairs are complete for points flagged in need_presence."""
        ...

    def locate_one(self, lon: float, lat: float, accuracy_m: float) -> tuple[int, int] | None:
        """(kind, zone) of one point at any time, or None when that takes the full path."""
        ...

    def presence_one(
        self, lon: float, lat: float, accuracy_m: float, center_only: bool = False
    ) -> npt.NDArray[np.int64] | None:
        """The zones one point is present in at any time, or None when that takes the full
        path."""
        ...

    def locate_present_one(
        self, lon: float, lat: float, accuracy_m: float, center_only: bool = False
    ) -> tuple[int, int, npt.NDArray[np.int64]] | None:
        """(kind, zone, zones present) of one point at any time, presence only where it is
        not clear; None when either takes the full path."""
        ...


class ExactIndex:
    """Box tree candidates and exact distances in tile frames. The reference implementation."""

    def __init__(
        self,
        geometries: npt.NDArray[np.object_],
        radius_m: F64,
        buffer_m: F64,
        valid_from: F64,
        valid_until: F64,
        frames: Frames | None = None,
    ) -> None:
        self.frames = frames or Frames()
        self._set_zones(radius_m, buffer_m, valid_from, valid_until)
        part_zone, part_tile, part_wgs = _split_by_tile(geometries)
        self.part_zone = part_zone
        self.part_tile = part_tile
        self.flat = FlatParts.build(project_pieces(self.frames, part_wgs, part_tile))
        self.part_bounds = shapely.bounds(part_wgs)
        self._build_tree()

    @classmethod
    def from_arrays(
        cls,
        radius_m: F64,
        buffer_m: F64,
        valid_from: F64,
        valid_until: F64,
        part_zone: I64,
        part_tile: I64,
        flat: FlatParts,
        part_bounds: F64,
    ) -> ExactIndex:
        """An index from the arrays a compiled file stores (checked by the caller).

        Why: projecting and cutting pieces is most of the compile time; a saved index only
        rebuilds the box tree from its pieces' boxes.
        """
        self = cls.__new__(cls)
        self.frames = Frames()
        self._set_zones(radius_m, buffer_m, valid_from, valid_until)
        self.part_zone = part_zone
        self.part_tile = part_tile
        self.flat = flat
        self.part_bounds = part_bounds
        self._build_tree()
        return self

    def _build_tree(self) -> None:
        """The box tree over every piece's reach box (with antimeridian twins)."""
        part_zone, part_tile = self.part_zone, self.part_tile
        # Reach: how far from its geometry a zone can reject a point with zero accuracy.
        reach = np.where(
            part_tile == INTERIOR, 0.0, self.radius_m[part_zone] + self.buffer_m[part_zone]
        )
        b = self.part_bounds
        dlon, dlat = degree_margins(reach, np.maximum(np.abs(b[:, 1]), np.abs(b[:, 3])))
        boxes = np.column_stack([b[:, 0] - dlon, b[:, 1] - dlat, b[:, 2] + dlon, b[:, 3] + dlat])
        # Boxes that cross the antimeridian get a twin shifted by 360 degrees.
        tree_part = np.arange(len(part_zone))
        east = boxes[:, 2] > 180.0
        west = boxes[:, 0] < -180.0
        shifted = np.concatenate([boxes[east] - [360, 0, 360, 0], boxes[west] + [360, 0, 360, 0]])
        boxes = np.concatenate([boxes, shifted])
        tree_part = np.concatenate([tree_part, tree_part[east], tree_part[west]])
        self.tree_part = tree_part
        self.tree = BoxTree.build(boxes)

    def candidates(self, lon: F64, lat: F64, accuracy_m: F64) -> tuple[I64, I64]:
        """(point index, part index) pairs whose boxes meet: a superset of every true hit."""
        dlon, dlat = degree_margins(accuracy_m, lat)
        west, south, east, north = lon - dlon, lat - dlat, lon + dlon, lat + dlat
        owner = np.arange(len(lon))
        # A circle across the antimeridian also looks on the other side: its box again, shifted
        # by 360 degrees (the tree's own twins only cover reach boxes that cross it).
        wraps = np.flatnonzero((west < -180.0) | (east > 180.0))
        if wraps.size:
            shift = np.where(west[wraps] < -180.0, 360.0, -360.0)
            owner = np.concatenate([owner, wraps])
            west = np.concatenate([west, west[wraps] + shift])
            east = np.concatenate([east, east[wraps] + shift])
            south, north = south[owner], north[owner]
        pts, hits = self.tree.query(west, south, east, north)
        point, part = owner[pts].astype(np.int64), self.tree_part[hits].astype(np.int64)
        if wraps.size:  # one pair per (point, part): a piece may be found from both sides
            point, part = unique_pairs(point, part)
        return point, part

    def distances(self, lon: F64, lat: F64, pts: I64, parts: I64) -> F64:
        """Distance in metres from each point to its paired zone piece (0 inside, or on the
        boundary)."""
        d = np.empty(len(pts), dtype=np.float64)
        tiles = self.part_tile[parts]
        fl = self.flat
        for key, sel in groups(tiles):
            # A point near several zones of one tile is projected once, not once per zone.
            unique_pts, back = np.unique(pts[sel], return_inverse=True)
            if key == INTERIOR:  # lon/lat pieces that only say "inside"
                x, y = lon[unique_pts], lat[unique_pts]
            else:
                x, y = self.frames.forward(int(key), lon[unique_pts], lat[unique_pts])
            got, _ = pair_distances(
                np.ascontiguousarray(x, dtype=np.float64),
                np.ascontiguousarray(y, dtype=np.float64),
                back.astype(np.int64, copy=False), parts[sel].astype(np.int64, copy=False),
                fl.is_point, fl.ring_start, fl.coord_start, fl.xs, fl.ys,
            )  # fmt: skip
            d[sel] = np.where(got == 0.0, 0.0, np.inf) if key == INTERIOR else got
        return d

    def _set_zones(self, radius_m: F64, buffer_m: F64, valid_from: F64, valid_until: F64) -> None:
        """The per-zone arrays, shared by a built and a loaded index."""
        self.n_zones = len(radius_m)
        self.radius_m = np.asarray(radius_m, dtype=np.float64)
        self.buffer_m = np.asarray(buffer_m, dtype=np.float64)
        self.valid_from = np.asarray(valid_from, dtype=np.float64)
        self.valid_until = np.asarray(valid_until, dtype=np.float64)
        self.always_valid = bool(
            np.all(np.isneginf(self.valid_from)) and np.all(np.isposinf(self.valid_until))
        )

    def locate_one(self, lon: float, lat: float, accuracy_m: float) -> tuple[int, int] | None:
        """None: the exact index answers through `locate`, which knows the request's time."""
        return None

    def presence_one(
        self, lon: float, lat: float, accuracy_m: float, center_only: bool = False
    ) -> npt.NDArray[np.int64] | None:
        """None: as locate_one."""
        return None

    def locate_present_one(
        self, lon: float, lat: float, accuracy_m: float, center_only: bool = False
    ) -> tuple[int, int, npt.NDArray[np.int64]] | None:
        """None: as locate_one."""
        return None

    def locate(
        self,
        lon: F64,
        lat: F64,
        accuracy_m: F64,
        at: F64,
        presence_center_only: bool = False,
        need_presence: npt.NDArray[np.bool_] | None = None,
    ) -> Located:
        """Exact answers for every point; presence pairs for every point."""
        n = len(lon)
        kind = np.zeros(n, dtype=np.int8)
        zone = np.full(n, -1, dtype=np.int32)
        pts, parts = self.candidates(lon, lat, accuracy_m)
        if len(pts) == 0:
            empty = np.empty(0, dtype=np.int64)
            return Located(kind, zone, empty, empty)
        zones = self.part_zone[parts]
        if not self.always_valid:
            t = at[pts]
            active = (self.valid_from[zones] <= t) & (t < self.valid_until[zones])
            pts, parts, zones = pts[active], parts[active], zones[active]
        d = self.distances(lon, lat, pts, parts)
        r = self.radius_m[zones]
        a = accuracy_m[pts]
        inside = d <= r * FRAME_STRETCH + FRAME_SLACK_M
        near_limit = r + self.buffer_m[zones] + a
        near = d <= near_limit * FRAME_STRETCH + FRAME_SLACK_M
        present = inside if presence_center_only else d <= (r + a) * FRAME_STRETCH + FRAME_SLACK_M

        hit = near | inside
        if np.any(hit):
            hp, hz = pts[hit], zones[hit]
            # Rank: inside beats near; then the deepest violation; then the lowest zone index.
            excess = np.where(inside[hit], d[hit] - r[hit], d[hit] - near_limit[hit])
            order = np.lexsort((hz, excess, ~inside[hit], hp))
            first = np.unique(hp[order], return_index=True)[1]
            chosen = order[first]
            zone[hp[chosen]] = hz[chosen]
            kind[hp[chosen]] = np.where(inside[hit][chosen], KIND_INSIDE, KIND_NEAR)
        return Located(kind, zone, *unique_pairs(pts[present], zones[present]))


def unique_pairs(a: npt.NDArray[np.integer], b: npt.NDArray[np.integer]) -> tuple[I64, I64]:
    """The distinct pairs (a[i], b[i]), ordered by a then b: np.unique(..., axis=0) of the two
    columns.

    Why: one int64 key a pair sorts several times faster than unique's rows (50,000 zones,
    31k presence pairs: 7.9 -> 2.3 ms). Both hold indexes (points, pieces, zones), which are
    non-negative and below 2**31, so a key keeps both whole. Pairs already ordered by a (the
    grid's presence, point by point) need no sort at all: `unique_in_runs`.
    """
    a = a.astype(np.int64, copy=False)
    b = b.astype(np.int64, copy=False)
    if len(a) > 1 and bool(np.all(a[1:] >= a[:-1])):
        return unique_in_runs(a, b)
    key = np.unique((a << 32) | b)
    return key >> 32, key & 0xFFFFFFFF


def project_pieces(
    frames: Frames, wgs: npt.NDArray[np.object_], tiles: I64
) -> npt.NDArray[np.object_]:
    """Pieces in their tiles' frames, densified first (see SEGMENT_DEG); INTERIOR pieces stay
    in lon/lat."""
    out = np.empty(len(wgs), dtype=object)
    dense = shapely.segmentize(wgs, SEGMENT_DEG)
    interior = tiles == INTERIOR
    out[interior] = wgs[interior]
    for key, sel in groups(tiles):
        if key == INTERIOR:
            continue
        transformer = frames.transformer(int(key))

        def apply(xy: np.ndarray, t=transformer) -> np.ndarray:  # type: ignore[no-untyped-def]
            x, y = t.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        out[sel] = shapely.transform(dense[sel], apply)
    return out


def _split_by_tile(geoms: npt.NDArray[np.object_]) -> tuple[I64, I64, npt.NDArray[np.object_]]:
    """Cut zones at tile edges: (zone index, tile, geometry) per piece.

    Only tiles that the zone's boundary crosses get a piece. Tiles wholly inside a large zone (if
    any) are covered by one extra piece per zone with tile INTERIOR: the zone itself in lon/lat,
    used only to say "inside" (a point outside is nearer to some boundary piece than to any
    interior tile).
    This keeps the work proportional to a zone's perimeter, not its area.
    """
    b = shapely.bounds(geoms)
    lo = tile_key(b[:, 0], b[:, 1])
    hi = tile_key(b[:, 2], b[:, 3])
    single = lo == hi
    zone_idx = [np.flatnonzero(single)]
    tiles = [lo[single]]
    pieces = [geoms[single]]
    for z in np.flatnonzero(~single):
        g = geoms[z]
        lon0, lat0, lon1, lat1 = b[z]
        rows = np.arange(np.floor((lat0 + 90) / TILE_DEG), np.floor((lat1 + 90) / TILE_DEG) + 1)
        cols = np.arange(np.floor((lon0 + 180) / TILE_DEG), np.floor((lon1 + 180) / TILE_DEG) + 1)
        rr, cc = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
        keys = tile_key(-180 + (cc + 0.5) * TILE_DEG, -90 + (rr + 0.5) * TILE_DEG)
        x0 = -180 + cc * TILE_DEG
        y0 = -90 + rr * TILE_DEG
        boxes = shapely.box(x0, y0, x0 + TILE_DEG, y0 + TILE_DEG)
        crossed = shapely.intersects(g.boundary, boxes)
        for key, box in zip(keys[crossed], boxes[crossed], strict=True):
            piece = shapely.clip_by_rect(g, *box.bounds)
            if not piece.is_empty:
                zone_idx.append(np.array([z]))
                tiles.append(np.array([key]))
                pieces.append(np.array([piece], dtype=object))
        wholly_inside = ~crossed & shapely.intersects(g, boxes)
        if wholly_inside.any():
            zone_idx.append(np.array([z]))
            tiles.append(np.array([INTERIOR]))
            pieces.append(np.array([g], dtype=object))
    return (
        np.concatenate(zone_idx).astype(np.int64),
        np.concatenate(tiles).astype(np.int64),
        np.concatenate(pieces),
    )

"""The accelerated index: most points are decided by a table lookup, the rest by short lists.

The map is cut into fine cells of 1/512 degree (about 217 m of latitude). At compile time every
fine cell near a zone is classified, in true metres and conservatively:

- INSIDE z: the whole cell lies inside zone z and no other zone's area reaches into it. Every
  point in it is inside_zone z, whatever its accuracy.
- NEAR z: the whole cell lies within zone z's buffer, and no zone's own area reaches into it.
  Every point in it is near_zone. z is a zone whose buffer truly contains the point, but when
  several buffers cover the cell it is not always the nearest one.
- CLEAR c: every zone is farther than its reach plus c from the cell, so a point whose
  accuracy is at most c is allowed.
- MIXED: anything else. A mixed fine cell is split into 8 x 8 subcells (about 27 m), which are
  classified the same way. Fine cells are found through a hash table of their keys; a split
  cell's subcells are stored together, and found by their position under it.

A CLEAR or MIXED cell also keeps a short list of the zone pieces that could matter to it. A
point the state cannot settle is measured against that list by a compiled loop. NEAR and
INSIDE cells list the pieces whose area is near, from which `grid_presence` tells which zones a
device's circle is present in. The loop uses
the same tile frames, tolerances and ranking as `ExactIndex`, and maps lon/lat into the frame
affinely around the cell centre, adding the measured error of that map to its tolerance. Fine
cells that are not stored are at least FAR_M beyond every zone's reach. A coarse table of
1/64-degree cells bounds the clearance farther out. Anything still unsettled goes to
`ExactIndex`, which remains the reference, and so do temporary zones and zones wider than about
20 km.

Every shortcut answers like `ExactIndex` or more conservatively. The only difference is the zone
named in a NEAR cell, as described above. tests/test_grid.py checks this point by point.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
from numba import types as nbtypes
from numba.core import cgutils
from numba.experimental import structref
from numba.extending import intrinsic

from geofence.geodesy import (
    FRAME_SLACK_M,
    FRAME_STRETCH,
    M_PER_DEG_LAT_MIN,
    Frames,
    degree_margins,
)
from geofence.index import (
    INTERIOR,
    KIND_CLEAR,
    KIND_INSIDE,
    KIND_NEAR,
    ExactIndex,
    Located,
    unique_pairs,
)
from geofence.kernels import (
    FlatParts,
    HashTable,
    _hash,
    find,
    groups,
    point_distance,
    prefetch,
    ring_scan,
    rings_scan,
)

FINE_PER_DEG = 512
COARSE_PER_DEG = 64
SUB = 8  # subcells per fine cell side: 1/4096 degree
SUB_PER_DEG = FINE_PER_DEG * SUB
FINE_STEP = 1.0 / FINE_PER_DEG  # a fine cell's side in degrees (a power of two: exact)
FINE_COLS, FINE_ROWS = 360 * FINE_PER_DEG, 180 * FINE_PER_DEG
SUB_COLS = 360 * SUB_PER_DEG
COARSE_COLS, COARSE_ROWS = 360 * COARSE_PER_DEG, 180 * COARSE_PER_DEG

FAR_M = 100.0  # stored fine cells reach this far beyond every zone's reach
EPS_M = 0.01  # floating point at cell borders
LIST_M = 60.0  # a cell lists the pieces whose clearance from it is below this
CARRY_M = 60.0  # pieces clearer than this from a split cell only carry their clearance down
MAX_CELLS_PER_PART = 20_000  # zones wider than ~20 km are left to the exact index
MAX_SPLIT_PIECES = 12  # a mixed cell near more pieces than this stays whole (its list decides)
# At most this many (subcell, piece) pairs in a zone set. It binds from some thousands of zones
# on, where it splits only cells with one piece near (fewest first), whose list settles a point
# nearly as fast as a subcell's state now that lists run nearest first. 3M rather than 6M: at
# 50k zones a third less .gfz (296 -> 190 MB) and start-up, for the same batch speed with and
# without device ids at 50k and 1M zones (alternated in one process). At 1k it does not bind.
SUB_PAIR_BUDGET = 3_000_000
COARSE_BAND_ROWS = 64  # coarse rows measured at a time (~12 MB of distances)
CAP_ROWS = 64  # coarse rows that share a cap on their clearance (see _build_coarse)
FRAME_BATCH = 1 << 16  # cells projected at a time (see _frames)
# Threads that project cells (see _frames), for builds of at least FRAME_THREADS_MIN_CELLS.
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
FRAME_THREADS = min(_CPUS or 1, 8)
FRAME_THREADS_MIN_CELLS = 20_000
# How a long build reports where it is: (stage, done, total), in the stage's own units.
BuildProgress = Callable[[str, int, int], None]

CHUNK_PAIRS = 1 << 20  # (cell, piece) pairs classified at a time (~400 MB of work arrays)
TRIM_CHUNKS = 4  # fine chunks between hand-backs of freed heap memory (see _fine_level)
_TILE_SPAN = np.int64(1 << 20)  # (cell, tile) keys: cell * _TILE_SPAN + tile (tiles < 259,200)

STATE_MIXED, STATE_CLEAR, STATE_NEAR, STATE_INSIDE, STATE_SUB = 0, 1, 2, 3, 4
AHEAD = 8  # points between the kernel's prefetch stages (see _grid_kernel)
PREFETCH_MIN_TABLE_BYTES = 4 << 20  # smaller fine tables: no prefetch stages (_prefetching)
# A piece's row (_piece_rows): box 0-3, then these columns; its code packs its coordinates' span.
ROW_WIDTH, ROW_R, ROW_REACH, ROW_ZONE, ROW_CODE = 8, 4, 5, 6, 7
CODE_SHIFT = 16
CODE_COUNT = (1 << CODE_SHIFT) - 1  # rings of more coordinates go by ring_start (code -1)
PREFETCH_COORDS = 64  # a piece's coordinates asked for ahead, at most

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
I32 = npt.NDArray[np.int32]
B = npt.NDArray[np.bool_]
_A = TypeVar("_A", bound=npt.NDArray[Any])


@dataclass(frozen=True, slots=True, eq=False)
class Level:
    """One level of cells: hash table (empty for subcells), per cell state and lists (CSR).

    The arrays are stored once, in the shape the kernel takes them (so a built or loaded level is
    never held twice): per cell `ints` (state, zone, near_zone, list begin, list end) and
    `floats` (clearance, near_acc, list_valid); per list entry `entries` (part, combo); per
    (cell, frame) combination `combos` (cx, cy, jacobian x4, err). Floats are float32, each
    rounded the way that only makes an answer more conservative (see `build` and `_frames`):
    they are most of a compiled set (1M zones: 0.7 GB less than float64).

    - zone: the zone of a NEAR or INSIDE cell.
    - clearance: CLEAR cells: accuracy up to which a point is allowed. Other cells: accuracy up
      to which no listed piece's area is reached (presence clearance; -1 where zones are
      temporary). Files written before it hold -1 there, which only skips no shortcut.
    - near_acc, near_zone: where no zone's area reaches into the cell: from this accuracy on,
      every circle in the cell reaches near_zone's buffer (so the point is near_zone; inf where
      never).
    - list begin/end: cell c lists entries begin[c]:end[c]; list_valid: the list settles a point
      whose accuracy is at most this.
    - combos: the fine cell centre's frame position, the affine map's Jacobian (dx/dlon,
      dx/dlat, dy/dlon, dy/dlat), and that map's measured error bound (metres). The fine level
      holds one per (fine cell, tile); the sub level holds none, and its entries name the fine
      level's combos (a subcell's map is its parent's). The map is around the centre of the
      point's fine cell, which the kernels compute from the cell (`_centre_offsets`) rather than
      store (1M zones: 16 bytes of 72 a frame, ~0.24 GB).
    """

    table: HashTable
    ints: I32  # (n, 5)
    floats: F32  # (n, 3)
    entries: I32  # (m, 2)
    combos: F32  # (c, 7)

    @classmethod
    def build(
        cls, table: HashTable, state: I8, zone: I32, clearance: F64, near_acc: F64,
        near_zone: I32, list_start: I64, list_valid: F64, entry_part: I64, entry_combo: I64,
        cx: F64, cy: F64, jac: F64, err: F64,
    ) -> Level:  # fmt: skip
        """A level from per-field arrays, packed into the kernel's layout.

        Why: only the packed arrays are kept, so a level costs its memory once, not twice. The
        integers are int32 (states, zone, piece and frame indexes, list offsets: all below
        2**31), half the bytes of int64: the sub level is most of a compiled file, and of the
        memory a loaded one touches. The floats are float32: thresholds an accuracy must be at
        most (clearance, list_valid) rounded down, the one it must be at least (near_acc)
        rounded up; the frames are float32 already (`_frames`).
        """
        if len(entry_part) >= 2**31 or len(cx) >= 2**31:
            raise OverflowError("a level with 2**31 list entries or frames: beyond int32")
        # Filled column by column: stacking first makes int64 and float64 copies of each.
        ints = np.empty((len(state), 5), dtype=np.int32)
        columns: tuple[npt.NDArray[np.integer[Any]], ...] = (
            state, zone, near_zone, list_start[:-1], list_start[1:],
        )  # fmt: skip
        for j, column in enumerate(columns):
            ints[:, j] = column
        floats = np.empty((len(state), 3), dtype=np.float32)
        floats[:, 0] = f32_down(clearance)
        floats[:, 1] = f32_up(near_acc)
        floats[:, 2] = f32_down(list_valid)
        entries = np.empty((len(entry_part), 2), dtype=np.int32)
        entries[:, 0], entries[:, 1] = entry_part, entry_combo
        combos = np.empty((len(cx), 7), dtype=np.float32)
        for j, column in enumerate((cx, cy, *jac.reshape(-1, 4).T, err)):
            combos[:, j] = _exact_f32(column)
        return cls(table, ints, floats, entries, combos)

    @property
    def state(self) -> I32:
        return self.ints[:, 0]

    @property
    def entry_part(self) -> I32:
        return self.entries[:, 0]

    def packed(self) -> tuple[I64, I32, F32, I32, F32]:
        """The level as the kernel takes it: table (cap,), ints, floats, entries, combos."""
        return self.table.array, self.ints, self.floats, self.entries, self.combos


def f32_down(v: npt.ArrayLike) -> F32:
    """v as float32, rounded toward -inf (the float32 at most v)."""
    v = np.asarray(v, dtype=np.float64)
    f = v.astype(np.float32)
    return np.where(f > v, np.nextafter(f, np.float32(-np.inf)), f)


def f32_up(v: npt.ArrayLike) -> F32:
    """v as float32, rounded toward +inf (the float32 at least v)."""
    v = np.asarray(v, dtype=np.float64)
    f = v.astype(np.float32)
    return np.where(f < v, np.nextafter(f, np.float32(np.inf)), f)


def _exact_f32(v: F64) -> F32:
    """v as float32, which must hold it exactly (values `_frames` rounded already)."""
    f = np.ascontiguousarray(v, dtype=np.float32)
    if not np.array_equal(f, v):
        raise ValueError("frame values that float32 does not hold exactly")
    return f


class _SinglePath(NamedTuple):
    """The single-point path's compiled entry points and the tables they read."""

    tables: _Tables
    one: Callable[..., int]
    presence: Callable[..., int]
    presence_zones: Callable[..., I64 | None]
    one_present: Callable[..., tuple[int, int]]


class GridIndex:
    """Tables in front of an ExactIndex; the same answers, or more conservative ones."""

    def __init__(
        self, exact: ExactIndex, max_accuracy_m: float, progress: BuildProgress | None = None
    ) -> None:
        """Build the tables; `progress`, if given, hears each stage's chunks as they finish."""
        report = progress or _quiet
        self.exact = exact
        self.max_accuracy_m = float(max_accuracy_m)
        self.flat = exact.flat
        release_freed_memory()  # the projected pieces and rings the exact index flattened
        big = _big_parts(exact)
        self.forced = _forced_boxes(exact, big, max_accuracy_m)
        # The coarse table before the levels: its work (an STRtree of every piece's box, boxes
        # of cells) is let go before the levels exist, instead of piling on top of them at the
        # end (1M zones: +0.6 GB at the peak). The tables do not depend on each other.
        self.coarse, self.coarse_clearance = _build_coarse(exact, max_accuracy_m, big, report)
        release_freed_memory()
        self.fine, self.sub = _build_levels(exact, self.flat, big, report)
        self._pack()
        release_freed_memory()  # the sub level's work (1M zones: ~0.1 GB kept otherwise)

    @classmethod
    def from_tables(
        cls,
        exact: ExactIndex,
        forced: F64,
        fine: Level,
        sub: Level,
        coarse: HashTable,
        coarse_clearance: F64,
        max_accuracy_m: float,
    ) -> GridIndex:
        """A grid from tables a compiled file stores (checked by the caller), nothing rebuilt.

        Why: classifying cells is most of the compile time; start-up only gathers the kernel's
        arguments. max_accuracy_m: the accuracy the tables were built for (the policy's).
        """
        self = cls.__new__(cls)
        self.exact = exact
        self.max_accuracy_m = float(max_accuracy_m)
        self.flat = exact.flat
        self.forced = forced
        self.fine, self.sub = fine, sub
        self.coarse, self.coarse_clearance = coarse, coarse_clearance
        self._pack()
        return self

    def _pack(self) -> None:
        self.far_clearance = FAR_M - 1.0
        exact = self.exact
        # The kernel's arguments, packed into few arrays: a numba call costs ~0.1 us per argument.
        fl = self.flat
        self._packed = (
            self.forced,
            # Beyond max_accuracy_m (an IP fix judged as a 25 km circle, say) the forced boxes
            # and the coarse table no longer bound anything: the kernel defers such points.
            # Third: whether the batch kernel looks points up ahead (see _grid_kernel).
            np.array([self.far_clearance, self.max_accuracy_m, float(self._prefetching())]),
            *self.fine.packed(),
            _sub_base(self.fine.state),
            *self.sub.packed()[1:],
            self.coarse.array,
            self.coarse_clearance,
            fl.ring_start,
            fl.coord_start,
            fl.xy,
            _piece_rows(fl, exact.part_zone, exact.radius_m, exact.buffer_m),
        )
        # The single-point path is bound at its first request (_bind_single): batch-only users
        # (the CLI, check_many) never load or compile its functions.
        self._single: _SinglePath | None = None
        # presence_one's answers for one zone: read-only views, so none is made per request.
        self._zone_rows = np.arange(len(exact.radius_m), dtype=np.int64)
        self._zone_rows.flags.writeable = False

    def _prefetching(self) -> bool:
        """Whether the batch kernel should fetch ahead: only where its tables outgrow the CPU's
        caches. Below that the stages cost ~7 ns a point and save nothing (1k zones: 65 -> 72
        ns a point); the fine hash table's size stands for the rest (1k zones 1 MB, 50k 17 MB).
        """
        return self.fine.table.array.nbytes >= PREFETCH_MIN_TABLE_BYTES

    def locate(
        self,
        lon: F64,
        lat: F64,
        accuracy_m: F64,
        at: F64,
        presence_center_only: bool = False,
        need_presence: B | None = None,
    ) -> Located:
        n = len(lon)
        kind = np.empty(n, dtype=np.int8)
        zone = np.empty(n, dtype=np.int32)
        todo = np.empty(n, dtype=np.bool_)
        lon = np.ascontiguousarray(lon, dtype=np.float64)
        lat = np.ascontiguousarray(lat, dtype=np.float64)
        acc = np.ascontiguousarray(accuracy_m, dtype=np.float64)
        ex = self.exact
        # Presence: every zone the circle reaches, from the cells' lists where they can tell,
        # else from the exact index. A point the grid clears has none (its circle misses every
        # zone by its buffer). The kernel tells the presence of the points it settles by a list
        # (most of them) as it reads the list; grid_presence tells the rest, a block at a time,
        # while the rows the kernel read for the same points are still in the CPU's caches.
        block = max(n, 1) if need_presence is None else PRESENCE_BLOCK
        points: list[I64] = []
        zones: list[I64] = []
        if need_presence is None:
            want, _, pairs, ask_out = NO_PRESENCE
        else:
            want = np.ascontiguousarray(need_presence, dtype=np.bool_)
            # Room for a few pairs a point (50k zones: ~0.7 a point asked); lists that would
            # not fit are told by grid_presence instead. Reused by every block.
            pairs = np.empty((PRESENCE_PAIRS_PER_POINT * min(block, n), 2), dtype=np.int64)
            ask_out = np.empty(n, dtype=np.bool_)
        for a in range(0, n, block):
            b = min(a + block, n)
            kernel = grid_kernel if b - a >= NOGIL_MIN_POINTS else grid_kernel_gil
            m = kernel(
                lon[a:b], lat[a:b], acc[a:b], *self._packed, kind[a:b], zone[a:b], todo[a:b],
                want[a:b], presence_center_only, pairs, ask_out[a:b],
            )  # fmt: skip
            if need_presence is None:
                continue
            told = pairs[:m, 0] + a, pairs[:m, 1].copy()
            ask = np.flatnonzero(ask_out[a:b] & (kind[a:b] != KIND_CLEAR) & ~todo[a:b])
            if not ask.size:
                points.append(told[0])
                zones.append(told[1])
                continue
            ask = ask.astype(np.int64, copy=False) + a
            block_point, block_zone, unsure = grid_presence(
                lon, lat, acc, ask, presence_center_only, *self._packed
            )
            todo[ask[unsure]] = True
            # Both in point order; merged so, for unique_pairs (a stable sort of two runs).
            block_point = np.concatenate([told[0], block_point])
            order = np.argsort(block_point, kind="stable")
            points.append(block_point[order])
            zones.append(np.concatenate([told[1], block_zone])[order])
        grid_point = grid_zone = np.empty(0, dtype=np.int64)
        if points:
            grid_point, grid_zone = np.concatenate(points), np.concatenate(zones)
            keep = ~todo[grid_point]
            grid_point, grid_zone = grid_point[keep], grid_zone[keep]
        rest = np.flatnonzero(todo)
        if rest.size:
            sub = ex.locate(lon[rest], lat[rest], acc[rest], at[rest], presence_center_only)
            kind[rest] = sub.kind
            zone[rest] = sub.zone
            grid_point = np.concatenate([grid_point, rest[sub.present_point]])
            grid_zone = np.concatenate([grid_zone, sub.present_zone])
        if grid_point.size:
            # One pair per (point, zone), ordered by point, as the exact index gives them.
            grid_point, grid_zone = unique_pairs(grid_point, grid_zone)
        return Located(kind, zone, grid_point, grid_zone)

    def locate_one(self, lon: float, lat: float, accuracy_m: float) -> tuple[int, int] | None:
        """(kind, zone) of one point, or None where the exact index must answer.

        The single-request path: no arrays to make, one compiled call. Time never matters to
        the grid's answer (cells near temporary zones always defer to the exact index).
        """
        single = self._single or self._bind_single()
        code = single.one(lon, lat, accuracy_m, single.tables)
        if code < 0:
            return None
        return code >> 32, (code & 0xFFFFFFFF) - 1

    def presence_one(
        self, lon: float, lat: float, accuracy_m: float, center_only: bool = False
    ) -> I64 | None:
        """The zones one point is present in (each once), or None where the exact index must
        tell: the single-request path's counterpart of `locate(..., need_presence=...)`.

        One compiled call that returns a number (see grid_presence_one); the array for no zone
        or one zone is a shared read-only one, not made per request.
        """
        single = self._single or self._bind_single()
        code = single.presence(lon, lat, accuracy_m, center_only, single.tables)
        return self._present_zones(single, code, lon, lat, accuracy_m, center_only)

    def locate_present_one(
        self, lon: float, lat: float, accuracy_m: float, center_only: bool = False
    ) -> tuple[int, int, I64] | None:
        """(kind, zone, zones present) of one point, or None where the exact index must tell
        either: `locate_one` and, where it names a zone, `presence_one`, in one compiled call.

        Why: a request with a device id that lands near a zone needs both, and a second call
        from Python costs more (~0.5 us) than the lookup it repeats. A clear point is present
        in no zone (its circle misses every zone by its buffer), so none are looked for.
        """
        single = self._single or self._bind_single()
        code, presence = single.one_present(lon, lat, accuracy_m, center_only, single.tables)
        if code < 0:
            return None
        if presence == 0:  # clear points, mostly: no second call
            return code >> 32, (code & 0xFFFFFFFF) - 1, _NO_ZONES
        zones = self._present_zones(single, presence, lon, lat, accuracy_m, center_only)
        if zones is None:
            return None
        return code >> 32, (code & 0xFFFFFFFF) - 1, zones

    def _present_zones(
        self, single: _SinglePath, code: int, lon: float, lat: float, accuracy_m: float,
        center_only: bool,
    ) -> I64 | None:  # fmt: skip
        """The zones a grid_presence_one code names (three or more: a second call lists them)."""
        if 0 < code < PRESENCE_TWO:
            return self._zone_rows[code - 1 : code]
        if code == 0:
            return _NO_ZONES
        if code > 0:
            return np.array(((code >> 32) - 1, (code & 0xFFFFFFFF) - 1), dtype=np.int64)
        if code == PRESENCE_MORE:
            zones: I64 | None = single.presence_zones(
                lon, lat, accuracy_m, center_only, single.tables
            )
            return zones
        return None

    def _bind_single(self) -> _SinglePath:
        """The kernel's arrays in one numba object, and the compiled entry points for its type.

        Loaded from numba's cache (~30 ms once a process; compiled, ~10 s, when the cache is
        cold). A dispatcher types every argument on every call (~0.4 us for this object, ~65 ns
        an array); an entry point only unboxes them, ~0.1 us in all. It trusts its arguments'
        types: only locate_one and presence_one call these, with floats and these very tables.
        Two threads may bind at once; both get equivalent paths.
        """
        tables = _make_tables(self._packed + _scratch())
        f64, t = nbtypes.float64, numba.typeof(tables)
        self._single = _SinglePath(
            tables,
            grid_one.compile((f64, f64, f64, t)),
            grid_presence_one.compile((f64, f64, f64, nbtypes.boolean, t)),
            grid_presence_zones.compile((f64, f64, f64, nbtypes.boolean, t)),
            grid_one_present.compile((f64, f64, f64, nbtypes.boolean, t)),
        )
        return self._single

    def stats(self) -> dict[str, int]:
        """Cell counts per level and state, for benchmarks and tests."""
        out: dict[str, int] = {}
        for name, level in (("fine", self.fine), ("sub", self.sub)):
            for state, label in enumerate(("mixed", "clear", "near", "inside", "split")):
                out[f"{name}_{label}"] = int(np.sum(level.state == state))
            out[f"{name}_list_entries"] = len(level.entry_part)
        out["coarse"] = len(self.coarse_clearance)
        out["forced_boxes"] = len(self.forced)
        return out


# --- the lookup kernel -------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _centre_offsets(x: float, y: float, row: np.int64, col: np.int64) -> tuple[float, float]:
    """(dlon, dlat) of a point from the centre of its fine cell (row, col), the point every
    listed frame's affine map is around; dlon across the antimeridian taken the short way.

    The centre is computed as the build computed it (`_classify`: lon0 + step / 2), so the
    same bits: with a power-of-two step every step of it is exact.
    """
    dl = x - ((col * FINE_STEP - 180.0) + FINE_STEP / 2)
    if dl > 180.0:
        dl -= 360.0
    elif dl < -180.0:
        dl += 360.0
    return dl, y - ((row * FINE_STEP - 90.0) + FINE_STEP / 2)


@numba.njit(cache=True, inline="always")
def _settle(
    dl: float, dt: float, a: float, slot: np.int64,
    ints: I64, floats: F32, entries: I64, combos: F32,
    ring_start: I64, coord_start: I64, xs: F64, ys: F64, prow: F64, fetch: bool,
    point: np.int64, present: bool, center_only: bool, pairs: I64, m: np.int64,
) -> tuple[np.int8, np.int32, bool, np.int64]:  # fmt: skip
    """(kind, zone, settled, m) for one point from its cell's list, ranked as ExactIndex ranks.

    (dl, dt): the point's offsets from its fine cell's centre (`_centre_offsets`).

    A piece's bounding box bounds its distance from below, so most pieces are passed over
    without measuring: those out of reach, and, once a zone is found, those that cannot outrank
    it (the ranking, and so the zone named, stay ExactIndex's).

    With `present`, the point's presence pairs (point, zone) are written from pairs[m] on (the
    caller leaves room for the whole list) and m returned past them: the pairs grid_presence
    gives, with the same arithmetic, so the pieces in presence reach are measured even where
    they cannot outrank the zone found. None for a clear point.
    """
    if not a <= floats[slot, 2]:
        return np.int8(KIND_CLEAR), np.int32(-1), False, m
    begin, end = ints[slot, 3], ints[slot, 4]
    first = m
    # grid_presence's presence clearance: no listed piece's area is within this point's reach.
    present = present and not (0.0 if center_only else a) <= floats[slot, 0]
    # Each piece's row, frame and coordinates asked for at once, so their waits overlap; not
    # where the batch kernel's stages asked for them already, nor where the tables fit the
    # caches (fetch False: 1k zones, 219-292 -> 208-279 ns a near-edge point).
    if fetch:
        for e in range(begin, end):
            p = entries[e, 0]
            prefetch(combos, entries[e, 1])
            _prefetch_coords(prow[p, ROW_CODE], xs, ys)
    best_inside = False
    best_zone = np.int32(-1)
    best_excess = np.inf
    for e in range(begin, end):
        p = entries[e, 0]
        c = entries[e, 1]
        r = prow[p, ROW_R]
        tol = FRAME_SLACK_M + combos[c, 6]
        limit = prow[p, ROW_REACH] + a
        reach = limit * FRAME_STRETCH + tol
        inside_reach = r * FRAME_STRETCH + tol
        x = combos[c, 0] + combos[c, 2] * dl + combos[c, 3] * dt
        y = combos[c, 1] + combos[c, 4] * dl + combos[c, 5] * dt
        bx = max(prow[p, 0] - x, 0.0, x - prow[p, 2])
        by = max(prow[p, 1] - y, 0.0, y - prow[p, 3])
        box2 = bx * bx + by * by
        if box2 > reach * reach:
            continue  # out of reach of the box, so of the piece: neither inside nor near
        # Presence's limit, as grid_presence computes it (r + a <= reach: within reach).
        presence_limit = (r if center_only else r + a) * FRAME_STRETCH + tol
        measure = present and box2 <= presence_limit * presence_limit
        outranked = False
        if best_zone >= 0:
            lower = np.sqrt(box2)
            may_inside = box2 <= inside_reach * inside_reach
            if best_inside:
                outranked = not may_inside or lower - r > best_excess
            else:
                outranked = not may_inside and lower - limit > best_excess
        if outranked and not measure:
            continue
        d = _piece_distance(x, y, p, prow, ring_start, coord_start, xs, ys)
        if measure and d <= presence_limit:
            pairs[m, 0] = point
            pairs[m, 1] = np.int64(prow[p, ROW_ZONE])
            m += 1
        if outranked:
            continue  # measured for presence only: the ranking never sees it
        inside = d <= inside_reach
        if not (inside or d <= reach):
            continue
        z = np.int32(prow[p, ROW_ZONE])
        excess = d - r if inside else d - limit
        same_rank = inside == best_inside
        if (inside and not best_inside) or (
            same_rank and (excess < best_excess or (excess == best_excess and z < best_zone))
        ):
            best_inside, best_zone, best_excess = inside, z, excess
    if best_zone < 0:
        return np.int8(KIND_CLEAR), best_zone, True, first  # clear: present nowhere
    return (np.int8(KIND_INSIDE) if best_inside else np.int8(KIND_NEAR)), best_zone, True, m


@numba.njit(cache=True, inline="always")
def _prefetch_coords(code: float, xs: F64, ys: F64) -> None:
    """Ask for the coordinates of a piece with row code `code` (see _piece_rows), at most
    PREFETCH_COORDS of them."""
    if code >= 0.0:
        q = np.int64(code) >> CODE_SHIFT
        count = np.int64(code) & CODE_COUNT
        end = q + (count if count < PREFETCH_COORDS else np.int64(PREFETCH_COORDS))
        for k in range(q, end, 8):  # 8 coordinates a cache line
            prefetch(xs, k)
            prefetch(ys, k)
        prefetch(xs, end - 1)
        prefetch(ys, end - 1)


@numba.njit(cache=True, inline="always")
def _piece_distance(
    x: float, y: float, p: np.int64, prow: F64, ring_start: I64, coord_start: I64, xs: F64,
    ys: F64,
) -> float:  # fmt: skip
    """Piece p's distance from (x, y) in its frame, 0 inside (as `point_distance`'s first)."""
    code = prow[p, ROW_CODE]
    if code >= 0.0:  # one ring, or a point: its coordinates' span is in the row
        q = np.int64(code) >> CODE_SHIFT
        count = np.int64(code) & CODE_COUNT
        if count == 1:
            return np.hypot(x - xs[q], y - ys[q])
        inside, d2 = ring_scan(x, y, q, q + count, xs, ys)
        return 0.0 if inside else np.sqrt(d2)
    inside, d2 = rings_scan(x, y, p, ring_start, coord_start, xs, ys)
    return 0.0 if inside else np.sqrt(d2)


@numba.njit(cache=True, inline="always")
def _subcell(block: np.int32, row: np.int64, col: np.int64) -> np.int64:
    """A subcell's slot: split cell `block`'s SUB x SUB subcells are stored row by row."""
    return np.int64(block) * (SUB * SUB) + row * SUB + col


@numba.njit(cache=True, inline="always")
def _clamp(value: int, low: int, count: int) -> int:
    """value clamped to [low, low + count - 1]."""
    if value < low:
        return low
    if value > low + count - 1:
        return low + count - 1
    return value


def _grid_kernel(
    lon: F64, lat: F64, acc: F64, forced: F64, far: F64,
    f_table: I64, f_ints: I64, f_floats: F32, f_entries: I64, f_combos: F32,
    sub_base: I32, s_ints: I64, s_floats: F32, s_entries: I64, s_combos: F32,
    c_table: I64, c_clear: F64, ring_start: I64, coord_start: I64, xy: F64,
    prow: F64, out_kind: I8, out_zone: I32, out_todo: B,
    want: B, center_only: bool, pairs: I64, out_ask: B,
) -> np.int64:  # fmt: skip
    """Decide each point from the tables, or flag it for the exact index.

    Presence, for the points `want` holds True (empty: none), as grid_presence tells it: the
    points a list settles get their pairs (point, zone) in `pairs` (their count returned),
    while reading the list anyway; the others not clear nor flagged keep out_ask True, for
    grid_presence (those a cell's state settles, or whose list would overflow `pairs`). Why:
    a second pass over the same lists cost ~a fifth of a batch with ids.
    """
    wanted = len(want) > 0
    m = np.int64(0)  # pairs written
    f_size = np.int64(len(f_table))
    c_size = np.int64(len(c_table))
    # Views taken once: numba reference-counts every view it makes, which inside the loop cost
    # more than the table lookups. The arrays a list's settling reads are taken without their
    # reference counts (_unowned; the caller's arrays own the memory throughout): handing them
    # to _settle counted each twice, ~20 calls with an atomic add, ~80 ns a list point (50k
    # zones: 960-1050 -> 840-910 ns a near-edge point, alternated in one process).
    (
        f_ints, f_floats, f_entries, f_combos, s_ints, s_floats, s_entries, ring_start,
        coord_start, xy, prow, pairs,
    ) = _unowned((
        f_ints, f_floats, f_entries, f_combos, s_ints, s_floats, s_entries, ring_start,
        coord_start, xy, prow, pairs,
    ))  # fmt: skip
    xs, ys = xy[0], xy[1]
    far_clearance, max_acc = far[0], far[1]
    n_forced = forced.shape[0]
    n = len(lon)
    staged = n if far[2] != 0.0 else 0  # points looked up ahead (none: every stage skipped)
    for i in range(n):
        # Prefetching (kernels.prefetch) for the points ahead, in stages: the table line of point
        # i + 3 A; the cell of point i + 2 A and its rows, the cell found there once and kept in
        # out_zone[i + 2 A] (int32: cells < 2**31) until that point is decided, which writes its
        # answer over it; for point i + A, the head of its list if the list will be read (marked
        # so: -2 - cell); for i + A / 2, so marked, the listed pieces' rows and frames; for
        # i + A / 4, their coordinates (whose place the rows tell). grid_one's single point
        # skips every stage. Why: a list point waits on five reads in a row (table, cell, list,
        # pieces, coordinates) in arrays tens of MB large; fetched ahead, the waits of several
        # points overlap. 50k zones: 840 -> 430 ns a list point, 260 -> 150 a point; the
        # coordinates' stage, with the pieces' rows, a tenth more. Tables that fit the caches
        # skip every stage (far[2] is 0: GridIndex._prefetching), where they cost ~7 ns a
        # point. Each cell is found once (a probe costs a mispredicted branch, ~15 ns a point).
        # No result changes.
        j = i + 3 * AHEAD
        if j < staged:
            jrow = _clamp(np.int64(np.floor((lat[j] + 90.0) * FINE_PER_DEG)), 0, FINE_ROWS)
            jcol = np.int64(np.floor((lon[j] + 180.0) * FINE_PER_DEG)) % FINE_COLS
            prefetch(f_table, _hash(jrow * FINE_COLS + jcol, f_size))
        j = i + 2 * AHEAD
        if j < staged:
            jrow = _clamp(np.int64(np.floor((lat[j] + 90.0) * FINE_PER_DEG)), 0, FINE_ROWS)
            jcol = np.int64(np.floor((lon[j] + 180.0) * FINE_PER_DEG)) % FINE_COLS
            jslot = find(f_table, f_size, jrow * FINE_COLS + jcol)
            out_zone[j] = jslot
            if jslot >= 0:
                prefetch(f_ints, jslot)
                prefetch(f_floats, jslot)
        j = i + AHEAD
        if 2 * AHEAD <= j < staged and out_zone[j] >= 0:
            jslot = np.int64(out_zone[j])
            state = f_ints[jslot, 0]
            if not (
                state in (STATE_SUB, STATE_INSIDE, STATE_NEAR)
                or (state == STATE_CLEAR and acc[j] <= f_floats[jslot, 0])
                or acc[j] >= f_floats[jslot, 1]
            ):
                prefetch(f_entries, f_ints[jslot, 3])
                out_zone[j] = -2 - jslot  # marked: its list will be read
        j = i + AHEAD // 2
        if 2 * AHEAD <= j < staged and out_zone[j] <= -2:
            jslot = -2 - np.int64(out_zone[j])
            for e in range(f_ints[jslot, 3], f_ints[jslot, 4]):
                prefetch(f_combos, f_entries[e, 1])
                prefetch(prow, f_entries[e, 0])
        j = i + AHEAD // 4
        if 2 * AHEAD <= j < staged and out_zone[j] <= -2:
            jslot = -2 - np.int64(out_zone[j])
            for e in range(f_ints[jslot, 3], f_ints[jslot, 4]):
                _prefetch_coords(prow[f_entries[e, 0], ROW_CODE], xs, ys)
        found = np.int64(out_zone[i])  # point i's cell (or -2 - cell), if found ahead
        a = acc[i]
        x = lon[i]
        y = lat[i]
        out_kind[i] = KIND_CLEAR
        out_zone[i] = -1
        out_todo[i] = False
        present = False
        if wanted:
            present = want[i]
            out_ask[i] = present
        forced_here = False
        for k in range(n_forced):
            if forced[k, 0] <= x <= forced[k, 2] and forced[k, 1] <= y <= forced[k, 3]:
                forced_here = True
        if forced_here or not a <= max_acc:
            out_todo[i] = True
            continue
        row = _clamp(np.int64(np.floor((y + 90.0) * FINE_PER_DEG)), 0, FINE_ROWS)
        col = np.int64(np.floor((x + 180.0) * FINE_PER_DEG)) % FINE_COLS
        marked = False  # whether the stages asked for its list's pieces
        if i < 2 * AHEAD or staged == 0:
            slot = find(f_table, f_size, row * FINE_COLS + col)
        else:
            marked = bool(found <= -2)
            slot = found if found >= -1 else -2 - found  # unmarked
        if slot < 0:
            if a <= far_clearance:
                continue
            crow = row // (FINE_PER_DEG // COARSE_PER_DEG)
            ccol = col // (FINE_PER_DEG // COARSE_PER_DEG)
            cslot = find(c_table, c_size, crow * COARSE_COLS + ccol)
            if cslot >= 0 and not a <= c_clear[cslot]:
                out_todo[i] = True
            continue
        # The two levels' steps are spelled out twice on purpose: numba reference-counts arrays
        # handed to a function (inlined or not) or bound to another name, which cost ~100 ns a
        # point, ten times the lookup. Only the list, for the few points that need it, is a call.
        if f_ints[slot, 0] == STATE_SUB:
            # Clamped into the parent cell, against rounding at its edges.
            srow = _clamp(np.int64(np.floor((y + 90.0) * SUB_PER_DEG)), row * SUB, SUB)
            scol = _clamp(
                np.int64(np.floor((x + 180.0) * SUB_PER_DEG)) % SUB_COLS, col * SUB, SUB
            )
            slot = _subcell(sub_base[slot], srow - row * SUB, scol - col * SUB)
            state = s_ints[slot, 0]
            if state in (STATE_INSIDE, STATE_NEAR):
                out_kind[i] = KIND_INSIDE if state == STATE_INSIDE else KIND_NEAR
                out_zone[i] = s_ints[slot, 1]
                continue
            if state == STATE_CLEAR and a <= s_floats[slot, 0]:
                continue
            if a >= s_floats[slot, 1]:
                out_kind[i] = KIND_NEAR
                out_zone[i] = s_ints[slot, 2]
                continue
            dl, dt = _centre_offsets(x, y, row, col)
            tell = present and m + s_ints[slot, 4] - s_ints[slot, 3] <= len(pairs)
            if tell:
                out_ask[i] = False  # told here
            kind, zone, settled, m = _settle(
                dl, dt, a, slot, s_ints, s_floats, s_entries, f_combos,
                ring_start, coord_start, xs, ys, prow, staged != 0,
                i, tell, center_only, pairs, m,
            )  # fmt: skip
        else:
            state = f_ints[slot, 0]
            if state in (STATE_INSIDE, STATE_NEAR):
                out_kind[i] = KIND_INSIDE if state == STATE_INSIDE else KIND_NEAR
                out_zone[i] = f_ints[slot, 1]
                continue
            if state == STATE_CLEAR and a <= f_floats[slot, 0]:
                continue
            if a >= f_floats[slot, 1]:
                out_kind[i] = KIND_NEAR
                out_zone[i] = f_ints[slot, 2]
                continue
            dl, dt = _centre_offsets(x, y, row, col)
            tell = present and m + f_ints[slot, 4] - f_ints[slot, 3] <= len(pairs)
            if tell:
                out_ask[i] = False  # told here
            kind, zone, settled, m = _settle(
                dl, dt, a, slot, f_ints, f_floats, f_entries, f_combos,
                ring_start, coord_start, xs, ys, prow, staged != 0 and not marked,
                i, tell, center_only, pairs, m,
            )  # fmt: skip
        if settled:
            out_kind[i] = kind
            out_zone[i] = zone
        else:
            out_todo[i] = True
    return m


# Two builds of one kernel. Large batches release the GIL, so other threads run meanwhile. Small
# ones keep it: a release and re-acquisition costs more than deciding a few points, and threads
# that drop and take the GIL every few microseconds starve a thread that needs it longer (a
# reload slowed twentyfold under three such callers).
grid_kernel = numba.njit(cache=True, nogil=True)(_grid_kernel)
grid_kernel_gil = numba.njit(cache=True)(_grid_kernel)
NOGIL_MIN_POINTS = 2048
PRESENCE_BLOCK = 4096  # points a block when presence is asked for (see GridIndex.locate)
PRESENCE_PAIRS_PER_POINT = 4  # the kernel's room for presence pairs (see GridIndex.locate)
# The kernel's presence arguments when none is asked for: want, center_only, pairs, out_ask
# (never written).
_NO_WANT = np.zeros(0, dtype=np.bool_)
NO_PRESENCE = (_NO_WANT, False, np.zeros((0, 2), dtype=np.int64), _NO_WANT)


# --- the single-point path ---------------------------------------------------------------------
# One request is one compiled call that takes one object, `_Tables`, holding the kernel's arrays
# (GridIndex._pack), and returns a number. Inside, the batch kernels' own code runs (inlined)
# for one point, so both paths decide alike. Presence's counterpart follows grid_presence.

# The kernels' arrays, in their order of arguments (GridIndex._packed's order), then grid_one's
# scratch arrays (_scratch).
_TABLE_FIELDS = (
    "forced", "far", "f_table", "f_ints", "f_floats", "f_entries", "f_combos",
    "sub_base", "s_ints", "s_floats", "s_entries", "s_combos", "c_table", "c_clear",
    "ring_start", "coord_start", "xy", "prow",
    "one_point", "one_kind", "one_zone", "one_todo", "one_want", "one_pairs",
)  # fmt: skip


def _scratch() -> tuple[npt.NDArray[np.generic], ...]:
    """grid_one's point (lon, lat, accuracy) and results, made once per `_Tables`; then no
    presence asked (want, pairs: empty; out_ask, never written then, is `want`).

    Why: four arrays made per call cost ~0.13 us, a tenth of a clear request (the two empty
    ones are NO_PRESENCE's). One set per tables is safe because grid_one holds the GIL while
    it runs (it is not nogil): two threads never use them at once (tests/test_grid.py checks
    that it stays so).
    """
    return (
        np.zeros(3),
        np.zeros(1, dtype=np.int8),
        np.zeros(1, dtype=np.int32),
        np.zeros(1, dtype=np.bool_),
        NO_PRESENCE[0],
        NO_PRESENCE[2],
    )


@structref.register
class _TablesType(nbtypes.StructRef):
    """numba's type of `_Tables`: its fields' types are those of the arrays it was made from.

    Why at module level: the compiled functions that take it are cached on disk, and the cache
    finds the type again by its module and name.
    """

    def preprocess_fields(
        self, fields: tuple[tuple[str, nbtypes.Type], ...]
    ) -> tuple[tuple[str, nbtypes.Type], ...]:
        return tuple((name, nbtypes.unliteral(t)) for name, t in fields)


class _Tables(structref.StructRefProxy):
    """The kernel's arrays as one numba object, made by `_new_tables`.

    Why: a compiled call unboxes it as one pointer; 21 array arguments cost ~1.5 us a call.
    """

    __slots__ = ("_arrays",)  # the NumPy arrays that own its fields' memory


structref.define_proxy(_Tables, _TablesType, list(_TABLE_FIELDS))


@intrinsic
def _unowned(typingctx: object, arrays: nbtypes.Type) -> object:
    """A tuple of arrays without their reference counts (meminfo): numba then never counts
    references to them.

    Why: every array the single-point path reads from `_Tables` and hands to the batch kernels
    is counted several times (an atomic add and subtract each, ~0.4 us a point in all), and so
    is every array the batch kernels hand to an inlined function (_settle, ~80 ns a list
    point). The memory stays owned by the NumPy arrays: `_Tables._arrays` holds them, or the
    kernel's caller does while it runs. `parent` is kept, so a field boxed back to Python would
    be that very array.
    """
    if not isinstance(arrays, nbtypes.BaseTuple) or not all(
        isinstance(t, nbtypes.Array) for t in arrays
    ):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        out = []
        for i, ty in enumerate(arrays):
            a = cgutils.create_struct_proxy(ty)(
                context, builder, value=builder.extract_value(args[0], i)
            )
            a.meminfo = cgutils.get_null_value(a.meminfo.type)
            out.append(a._getvalue())
        return context.make_tuple(builder, sig.return_type, out)

    return arrays(arrays), codegen


def _make_tables(arrays: tuple[npt.NDArray[np.generic], ...]) -> _Tables:
    """A `_Tables` of `arrays` (in `_TABLE_FIELDS` order), which it keeps alive."""
    tables = _new_tables(*arrays)
    tables._arrays = arrays
    return tables


@numba.njit(cache=True)
def _new_tables(*arrays: npt.NDArray[np.generic]) -> _Tables:
    return _Tables(*_unowned(arrays))


# The batch kernel built to be inlined into grid_one (and grid_presence into _presence_of_one):
# a call that hands over the kernel's two dozen arrays costs ~0.15 us more than inlined code.
_grid_kernel_inline = numba.njit(cache=True, inline="always")(_grid_kernel)


@numba.njit(cache=True)
def grid_one(lon: float, lat: float, acc: float, t: _Tables) -> np.int64:
    """One point through the kernel: kind << 32 | (zone + 1), or -1 for the exact index."""
    # The point and results in the tables' scratch arrays (see _scratch): nothing allocated.
    point, kind, zone, todo = t.one_point, t.one_kind, t.one_zone, t.one_todo
    point[0], point[1], point[2] = lon, lat, acc
    _grid_kernel_inline(
        point[0:1], point[1:2], point[2:3], t.forced, t.far,
        t.f_table, t.f_ints, t.f_floats, t.f_entries, t.f_combos,
        t.sub_base, t.s_ints, t.s_floats, t.s_entries, t.s_combos,
        t.c_table, t.c_clear, t.ring_start, t.coord_start,
        t.xy, t.prow, kind, zone, todo, t.one_want, False, t.one_pairs, t.one_want,
    )  # fmt: skip
    if todo[0]:
        return np.int64(-1)
    return (np.int64(kind[0]) << 32) | (np.int64(zone[0]) + 1)


@numba.njit(cache=True, nogil=True)
def grid_presence(
    lon: F64, lat: F64, acc: F64, points: I64, center_only: bool, forced: F64, far: F64,
    f_table: I64, f_ints: I64, f_floats: F32, f_entries: I64, f_combos: F32,
    sub_base: I32, s_ints: I64, s_floats: F32, s_entries: I64, s_combos: F32,
    c_table: I64, c_clear: F64, ring_start: I64, coord_start: I64, xy: F64,
    prow: F64,
) -> tuple[I64, I64, B]:  # fmt: skip
    """Presence pairs (point, zone) of the given points from their cells' lists.

    The batch kernel tells most points' presence itself (see _grid_kernel); this tells the
    rest (points a cell's state settles, lists that overflow the kernel's room) and the single
    path's.

    A point is present in a zone when its circle reaches the zone's area (d <= r + a), or,
    with center_only, when it lies inside. Every piece that can be is in the cell's list
    whenever a <= list_valid (a piece left out is farther than reach + a). Points the lists
    cannot settle (large circles, temporary zones, forced boxes) are flagged for the exact
    index. Pairs may repeat where a zone has pieces in several tiles.
    """
    n = len(points)
    todo = np.zeros(n, dtype=np.bool_)
    cap = 4 * n + 16
    out_point = np.empty(cap, dtype=np.int64)
    out_zone = np.empty(cap, dtype=np.int64)
    m = 0
    f_size = np.int64(len(f_table))
    # As in _grid_kernel: without reference counts, the levels' arrays cost nothing to bind to
    # another name or to hand to a function.
    (
        f_ints, f_floats, f_entries, f_combos, s_ints, s_floats, s_entries, ring_start,
        coord_start, xy, prow,
    ) = _unowned((
        f_ints, f_floats, f_entries, f_combos, s_ints, s_floats, s_entries, ring_start,
        coord_start, xy, prow,
    ))  # fmt: skip
    xs, ys = xy[0], xy[1]
    staged = n if far[2] != 0.0 else 0  # as in _grid_kernel: small tables skip the stage
    for j in range(n):
        # Prefetching, as in _grid_kernel: the table line of the point 2 AHEAD on (50k zones:
        # 250 -> 200 ns a point, with the pieces' prefetch below; finding cells ahead too, with
        # no array to keep them in, saved nothing more).
        if j + 2 * AHEAD < staged:
            later = points[j + 2 * AHEAD]
            lrow = _clamp(np.int64(np.floor((lat[later] + 90.0) * FINE_PER_DEG)), 0, FINE_ROWS)
            lcol = np.int64(np.floor((lon[later] + 180.0) * FINE_PER_DEG)) % FINE_COLS
            prefetch(f_table, _hash(lrow * FINE_COLS + lcol, f_size))
        i = points[j]
        x, y, a = lon[i], lat[i], acc[i]
        forced_here = False
        for k in range(forced.shape[0]):
            if forced[k, 0] <= x <= forced[k, 2] and forced[k, 1] <= y <= forced[k, 3]:
                forced_here = True
        row = _clamp(np.int64(np.floor((y + 90.0) * FINE_PER_DEG)), 0, FINE_ROWS)
        col = np.int64(np.floor((x + 180.0) * FINE_PER_DEG)) % FINE_COLS
        slot = find(f_table, f_size, row * FINE_COLS + col)
        if forced_here or slot < 0:
            todo[j] = True  # not in a stored cell: nothing to list (clear points are not asked)
            continue
        ints, floats, entries, combos = f_ints, f_floats, f_entries, f_combos
        if f_ints[slot, 0] == STATE_SUB:
            srow = _clamp(np.int64(np.floor((y + 90.0) * SUB_PER_DEG)), row * SUB, SUB)
            scol = _clamp(
                np.int64(np.floor((x + 180.0) * SUB_PER_DEG)) % SUB_COLS, col * SUB, SUB
            )
            slot = _subcell(sub_base[slot], srow - row * SUB, scol - col * SUB)
            ints, floats, entries = s_ints, s_floats, s_entries  # frames: the parent's
        if slot < 0 or not a <= floats[slot, 2]:
            todo[j] = True
            continue
        if (0.0 if center_only else a) <= floats[slot, 0]:
            continue  # no listed piece's area within reach: the presence clearance (_classify)
        if m + ints[slot, 4] - ints[slot, 3] > cap:  # room for every entry of this list
            cap = 2 * (m + ints[slot, 4] - ints[slot, 3])
            grown_point = np.empty(cap, dtype=np.int64)
            grown_zone = np.empty(cap, dtype=np.int64)
            grown_point[:m] = out_point[:m]
            grown_zone[:m] = out_zone[:m]
            out_point, out_zone = grown_point, grown_zone
        # The pieces' rows asked for at once, as _settle does; written out in both, since a
        # function handed these arrays cost ~90 ns a list point (numba counts references).
        for e in range(ints[slot, 3], ints[slot, 4]):
            prefetch(combos, entries[e, 1])
            _prefetch_coords(prow[entries[e, 0], ROW_CODE], xs, ys)
        dl, dt = _centre_offsets(x, y, row, col)
        for e in range(ints[slot, 3], ints[slot, 4]):
            p = entries[e, 0]
            c = entries[e, 1]
            tol = FRAME_SLACK_M + combos[c, 6]
            r = prow[p, ROW_R]
            limit = (r if center_only else r + a) * FRAME_STRETCH + tol
            px = combos[c, 0] + combos[c, 2] * dl + combos[c, 3] * dt
            py = combos[c, 1] + combos[c, 4] * dl + combos[c, 5] * dt
            bx = max(prow[p, 0] - px, 0.0, px - prow[p, 2])
            by = max(prow[p, 1] - py, 0.0, py - prow[p, 3])
            if bx * bx + by * by > limit * limit:
                continue
            if _piece_distance(px, py, p, prow, ring_start, coord_start, xs, ys) <= limit:
                out_point[m] = i
                out_zone[m] = np.int64(prow[p, ROW_ZONE])
                m += 1
    return out_point[:m], out_zone[:m], todo


# --- one point's presence (the single-point path; see grid_one) ---------------------------------

_grid_presence_inline = numba.njit(cache=True, inline="always")(grid_presence.py_func)


@numba.njit(cache=True)
def _presence_of_one(
    lon: float, lat: float, acc: float, center_only: bool, t: _Tables
) -> tuple[bool, I64]:
    """(unsure, zones): `grid_presence` for one point, each zone once, in order of listing."""
    point = t.one_point  # see _scratch
    point[0], point[1], point[2] = lon, lat, acc
    _, zones, unsure = _grid_presence_inline(
        point[0:1], point[1:2], point[2:3], np.zeros(1, dtype=np.int64), center_only,
        t.forced, t.far,
        t.f_table, t.f_ints, t.f_floats, t.f_entries, t.f_combos,
        t.sub_base, t.s_ints, t.s_floats, t.s_entries, t.s_combos,
        t.c_table, t.c_clear, t.ring_start, t.coord_start,
        t.xy, t.prow,
    )  # fmt: skip
    # A zone repeats where it has pieces in several tiles. Lists are short: a quadratic scan,
    # in place, is cheapest.
    m = 0
    for z in zones:
        seen = False
        for k in range(m):
            if zones[k] == z:
                seen = True
                break
        if not seen:
            zones[m] = z
            m += 1
    return unsure[0], zones[:m]


PRESENCE_UNSURE, PRESENCE_MORE = -1, -2
PRESENCE_TWO = 1 << 32  # codes from here on name two zones
_NO_ZONES = np.empty(0, dtype=np.int64)  # presence_one's answer for no zone (read only)
_NO_ZONES.flags.writeable = False


@numba.njit(cache=True)
def grid_presence_one(
    lon: float, lat: float, acc: float, center_only: bool, t: _Tables
) -> np.int64:
    """The zones one point is present in, as a code: 0 none; z + 1 zone z alone;
    (z + 1) << 32 | (y + 1) zones z and y; PRESENCE_MORE three or more (`grid_presence_zones`
    lists them); PRESENCE_UNSURE where the exact index must tell.

    Why a code: returning an array to Python costs ~0.5 us (boxing it), more than the lookup.
    Most points are present in one zone or none, some in two nested ones. Zone indexes are
    below 2**31 (the kernel holds them as int32), so two fit.
    """
    unsure, zones = _presence_of_one(lon, lat, acc, center_only, t)
    if unsure:
        return np.int64(PRESENCE_UNSURE)
    if len(zones) > 2:
        return np.int64(PRESENCE_MORE)
    if len(zones) == 2:
        return ((zones[0] + 1) << 32) | (zones[1] + 1)
    return zones[0] + 1 if len(zones) else np.int64(0)


@numba.njit(cache=True)
def grid_presence_zones(
    lon: float, lat: float, acc: float, center_only: bool, t: _Tables
) -> I64 | None:
    """The zones one point is present in, each once, or None where the exact index must tell."""
    unsure, zones = _presence_of_one(lon, lat, acc, center_only, t)
    return None if unsure else zones


@numba.njit(cache=True)
def grid_one_present(
    lon: float, lat: float, acc: float, center_only: bool, t: _Tables
) -> tuple[np.int64, np.int64]:
    """(grid_one's code, grid_presence_one's code) of one point. The second is 0 (no zone)
    where the first is -1 or names a clear point: a clear circle misses every zone's area."""
    code = grid_one(lon, lat, acc, t)
    if code < 0 or code >> 32 == KIND_CLEAR:
        return code, np.int64(0)
    return code, grid_presence_one(lon, lat, acc, center_only, t)


# --- building ----------------------------------------------------------------------------------


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS, Windows)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc; elsewhere nothing).

    Why: compiling frees millions of small GEOS objects and arrays below glibc's mmap
    threshold (which rises to 32 MB once a large array is freed). Their memory stays in the
    process, counted in its RSS, and the levels built next are fresh memory on top of it: at 1M
    zones, ~1.5 GB of the peak was memory already freed. A call costs milliseconds.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _big_parts(ex: ExactIndex) -> B:
    """Pieces of zones too large for cells, or cut with an interior piece: exact only."""
    reach = ex.radius_m[ex.part_zone] + ex.buffer_m[ex.part_zone]
    b = ex.part_bounds
    dlon, dlat = degree_margins(reach + FAR_M, np.maximum(np.abs(b[:, 1]), np.abs(b[:, 3])))
    cells = ((b[:, 3] - b[:, 1] + 2 * dlat) * FINE_PER_DEG + 2) * (
        (b[:, 2] - b[:, 0] + 2 * dlon) * FINE_PER_DEG + 2
    )
    big = (ex.part_tile == INTERIOR) | (cells > MAX_CELLS_PER_PART)
    return np.isin(ex.part_zone, np.unique(ex.part_zone[big]))


def _forced_boxes(ex: ExactIndex, big: B, max_accuracy_m: float) -> F64:
    """Lon/lat boxes around big zones, reach plus the largest accuracy wide: always exact."""
    b = ex.part_bounds[big]
    z = ex.part_zone[big]
    margin = ex.radius_m[z] + ex.buffer_m[z] + max(FAR_M, max_accuracy_m) + 1.0
    dlon, dlat = degree_margins(margin, np.maximum(np.abs(b[:, 1]), np.abs(b[:, 3])))
    boxes = np.column_stack([b[:, 0] - dlon, b[:, 1] - dlat, b[:, 2] + dlon, b[:, 3] + dlat])
    return np.ascontiguousarray(_with_antimeridian_twins(boxes), dtype=np.float64).reshape(-1, 4)


def _with_antimeridian_twins(boxes: F64, margin_lon: F64 | float = 0.0) -> F64:
    """The boxes, and a copy shifted by 360 degrees of each that comes within margin_lon of the
    antimeridian: a cell or point on the far side within the margin then measures its distance
    to the near copy, not round the globe."""
    east, west = boxes[:, 2] + margin_lon > 180.0, boxes[:, 0] - margin_lon < -180.0
    shift = np.array([360.0, 0.0, 360.0, 0.0])
    return np.concatenate([boxes, boxes[east] - shift, boxes[west] + shift])


def _quiet(stage: str, done: int, total: int) -> None:
    """A BuildProgress that reports nothing."""


def _build_levels(
    ex: ExactIndex, flat: FlatParts, big: B, report: BuildProgress = _quiet
) -> tuple[Level, Level]:
    """Classify fine cells within reach + FAR_M of every (not big) piece; split mixed ones.

    Why two phases, each in chunks: the fine phase hands the sub phase only what the split cells
    need (`_Split`), so neither phase's work arrays grow with the zone count, only the levels.
    """
    parts = np.flatnonzero(~big)
    pz = ex.part_zone[parts]
    reach = ex.radius_m[pz] + ex.buffer_m[pz]
    b = ex.part_bounds[parts]
    dlon, dlat = degree_margins(reach + FAR_M, np.maximum(np.abs(b[:, 1]), np.abs(b[:, 3])))
    r0 = np.clip(np.floor((b[:, 1] - dlat + 90.0) * FINE_PER_DEG), 0, FINE_ROWS - 1)
    r1 = np.clip(np.floor((b[:, 3] + dlat + 90.0) * FINE_PER_DEG), 0, FINE_ROWS - 1)
    c0 = np.floor((b[:, 0] - dlon + 180.0) * FINE_PER_DEG)
    c1 = np.floor((b[:, 2] + dlon + 180.0) * FINE_PER_DEG)
    rows_cols = (
        r0.astype(np.int64), r1.astype(np.int64), c0.astype(np.int64), c1.astype(np.int64)
    )  # fmt: skip
    del pz, reach, b, dlon, dlat, r0, r1, c0, c1
    fine, split = _fine_level(ex, flat, parts, rows_cols, report)
    sub = _sub_level(ex, flat, fine, split, report)
    fine.ints[split.cell, 0] = STATE_SUB
    return fine, sub


def _sub_level(
    ex: ExactIndex, flat: FlatParts, fine: Level, split: _Split, report: BuildProgress = _quiet
) -> Level:
    """The subcells of the split cells, classified against the pieces that could matter to
    them; the others only carry their clearance down (_fine_level measured both).

    Why in chunks of split cells (CHUNK_PAIRS / 4 subcell pairs each): the budget allows 3M
    subcell pairs, ~1.2 GB of work arrays at once. A quarter of the fine level's chunk, because
    this phase runs with the whole fine level built: its work arrays are the compile's peak
    (1M zones: ~0.4 GB -> ~0.1 GB on top). A subcell's pairs are all its parent's, so each
    subcell is classified whole, in the same order: the same level, bit for bit.
    """
    n_child = SUB * SUB
    k = np.arange(n_child)
    # Each split cell's (cell, tile) frames, by key, and their index among the fine level's.
    combo_keys, first = np.unique(
        np.repeat(split.cell, split.n_relevant) * _TILE_SPAN + ex.part_tile[split.pair_part],
        return_index=True,
    )
    parent_index = split.pair_combo[first]
    pair_start = np.concatenate([[0], np.cumsum(split.n_relevant)])
    out = _Chunks(own_frames=False)
    chunk_pairs = CHUNK_PAIRS // 4
    a = 0
    while True:
        # Split cells a..b-1: at most chunk_pairs subcell pairs (at least one cell).
        b = int(np.searchsorted(pair_start, pair_start[a] + chunk_pairs // n_child, "right")) - 1
        b = min(max(b, a + 1), len(split.cell))
        p0, p1 = pair_start[a], pair_start[b]
        j_of_pair = np.repeat(np.arange(b - a), split.n_relevant[a:b])
        child_of_pair = (j_of_pair[:, None] * n_child + k).ravel()
        level, _, _ = _classify(
            ex,
            flat,
            child_keys_of(split.key[a:b]).ravel(),
            SUB_PER_DEG,
            SUB_COLS,
            child_of_pair,
            np.repeat(split.pair_part[p0:p1], n_child),
            np.zeros(len(child_of_pair), dtype=bool),
            np.repeat(split.carried[a:b], n_child),
            parent=(
                combo_keys,
                parent_index,
                fine.combos,
                np.repeat(split.cell[a:b], n_child),
                np.repeat(split.key[a:b], n_child),
            ),
        )
        out.add(level)
        del level, j_of_pair, child_of_pair
        report("subcells", int(pair_start[b]), int(pair_start[-1]))
        a = b
        if a >= len(split.cell):
            break
    return out.level(HashTable(np.empty(0, dtype=np.int64)))


class _Chunks:
    """A level's packed arrays, chunk by chunk of cells, until they are joined.

    Each chunk's list offsets (and, for a level with its own frames, its entries' frame
    indexes) are moved to the whole level's as it is added.
    """

    def __init__(self, own_frames: bool) -> None:
        self.own_frames = own_frames
        self.ints: list[I32] = []
        self.floats: list[F32] = []
        self.entries: list[I32] = []
        self.combos: list[F32] = []
        self.n_entries = self.n_combos = 0

    def add(self, level: Level) -> None:
        n_entries = self.n_entries + len(level.entries)
        n_combos = self.n_combos + len(level.combos)
        if n_entries >= 2**31 or n_combos >= 2**31:
            raise OverflowError("a level with 2**31 list entries or frames: beyond int32")
        level.ints[:, 3:5] += np.int32(self.n_entries)
        if self.own_frames:
            level.entries[:, 1] += np.int32(self.n_combos)
        self.ints.append(level.ints)
        self.floats.append(level.floats)
        self.entries.append(level.entries)
        self.combos.append(level.combos)
        self.n_entries, self.n_combos = n_entries, n_combos

    def level(self, table: HashTable) -> Level:
        """The joined level (the chunks are let go as they are copied)."""
        return Level(
            table,
            _drain(self.ints),
            _drain(self.floats),
            _drain(self.entries),
            _drain(self.combos),
        )


class _Split(NamedTuple):
    """The fine cells to split, ascending, and what their subcells need of the fine phase.

    Per cell: its index in the fine level, key, number of relevant pieces (clearance below
    CARRY_M) and carried clearance (the least of the other pieces', at most FAR_M - 1). Per
    relevant (cell, piece) pair, cell by cell in the order the cell met them: the piece and the
    index of its (cell, tile) frame in the fine level.
    """

    cell: I64
    key: I64
    n_relevant: I64
    carried: F64
    pair_part: I64
    pair_combo: I64


def _fine_level(
    ex: ExactIndex,
    flat: FlatParts,
    parts: I64,
    rows_cols: tuple[I64, I64, I64, I64],
    report: BuildProgress = _quiet,
) -> tuple[Level, _Split]:
    """The fine level of the pieces' boxes (fine rows r0..r1, columns c0..c1), and the cells
    to split.

    Why in chunks: every (cell, piece) pair needs work arrays while it is classified (its
    distance and flags, its cell's frames), and 1M zones make 32M pairs, where the level itself
    keeps ~100 bytes a cell. Chunks are
    runs of whole fine rows (contiguous key ranges, so the keys stay sorted), of about
    CHUNK_PAIRS pairs; each one's pairs, frames and distances are freed before the next.
    Every cell sees its pairs in the same order as when all are classified at once (by piece),
    and all work is per pair or per cell, so the level is bit for bit the same.
    """
    r0, r1, c0, c1 = rows_cols
    temporary = ~(np.isneginf(ex.valid_from) & np.isposinf(ex.valid_until))
    # Pairs per fine row, to cut the rows into chunks of about CHUNK_PAIRS pairs.
    width = c1 - c0 + 1
    change = np.zeros(FINE_ROWS + 1, dtype=np.int64)
    np.add.at(change, r0, width)
    np.add.at(change, r1 + 1, -width)
    up_to_row = np.cumsum(np.cumsum(change[:-1]))  # pairs in rows 0..i
    del change, width
    bounds = [0, 0] if len(r0) == 0 else [int(r0.min()), int(r1.max()) + 1]
    keys_out: list[I64] = []
    out = _Chunks(own_frames=True)
    kept: list[_Split] = []
    n_cells = 0
    row = bounds[0]
    while True:
        before = int(up_to_row[row - 1]) if row > 0 else 0
        stop = int(np.searchsorted(up_to_row, before + CHUNK_PAIRS, side="right"))
        stop = min(max(stop, row + 1), bounds[1])
        near = np.flatnonzero((r0 < stop) & (r1 >= row))
        box, pair_key = _cells_of_boxes(
            np.maximum(r0[near], row), np.minimum(r1[near], stop - 1), c0[near], c1[near],
            FINE_COLS,
        )  # fmt: skip
        pair_part = parts[near][box]
        del box, near
        keys, cell_of_pair = np.unique(pair_key, return_inverse=True)
        del pair_key
        timed_pair = temporary[ex.part_zone[pair_part]]
        level, clear_pair, pair_combo = _classify(
            ex,
            flat,
            keys,
            FINE_PER_DEG,
            FINE_COLS,
            cell_of_pair,
            pair_part,
            timed_pair,
            np.full(len(keys), FAR_M - 1.0),
        )
        kept.append(
            _split_candidates(
                level, keys, cell_of_pair, pair_part, pair_combo, clear_pair, timed_pair,
                n_cells, out.n_combos,
            )
        )  # fmt: skip
        # The budget is global, but a candidate it leaves out now would be left out of all of
        # them too (see _within_budget), so only the ones it keeps are carried on.
        kept = [_within_budget(_concat_splits(kept))]
        keys_out.append(keys)
        out.add(level)
        n_cells += len(keys)
        del level, keys, cell_of_pair, pair_part, pair_combo, clear_pair, timed_pair
        if len(keys_out) % TRIM_CHUNKS == 0:
            # Freed work arrays sit in the C heap between the chunks' kept arrays; handed back
            # now and then, they stop piling up (1M zones, when it came in: peak 4.14 -> 4.00
            # GB). Every chunk was 3.88 GB but ~8 s slower (pages faulted again).
            release_freed_memory()
        report("fine cells", int(up_to_row[stop - 1]), int(up_to_row[-1]))
        row = stop
        if row >= bounds[1]:
            break
    # The last chunk's work arrays were freed into the C heap: hand them back before the hash
    # table and the joined level are made on top of them.
    release_freed_memory()
    return out.level(HashTable(_drain(keys_out))), kept[0]


def _split_candidates(
    level: Level, keys: I64, cell_of_pair: I64, pair_part: I64, pair_combo: I64,
    clear_pair: F64, timed_pair: B, cell_offset: int, combo_offset: int,
) -> _Split:  # fmt: skip
    """A chunk's cells that may be split, before the budget: mixed cells without temporary
    zones and with at most MAX_SPLIT_PIECES relevant pieces.

    Splitting is only a speed-up (a mixed fine cell keeps its own list): only pieces that could
    matter are measured again, the others carry their clearance down to the subcells.
    """
    n = len(keys)
    timed_cell = _any_per_cell(cell_of_pair, timed_pair, n)
    mixed = (level.state == STATE_MIXED) & ~timed_cell
    near_enough = clear_pair < CARRY_M
    n_relevant = np.bincount(cell_of_pair[near_enough], minlength=n)
    cand = np.flatnonzero(mixed & (n_relevant <= MAX_SPLIT_PIECES))
    is_cand = np.zeros(n, dtype=bool)
    is_cand[cand] = True
    carried = np.full(n, FAR_M - 1.0)
    far = is_cand[cell_of_pair] & ~near_enough
    np.minimum.at(carried, cell_of_pair[far], clear_pair[far])
    relevant = np.flatnonzero(is_cand[cell_of_pair] & near_enough)
    relevant = relevant[np.argsort(cell_of_pair[relevant], kind="stable")]
    return _Split(
        cand + cell_offset,
        keys[cand],
        n_relevant[cand],
        carried[cand],
        pair_part[relevant],
        pair_combo[relevant] + combo_offset,
    )


def _concat_splits(splits: list[_Split]) -> _Split:
    """The candidates of several chunks, in their (cell) order."""
    return _Split(*(np.concatenate(f) for f in zip(*splits, strict=True)))


def _within_budget(c: _Split) -> _Split:
    """The candidates the budget keeps: fewest relevant pieces first (then by cell), while the
    subcell pairs stay within SUB_PAIR_BUDGET, so dense cities cannot blow up compile time and
    memory.

    Applied to the candidates kept so far plus a chunk's, it keeps exactly what it would keep of
    all candidates seen. Dropped cells come after every kept one in that order, so a cell ahead
    of all of them has the same pairs ahead of it either way; a cell behind one has every kept
    cell ahead of it and at least as many relevant pieces as the first dropped cell, which was
    over the budget with those: so is it. The split cells do not depend on the chunks.
    """
    order = np.argsort(c.n_relevant, kind="stable")
    within = np.cumsum(c.n_relevant[order]) * SUB * SUB <= SUB_PAIR_BUDGET
    keep = np.zeros(len(c.cell), dtype=bool)
    keep[order[within]] = True
    # Pairs are grouped by cell, n_relevant of them each.
    keep_pair = np.repeat(keep, c.n_relevant)
    return _Split(
        c.cell[keep], c.key[keep], c.n_relevant[keep], c.carried[keep],
        c.pair_part[keep_pair], c.pair_combo[keep_pair],
    )  # fmt: skip


def _drain(chunks: list[_A]) -> _A:
    """np.concatenate(chunks), emptying the list as it copies.

    Why: the chunks and the whole are never all alive together (a level's size, not twice it).
    """
    shape = (sum(len(a) for a in chunks), *chunks[0].shape[1:])
    out = cast(_A, np.empty(shape, dtype=chunks[0].dtype))
    at = 0
    chunks.reverse()
    while chunks:
        a = chunks.pop()
        out[at : at + len(a)] = a
        at += len(a)
        del a
        # A chunk is below the mmap threshold: freed, it stays in the heap unless handed back.
        release_freed_memory()
    return out


def child_keys_of(parent_keys: I64) -> I64:
    """The SUB x SUB subcell keys of each fine cell, (n, SUB * SUB): row by row within a cell.

    Row j lists the children of parent_keys[j]; the sub level's cells are these, in this order,
    so a compiled file derives them from the split fine cells instead of storing them.
    """
    k = np.arange(SUB * SUB)
    rows, cols = parent_keys // FINE_COLS, parent_keys % FINE_COLS
    # The first child's key, plus each child's offset from it: one (n, 64) array, no temporaries
    # of that size (the sub level has millions of cells).
    first = rows * SUB * SUB_COLS + cols * SUB
    offset = (k // SUB) * SUB_COLS + k % SUB
    return np.add(first[:, None], offset[None, :])


def _classify(
    ex: ExactIndex,
    flat: FlatParts,
    keys: I64,
    per_deg: int,
    n_cols: int,
    cell_of_pair: I64,
    pair_part: I64,
    timed_pair: B,
    base_clearance: F64,
    parent: tuple[I64, I64, F32, I64, I64] | None = None,
) -> tuple[Level, F64, I64]:
    """Classify cells from their (cell, zone piece) pairs.

    Returns the level (without a hash table: the caller adds one), each pair's clearance, and
    the index of each pair's (cell, tile) combination among the level's (fine level: -1 where
    the level does not keep it, see below). `parent` (keys of the parent level's (cell, tile)
    combinations the cells need, their indexes in the parent level, its packed `combos`, and
    each cell's parent cell and that cell's key) lets subcells reuse their parent's affine maps
    instead of projecting again.
    """
    step = 1.0 / per_deg
    lat0 = (keys // n_cols) * step - 90.0
    lon0 = (keys % n_cols) * step - 180.0
    # Each cell is measured in the frame of the piece it is paired with: a cell next to a tile
    # edge may pair with pieces of the neighbouring tile.
    combo, pair_combo = np.unique(
        cell_of_pair * _TILE_SPAN + ex.part_tile[pair_part], return_inverse=True
    )
    combo_cell, combo_tile = combo // _TILE_SPAN, combo % _TILE_SPAN
    if parent is None:
        frame = _frames(ex, lon0[combo_cell], lat0[combo_cell], step, combo_tile)
    else:
        parent_keys, parent_index, parent_combos, parent_cell, parent_key = parent
        up = parent_index[
            np.searchsorted(parent_keys, parent_cell[combo_cell] * _TILE_SPAN + combo_tile)
        ]
        frame = _derived_frames(
            parent_combos, up, parent_key[combo_cell], lon0[combo_cell], lat0[combo_cell], step
        )
    # Every point of the cell is within h of its centre (h: the farthest corner, plus the affine
    # map's error), and distances are 1-Lipschitz: d - h and d + h bound them over the cell.
    c = _classify_pairs(
        cell_of_pair, pair_part, pair_combo, timed_pair, base_clearance,
        frame.cx, frame.cy, frame.half_diag + frame.err,
        ex.part_zone, ex.radius_m, ex.buffer_m,
        flat.is_point, flat.ring_start, flat.coord_start, flat.xs, flat.ys,
    )  # fmt: skip
    state, zone, clearance, near_acc, near_zone, list_start, valid, order, clear_pair = c
    del c
    if parent is None:
        # The fine level keeps the (cell, tile) frames its lists name, and those of pieces a
        # mixed cell may carry down to its subcells (whose lists name them too): the others are
        # never read (1M zones: ~1/6 of 18M frames, 72 bytes each). Kept frames keep their
        # order, and a pair whose frame is dropped gets -1.
        used = np.zeros(len(combo), dtype=bool)
        used[pair_combo[order]] = True
        used[pair_combo[(state[cell_of_pair] == STATE_MIXED) & (clear_pair < CARRY_M)]] = True
        keep = np.flatnonzero(used)
        pair_combo = np.where(used[pair_combo], np.cumsum(used)[pair_combo] - 1, -1)
        entry_combo = pair_combo[order]
    else:
        # A subcell's affine map is its parent's (the same Jacobian and error bound, only
        # re-centred), so its list entries name the parent level's frames and it stores none.
        keep = np.empty(0, dtype=np.int64)
        entry_combo = up[pair_combo[order]]
    level = Level.build(
        # Fine cells are found by key (the caller builds the table once for all chunks);
        # subcells by position under their parent (see _pack).
        table=HashTable(np.empty(0, dtype=np.int64)),
        state=state,
        zone=zone,
        clearance=clearance,
        near_acc=near_acc,
        near_zone=near_zone,
        list_start=list_start,
        list_valid=valid,
        entry_part=pair_part[order].astype(np.int64),
        entry_combo=entry_combo.astype(np.int64),
        cx=frame.cx[keep],
        cy=frame.cy[keep],
        jac=np.ascontiguousarray(frame.jac[keep]),
        err=frame.err[keep],
    )
    return level, clear_pair, pair_combo


@numba.njit(cache=True, nogil=True)
def _nearest_first(
    order: I64, list_start: I64, d: F64, pair_part: I64, part_zone: I64, radius_m: F64,
    buffer_m: F64,
) -> None:  # fmt: skip
    """Each cell's listed pairs (order[list_start[c]:list_start[c + 1]]) sorted in place by
    their piece's distance from the cell's centre less its zone's reach, ties in pair order.

    Why: a list point stops measuring the pieces that cannot outrank the best one found (see
    _settle), so the sooner it finds the piece that decides it, the fewer it measures. The
    answers do not depend on the order. 50k zones: 752 -> 682 ns a near-edge point, the same
    answers (lists of 9 entries on average there; at 1k, one or two, no change).
    """
    key = np.empty(len(order))
    for j in range(len(order)):
        z = part_zone[pair_part[order[j]]]
        key[j] = d[order[j]] - (radius_m[z] + buffer_m[z])
    for c in range(len(list_start) - 1):
        for j in range(list_start[c] + 1, list_start[c + 1]):  # insertion: lists are short
            i, k = order[j], key[j]
            q = j
            while q > list_start[c] and key[q - 1] > k:
                order[q], key[q] = order[q - 1], key[q - 1]
                q -= 1
            order[q], key[q] = i, k


@numba.njit(cache=True, nogil=True)
def _classify_pairs(
    cell_of_pair: I64, pair_part: I64, pair_combo: I64, timed_pair: B, base_clearance: F64,
    cx: F64, cy: F64, h_combo: F64, part_zone: I64, radius_m: F64, buffer_m: F64,
    is_point: B, ring_start: I64, coord_start: I64, xs: F64, ys: F64,
) -> tuple[I8, I32, F64, F64, I32, I64, F64, I64, F64]:  # fmt: skip
    """The cells' fields from their (cell, piece) pairs, each pair measured once (see _classify).

    Returns per cell: state, zone, clearance (a CLEAR cell's, else the presence clearance, -1
    where temporary), near_acc, near_zone, list offsets (n + 1) and list_valid; the listed pairs
    in list order; per pair, its clearance.

    Why a loop: the same arithmetic as NumPy expressions over the pairs, value for value, in
    three passes that keep two numbers and two flags a pair, where NumPy made two dozen
    temporaries of the pairs' length (1M zones: about 0.5 GB a chunk, most of the compile's
    peak above the levels themselves).
    """
    n_pairs, n_cells = len(pair_part), len(base_clearance)
    d = np.empty(n_pairs)
    clear_pair = np.empty(n_pairs)
    inside = np.zeros(n_pairs, dtype=np.bool_)
    listed = np.zeros(n_pairs, dtype=np.bool_)
    clearance = base_clearance.copy()
    n_may_inside = np.zeros(n_cells, dtype=np.int64)
    best = np.full(n_cells, np.inf)
    any_inside = np.zeros(n_cells, dtype=np.bool_)
    timed = np.zeros(n_cells, dtype=np.bool_)
    # Pass 1: distances; each cell's clearance, pieces whose area it may reach, deepest reach.
    for i in range(n_pairs):
        c, p = cell_of_pair[i], pair_part[i]
        k = pair_combo[i]
        di, dbi = point_distance(cx[k], cy[k], p, is_point, ring_start, coord_start, xs, ys)
        h = h_combo[k]
        r = radius_m[part_zone[p]]
        reach = r + buffer_m[part_zone[p]]
        lo, hi = di - h, di + h
        # Clearance: for a <= this, ExactIndex's test (d <= (reach + a) * S + slack) is false.
        clear_pair[i] = (lo - FRAME_SLACK_M - EPS_M) / FRAME_STRETCH - reach
        clearance[c] = min(clearance[c], clear_pair[i])
        if lo <= r * FRAME_STRETCH + FRAME_SLACK_M + EPS_M:
            n_may_inside[c] += 1
        if hi <= reach - EPS_M:
            best[c] = min(best[c], di - reach)
        if is_point[p]:
            inside[i] = hi <= r - EPS_M
        else:
            inside[i] = di == 0.0 and dbi - h >= EPS_M
        any_inside[c] |= inside[i]
        timed[c] |= timed_pair[i]
        d[i] = di
    state = np.full(n_cells, STATE_MIXED, dtype=np.int8)
    near_cell = np.zeros(n_cells, dtype=np.bool_)
    inside_cell = np.zeros(n_cells, dtype=np.bool_)
    for c in range(n_cells):
        if clearance[c] >= 0.0:
            state[c] = STATE_CLEAR
        near_cell[c] = np.isfinite(best[c]) and n_may_inside[c] == 0
        if near_cell[c]:
            state[c] = STATE_NEAR
        inside_cell[c] = any_inside[c] and n_may_inside[c] == 1
        if inside_cell[c]:
            state[c] = STATE_INSIDE
        if timed[c]:
            state[c] = STATE_MIXED
    # Pass 2: the zone of NEAR and INSIDE cells (the lowest of the deepest or inside pieces'
    # zones), the accuracy from which a circle reaches a zone from anywhere in the cell, and
    # the lists.
    no_zone = np.iinfo(np.int64).max
    zone_pick = np.full(n_cells, no_zone)
    near_acc = np.full(n_cells, np.inf)
    valid = np.minimum(base_clearance, LIST_M)
    presence_clear = np.full(n_cells, LIST_M)
    count = np.zeros(n_cells + 1, dtype=np.int64)
    for i in range(n_pairs):
        c, p = cell_of_pair[i], pair_part[i]
        z = part_zone[p]
        h = h_combo[pair_combo[i]]
        r = radius_m[z]
        reach = r + buffer_m[z]
        lo, hi = d[i] - h, d[i] + h
        depth = d[i] - reach if hi <= reach - EPS_M else np.inf
        if (near_cell[c] and depth == best[c]) or (inside_cell[c] and inside[i]):
            zone_pick[c] = min(zone_pick[c], z)
        # Large circles: a >= hi - reach (+ tolerance) reaches the zone from anywhere in the cell.
        if n_may_inside[c] == 0:
            near_acc[c] = min(near_acc[c], hi - reach + EPS_M)
        # Lists: pieces within LIST_M. Valid up to the clearance of the pieces left out; never
        # for cells with temporary zones (time is the exact index's job). CLEAR and MIXED cells
        # settle decisions from them, so they list by the clearance from each piece's reach. A
        # NEAR or INSIDE cell is decided by its state and uses its list for presence only
        # (`grid_presence`: a circle present in a zone reaches its area), so it lists by the
        # clearance from the zone's area, which leaves out most pieces whose buffer merely
        # covers it.
        # Presence clearance: up to this accuracy no listed piece's area is reached, so a point
        # the list settles is present nowhere, and grid_presence says so without measuring (at
        # 50k zones about half the points it is asked about). LIST_M where nothing is listed:
        # lists serve no accuracy beyond list_valid <= LIST_M.
        from_area = (lo - FRAME_SLACK_M - EPS_M) / FRAME_STRETCH - r
        by_state = state[c] == STATE_NEAR or state[c] == STATE_INSIDE
        list_clear = from_area if by_state else clear_pair[i]
        if list_clear < LIST_M:
            listed[i] = True
            count[c + 1] += 1
            presence_clear[c] = min(presence_clear[c], from_area)
        else:
            valid[c] = min(valid[c], list_clear)
    # Pass 3: near_zone (the lowest zone needing the least accuracy), and the listed pairs,
    # cell by cell, each cell's nearest piece first (_nearest_first).
    near_pick = np.full(n_cells, no_zone)
    list_start = np.cumsum(count)
    at = list_start[:-1].copy()
    order = np.empty(list_start[-1], dtype=np.int64)
    for i in range(n_pairs):
        c, p = cell_of_pair[i], pair_part[i]
        z = part_zone[p]
        reach = radius_m[z] + buffer_m[z]
        if n_may_inside[c] == 0 and d[i] + h_combo[pair_combo[i]] - reach + EPS_M == near_acc[c]:
            near_pick[c] = min(near_pick[c], z)
        if listed[i]:
            order[at[c]] = i
            at[c] += 1
    _nearest_first(order, list_start, d, pair_part, part_zone, radius_m, buffer_m)
    zone = np.full(n_cells, -1, dtype=np.int32)
    near_zone = np.full(n_cells, -1, dtype=np.int32)
    out_clearance = np.empty(n_cells)
    for c in range(n_cells):
        if near_cell[c] or inside_cell[c]:
            zone[c] = np.int32(zone_pick[c])
        if np.isfinite(near_acc[c]):
            near_zone[c] = np.int32(near_pick[c])
        # The presence clearance is kept where a CLEAR cell keeps its clearance (floats[:, 0],
        # unread for other states); a CLEAR cell's clearance, from every piece's reach, bounds
        # it too.
        if state[c] == STATE_CLEAR:
            out_clearance[c] = clearance[c]
        elif timed[c]:
            out_clearance[c] = -1.0
        else:
            out_clearance[c] = presence_clear[c]
        if timed[c]:
            valid[c] = -1.0
            near_acc[c] = np.inf
    return state, zone, out_clearance, near_acc, near_zone, list_start, valid, order, clear_pair


@dataclass(frozen=True, slots=True)
class _Frames:
    """Per (cell, tile): the cell centre's frame position, the affine map, its error bound,
    and the farthest corner's distance from the centre."""

    cx: F64
    cy: F64
    jac: F64
    err: F64
    half_diag: F64


def _derived_frames(
    combos: F32, up: I64, parent_key: I64, lon0: F64, lat0: F64, step: float
) -> _Frames:
    """Subcell frames from the parent cell's affine map; its error bound covers the subcell.

    combos: the parent level's packed frames (`Level.combos`), read column by column: they are
    the parent's frames as computed, and no (n, 7) gather is made. parent_key: each frame's
    fine cell, whose centre the map is around (as the fine level computed it).
    """
    plon = (parent_key % FINE_COLS) * FINE_STEP - 180.0 + FINE_STEP / 2
    plat = (parent_key // FINE_COLS) * FINE_STEP - 90.0 + FINE_STEP / 2
    jac = combos[up, 2:6].astype(np.float64)  # exactly: float32 values widen without loss
    clon, clat = lon0 + step / 2, lat0 + step / 2
    dl, dt = clon - plon, clat - plat
    cx = combos[up, 0] + jac[:, 0] * dl + jac[:, 1] * dt
    cy = combos[up, 1] + jac[:, 2] * dl + jac[:, 3] * dt
    hx = (np.abs(jac[:, 0]) + np.abs(jac[:, 1])) * step / 2
    hy = (np.abs(jac[:, 2]) + np.abs(jac[:, 3])) * step / 2
    err = combos[up, 6].astype(np.float64)
    return _Frames(cx, cy, jac, err, np.hypot(hx, hy))


def _frames(ex: ExactIndex, lon0: F64, lat0: F64, step: float, tiles: I64) -> _Frames:
    """Each cell's centre in a tile frame, an affine map around it, and that map's error."""
    n = len(lon0)
    cx, cy, err, half = (np.empty(n) for _ in range(4))
    jac = np.empty((n, 4))
    # A tile's cells a batch at a time: the work is ~400 bytes a cell, and a dense city puts
    # most of a chunk's cells in one tile (1M zones: 0.34 GB at once). Each point projects
    # alone, so the batches change no value.
    batches = [
        (key, sel[a : a + FRAME_BATCH])
        for key, sel in groups(tiles)
        for a in range(0, len(sel), FRAME_BATCH)
    ]

    def measure(key: int, sel: I64) -> None:
        lo, la = lon0[sel], lat0[sel]
        # centre, then corners SW, SE, NE, NW
        lons = np.concatenate([lo + step / 2, lo, lo + step, lo + step, lo])
        lats = np.concatenate([la + step / 2, la, la, la + step, la + step])
        x, y = _forward_distinct(ex.frames, key, lons, lats)
        m = len(sel)
        x, y = x.reshape(5, m), y.reshape(5, m)
        sw, se, ne, nw = 1, 2, 3, 4
        jx_lon = ((x[se] + x[ne]) - (x[sw] + x[nw])) / (2 * step)
        jx_lat = ((x[ne] + x[nw]) - (x[sw] + x[se])) / (2 * step)
        jy_lon = ((y[se] + y[ne]) - (y[sw] + y[nw])) / (2 * step)
        jy_lat = ((y[ne] + y[nw]) - (y[sw] + y[se])) / (2 * step)
        dl = np.array([-1, 1, 1, -1]) * step / 2
        dt = np.array([-1, -1, 1, 1]) * step / 2
        px = x[0] + np.outer(dl, jx_lon) + np.outer(dt, jx_lat)
        py = y[0] + np.outer(dl, jy_lon) + np.outer(dt, jy_lat)
        # The affine map errs most at the corners (the error is quadratic in the offset); twice
        # the corner error, plus a millimetre, bounds it over the cell.
        corner_err = np.hypot(px - x[1:], py - y[1:]).max(axis=0)
        cx[sel], cy[sel] = x[0], y[0]
        jac[sel] = np.column_stack([jx_lon, jx_lat, jy_lon, jy_lat])
        err[sel] = 2.0 * corner_err + 0.001
        half[sel] = np.hypot(x[1:] - x[0], y[1:] - y[0]).max(axis=0)

    # The batches on threads: PROJ releases the GIL while it projects, which is most of the
    # work (~0.8 us a point; 1M zones: ~40 s of the compile on one core). Batches write
    # disjoint cells, and each point projects alone, so the values are the same.
    if FRAME_THREADS > 1 and n >= FRAME_THREADS_MIN_CELLS:
        with ThreadPoolExecutor(FRAME_THREADS, thread_name_prefix="geofence-frames") as pool:
            for _ in pool.map(measure, *zip(*batches, strict=True)):
                pass
    else:
        for key, sel in batches:
            measure(key, sel)
    cx, cy, jac, err = _float32_map(cx, cy, jac, err)
    return _Frames(cx, cy, jac, err, half)


def _float32_map(cx: F64, cy: F64, jac: F64, err: F64) -> tuple[F64, F64, F64, F64]:
    """The affine maps as float32 values (as float64), each error bound widened to cover them.

    Why here, before anything is measured: the build classifies cells with the very map the
    kernels read, so the stored error bounds every use of it. Rounding moves the map's image of
    a point at most |dcx| + |dcy| + sum|djac| * FINE_STEP (offsets from the centre are below
    half a fine cell, whose map a subcell shares); about 4 mm where the frame position is
    near 100 km, so the answers move by at most that, and only toward rejecting.
    """
    cx32, cy32 = cx.astype(np.float32), cy.astype(np.float32)
    jac32 = jac.astype(np.float32)
    moved = (
        np.abs(cx - cx32) + np.abs(cy - cy32) + np.abs(jac - jac32).sum(axis=1) * FINE_STEP
    )
    err32 = f32_up(err + moved)
    return (
        cx32.astype(np.float64), cy32.astype(np.float64), jac32.astype(np.float64),
        err32.astype(np.float64),
    )  # fmt: skip


def _forward_distinct(frames: Frames, key: int, lon: F64, lat: F64) -> tuple[F64, F64]:
    """`frames.forward(key, lon, lat)`, projecting each distinct (lon, lat) pair once.

    Why: neighbouring cells share corners (up to four cells a corner), and projecting is most of
    `_frames`' work. Pairs are distinct by their bits, and a point projects alone as it does in
    a batch, so the result is bit for bit what projecting every pair gives.
    """
    lon_bits = np.ascontiguousarray(lon).view(np.int64)
    lat_bits = np.ascontiguousarray(lat).view(np.int64)
    order = np.lexsort((lat_bits, lon_bits))
    a, b = lon_bits[order], lat_bits[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    which = np.empty(len(order), dtype=np.int64)
    which[order] = np.cumsum(new) - 1  # each pair's distinct point
    first = order[new]
    x, y = frames.forward(key, lon[first], lat[first])
    return x[which], y[which]


def coarse_reach(
    ex: ExactIndex, parts: I64, max_accuracy_m: float
) -> tuple[F64, tuple[I64, I64, I64, I64], tuple[F64, float]]:
    """The pieces' reach boxes, the coarse rows and columns (first and last, columns
    unwrapped) of the boxes widened by the margin, max_accuracy_m + 1 km, and that margin in
    degrees (longitude per box, latitude)."""
    b = ex.part_bounds[parts]
    pz = ex.part_zone[parts]
    abs_lat = np.maximum(np.abs(b[:, 1]), np.abs(b[:, 3]))
    dlon, dlat = degree_margins(ex.radius_m[pz] + ex.buffer_m[pz], abs_lat)
    boxes = np.column_stack([b[:, 0] - dlon, b[:, 1] - dlat, b[:, 2] + dlon, b[:, 3] + dlat])
    mlon, mlat = degree_margins(np.full(len(b), max_accuracy_m + 1000.0), abs_lat)
    r0 = np.clip(np.floor((boxes[:, 1] - mlat + 90.0) * COARSE_PER_DEG), 0, COARSE_ROWS - 1)
    r1 = np.clip(np.floor((boxes[:, 3] + mlat + 90.0) * COARSE_PER_DEG), 0, COARSE_ROWS - 1)
    c0 = np.floor((boxes[:, 0] - mlon + 180.0) * COARSE_PER_DEG)
    c1 = np.floor((boxes[:, 2] + mlon + 180.0) * COARSE_PER_DEG)
    r0i, r1i, c0i, c1i = (v.astype(np.int64) for v in (r0, r1, c0, c1))
    lat_margin = float(mlat[0]) if len(b) else 0.0  # the same for every box
    return boxes, (r0i, r1i, c0i, c1i), (mlon, lat_margin)


def _build_coarse(
    ex: ExactIndex, max_accuracy_m: float, big: B, report: BuildProgress = _quiet
) -> tuple[HashTable, F64]:
    """Lower bounds of the clearance in coarse cells up to max_accuracy_m from any reach.

    The cells are those of every piece's reach box widened by max_accuracy_m + 1 km; a point in
    any other cell is allowed by the kernel without a look, so the set must never shrink. They
    are marked in a bitmap rather than listed per (piece, cell) pair, which at 1M zones was
    ~240M pairs and gigabytes.

    A cell's clearance is its distance (Euclidean degrees, as a lower bound in metres) from the
    nearest box, found among the boxes whose columns and widened rows hold it (see below) by a
    compiled loop over each box's cells, COARSE_BAND_ROWS rows at a time, so memory stays
    O(pieces + cells), not O(pairs). Why not the nearest box from an STRtree, as before: ~15
    us a cell, a third of a 50k-zone compile. A box that measures none of a cell is at least
    its margin away (or the latitude between them), so a cell's distance is capped at the least
    of those (`lower`): about max_accuracy_m + 1 km in metres, a few percent less far from the
    equator. Below it, the distances are the nearest box's, as the STRtree gave them; above,
    the cap only sends a wider accuracy to the exact index.
    """
    parts = np.flatnonzero(~big)
    if parts.size == 0:
        return HashTable(np.empty(0, dtype=np.int64)), np.empty(0)
    # No antimeridian twins: a box measures the cells across it, where its columns run on.
    boxes, (r0, r1, c0, c1), (mlon, mlat) = coarse_reach(ex, parts, max_accuracy_m)
    keys = _coarse_keys(r0, r1, c0, c1)
    # Each box measures the cells of its columns and of its rows widened by its longitude
    # margin (at most a degree): in degrees that margin is the larger but near the equator, and
    # in metres the distances convert at the longitude's scale, so a cap set by the latitude
    # margin alone would fall to half of max_accuracy_m at 60 degrees.
    widen = np.minimum(np.maximum(mlon, mlat), 1.0)
    s0 = np.clip(np.floor((boxes[:, 1] - widen + 90.0) * COARSE_PER_DEG), 0, COARSE_ROWS - 1)
    s1 = np.clip(np.floor((boxes[:, 3] + widen + 90.0) * COARSE_PER_DEG), 0, COARSE_ROWS - 1)
    s0, s1 = s0.astype(np.int64), s1.astype(np.int64)
    step = 1.0 / COARSE_PER_DEG

    def lower(block: int) -> float:
        """The cap for the CAP_ROWS rows from `block` (a multiple of CAP_ROWS, so the caps do
        not depend on COARSE_BAND_ROWS): a box that measures none of a cell's row or column is
        at least this far from the cell, by its margins or by the latitude between them."""
        stop = block + CAP_ROWS
        measured = (s0 < stop) & (s1 >= block)
        gap = np.maximum(block * step - 90.0 - boxes[:, 3], boxes[:, 1] - (stop * step - 90.0))
        return float(np.where(measured, np.minimum(widen, mlon), np.maximum(widen, gap)).min())

    clearance = np.empty(len(keys), dtype=np.float64)
    key_row = keys // COARSE_COLS
    rows = np.empty((COARSE_BAND_ROWS, COARSE_COLS))
    first = int(key_row[0]) // COARSE_BAND_ROWS * COARSE_BAND_ROWS if len(keys) else 0
    for band in range(first, int(key_row[-1]) + 1 if len(keys) else 0, COARSE_BAND_ROWS):
        stop = band + COARSE_BAND_ROWS
        a, b = np.searchsorted(key_row, [band, stop])
        if a == b:
            continue
        for block in range(band - band % CAP_ROWS, stop, CAP_ROWS):
            rows[max(block, band) - band : min(block + CAP_ROWS, stop) - band].fill(lower(block))
        measured = np.flatnonzero((s0 < stop) & (s1 >= band))
        _box_distances(band, measured, boxes, s0, s1, c0, c1, rows)
        k = keys[a:b]
        dist_deg = rows[k // COARSE_COLS - band, k % COARSE_COLS]
        lat0 = (k // COARSE_COLS) * step - 90.0
        # Euclidean degrees to metres, as a lower bound: the fewest metres per degree anywhere in
        # the cell (longitude at its poleward edge), less a percent.
        worst = np.minimum(np.maximum(np.abs(lat0), np.abs(lat0 + step)) + 0.01, 90.0)
        scale = np.minimum(M_PER_DEG_LAT_MIN, 111_319.0 * np.cos(np.radians(worst))) / 1.01
        clearance[a:b] = dist_deg * scale - 1.0
        report("coarse cells", int(b), len(keys))
    return HashTable(keys), clearance


@numba.njit(cache=True, nogil=True)
def _box_distances(
    band: int, boxes_in_band: I64, boxes: F64, r0: I64, r1: I64, c0: I64, c1: I64, out: F64
) -> None:
    """Lower each coarse cell of rows band.. (out's rows) to its distance in degrees from each
    box (lon/lat, Euclidean) whose rows r0..r1 and columns c0..c1 (unwrapped) hold it.

    Each cell is measured where the box's columns put it, so a box by the antimeridian measures
    the cells beyond it across it (as its shifted twin would).
    """
    step = 1.0 / COARSE_PER_DEG
    n_rows, n_cols = out.shape
    for i in boxes_in_band:
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        # A box whose columns go round the globe: one turn of columns from the nearest.
        first, last = c0[i], c1[i]
        if last - first + 1 > n_cols:
            centre = np.int64(np.floor(((x0 + x1) / 2 + 180.0) * COARSE_PER_DEG))
            first, last = centre - n_cols // 2, centre - n_cols // 2 + n_cols - 1
        for r in range(max(r0[i], band), min(r1[i], band + n_rows - 1) + 1):
            lat0 = r * step - 90.0
            dy = max(y0 - (lat0 + step), 0.0, lat0 - y1)
            line = out[r - band]
            for c in range(first, last + 1):
                lon0 = c * step - 180.0
                dx = max(x0 - (lon0 + step), 0.0, lon0 - x1)
                d = np.sqrt(dx * dx + dy * dy)
                col = c % n_cols
                line[col] = min(line[col], d)


def _coarse_keys(r0: I64, r1: I64, c0: I64, c1: I64) -> I64:
    """The sorted keys of the coarse cells in any of the boxes rows r0..r1 x columns c0..c1.

    Columns wrap at the antimeridian. Why a bitmap: it is 1 bit a cell over the rows in use (at
    most 33 MB for the whole globe) whatever the boxes' overlap, where listing every (box, cell)
    pair and taking np.unique held ~50 pairs per distinct cell, 8 bytes each, several times over.
    """
    if len(r0) == 0:
        return np.empty(0, dtype=np.int64)
    row0 = int(r0.min())
    words = np.zeros((int(r1.max()) - row0 + 1, COARSE_COLS // 64), dtype=np.uint64)
    _mark_boxes(r0 - row0, r1 - row0, c0, c1, words)
    return _marked_keys(words, row0)


@numba.njit(cache=True)
def _mark_boxes(r0: I64, r1: I64, c0: I64, c1: I64, words: npt.NDArray[np.uint64]) -> None:
    """Set the bit of every cell of every box: row r's column c is bit c % 64 of word c // 64."""
    n_cols = words.shape[1] * 64
    one = np.uint64(1)
    for i in range(len(r0)):
        width = c1[i] - c0[i] + 1
        for r in range(r0[i], r1[i] + 1):
            line = words[r]
            if width >= n_cols:  # the box goes round the globe (near the poles): every column
                line[:] = ~np.uint64(0)
                continue
            for c in range(c0[i], c1[i] + 1):
                col = c % n_cols
                if col < 0:  # numba follows Python's modulo; this is only a guard
                    col += n_cols
                line[col >> 6] |= one << np.uint64(col & 63)


@numba.njit(cache=True)
def _marked_keys(words: npt.NDArray[np.uint64], row0: int) -> I64:
    """The keys (row * COARSE_COLS + column) of the set bits, ascending: row by row, then by
    column, which is key order."""
    n_words = words.shape[1]
    n = 0
    for r in range(words.shape[0]):
        for w in range(n_words):
            v = words[r, w]
            while v:
                v &= v - np.uint64(1)
                n += 1
    out = np.empty(n, dtype=np.int64)
    j = 0
    for r in range(words.shape[0]):
        base = (row0 + r) * COARSE_COLS
        for w in range(n_words):
            v = words[r, w]
            if v == 0:
                continue
            for bit in range(64):
                if (v >> np.uint64(bit)) & np.uint64(1):
                    out[j] = base + w * 64 + bit
                    j += 1
    return out


def _cells_of_boxes(r0: I64, r1: I64, c0: I64, c1: I64, n_cols: int) -> tuple[I64, I64]:
    """(box index, cell key) for every cell of every box; columns wrap at the antimeridian."""
    nr, nc = r1 - r0 + 1, c1 - c0 + 1
    sizes = nr * nc
    box = np.repeat(np.arange(len(r0)), sizes)
    offset = np.arange(len(box)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    ncb = nc[box]
    row = r0[box] + offset // ncb
    col = (c0[box] + offset % ncb) % n_cols
    return box, row * n_cols + col


def _any_per_cell(cell_of_pair: I64, flag: B, n: int) -> B:
    out = np.zeros(n, dtype=bool)
    out[cell_of_pair[flag]] = True
    return out


def _piece_rows(flat: FlatParts, part_zone: I64, radius_m: F64, buffer_m: F64) -> F64:
    """What the kernels read of each piece, one 64-byte row a piece: its box in its frame
    (minx, miny, maxx, maxy), its zone's radius and radius + buffer, its zone, its code.

    The code of a piece with one ring (or a point) is first * 2**CODE_SHIFT + count, the span
    of its coordinates; -1 sends others (holes, multipolygons' parts, huge rings) to
    ring_start and coord_start. Why: a list point read a piece's box, zone, zone row, first
    ring and first coordinate from five arrays, each read waiting on the one before; one row,
    asked for ahead, holds all of them but the coordinates, which its code points to. The row
    is aligned to a cache line, so asking for it brings it whole. 64 bytes a piece.
    """
    n = len(part_zone)
    raw = np.empty(n * ROW_WIDTH + ROW_WIDTH)
    skip = (-raw.ctypes.data % 64) // raw.itemsize  # rows start on cache lines
    rows = raw[skip : skip + n * ROW_WIDTH].reshape(n, ROW_WIDTH)
    if n == 0:
        return rows
    first = flat.coord_start[flat.ring_start[:-1]]
    rows[:, 0] = np.minimum.reduceat(flat.xs, first)
    rows[:, 1] = np.minimum.reduceat(flat.ys, first)
    rows[:, 2] = np.maximum.reduceat(flat.xs, first)
    rows[:, 3] = np.maximum.reduceat(flat.ys, first)
    rows[:, ROW_R] = radius_m[part_zone]
    # As the kernels added them before (r + buffer, then + accuracy): the same bits.
    rows[:, ROW_REACH] = radius_m[part_zone] + buffer_m[part_zone]
    rows[:, ROW_ZONE] = part_zone
    count = flat.coord_start[flat.ring_start[1:]] - first
    one_ring = (np.diff(flat.ring_start) == 1) & (count <= CODE_COUNT)
    rows[:, ROW_CODE] = np.where(one_ring, first * float(1 << CODE_SHIFT) + count, -1.0)
    return rows


def _sub_base(fine_state: I32) -> I32:
    """Per fine cell, its block of subcells: the split cells' subcells are stored in the fine
    cells' order (`child_keys_of`), so the j-th split cell's are slots 64 j to 64 j + 63.

    int32 (blocks are fewer than fine cells, below 2**31): one per fine cell, 18M at 1M zones.
    """
    return np.ascontiguousarray(np.cumsum(fine_state == STATE_SUB, dtype=np.int32) - 1)

"""Compiled inner loops (numba): a hash table of cells and exact point-to-zone distances.

Why numba: the grid decides a point with a table probe and a few comparisons, and settles the
rest with a distance to a handful of small polygons. In NumPy, each step is a pass over the whole
array. Twenty passes cost more than the work, and a per-point candidate loop cannot be
vectorised at all. The NumPy/shapely `ExactIndex` stays the reference these loops are tested
against.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt
import shapely
from llvmlite import ir
from numba import types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

EMPTY_KEY = np.int64(-1)


# --- grouping by key ---------------------------------------------------------------------------


def groups(keys: I64) -> Iterator[tuple[int, I64]]:
    """(key, indices of that key) for each distinct key, keys ascending, indices ascending.

    Why: one stable sort finds every group in O(n log n); `np.flatnonzero(keys == key)` per key
    scans the whole array once per key, O(n * keys), which made compiling (tiles x cell frames)
    grow with the square of the zone count. The groups are the same, in the same order.
    """
    order = np.argsort(keys, kind="stable")
    if len(order) == 0:
        return
    ordered = keys[order]
    cuts = (np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist()
    for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True):
        yield int(ordered[a]), order[a:b]


@numba.njit(cache=True, nogil=True)
def unique_in_runs(a: I64, b: I64) -> tuple[I64, I64]:
    """The distinct pairs (a[i], b[i]) ordered by a then b, where a is non-decreasing already:
    each run of equal a's b values sorted by insertion, repeats dropped.

    Why: presence pairs come grouped by point, a few zones each; sorting them all again
    (np.unique) took ~4 ms for the 31k pairs of 200k points at 50,000 zones, this ~0.1 ms.
    """
    n = len(a)
    out_a = np.empty(n, dtype=np.int64)
    out_b = np.empty(n, dtype=np.int64)
    m = 0
    i = 0
    while i < n:
        run = m  # this run's values are out_b[run:m], ascending
        j = i
        while j < n and a[j] == a[i]:
            v = b[j]
            q = m
            while q > run and out_b[q - 1] > v:
                q -= 1
            j += 1
            if q > run and out_b[q - 1] == v:
                continue  # a repeat
            for r in range(m, q, -1):
                out_b[r] = out_b[r - 1]
            out_b[q] = v
            out_a[m] = a[i]
            m += 1
        i = j
    return out_a[:m], out_b[:m]


# --- a static open-addressing hash table of int64 keys -----------------------------------------


# Keys are below 2**KEY_BITS: fine cells (92,160 rows x 184,320 columns < 2**34) and coarse
# cells. A table entry packs a key and its slot into one int64, so a table holds 2**SLOT_BITS
# keys at most (536M; 1M zones make 18M fine cells).
KEY_BITS = 34
SLOT_BITS = 63 - KEY_BITS
SLOT_MASK = np.int64((1 << SLOT_BITS) - 1)
LOAD = 0.5  # how full a HashTable is
_SLOT_BITS = np.int64(SLOT_BITS)


class HashTable:
    """int64 key (0 <= key < 2**KEY_BITS) -> slot (its index in the key array given), probed
    linearly by numba.

    Each entry is key << SLOT_BITS | slot, one int64 (EMPTY_KEY where empty): half the memory of
    a key array beside a slot array (at 1M zones the fine table was 1.07 GB, the largest array
    of a compiled set), and one memory read a probe instead of two.

    The table is filled to half (LOAD): a power-of-two capacity filled it to between a quarter
    and a half, and at 1M zones to 0.27 (537 MB where 288 MB do). `_hash` maps onto any
    capacity by multiplying, not masking.
    """

    def __init__(self, keys: I64) -> None:
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if len(keys) > SLOT_MASK + 1:
            raise OverflowError(f"a hash table of more than 2**{SLOT_BITS} keys")
        if len(keys) and (int(keys.min()) < 0 or int(keys.max()) >= 1 << KEY_BITS):
            raise ValueError(f"hash table keys must be in [0, 2**{KEY_BITS})")
        capacity = int(len(keys) / LOAD) + 1  # always one empty slot: `find` stops there
        # One array, in the shape the kernels take: packing the kernel's arguments copies none.
        self.array = np.full(capacity, EMPTY_KEY, dtype=np.int64)  # EMPTY_KEY == -1
        _fill(self.array, keys)

    def slot_keys(self) -> I64:
        """The keys in slot order: what `HashTable(...)` was built from.

        Why: a compiled file stores this (the table's size or less) and rebuilds the same
        table, since the table is a deterministic function of the keys and their order.
        """
        return _slot_keys(self.array)


@numba.njit(cache=True)
def _slot_keys(table: I64) -> I64:
    """HashTable.slot_keys of a table's array, in two passes over it and no temporaries.

    Why: NumPy's mask, selection and shifts made four arrays of the keys' size or the table's
    (1M zones: 0.56 GB at once while saving, over the 4 GB budget).
    """
    n = 0
    for entry in table:
        n += entry != EMPTY_KEY
    out = np.empty(n, dtype=np.int64)
    for entry in table:
        if entry != EMPTY_KEY:
            out[entry & SLOT_MASK] = entry >> _SLOT_BITS
    return out


@numba.njit(cache=True, inline="always")
def _hash(key: np.int64, size: np.int64) -> np.int64:
    """key's first probe in a table of `size` entries (size < 2**31).

    Fibonacci hashing spreads neighbouring cell keys across the table; the product's top 32
    bits are then scaled onto [0, size) by one multiply (Lemire's range reduction), so a table
    need not be a power of two.
    """
    top = ((key * np.int64(-7046029254386353131)) >> np.int64(32)) & np.int64(0xFFFFFFFF)
    return (top * size) >> np.int64(32)


@numba.njit(cache=True, inline="always")
def _next(h: np.int64, size: np.int64) -> np.int64:
    """The probe after h: linear, wrapping at the end of the table."""
    h += 1
    return h if h < size else np.int64(0)


@numba.njit(cache=True, nogil=True)  # nogil: compiled.load fills tables while it reads
def _fill(table: I64, keys: I64) -> None:
    size = np.int64(len(table))
    for i in range(len(keys)):
        h = _hash(keys[i], size)
        while table[h] != -1:
            h = _next(h, size)
        table[h] = (keys[i] << _SLOT_BITS) | i


@numba.njit(cache=True, inline="always")
def find(table: I64, size: np.int64, key: np.int64) -> np.int64:
    """The slot of key (>= 0) in a HashTable's array of `size` entries, or -1."""
    h = _hash(key, size)
    while True:
        entry = table[h]
        if entry == -1:
            return np.int64(-1)
        if entry >> _SLOT_BITS == key:
            return entry & SLOT_MASK
        h = _next(h, size)


# --- prefetching --------------------------------------------------------------------------------


@intrinsic
def prefetch(typingctx: object, array: nbtypes.Type, row: nbtypes.Type) -> object:
    """Ask the CPU to start loading the start of row `row` of `array` into the cache.

    No effect on results. Why: a point on the list path reads rows scattered over arrays of
    tens of MB (its cell, the cell's list, each listed piece's box, zone, frame and
    coordinates), each read waiting on the one before. Asked for ahead of time, the reads of
    several points and pieces overlap. A prefetch never faults, even outside the array.
    """
    if not isinstance(array, nbtypes.Array) or not isinstance(row, nbtypes.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        first = context.cast(builder, args[1], sig.args[1], nbtypes.intp)
        zero = context.get_constant(nbtypes.intp, 0)
        ptr = cgutils.get_item_pointer(
            context, builder, aryty, ary, [first] + [zero] * (aryty.ndim - 1)
        )
        if getattr(ptr.type, "is_opaque", False):
            name = "llvm.prefetch.p0"
        else:
            ptr, name = builder.bitcast(ptr, ir.IntType(8).as_pointer()), "llvm.prefetch.p0i8"
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), name
        )
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return nbtypes.void(array, row), codegen


# --- zone pieces as flat coordinate arrays -----------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class FlatParts:
    """Zone pieces (in their tile frames) as rings of coordinates, for the numba loops.

    Piece p owns rings ring_start[p]:ring_start[p+1]; ring k owns coordinates
    coord_start[k]:coord_start[k+1] of xs/ys. A Point piece has one ring of one coordinate.
    The coordinates are the two rows of one (2, n) array `xy`, the shape the kernels take, so
    packing their arguments copies none (1M zones: 150 MB).
    """

    is_point: npt.NDArray[np.bool_]
    ring_start: I64
    coord_start: I64
    xy: F64

    @property
    def xs(self) -> F64:
        return self.xy[0]

    @property
    def ys(self) -> F64:
        return self.xy[1]

    @classmethod
    def build(cls, geoms: npt.NDArray[np.object_]) -> FlatParts:
        n = len(geoms)
        pieces, owner = shapely.get_parts(geoms, return_index=True)
        point = shapely.get_type_id(pieces) == 0
        rings, ring_piece = shapely.get_rings(pieces[~point], return_index=True)
        ring_owner = np.concatenate([owner[~point][ring_piece], owner[point]])
        ring_geoms = np.concatenate([rings, pieces[point]])
        order = np.argsort(ring_owner, kind="stable")
        ring_owner, ring_geoms = ring_owner[order], ring_geoms[order]
        coords, coord_ring = shapely.get_coordinates(ring_geoms, return_index=True)
        ring_start = np.searchsorted(ring_owner, np.arange(n + 1)).astype(np.int64)
        coord_start = np.searchsorted(coord_ring, np.arange(len(ring_geoms) + 1)).astype(np.int64)
        is_point = np.zeros(n, dtype=bool)
        is_point[owner[point]] = True
        return cls(is_point, ring_start, coord_start, np.ascontiguousarray(coords.T))


@numba.njit(cache=True, inline="always")
def ring_scan(
    px: float, py: float, begin: np.int64, end: np.int64, xs: F64, ys: F64
) -> tuple[bool, float]:  # fmt: skip
    """(odd, squared distance to the ring) of the ring in coordinates begin:end; odd: whether
    a ray from the point towards +x crosses an odd number of its edges (the even-odd rule)."""
    odd = False
    best = np.inf
    for k in range(begin, end - 1):
        ax, ay, bx, by = xs[k], ys[k], xs[k + 1], ys[k + 1]
        if (ay > py) != (by > py) and px < ax + (py - ay) * (bx - ax) / (by - ay):
            odd = not odd
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = 0.0
        if length2 > 0.0:
            t = ((px - ax) * dx + (py - ay) * dy) / length2
            t = min(max(t, 0.0), 1.0)
        ex, ey = ax + t * dx - px, ay + t * dy - py
        best = min(best, ex * ex + ey * ey)
    return odd, best


@numba.njit(cache=True, inline="always")
def rings_scan(
    px: float, py: float, p: np.int64, ring_start: I64, coord_start: I64, xs: F64, ys: F64
) -> tuple[bool, float]:  # fmt: skip
    """(inside, squared distance to the boundary) of polygon piece p, in its frame.

    Inside is decided by the even-odd rule over all of p's rings (holes and multipolygons
    included). Squares are compared and the caller takes one square root: the minimum of the
    squares is the square of the minimum, so the distance is the same to the last bit.
    """
    inside = False
    best = np.inf
    for ring in range(ring_start[p], ring_start[p + 1]):
        odd, d2 = ring_scan(px, py, coord_start[ring], coord_start[ring + 1], xs, ys)
        inside ^= odd
        best = min(best, d2)
    return inside, best


@numba.njit(cache=True)
def point_distance(
    px: float,
    py: float,
    p: np.int64,
    is_point: npt.NDArray[np.bool_],
    ring_start: I64,
    coord_start: I64,
    xs: F64,
    ys: F64,
) -> tuple[float, float]:
    """(distance to piece p, 0 inside; distance to its boundary). Metres in p's frame.

    A point on the boundary has boundary distance 0, hence counts as inside.
    """
    if is_point[p]:
        c = coord_start[ring_start[p]]
        d = np.hypot(px - xs[c], py - ys[c])
        return d, d
    inside, best2 = rings_scan(px, py, p, ring_start, coord_start, xs, ys)
    best = np.sqrt(best2)
    return (0.0 if inside else best), best


@numba.njit(cache=True, nogil=True)
def pair_distances(
    px: F64, py: F64, pair_point: I64, pair_part: I64,
    is_point: npt.NDArray[np.bool_], ring_start: I64, coord_start: I64, xs: F64, ys: F64,
) -> tuple[F64, F64]:  # fmt: skip
    """`point_distance` for each (point, piece) pair: the point at (px, py)[pair_point]."""
    n = len(pair_part)
    d = np.empty(n)
    db = np.empty(n)
    for i in range(n):
        j = pair_point[i]
        d[i], db[i] = point_distance(
            px[j], py[j], pair_part[i], is_point, ring_start, coord_start, xs, ys
        )
    return d, db


# --- checking a loaded level (geofence.compiled) -----------------------------------------------


@numba.njit(cache=True, nogil=True)
def level_fault(
    ints: I32, floats: F32, entries: I32, n_combos: int, n_zones: int, n_parts: int,
    max_state: int, near: int, inside: int,
) -> int:  # fmt: skip
    """0 if a level's arrays are safe for the grid kernel, else the first fault's code.

    Why a loop: one pass with no temporaries, where NumPy needs a dozen passes and arrays as
    large as the level. 1 state, 2 zone, 3 near zone, 4 a near/inside cell without a zone,
    5 a cell near no zone, 6 list offsets, 7 entry part, 8 entry frame, 9 a float not finite.
    """
    n = ints.shape[0]
    expected = 0
    for c in range(n):
        state = ints[c, 0]
        if state < 0 or state > max_state:
            return 1
        if ints[c, 1] < -1 or ints[c, 1] >= n_zones:
            return 2
        if ints[c, 2] < -1 or ints[c, 2] >= n_zones:
            return 3
        if ints[c, 1] < 0 and ((state == near) | (state == inside)):
            return 4
        if floats[c, 1] != np.inf and ints[c, 2] < 0:
            return 5
        if ints[c, 3] != expected or ints[c, 4] < ints[c, 3]:
            return 6
        expected = ints[c, 4]
        if not (np.isfinite(floats[c, 0]) and np.isfinite(floats[c, 2])):
            return 9
        if np.isnan(floats[c, 1]) or floats[c, 1] == -np.inf:
            return 9
    if expected != entries.shape[0]:
        return 6
    for e in range(entries.shape[0]):
        if entries[e, 0] < 0 or entries[e, 0] >= n_parts:
            return 7
        if entries[e, 1] < 0 or entries[e, 1] >= n_combos:
            return 8
    return 0

"""Which boxes meet which query boxes: a static packed R-tree, queried by a compiled loop.

Why not shapely's STRtree: it keeps a GEOS geometry per box (1M zones' pieces: 0.3 GB for the
exact index's reach boxes), and every query is a shapely box handed to GEOS. The zone set never
changes once compiled, so the tree is packed once into flat arrays: boxes sorted
Sort-Tile-Recursive into leaves of NODE, each level's nodes the bounds of NODE consecutive boxes
of the level below, and the root a level of one box.

Boxes are closed: boxes that only touch meet, as GEOS's envelopes do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

NODE = 16  # boxes a node bounds: 16 x 32 bytes, eight cache lines


@dataclass(frozen=True, slots=True, eq=False)
class BoxTree:
    """Boxes (west, south, east, north) packed for `query`."""

    # Every level's boxes, leaves first (in packed order), the root last; level k is
    # boxes[level_start[k]:level_start[k + 1]], and its box i bounds boxes NODE*i.. of level k-1.
    boxes: F64
    level_start: I64
    items: I64  # the leaf box at packed position i is the input's box items[i]

    @classmethod
    def build(cls, boxes: npt.ArrayLike) -> BoxTree:
        """The tree of an (n, 4) array of boxes."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        items = _str_order(b)
        levels = [b[items]]
        while len(levels[-1]) > 1:
            levels.append(_parents(levels[-1]))
        sizes = [len(level) for level in levels]
        return cls(
            np.ascontiguousarray(np.concatenate(levels)),
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            items.astype(np.int64),
        )

    def query(self, west: F64, south: F64, east: F64, north: F64) -> tuple[I64, I64]:
        """(query index, box index) for every query box and tree box that meet, by query."""
        return _query(
            self.boxes, self.level_start, self.items,
            *(np.ascontiguousarray(a, dtype=np.float64) for a in (west, south, east, north)),
        )  # fmt: skip


def _str_order(b: F64) -> I64:
    """Sort-Tile-Recursive: vertical slices of about sqrt(leaves) leaves by centre x, each
    sorted by centre y, so that NODE consecutive boxes lie close together."""
    n = len(b)
    leaves = -(-n // NODE)
    per_slice = max(1, int(np.ceil(np.sqrt(leaves)))) * NODE
    by_x = np.argsort(b[:, 0] + b[:, 2], kind="stable")
    slice_of = np.empty(n, dtype=np.int64)
    slice_of[by_x] = np.arange(n) // per_slice
    return np.lexsort((b[:, 1] + b[:, 3], slice_of))


def _parents(level: F64) -> F64:
    """The bounds of each NODE consecutive boxes (the last group may be shorter)."""
    n = len(level)
    pad = -n % NODE
    # Padding repeats the last box: it changes no group's bounds.
    full = np.concatenate([level, np.repeat(level[-1:], pad, axis=0)]).reshape(-1, NODE, 4)
    return np.column_stack(
        [full[:, :, 0].min(1), full[:, :, 1].min(1), full[:, :, 2].max(1), full[:, :, 3].max(1)]
    )


@numba.njit(cache=True, inline="always")
def _meets(boxes: F64, k: np.int64, w: float, s: float, e: float, n: float) -> bool:
    """Whether box k and the box (w, s, e, n) meet (closed: touching counts)."""
    return boxes[k, 0] <= e and w <= boxes[k, 2] and boxes[k, 1] <= n and s <= boxes[k, 3]


@numba.njit(cache=True, nogil=True)
def _query(
    boxes: F64, level_start: I64, items: I64, west: F64, south: F64, east: F64, north: F64
) -> tuple[I64, I64]:  # fmt: skip
    n = len(west)
    cap = 2 * n + 16
    out_q = np.empty(cap, dtype=np.int64)
    out_i = np.empty(cap, dtype=np.int64)
    m = 0
    if len(boxes) == 0:
        return out_q[:0].copy(), out_i[:0].copy()
    top = len(level_start) - 2  # the root's level
    # Depth-first: a node's children are pushed only if they meet the query box, so the stack
    # holds at most NODE per level.
    stack_level = np.empty(NODE * (top + 2), dtype=np.int64)
    stack_pos = np.empty(NODE * (top + 2), dtype=np.int64)
    for q in range(n):
        w, s, e, nn = west[q], south[q], east[q], north[q]
        sp = 0
        root = level_start[top]
        if _meets(boxes, root, w, s, e, nn):
            stack_level[0] = top
            stack_pos[0] = 0
            sp = 1
        while sp > 0:
            sp -= 1
            lvl = stack_level[sp]
            pos = stack_pos[sp]
            if lvl == 0:
                if m == cap:
                    cap *= 2
                    grown_q = np.empty(cap, dtype=np.int64)
                    grown_i = np.empty(cap, dtype=np.int64)
                    grown_q[:m] = out_q[:m]
                    grown_i[:m] = out_i[:m]
                    out_q, out_i = grown_q, grown_i
                out_q[m] = q
                out_i[m] = items[pos]
                m += 1
                continue
            below = level_start[lvl - 1]
            first = pos * NODE
            last = min(first + NODE, level_start[lvl] - below)
            for child in range(first, last):
                k = below + child
                if _meets(boxes, k, w, s, e, nn):
                    stack_level[sp] = lvl - 1
                    stack_pos[sp] = child
                    sp += 1
    return out_q[:m].copy(), out_i[:m].copy()

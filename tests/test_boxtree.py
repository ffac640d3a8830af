"""The packed box tree against every pair of boxes compared directly."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.boxtree import NODE, BoxTree


def brute_pairs(tree_boxes: np.ndarray, query: np.ndarray) -> set[tuple[int, int]]:
    """Every (query, box) whose closed boxes meet."""
    q, b = query[:, None, :], tree_boxes[None, :, :]
    meet = (b[..., 0] <= q[..., 2]) & (q[..., 0] <= b[..., 2])
    meet &= (b[..., 1] <= q[..., 3]) & (q[..., 1] <= b[..., 3])
    return set(zip(*np.nonzero(meet), strict=True))


def random_boxes(rng: np.random.Generator, n: int, size: float) -> np.ndarray:
    lo = rng.uniform(-10.0, 10.0, (n, 2))
    # Coordinates on a coarse grid, so that many boxes touch exactly.
    lo = np.round(lo * 4) / 4
    wh = np.round(rng.exponential(size, (n, 2)) * 4) / 4
    return np.column_stack([lo, lo + wh])


def query(tree: BoxTree, q: np.ndarray) -> set[tuple[int, int]]:
    qi, bi = tree.query(q[:, 0], q[:, 1], q[:, 2], q[:, 3])
    assert len(set(zip(qi.tolist(), bi.tolist(), strict=True))) == len(qi)  # no pair twice
    assert (np.diff(qi) >= 0).all()  # by query
    return set(zip(qi.tolist(), bi.tolist(), strict=True))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 600), st.integers(0, 60), st.floats(0.0, 3.0), st.integers(0, 2**32 - 1))
def test_tree_finds_exactly_the_boxes_that_meet(n: int, m: int, size: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    boxes, q = random_boxes(rng, n, size), random_boxes(rng, m, size)
    tree = BoxTree.build(boxes)
    assert query(tree, q) == brute_pairs(boxes, q)


def test_a_large_tree_over_several_levels_equals_shapely_strtree() -> None:
    rng = np.random.default_rng(4)
    boxes, q = random_boxes(rng, 50_000, 0.05), random_boxes(rng, 3_000, 0.2)
    tree = BoxTree.build(boxes)
    assert len(tree.level_start) - 1 >= 4  # 50k / 16 / 16 / 16: four levels at least
    assert tree.level_start[-1] - tree.level_start[-2] == 1  # one root
    ref = shapely.STRtree(shapely.box(*boxes.T)).query(shapely.box(*q.T))
    want = set(zip(ref[0].tolist(), ref[1].tolist(), strict=True))
    assert query(tree, q) == want and len(want) > 1_000


def test_nodes_bound_their_children() -> None:
    rng = np.random.default_rng(9)
    tree = BoxTree.build(random_boxes(rng, 5_000, 0.5))
    starts = tree.level_start.tolist()
    for lvl in range(1, len(starts) - 1):
        parent = tree.boxes[starts[lvl] : starts[lvl + 1]]
        child = tree.boxes[starts[lvl - 1] : starts[lvl]]
        owner = np.arange(len(child)) // NODE
        assert (parent[owner, :2] <= child[:, :2]).all()
        assert (parent[owner, 2:] >= child[:, 2:]).all()


def test_the_tree_has_every_box_once() -> None:
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 1_234, 1.0)
    tree = BoxTree.build(boxes)
    assert sorted(tree.items.tolist()) == list(range(len(boxes)))
    assert np.array_equal(tree.boxes[: len(boxes)], boxes[tree.items])

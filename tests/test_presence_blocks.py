"""fold_events: a batch's own presence, folded into each request's block, as a plain loop would."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.engine import _block_end
from geofence.presence.blocks import block_ends, fold_events


def reference(
    dev: list[int],
    at: list[float],
    end: list[float],
    cat: list[int],
    events: list[tuple[int, float, float, int]],
) -> tuple[list[float], list[int]]:
    """Per request: its stored block, then each event of its device (in batch order) at or
    before its time replaces it if it ends strictly later."""
    out_end, out_cat = list(end), list(cat)
    for j, d in enumerate(dev):
        for ev_dev, t, e, c in events:
            if ev_dev == d and t <= at[j] and e > out_end[j]:
                out_end[j], out_cat[j] = e, c
    return out_end, out_cat


# Few distinct values, so that equal times and equal ends (the tie rules) come up often.
times = st.sampled_from([0.0, 1.0, 2.0, 3.0])
ends = st.sampled_from([-np.inf, 5.0, 6.0, 7.0])


@settings(max_examples=300, deadline=None)
@given(
    n_dev=st.integers(1, 4),
    requests=st.lists(st.tuples(st.integers(0, 3), times, ends, st.integers(-1, 3)), max_size=12),
    events=st.lists(st.tuples(st.integers(0, 3), times, ends, st.integers(0, 3)), max_size=12),
)
def test_fold_events_equals_the_plain_loop(
    n_dev: int,
    requests: list[tuple[int, float, float, int]],
    events: list[tuple[int, float, float, int]],
) -> None:
    requests = [(d % n_dev, t, e, c) for d, t, e, c in requests]
    events = [(d % n_dev, t, e, c) for d, t, e, c in events]
    dev = [r[0] for r in requests]
    at = [r[1] for r in requests]
    end = [r[2] for r in requests]
    cat = [r[3] for r in requests]
    want_end, want_cat = reference(dev, at, end, cat, events)
    req_end = np.array(end, dtype=np.float64)
    req_cat = np.array(cat, dtype=np.int64)
    fold_events(
        np.array(dev, dtype=np.intp),
        np.array(at, dtype=np.float64),
        req_end,
        req_cat,
        np.array([e[0] for e in events], dtype=np.intp),
        np.array([e[1] for e in events], dtype=np.float64),
        np.array([e[2] for e in events], dtype=np.float64),
        np.array([e[3] for e in events], dtype=np.int64),
        n_dev,
    )
    assert req_end.tolist() == want_end
    assert req_cat.tolist() == want_cat


@settings(max_examples=300, deadline=None)
@given(
    histories=st.lists(
        st.dictionaries(st.integers(0, 4), st.sampled_from([0.0, 1.0, 2.0, 3.0]), max_size=4),
        max_size=6,
    ),
)
def test_block_ends_equals_the_engine_per_device(histories: list[dict[int, float]]) -> None:
    """The compiled pass gives `_block_end` of each history, ties included (the first record
    listed keeps them); a device with no records gets (-inf, -1)."""
    lookback = np.array([2.0, 1.0, 3.0, 2.0, 0.0])
    position = [d for d, h in enumerate(histories) for _ in h]
    category = [c for h in histories for c in h]
    stamps = [t for h in histories for t in h.values()]
    end, cat = block_ends(
        np.array(position, dtype=np.int64), np.array(category, dtype=np.int64),
        np.array(stamps, dtype=np.float64), lookback, len(histories),
    )  # fmt: skip
    for d, h in enumerate(histories):
        want = _block_end(h, lookback) if h else (-np.inf, -1)
        assert (end[d], cat[d]) == want


def test_block_ends_refuses_a_category_without_a_lookback() -> None:
    """As `lookback_s[c]` would: an exception (the batch fails closed), not a read past the end."""
    one = np.zeros(1, dtype=np.int64)
    with pytest.raises(IndexError):
        block_ends(one, np.array([5], dtype=np.int64), np.zeros(1), np.ones(5), 1)

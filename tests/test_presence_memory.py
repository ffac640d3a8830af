"""Tests for geofence.presence.memory: expiry sweep, eviction when full, speed, privacy."""

from __future__ import annotations

import gc
import logging
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import record_batch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from geofence.presence import DeviceHasher, MemoryStore
from geofence.presence import memory as memory_module
from geofence.presence.base import as_digests

SECRET = b"0123456789abcdef-test-secret"
DEVICE_IDS = [f"ifa-SECRET-{i}" for i in range(50)]
COORDINATES = ["40.712776", "-74.005974", "47.6062", "-122.3321"]


class Clock:
    """A settable replacement for time.time() in the memory module."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(1_700_000_000.0)
    monkeypatch.setattr(memory_module, "time", SimpleNamespace(time=c.time))
    return c


def record(store: MemoryStore, key: bytes, cat: int, t: float, exp: float) -> None:
    store.record(key, cat, t, exp)


def test_sweep_drops_devices_whose_records_all_expired(clock: Clock) -> None:
    store = MemoryStore()
    h = DeviceHasher(SECRET)
    a, b = h.keys(["ifa-a", "ifa-b"])
    record(store, a, 1, clock.now, clock.now + 10)
    record(store, a, 2, clock.now, clock.now + 30)  # a lives until its last record expires
    record(store, b, 1, clock.now, clock.now + 10)
    clock.now += 20
    # Read: a's expired category is hidden at once, the other is kept.
    assert store.latest_many([a, b]) == [{2: clock.now - 20}, {}]
    # The next write sweeps b (every record expired) but not a.
    record(store, h.key("ifa-c"), 1, clock.now, clock.now + 10)
    assert set(store.dump()) == {a, h.key("ifa-c")}
    clock.now += 100
    record(store, h.key("ifa-d"), 1, clock.now, clock.now + 10)
    assert set(store.dump()) == {h.key("ifa-d")}


def test_a_later_expiry_keeps_the_device(clock: Clock) -> None:
    store = MemoryStore()
    k = DeviceHasher(SECRET).key("ifa-extended")
    record(store, k, 1, clock.now, clock.now + 10)
    record(store, k, 1, clock.now + 5, clock.now + 40)  # same category, later and longer
    clock.now += 20
    record(store, DeviceHasher(SECRET).key("ifa-other"), 1, clock.now, clock.now + 10)  # sweeps
    assert store.latest(k) == {1: clock.now - 15}


def test_eviction_drops_the_soonest_expiring_and_warns_once(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore(max_devices=3)
    h = DeviceHasher(SECRET)
    k = h.keys(["ifa-1", "ifa-2", "ifa-3", "ifa-4", "ifa-5"])
    record(store, k[0], 1, clock.now, clock.now + 300)
    record(store, k[1], 1, clock.now, clock.now + 100)  # expires soonest
    record(store, k[2], 1, clock.now, clock.now + 200)
    record(store, k[1], 2, clock.now, clock.now + 150)  # still the soonest device (150)
    with caplog.at_level(logging.WARNING, logger="geofence.presence"):
        record(store, k[3], 1, clock.now, clock.now + 400)
        assert set(store.dump()) == {k[0], k[2], k[3]}
        record(store, k[4], 1, clock.now, clock.now + 50)  # evicts k[2] (200), the soonest left
    assert set(store.dump()) == {k[0], k[3], k[4]}
    assert store.evicted == 2
    warnings = [r for r in caplog.records if r.name == "geofence.presence"]
    assert len(warnings) == 1 and "full" in warnings[0].getMessage()


def test_an_expiry_moved_later_is_kept_by_the_sweep_and_by_eviction(clock: Clock) -> None:
    """A write that moves a device's expiry later pushes no heap entry: the early one must not
    let the sweep drop the device, nor make it the one evicted, before its new expiry."""
    h = DeviceHasher(SECRET)
    k = h.keys(["ifa-moved", "ifa-steady", "ifa-new", "ifa-newer", "ifa-last"])
    now = clock.now
    for evicting in (False, True):
        store = MemoryStore(max_devices=3 if evicting else 10)
        cat1 = np.array([1, 1], np.uint8)
        store.record_many([k[0], k[1]], cat1, np.full(2, now), np.array([now + 10, now + 50]))
        # Same category, later: the batch's inlined path (k[0]'s entry stays at now + 10).
        store.record_many([k[0]], cat1[:1], np.array([now + 5]), np.array([now + 100]))
        assert len(store._heap) == 2
        if evicting:
            # Full at the third device: the soonest to expire is k[1] (now + 50), not k[0].
            store.record(k[2], 1, now, now + 200)
            store.record(k[3], 1, now, now + 300)
            assert set(store.dump()) == {k[0], k[2], k[3]} and store.evicted == 1
        else:
            clock.now = now + 60  # past k[0]'s early entry and k[1]'s expiry: k[0] is kept
            store.record(k[2], 1, clock.now, clock.now + 200)
            assert set(store.dump()) == {k[0], k[2]}
            assert store.latest(k[0]) == {1: now + 5}
            clock.now = now + 150  # past k[0]'s real expiry: swept at the next write
            store.record(k[4], 1, clock.now, clock.now + 300)
            assert set(store.dump()) == {k[2], k[4]}
            clock.now = now


def test_updates_do_not_grow_the_heap_without_bound(clock: Clock) -> None:
    store = MemoryStore()
    k = DeviceHasher(SECRET).key("ifa-busy")
    for i in range(5000):
        record(store, k, i % 3, clock.now + i, clock.now + 1000 + i)
    assert len(store) == 1
    assert len(store._heap) <= 2 * len(store) + 1024
    assert store.latest(k) == {0: clock.now + 4998, 1: clock.now + 4999, 2: clock.now + 4997}


def test_close_empties_the_store() -> None:
    store = MemoryStore()
    now = time.time()
    store.record(DeviceHasher(SECRET).key("ifa-x"), 1, now, now + 60)
    store.close()
    assert store.dump() == {} and len(store) == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_devices"):
        MemoryStore(max_devices=0)
    with pytest.raises(ValueError, match="differ in length"):
        MemoryStore().record_many(
            [b"k" * 32], np.array([1, 2], np.uint8), np.array([1.0]), np.array([2.0])
        )


def test_lookup_of_unknown_keys_is_under_a_microsecond() -> None:
    """The hot path: most devices have no presence, and a miss must cost one dict lookup."""
    store = MemoryStore()
    h = DeviceHasher(SECRET)
    now = time.time()
    known = h.keys([f"ifa-known-{i}" for i in range(10_000)])
    n = len(known)
    store.record_many(known, np.full(n, 2, np.uint8), np.full(n, now), np.full(n, now + 600))
    unknown = h.keys([f"ifa-unknown-{i}" for i in range(100_000)])
    best = float("inf")
    for _ in range(5):  # best of five: the cost of the code, not of a busy machine
        t0 = time.perf_counter()
        out = store.latest_many(unknown)
        best = min(best, (time.perf_counter() - t0) / len(unknown))
    assert out[0] == {} and len(out) == len(unknown)
    assert best < 1e-6, f"{best * 1e9:.0f} ns per unknown key"


def test_nothing_stored_reveals_a_device_id_or_a_place() -> None:
    store = MemoryStore()
    h = DeviceHasher(SECRET)
    now = float(int(time.time()))  # whole seconds: a stored time cannot spell a coordinate
    keys = h.keys(DEVICE_IDS)
    n = len(keys)
    store.record_many(
        keys, np.arange(n, dtype=np.uint8) % 17, np.full(n, now), np.full(n, now + 600)
    )
    everything = store.dump()
    assert set(everything) == set(keys)
    assert all(len(k) == 32 for k in everything)
    blob = repr(everything).encode() + b"".join(everything)
    for value in [*DEVICE_IDS, "ifa-SECRET", *COORDINATES]:
        assert value.encode() not in blob
        assert value.encode("utf-16-le") not in blob


def test_a_subclass_that_wraps_latest_many_sees_every_read() -> None:
    """The store's own shortcuts (`latest`, `latest_found`) must not bypass a wrapper's reads.

    Tests inject faults this way, and a metrics wrapper would too.
    """
    seen: list[int] = []

    class Wrapped(MemoryStore):
        def latest_many(self, keys: Any) -> Any:
            seen.append(len(keys))
            return super().latest_many(keys)

    store = Wrapped()
    k = DeviceHasher(SECRET).key("ifa-1")
    now = time.time()
    store.record(k, 2, now, now + 60)
    assert store.latest(k) == {2: now}
    assert store.latest_found([b"x" * 32, k]) == {1: {2: now}}
    assert [a.tolist() for a in store.latest_records([k])] == [[0], [2], [now]]
    assert seen == [1, 2, 1]
    # The plain store keeps its shortcuts.
    assert MemoryStore.latest is not Wrapped.latest


def test_a_subclass_that_wraps_latest_found_sees_the_engine_s_reads() -> None:
    """`latest_records` (what a batch reads) goes through a wrapper's own `latest_found`."""
    seen: list[int] = []

    class Wrapped(MemoryStore):
        def latest_found(self, keys: Any) -> Any:
            seen.append(len(keys))
            return super().latest_found(keys)

    store = Wrapped()
    k = DeviceHasher(SECRET).key("ifa-1")
    now = time.time()
    store.record(k, 2, now, now + 60)
    assert [a.tolist() for a in store.latest_records([b"x" * 32, k])] == [[1], [2], [now]]
    assert seen == [2]
    assert MemoryStore.latest_records is not Wrapped.latest_records
    # The digest form the engine calls for a batch goes through it too.
    digests = as_digests([k, b"x" * 32, k])
    assert [a.tolist() for a in store.latest_records_of(digests)] == [[0, 2], [2, 2], [now, now]]
    assert seen == [2, 3]


def test_a_subclass_that_wraps_record_many_sees_every_write() -> None:
    """The memory store's own `record` (no arrays) must not bypass a wrapper's writes."""
    seen: list[int] = []

    class Wrapped(MemoryStore):
        def record_many(self, keys: Any, *rest: Any) -> None:
            seen.append(len(keys))
            super().record_many(keys, *rest)

    store = Wrapped()
    now = time.time()
    store.record(DeviceHasher(SECRET).key("ifa-1"), 2, now, now + 60)
    assert seen == [1] and len(store) == 1
    assert MemoryStore.record is not Wrapped.record
    # The digest form the engine calls for a batch goes through it too.
    store.record_many_of(
        as_digests(DeviceHasher(SECRET).keys(["ifa-2", "ifa-3"])),
        np.array([1, 1], np.uint8), np.full(2, now), np.full(2, now + 60),
    )  # fmt: skip
    assert seen == [1, 2] and len(store) == 3


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # device
            st.integers(0, 2),  # category
            st.floats(-50, 50),  # time, from the clock
            st.floats(-10, 200),  # expiry, from the clock
        ),
        max_size=30,
    ),
    st.integers(1, 3),  # max_devices: eviction too
)
def test_record_keeps_what_record_many_keeps(
    ops: list[tuple[int, int, float, float]], max_devices: int
) -> None:
    """One record at a time through `record` leaves the store as `record_many` of each would:
    latest time and expiry per (device, category), expired ones skipped, the same evictions."""
    base = 1_700_000_000.0
    keys = [bytes([i]) * 32 for i in range(4)]
    one, many = MemoryStore(max_devices), MemoryStore(max_devices)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(memory_module, "time", SimpleNamespace(time=lambda: base))
        for device, cat, t, e in ops:
            one.record(keys[device], cat, base + t, base + e)
            times = np.array([base + t]), np.array([base + e])
            many.record_many([keys[device]], np.array([cat], np.uint8), *times)
        assert one.dump() == many.dump()
        assert one.evicted == many.evicted


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_record_refuses_a_time_that_is_not_finite(bad: float) -> None:
    store = MemoryStore()
    key = DeviceHasher(SECRET).key("ifa-1")
    now = time.time()
    for t, e in ((bad, now + 60), (now, bad)):
        with pytest.raises(ValueError, match="finite"):
            store.record(key, 1, t, e)
    assert len(store) == 0


def test_stored_records_leave_the_garbage_collector_alone() -> None:
    """After a young collection, no stored device is an object the collector tracks.

    Why it matters: tracked per-device objects made every few thousand new devices trigger a
    full collection that visits every stored device (filling a store was O(n^2), and a serving
    process paused ~0.1 s per million devices). Devices with one category and with several.
    """
    store = MemoryStore()
    hasher = DeviceHasher(SECRET)
    now = time.time()
    keys = hasher.keys([f"ifa-gc-{i}" for i in range(2000)])
    store.record_many(keys, np.full(2000, 3, np.uint8), np.full(2000, now), np.full(2000, now + 60))
    for k in keys[:500]:
        store.record(k, 7, now, now + 120)  # a second category for some devices
    # Generations 0 and 1, not a full collection: that would untrack dicts too, but it is the
    # full collections, and the time until one comes, that this is about.
    gc.collect(1)
    stored = [*store._row, *store._row.values(), *store._key_of]
    assert [v for v in stored if gc.is_tracked(v)] == []
    assert not any(gc.is_tracked(entry) for entry in store._heap)
    assert store.latest(keys[0]) == {3: now, 7: now} and store.latest(keys[-1]) == {3: now}


def test_single_lookup_skips_expired_records(clock: Clock) -> None:
    store = MemoryStore()
    k = DeviceHasher(SECRET).key("ifa-1")
    record(store, k, 1, clock.now, clock.now + 10)
    record(store, k, 2, clock.now, clock.now + 100)
    assert store.latest(k) == {1: clock.now, 2: clock.now}
    clock.now += 50
    assert store.latest(k) == {2: clock.now - 50}
    assert store.latest_found([k]) == {0: {2: clock.now - 50}}
    clock.now += 100
    assert store.latest(k) == {} and store.latest_found([k]) == {}


@settings(max_examples=200, deadline=None)
@given(
    first=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers(0, 3), st.integers(0, 3)),
        max_size=40,
    ),
    second=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers(0, 3), st.integers(0, 3)),
        min_size=17,
        max_size=40,
    ),
    max_devices=st.sampled_from([3, 100]),
)
def test_record_many_keeps_what_one_record_at_a_time_keeps(
    first: list[tuple[int, int, int, int]],
    second: list[tuple[int, int, int, int]],
    max_devices: int,
) -> None:
    """A batch leaves the store as a `record` call per record would, through ties, several
    categories and a full store's evictions."""
    keys = [bytes([k]) * 32 for k in range(6)]
    batched, single = _batched_and_one_at_a_time(keys, [first, second], max_devices)
    assert batched.dump() == single.dump()
    assert batched.evicted == single.evicted


def _batched_and_one_at_a_time(
    keys: list[bytes], batches: list[list[tuple[int, int, int, int]]], max_devices: int
) -> tuple[MemoryStore, MemoryStore]:
    """Two stores given the same batches of (device, category, time, expiry) numbers: one by
    `record_many` per batch, the other by `record` per record."""
    now = time.time()
    batched, single = MemoryStore(max_devices), MemoryStore(max_devices)
    for spec in batches:
        rows = [(keys[k], c, now - 10.0 + t, now + 100.0 + e) for k, c, t, e in spec]
        batched.record_many(*record_batch(rows))
        for r in rows:
            single.record(*r)
    return batched, single


# Three categories and a few devices more than a store of 90 holds: rows widen, most devices
# of a second batch are stored already, and new ones evict.
_RECORD = st.tuples(st.integers(0, 119), st.integers(0, 2), st.integers(0, 7), st.integers(0, 7))


@st.composite
def _large_batch(draw: st.DrawFn) -> list[tuple[int, int, int, int]]:
    """Distinct devices, then a few of them again in the same category."""
    batch = draw(st.lists(_RECORD, min_size=64, max_size=100, unique_by=lambda r: r[0]))
    again = st.tuples(st.integers(0, 63), st.integers(0, 7), st.integers(0, 7))
    for i, t, e in draw(st.lists(again, max_size=3)):
        batch.append((batch[i][0], batch[i][1], t, e))
    return batch


@settings(max_examples=100, deadline=None)
@given(
    first=st.lists(_RECORD, min_size=40, max_size=120),
    second=_large_batch(),
    max_devices=st.sampled_from([3, 90, 1000]),
)
def test_large_batches_keep_what_one_record_at_a_time_keeps(
    first: list[tuple[int, int, int, int]],
    second: list[tuple[int, int, int, int]],
    max_devices: int,
) -> None:
    """Batches of many devices leave the store as `record` calls would: devices stored with
    one category or several, new ones, repeats, and evictions."""
    keys = [k.to_bytes(2, "big") * 16 for k in range(120)]
    batched, single = _batched_and_one_at_a_time(keys, [first, second], max_devices)
    assert batched.dump() == single.dump()
    assert batched.evicted == single.evicted
    assert [a.tolist() for a in batched.latest_records(keys)] == [
        a.tolist() for a in single.latest_records(keys)
    ]


def test_forgotten_and_swept_rows_are_cleared_and_reused(clock: Clock) -> None:
    """A freed row keeps nothing of its device, and a new device takes it before the arrays grow."""
    store = MemoryStore()
    k = [bytes([i]) * 32 for i in range(4)]
    store.record_many(
        k[:3], np.array([1, 2, 3], np.uint8), np.full(3, clock.now), np.full(3, clock.now + 10)
    )
    row = store._row[k[1]]
    store.forget(k[1])
    assert store._records[row].tolist() == [[-1.0, -1.0, -1.0]]
    assert store.latest(k[1]) == {} and len(store) == 2
    size = len(store._expiry)
    store.record(k[3], 5, clock.now, clock.now + 10)
    assert store._row[k[3]] == row and len(store._expiry) == size
    assert store.dump() == {
        k[0]: {1: (clock.now, clock.now + 10)},
        k[2]: {3: (clock.now, clock.now + 10)},
        k[3]: {5: (clock.now, clock.now + 10)},
    }
    # Past every expiry, the next write sweeps all three; each freed row is cleared.
    rows = [store._row[key] for key in (k[0], k[2], k[3])]
    clock.now += 20
    store.record(k[1], 2, clock.now, clock.now + 10)
    assert store.dump() == {k[1]: {2: (clock.now, clock.now + 10)}}
    kept = store._row[k[1]]
    cleared = [store._records[r].tolist() for r in rows if r != kept]
    assert len(cleared) == 2 and all(c == [[-1.0, -1.0, -1.0]] for c in cleared)


@example(batches=[[(0, 0, 0, 0), (1, 1, 0, 0)], [(0, 2, 1, 1)]], reads=[0, 1], max_devices=1000)
@settings(max_examples=100, deadline=None)
@given(
    batches=st.lists(st.lists(_RECORD, max_size=60), min_size=1, max_size=3),
    reads=st.lists(st.integers(0, 119), max_size=40),
    max_devices=st.sampled_from([5, 1000]),
)
def test_digest_rows_read_and_write_as_bytes_keys_do(
    batches: list[list[tuple[int, int, int, int]]], reads: list[int], max_devices: int
) -> None:
    """`record_many_of` and `latest_records_of` (keys as digest rows, found by fingerprint)
    keep and read what `record_many` and `latest_records` do with the same keys as bytes;
    the first 60 keys come in pairs alike in their first 8 bytes (one probe run)."""
    fingerprint = [k - k % 2 if k < 60 else k for k in range(120)]
    keys = [fingerprint[k].to_bytes(8, "little") + k.to_bytes(24, "big") for k in range(120)]
    now = time.time()
    by_bytes, by_rows = MemoryStore(max_devices), MemoryStore(max_devices)
    for spec in batches:
        rows = [(keys[k], c, now - 10.0 + t, now + 100.0 + e) for k, c, t, e in spec]
        args = record_batch(rows)
        by_bytes.record_many(*args)
        by_rows.record_many_of(as_digests(args[0]), *args[1:])
    assert by_rows.dump() == by_bytes.dump()
    asked = [keys[k] for k in reads] + [bytes(32), (1).to_bytes(8, "little") + bytes(24)]
    want = [a.tolist() for a in by_bytes.latest_records(asked)]
    assert [a.tolist() for a in by_rows.latest_records_of(as_digests(asked))] == want
    assert [a.tolist() for a in by_bytes.latest_records_of(as_digests(asked))] == want


def test_keys_alike_in_their_first_word_are_each_found_and_no_stranger() -> None:
    """Keys alike in their first 8 bytes (where the key table probes from): each is found by
    its whole key, a third such key that is not stored is not, and dropping one leaves the
    other found."""
    now = time.time()
    a, b, stranger = (bytes(8) + bytes([i]) * 24 for i in (1, 2, 3))
    store = MemoryStore()
    store.record(a, 1, now, now + 60)
    store.record(b, 2, now, now + 60)
    position, category, _ = store.latest_records_of(as_digests([stranger, b, a]))
    assert position.tolist() == [1, 2] and category.tolist() == [2, 1]
    store.forget(a)
    position, category, _ = store.latest_records_of(as_digests([a, b]))
    assert position.tolist() == [1] and category.tolist() == [2]
    # A single request's new device enters the table where a batch's lookup probes for it.
    c = bytes(range(1, 33))
    store.record(c, 3, now, now + 60)
    assert store.latest_records_of(as_digests([c]))[1].tolist() == [3]

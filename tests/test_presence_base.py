"""The PresenceStore contract, checked on every backend."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import record_batch as batch

from geofence.presence import DeviceHasher, MemoryStore, PresenceStore, SQLiteStore

SECRET = b"0123456789abcdef-test-secret"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PresenceStore]:
    """Each backend in turn, empty."""
    s: PresenceStore
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(tmp_path / "presence.db")
    else:
        from geofence.presence.redis import RedisStore  # noqa: PLC0415 - only when used

        s = RedisStore(request.getfixturevalue("redis_url"))
    yield s
    s.close()


@pytest.fixture
def hasher() -> DeviceHasher:
    return DeviceHasher(SECRET)


def test_record_then_latest(store: PresenceStore, hasher: DeviceHasher) -> None:
    now = time.time()
    k = hasher.key("ifa-SECRET-123")
    store.record(k, 3, now - 10.5, now + 3600)
    assert store.latest(k) == {3: now - 10.5}
    assert store.latest(hasher.key("ifa-SECRET-other")) == {}


def test_latest_time_per_category_is_the_max(store: PresenceStore, hasher: DeviceHasher) -> None:
    now = time.time()
    a, b = hasher.keys(["ifa-a", "ifa-b"])
    store.record(a, 1, now - 100, now + 3600)
    store.record(a, 1, now - 300, now + 3600)  # older: must not replace the later time
    store.record(a, 1, now - 50, now + 3600)
    # Within one batch too, in any order.
    store.record_many(
        *batch([(a, 2, now - 7, now + 60), (a, 2, now - 9, now + 60), (b, 2, now - 1, now + 60)])
    )
    assert store.latest_many([a, b, a]) == [
        {1: now - 50, 2: now - 7},
        {2: now - 1},
        {1: now - 50, 2: now - 7},
    ]


def test_expired_records_are_not_returned(store: PresenceStore, hasher: DeviceHasher) -> None:
    now = time.time()
    short, long_ = hasher.keys(["ifa-short", "ifa-long"])
    store.record_many(*batch([(short, 4, now, now + 0.3), (long_, 4, now, now + 60)]))
    assert store.latest(short) == {4: now}
    time.sleep(0.5)
    assert store.latest_many([short, long_]) == [{}, {4: now}]


def test_already_expired_records_are_not_stored(store: PresenceStore, hasher: DeviceHasher) -> None:
    now = time.time()
    k = hasher.key("ifa-late")
    store.record(k, 4, now - 100, now - 1)
    assert store.latest(k) == {}


def test_forget_erases_one_device(store: PresenceStore, hasher: DeviceHasher) -> None:
    now = time.time()
    a, b = hasher.keys(["ifa-forget-me", "ifa-keep-me"])
    store.record_many(*batch([(a, 1, now, now + 60), (a, 2, now, now + 60), (b, 1, now, now + 60)]))
    store.forget(a)
    store.forget(hasher.key("ifa-never-seen"))  # no error for an unknown device
    assert store.latest_many([a, b]) == [{}, {1: now}]


def test_empty_calls(store: PresenceStore) -> None:
    store.record_many(*batch([]))
    assert store.latest_many([]) == []


def test_concurrent_use_equals_sequential(store: PresenceStore, hasher: DeviceHasher) -> None:
    """Threads recording and reading at once leave exactly what one thread would have."""
    now = time.time()
    keys = hasher.keys([f"ifa-thread-{i}" for i in range(40)])
    rng = random.Random(7)
    batches = [
        [(rng.choice(keys), rng.randrange(17), now - rng.randrange(10_000), now + 3600.0)
         for _ in range(25)]
        for _ in range(64)
    ]  # fmt: skip
    errors: list[BaseException] = []

    def work(mine: list[list[tuple[bytes, int, float, float]]]) -> None:
        try:
            for b in mine:
                store.record_many(*batch(b))
                store.latest_many(keys[:10])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(batches[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    expected: dict[bytes, dict[int, float]] = {k: {} for k in keys}
    for b in batches:
        for k, c, t, _ in b:
            expected[k][c] = max(t, expected[k].get(c, t))
    assert store.latest_many(keys) == [expected[k] for k in keys]


@pytest.mark.parametrize(
    ("t", "e"), [(0.0, math.inf), (0.0, math.nan), (math.nan, 60.0), (math.inf, 60.0)]
)
def test_non_finite_records_are_refused_whole(
    store: PresenceStore, hasher: DeviceHasher, t: float, e: float
) -> None:
    """ValueError, not PresenceUnavailable (it is no outage), and nothing of the batch written."""
    now = time.time()
    good, bad = hasher.keys(["ifa-good", "ifa-bad"])
    with pytest.raises(ValueError, match="not a finite number"):
        store.record_many(*batch([(good, 1, now, now + 60), (bad, 2, now + t, now + e)]))
    assert store.latest_many([good, bad]) == [{}, {}]


def test_latest_found_lists_only_keys_with_records(
    store: PresenceStore, hasher: DeviceHasher
) -> None:
    now = time.time()
    keys = hasher.keys([f"ifa-found-{i}" for i in range(30)])
    store.record_many(*batch([(k, i % 17, now - i, now + 60) for i, k in enumerate(keys[::4])]))
    store.record(keys[1], 3, now, now + 0.2)  # expires before the read below
    time.sleep(0.4)
    asked = [*keys, keys[0]]  # a key twice: both positions answered
    expected = {i: {(i // 4) % 17: now - i // 4} for i in range(0, 30, 4)} | {30: {0: now}}
    assert store.latest_found(asked) == expected
    assert store.latest_many(asked) == [expected.get(i, {}) for i in range(len(asked))]
    assert store.latest_found([]) == {}


def test_latest_records_are_latest_found_as_rows(
    store: PresenceStore, hasher: DeviceHasher
) -> None:
    """One row per unexpired record, a key's rows adjacent and in its `latest_found` order."""
    now = time.time()
    keys = hasher.keys([f"ifa-rows-{i}" for i in range(12)])
    rows = [(k, c, now - i - c, now + 60) for i, k in enumerate(keys[::3]) for c in (4, 1, 7)]
    store.record_many(*batch(rows[:-2]))
    store.record(keys[1], 3, now, now + 0.2)  # expires before the read below
    time.sleep(0.4)
    asked = [*keys, keys[0]]
    found = store.latest_found(asked)
    position, category, stamps = store.latest_records(asked)
    assert position.dtype == category.dtype == np.int64 and stamps.dtype == np.float64
    flat = [(i, c, t) for i, h in found.items() for c, t in h.items()]
    assert list(zip(position.tolist(), category.tolist(), stamps.tolist(), strict=True)) == flat
    assert len(flat) == 3 * 4 - 2 + 3  # keys[0] asked twice; keys[1]'s record expired
    empty = store.latest_records([])
    assert [a.tolist() for a in empty] == [[], [], []]

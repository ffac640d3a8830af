"""An in-process presence store: a dict of hashed devices, expiring and bounded in size.

It is the default because it needs nothing set up, and the fastest, but it forgets everything
when the process ends and is not shared between processes.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from geofence.presence.base import PresenceStore, record_lists

logger = logging.getLogger("geofence.presence")

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

DEFAULT_MAX_DEVICES = 10_000_000

# Per device, a flat tuple (category, latest time, expires_at) * one per category; a device
# rarely has more than one. Why a tuple of numbers, not a dict: the garbage collector stops
# tracking such a tuple at its first pass, while it tracks a dict until a full collection. A
# store of dicts kept adding long-lived objects, and so triggered full collections, each one
# visiting every stored device: filling a store cost O(n^2) (1M devices: 5.6 us a device, and
# rising) and a serving process paused ~0.1 s per million devices every few thousand new ones.
_Records = tuple[Any, ...]


def _device_expiry(records: _Records) -> float:
    """When the last record of a device expires (the device can be dropped then)."""
    return records[2] if len(records) == 3 else max(records[2::3])


def _triples(records: _Records) -> Iterator[tuple[int, float, float]]:
    """(category, time, expires_at) of each of a device's records."""
    return zip(records[0::3], records[1::3], records[2::3], strict=True)


def _history(records: _Records, now: float) -> dict[int, float]:
    """{category code: latest time} of a device's records unexpired at `now`."""
    if len(records) == 3:  # one category: most devices
        return {records[0]: records[1]} if records[2] > now else {}
    return {c: t for c, t, e in _triples(records) if e > now}


class MemoryStore(PresenceStore):
    """Presence kept in this process: thread-safe, expiring, at most `max_devices` devices.

    Expired records are dropped lazily when read, and whole devices by an amortised sweep that
    runs on every write: a min-heap of (expiry, key) pops devices as their last record expires.
    A device's heap entry may be older than its expiry (a write that moves the expiry later
    pushes nothing); the sweep, popping such an entry, pushes the device's current expiry
    instead. So a write to a stored device costs a dict update, a new device O(log n), and
    each device is re-pushed at most once per expiry it outlives.

    When `max_devices` devices are stored and a new one arrives, the device whose last record
    expires soonest is evicted (a warning is logged once). Eviction therefore only loses the
    oldest presence: every evicted record expires no later than the newest record of any device
    kept. It is still a loss (that device may be targeted before its lookback ends, by at most the
    time its records had left), so size the store for the devices seen within the longest
    lookback: a device costs about 250 bytes (10 million, the default bound, about 2.5 GB).
    """

    def __init__(self, max_devices: int = DEFAULT_MAX_DEVICES) -> None:
        if max_devices < 1:
            raise ValueError(f"max_devices must be at least 1, got {max_devices}")
        self.url = f"memory://?max_devices={max_devices}"
        self.max_devices = max_devices
        self._lock = threading.Lock()
        self._data: dict[bytes, _Records] = {}
        # Every stored device has an entry no later than its expiry (it goes early when the
        # expiry moves later; a popped early entry is pushed again at the current expiry). A
        # forgotten device's entries are stale and skipped when popped; the heap is rebuilt
        # when entries outnumber live devices twice over.
        self._heap: list[tuple[float, bytes]] = []
        self._warned_full = False
        self.evicted = 0  # devices evicted for room since creation (for metrics and tests)

    def record_many(
        self,
        keys: Sequence[bytes],
        categories: npt.NDArray[np.uint8],
        times: npt.NDArray[np.float64],
        expires_at: npt.NDArray[np.float64],
    ) -> None:
        """Record presence, keeping per (device, category) the latest time and expiry."""
        cats, ts, exps = record_lists(keys, categories, times, expires_at)
        now = time.time()
        with self._lock:
            self._sweep(now)
            data = self._data
            get = data.get
            put = self._put
            # _put inlined for the common record: a device stored with this one category
            # (about 1 us a record less, a third of a batch's presence cost).
            for key, cat, t, e in zip(keys, cats, ts, exps, strict=True):
                records = get(key)
                if records is not None and len(records) == 3 and records[0] == cat:
                    if e > now and (t > records[1] or e > records[2]):
                        data[key] = (
                            cat,
                            t if t > records[1] else records[1],
                            e if e > records[2] else records[2],
                        )
                else:
                    put(key, cat, t, e, now)
            self._trim_heap()

    def record(self, key: bytes, category: int, time_s: float, expires_at: float) -> None:
        """One record, as `record_many` keeps it, without its arrays (a single request's)."""
        t, e = float(time_s), float(expires_at)
        if not (math.isfinite(t) and math.isfinite(e)):
            raise ValueError(
                "record: the time or expiry is not a finite number; nothing was recorded"
            )
        now = time.time()
        with self._lock:
            self._sweep(now)
            self._put(key, int(category), t, e, now)
            self._trim_heap()

    def latest_many(self, keys: Sequence[bytes]) -> list[dict[int, float]]:
        """For each key, {category code: latest time} of its unexpired records."""
        now = time.time()
        with self._lock:
            return [
                {} if records is None else _history(records, now)
                for records in map(self._data.get, keys)
            ]

    def latest(self, key: bytes) -> dict[int, float]:
        """{category code: latest time} of one key's unexpired records."""
        # No lock: one dict lookup is atomic, a device's records are a tuple that writers
        # replace and never change, and a device recorded or forgotten concurrently may be
        # seen either way. A miss, the common case, needs no clock either.
        records = self._data.get(key)
        return {} if records is None else _history(records, time.time())

    def latest_found(self, keys: Sequence[bytes]) -> dict[int, dict[int, float]]:
        """{position: {category code: latest time}} for the keys with unexpired records."""
        now = time.time()
        with self._lock:
            # C-level passes find the few stored devices; only they cost Python work.
            data = self._data
            out = {}
            for i in itertools.compress(range(len(keys)), map(data.__contains__, keys)):
                history = _history(data[keys[i]], now)
                if history:
                    out[i] = history
            return out

    def latest_records(self, keys: Sequence[bytes]) -> tuple[I64, I64, F64]:
        """`latest_found` as arrays (position, category, time), one row per unexpired record."""
        now = time.time()
        data = self._data
        # C-level passes only: which keys are stored, their records (most keys are not), and
        # those flattened, a row each.
        with self._lock:
            hit = np.fromiter(map(data.__contains__, keys), bool, len(keys))
            records = list(map(data.__getitem__, itertools.compress(keys, hit)))
        # Outside the lock: a device's records are a tuple writers replace, never change.
        position = np.flatnonzero(hit)
        sizes = np.fromiter(map(len, records), np.int64, len(records)) // 3
        rows = np.fromiter(
            itertools.chain.from_iterable(records), np.float64, 3 * int(sizes.sum())
        ).reshape(-1, 3)
        live = rows[:, 2] > now
        return (
            np.repeat(position, sizes)[live],
            rows[live, 0].astype(np.int64),
            rows[live, 1],
        )

    def forget(self, key: bytes) -> None:
        """Erase one device; its heap entries become stale and are skipped when popped."""
        with self._lock:
            self._data.pop(key, None)

    def close(self) -> None:
        """Drop everything: a memory store has nothing else to release."""
        with self._lock:
            self._data.clear()
            self._heap.clear()

    def dump(self) -> dict[bytes, dict[int, tuple[float, float]]]:
        """A copy of everything stored, {key: {category: (time, expires_at)}} (for audits)."""
        with self._lock:
            return {
                k: {c: (t, e) for c, t, e in _triples(v)}
                for k, v in self._data.items()
            }

    def __len__(self) -> int:
        """The number of devices stored (some may have expired and await the sweep)."""
        return len(self._data)

    # -- internals; the caller holds the lock -------------------------------------------------

    def _put(self, key: bytes, cat: int, t: float, e: float, now: float) -> None:
        """Keep the latest time and expiry of (key, category); a new device gets a heap entry."""
        if e <= now:
            return  # already expired: storing it would only be swept away
        data = self._data
        records = data.get(key)
        if records is None:
            if len(data) >= self.max_devices:
                self._evict_one()
            data[key] = (cat, t, e)
            heapq.heappush(self._heap, (e, key))
            return
        cats = records[0::3]
        if cat not in cats:
            data[key] = (*records, cat, t, e)
        else:
            i = 3 * cats.index(cat)
            old_t, old_e = records[i + 1], records[i + 2]
            if not (t > old_t or e > old_e):
                return
            data[key] = (*records[:i], cat, max(t, old_t), max(e, old_e), *records[i + 3 :])
        # A later expiry pushes nothing: the device's entry is now early, and the sweep
        # re-pushes it when it pops.

    def _trim_heap(self) -> None:
        """Rebuild the heap once stale entries outnumber live devices."""
        if len(self._heap) > 2 * len(self._data) + 1024:
            self._rebuild_heap()

    def _sweep(self, now: float) -> None:
        """Drop every device whose last record has expired."""
        heap = self._heap
        data = self._data
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            records = data.get(key)
            if records is None:
                continue  # forgotten, swept or evicted already: a stale entry
            expiry = _device_expiry(records)
            if expiry <= now:
                del data[key]
            else:  # written to since the entry was pushed: it lives on, until `expiry`
                heapq.heappush(heap, (expiry, key))

    def _evict_one(self) -> None:
        """Drop the device whose last record expires soonest, to make room for a new one."""
        heap = self._heap
        data = self._data
        while heap:
            e, key = heapq.heappop(heap)
            records = data.get(key)
            if records is None:
                continue
            expiry = _device_expiry(records)
            if expiry > e:  # an early entry: every entry is at most its device's expiry, so
                heapq.heappush(heap, (expiry, key))  # the soonest device still surfaces first
                continue
            del data[key]
            self.evicted += 1
            if not self._warned_full:
                self._warned_full = True
                logger.warning(
                    "memory presence store is full (%d devices): evicting the devices whose "
                    "records expire soonest; raise max_devices or use sqlite:// or redis://",
                    self.max_devices,
                )
            return
        # Unreachable while every stored device has a live heap entry; rebuild defensively.
        self._rebuild_heap()
        if self._heap:
            self._evict_one()

    def _rebuild_heap(self) -> None:
        """One live entry per device, dropping every stale one."""
        self._heap = [(_device_expiry(r), k) for k, r in self._data.items()]
        heapq.heapify(self._heap)

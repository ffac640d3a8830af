"""An in-process presence store: hashed devices' records in arrays, expiring and bounded in size.

It is the default because it needs nothing set up, and the fastest, but it forgets everything
when the process ends and is not shared between processes.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from geofence.presence.base import Digests, PresenceStore, as_keys, record_arrays

logger = logging.getLogger("geofence.presence")

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

DEFAULT_MAX_DEVICES = 10_000_000

# A device's records live in a row of one float64 array: (category, time, expiry) in a column
# per category it has been seen in, -1 in a free column. A dict maps each key to its row. Why
# an array, not a tuple per device: a batch reads and writes tens of thousands of devices, and
# Python objects scattered over the heap cost a cache miss each (a tuple, then each float in
# it) where a row is one gather; the batch's reads and writes run in C-level passes and a
# compiled loop. Nothing per device is an object the garbage collector tracks (a dict per
# device made filling a store O(n^2) through full collections).
_NO_CATEGORY = -1
# In the key table: a slot never used (a probe stops here), and one whose row was dropped (a
# probe goes on past it; an insert may reuse it).
_EMPTY = -1
_GONE = -2


@numba.njit(cache=True, nogil=True)
def _upsert(rows: I64, cats: I64, ts: F64, exps: F64, records: F64, expiry: F64) -> int:
    """Keep, per (row, category), the latest time and expiry; return the first record whose row
    has no free column (-1 when all are kept), for the caller to widen the rows and go on."""
    width = records.shape[1]
    for i in range(rows.size):
        r, c = rows[i], cats[i]
        column = -1
        for j in range(width):
            if records[r, j, 0] == c:
                column = j
                break
            if records[r, j, 0] == _NO_CATEGORY and column == -1:
                column = -2 - j  # the first free column, unless c turns up later
        if column == -1:
            return i
        if column < -1:
            column = -2 - column
            records[r, column, 0] = c
            records[r, column, 1] = ts[i]
            records[r, column, 2] = exps[i]
        else:
            records[r, column, 1] = max(records[r, column, 1], ts[i])
            records[r, column, 2] = max(records[r, column, 2], exps[i])
        expiry[r] = max(expiry[r], exps[i])
    return -1


@numba.njit(cache=True, nogil=True)
def _find(table: I64, keys: U64, digests: U64, out: I64) -> None:
    """out[i] = the row whose key is digests[i] (4 words), or -1: linear probing from the key's
    first word (a keyed hash, so uniform), confirmed on all four."""
    mask = table.size - 1
    for i in range(digests.shape[0]):
        d0, d1, d2, d3 = digests[i, 0], digests[i, 1], digests[i, 2], digests[i, 3]
        h = np.int64(d0 & np.uint64(mask))
        row = -1
        while True:
            s = table[h]
            if s == _EMPTY:
                break
            if s >= 0 and keys[s, 0] == d0 and keys[s, 1] == d1:  # noqa: SIM102 - line length
                if keys[s, 2] == d2 and keys[s, 3] == d3:
                    row = s
                    break
            h = (h + 1) & mask
        out[i] = row


@numba.njit(cache=True, nogil=True)
def _insert(table: I64, keys: U64, rows: I64) -> None:
    """Put rows whose keys the table does not hold yet into free slots."""
    mask = table.size - 1
    for r in rows:
        h = np.int64(keys[r, 0] & np.uint64(mask))
        while table[h] >= 0:
            h = (h + 1) & mask
        table[h] = r


def _unexpired(position: I64, records: F64, now: float) -> tuple[I64, I64, F64]:
    """(position, category, time) of the records unexpired at `now`, from gathered rows; a
    key's records adjacent, in column order."""
    cat = records[:, :, 0]
    i, j = np.nonzero((cat != _NO_CATEGORY) & (records[:, :, 2] > now))
    return position[i], cat[i, j].astype(np.int64), records[i, j, 1]


class MemoryStore(PresenceStore):
    """Presence kept in this process: thread-safe, expiring, at most `max_devices` devices.

    Expired records are hidden at once from reads, and whole devices dropped by an amortised
    sweep that runs on every write: a min-heap of (expiry, row) pops devices as their last
    record expires. A device's heap entry may be older than its expiry (a write that moves the
    expiry later pushes nothing); the sweep, popping such an entry, pushes the device's current
    expiry instead. So a write to a stored device costs an update of its row, a new device
    O(log n), and each device is re-pushed at most once per expiry it outlives. A freed row is
    cleared and reused; an entry left from its former device is stale and handled the same way.

    When `max_devices` devices are stored and a new one arrives, the device whose last record
    expires soonest is evicted (a warning is logged once). Eviction therefore only loses the
    oldest presence: every evicted record expires no later than the newest record of any device
    kept. It is still a loss (that device may be targeted before its lookback ends, by at most the
    time its records had left), so size the store for the devices seen within the longest
    lookback: a device costs about 350 bytes (10 million, the default bound, about 3.5 GB).
    """

    def __init__(self, max_devices: int = DEFAULT_MAX_DEVICES) -> None:
        if max_devices < 1:
            raise ValueError(f"max_devices must be at least 1, got {max_devices}")
        self.url = f"memory://?max_devices={max_devices}"
        self.max_devices = max_devices
        self._lock = threading.Lock()
        self._clear()
        self._warned_full = False
        self.evicted = 0  # devices evicted for room since creation (for metrics and tests)

    def _clear(self) -> None:
        """An empty store: no rows, one column."""
        self._row: dict[bytes, int] = {}  # key -> its row
        self._key_of: list[bytes | None] = []  # row -> its key (None: a free row)
        self._free: list[int] = []  # rows to reuse
        # Each row's key in `_keys32` (32-byte keys; `_indexed` marks them), and an open-
        # addressing table of those rows: how a batch given as digests finds its rows in one
        # compiled pass (`_rows_of`), where a dict lookup per device cost ~60 ns in cache misses.
        self._keys32 = np.zeros((0, 32), dtype=np.uint8)
        self._indexed = np.zeros(0, dtype=np.bool_)
        self._new_table(1024)
        # Per row and column: (category, time, expires_at); the category -1 for a free column.
        self._records = np.full((0, 1, 3), _NO_CATEGORY, dtype=np.float64)
        self._expiry = np.zeros(0)  # per row: when its last record expires
        self._resize(0, 1)  # and the views on them
        # Every stored device has an entry no later than its expiry (it goes early when the
        # expiry moves later; a popped early entry is pushed again at the current expiry). The
        # heap is rebuilt when entries outnumber live devices twice over.
        self._heap: list[tuple[float, int]] = []

    def record_many(
        self,
        keys: Sequence[bytes],
        categories: npt.NDArray[np.uint8],
        times: npt.NDArray[np.float64],
        expires_at: npt.NDArray[np.float64],
    ) -> None:
        """Record presence, keeping per (device, category) the latest time and expiry."""
        cats, ts, exps = record_arrays(keys, categories, times, expires_at)
        now = time.time()
        with self._lock:
            self._sweep(now)
            stored = map(self._row.get, keys, itertools.repeat(-1))
            rows = np.fromiter(stored, np.int64, len(keys))
            self._record(rows, lambda at: list(map(keys.__getitem__, at)), cats, ts, exps, now)

    def record_many_of(
        self,
        digests: Digests,
        categories: npt.NDArray[np.uint8],
        times: npt.NDArray[np.float64],
        expires_at: npt.NDArray[np.float64],
    ) -> None:
        """`record_many` of keys given as digest rows: stored devices are found in the key
        table, and only new ones become bytes objects."""
        cats, ts, exps = record_arrays(digests, categories, times, expires_at)
        now = time.time()
        with self._lock:
            self._sweep(now)
            rows = self._rows_of(digests)
            self._record(rows, lambda at: as_keys(digests[at]), cats, ts, exps, now)

    def _record(
        self,
        rows: I64,
        keys_at: Callable[[list[int]], list[bytes]],
        cats: I64,
        ts: F64,
        exps: F64,
        now: float,
    ) -> None:
        """`record_many` once the records' rows are known (-1: a device not stored);
        keys_at(positions) gives the keys of records at those positions."""
        keep = np.flatnonzero(exps > now)  # an expired record would only be swept away
        rows = rows[keep]
        new = np.flatnonzero(rows < 0)
        if new.size:
            new_keys = keys_at(keep[new].tolist())
            arrivals = list(dict.fromkeys(new_keys))  # distinct, in order of first appearance
            if len(self._row) + len(arrivals) > self.max_devices:
                # Which device an eviction drops depends on the order of the records.
                at = keep.tolist()
                for i, key in zip(at, keys_at(at), strict=True):
                    self._put(key, int(cats[i]), float(ts[i]), float(exps[i]), now)
                self._trim_heap()
                return
            added = self._add(arrivals)
            if len(added) == new.size:  # no device twice: the rows go in order
                rows[new] = added
            else:
                rows[new] = np.fromiter(map(self._row.__getitem__, new_keys), np.int64, new.size)
        self._apply(rows, cats[keep], ts[keep], exps[keep])
        if new.size:
            entries = zip(self._expiry[added].tolist(), added, strict=True)
            if len(added) > len(self._heap) // 8:  # many: one heapify beats a push each
                self._heap.extend(entries)
                heapq.heapify(self._heap)
            else:
                for entry in entries:
                    heapq.heappush(self._heap, entry)
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
                {} if row is None else self._history(row, now) for row in map(self._row.get, keys)
            ]

    def latest(self, key: bytes) -> dict[int, float]:
        """{category code: latest time} of one key's unexpired records."""
        # No lock: a lock would cost a fifth of a single request's check. A miss, the common
        # case, is one dict lookup (atomic), and needs no clock. A hit reads the row item by
        # item (a float's store is atomic, and each time only ever grows), then looks the key
        # up again: if it still has the same row, the row was its own (for the row to hold
        # another device meanwhile, this one would have to be dropped and come back to it).
        row = self._row.get(key)
        if row is None:
            return {}
        history = self._history(row, time.time())
        return history if self._row.get(key) == row else self.latest_many([key])[0]

    def latest_found(self, keys: Sequence[bytes]) -> dict[int, dict[int, float]]:
        """{position: {category code: latest time}} for the keys with unexpired records."""
        now = time.time()
        with self._lock:
            rows = map(self._row.get, keys)
            return {
                i: history
                for i, row in enumerate(rows)
                if row is not None and (history := self._history(row, now))
            }

    def latest_records(self, keys: Sequence[bytes]) -> tuple[I64, I64, F64]:
        """`latest_found` as arrays (position, category, time), one row per unexpired record."""
        now = time.time()
        with self._lock:
            rows = np.fromiter(map(self._row.get, keys, itertools.repeat(-1)), np.int64, len(keys))
            position = np.flatnonzero(rows >= 0)
            # Gathers copy: what is read stays as it was under the lock.
            records = self._records[rows[position]]
        return _unexpired(position, records, now)

    def latest_records_of(self, digests: Digests) -> tuple[I64, I64, F64]:
        """`latest_records` of keys given as digest rows, found in the key table: no bytes
        object per device (86k in a 200k-request batch, ~3 ms to make) and no dict lookup
        (~5 ms more, in cache misses)."""
        now = time.time()
        with self._lock:
            rows = self._rows_of(digests)
            position = np.flatnonzero(rows >= 0)
            records = self._records[rows[position]]
        return _unexpired(position, records, now)

    def _rows_of(self, digests: Digests) -> I64:
        """The row of each digest's device, -1 for one not stored (the caller holds the lock)."""
        rows = np.empty(len(digests), dtype=np.int64)
        words = np.ascontiguousarray(digests).view(np.uint64)
        _find(self._table, self._keys64, words, rows)
        return rows

    def forget(self, key: bytes) -> None:
        """Erase one device: its row is cleared; its heap entries become stale."""
        with self._lock:
            row = self._row.get(key)
            if row is not None:
                self._drop(row)

    def close(self) -> None:
        """Drop everything: a memory store has nothing else to release."""
        with self._lock:
            self._clear()

    def dump(self) -> dict[bytes, dict[int, tuple[float, float]]]:
        """A copy of everything stored, {key: {category: (time, expires_at)}} (for audits)."""
        with self._lock:
            return {key: self._stored(row) for key, row in self._row.items()}

    def __len__(self) -> int:
        """The number of devices stored (some may have expired and await the sweep)."""
        return len(self._row)

    # -- internals; the caller holds the lock -------------------------------------------------

    def _stored(self, row: int) -> dict[int, tuple[float, float]]:
        """{category: (time, expires_at)} of a row's records, expired or not."""
        flat, width = self._view
        out = {}
        for i in range(3 * width * row, 3 * width * (row + 1), 3):
            if flat[i] != _NO_CATEGORY:
                out[int(flat[i])] = (flat[i + 1], flat[i + 2])
        return out

    def _history(self, row: int, now: float) -> dict[int, float]:
        """{category code: latest time} of a row's records unexpired at `now`.

        Item by item through the flat memoryview (a Python float in ~20 ns): a row's NumPy view
        and its `tolist` would cost ~250 ns, a comprehension ~200, a good part of a single
        request's check.
        """
        flat, width = self._view
        out = {}
        for i in range(3 * width * row, 3 * width * (row + 1), 3):
            if flat[i] != _NO_CATEGORY and flat[i + 2] > now:
                out[int(flat[i])] = flat[i + 1]
        return out

    def _add(self, keys: list[bytes]) -> list[int]:
        """Rows for new devices, in order: freed rows first, then new ones (the arrays grow by
        half)."""
        reused = [self._free.pop() for _ in range(min(len(keys), len(self._free)))]
        end = len(self._key_of)
        fresh = list(range(end, end + len(keys) - len(reused)))
        if fresh and fresh[-1] >= len(self._expiry):
            self._resize(
                max(fresh[-1] + 1, len(self._expiry) * 3 // 2, 1024), self._records.shape[1]
            )
        self._key_of.extend(keys[len(reused) :])
        for row, key in zip(reused, keys, strict=False):
            self._key_of[row] = key
        rows = reused + fresh
        self._row.update(zip(keys, rows, strict=True))
        blob = b"".join(keys)
        if len(blob) == 32 * len(keys):  # every key 32 bytes (as the hasher makes them)
            self._keys32[rows] = np.frombuffer(blob, dtype=np.uint8).reshape(len(keys), 32)
            self._index(rows)
        else:
            for key, row in zip(keys, rows, strict=True):
                if len(key) == 32:
                    self._key_view[32 * row : 32 * row + 32] = key
                    self._index_one(key, row)
        return rows

    def _new_table(self, size: int) -> None:
        """An empty key table of `size` slots (a power of two)."""
        self._table = np.full(size, _EMPTY, dtype=np.int64)
        self._slots: Any = memoryview(self._table)  # type: ignore[arg-type]
        self._used = 0  # slots not empty: rows and gone ones

    def _index_one(self, key: bytes, row: int) -> None:
        """`_index` of one row, its 32-byte key given: in Python through a memoryview (a single
        request's new device; the compiled insert's call and arrays cost ~1.5 us more)."""
        if 2 * (self._used + 1) > self._table.size:
            self._index([row])
            return
        slots = self._slots
        mask = len(slots) - 1
        h = int.from_bytes(key[:8], sys.byteorder) & mask  # the first word, as _find reads it
        while slots[h] >= 0:
            h = (h + 1) & mask
        slots[h] = row
        self._indexed[row] = True
        self._used += 1

    def _unindex(self, key: bytes, row: int) -> None:
        """Mark a row's slot in the key table gone: probes for other keys still pass it."""
        slots = self._slots
        mask = len(slots) - 1
        h = int.from_bytes(key[:8], sys.byteorder) & mask
        while slots[h] != _EMPTY:
            if slots[h] == row:
                slots[h] = _GONE
                return
            h = (h + 1) & mask

    def _index(self, rows: list[int]) -> None:
        """Enter rows whose 32-byte keys are in `_keys32` into the key table, rebuilding it at
        half full (a digest never equals a key of another length: those are not entered)."""
        if 2 * (self._used + len(rows)) > self._table.size:
            live = np.flatnonzero(self._indexed)
            size = 1024
            while size < 4 * (live.size + len(rows)):
                size *= 2
            self._new_table(size)
            _insert(self._table, self._keys64, live)
            self._used = live.size
        _insert(self._table, self._keys64, np.array(rows, dtype=np.int64))
        self._indexed[rows] = True
        self._used += len(rows)

    def _resize(self, rows: int, width: int) -> None:
        """Arrays of `rows` rows and `width` columns, holding what the current ones hold."""
        n, w = self._records.shape[:2]
        records = np.full((rows, width, 3), _NO_CATEGORY, dtype=np.float64)
        expiry = np.full(rows, -np.inf)
        records[:n, :w] = self._records
        expiry[:n] = self._expiry
        keys32 = np.zeros((rows, 32), dtype=np.uint8)
        keys32[:n] = self._keys32
        indexed = np.zeros(rows, dtype=np.bool_)
        indexed[:n] = self._indexed
        self._records, self._expiry, self._keys32 = records, expiry, keys32
        self._keys64 = keys32.view(np.uint64)  # the same keys, as the table's kernels read them
        self._indexed = indexed
        self._key_view: Any = memoryview(keys32.reshape(-1))  # type: ignore[arg-type]
        # Python floats by index (see _history), and the width they go with: one tuple, so a
        # reader without the lock never pairs one array's view with another's width.
        self._view: tuple[Any, int] = (memoryview(records.reshape(-1)), width)  # type: ignore[arg-type]
        self._expiry_of: Any = memoryview(expiry)  # type: ignore[arg-type]

    def _apply(self, rows: I64, cats: I64, ts: F64, exps: F64) -> None:
        """Records into stored rows, widening the rows when a device has a category too many."""
        done = 0
        while done < rows.size:
            stop = _upsert(
                rows[done:], cats[done:], ts[done:], exps[done:],
                self._records, self._expiry,
            )  # fmt: skip
            if stop < 0:
                return
            done += stop
            self._resize(len(self._expiry), self._records.shape[1] + 1)

    def _put(self, key: bytes, cat: int, t: float, e: float, now: float) -> None:
        """One record: keep the latest time and expiry of (key, category); a new device gets a
        row and a heap entry."""
        if e <= now:
            return  # already expired: storing it would only be swept away
        row = self._row.get(key)
        if row is None:
            if len(self._row) >= self.max_devices:
                self._evict_one()
            if self._free:
                row = self._free.pop()
                self._key_of[row] = key
            else:
                row = len(self._key_of)
                if row == len(self._expiry):
                    self._resize(max(row * 3 // 2, 1024), self._records.shape[1])
                self._key_of.append(key)
            self._row[key] = row
            if len(key) == 32:
                self._key_view[32 * row : 32 * row + 32] = key
                self._index_one(key, row)
            flat, width = self._view
            base = 3 * width * row
            flat[base], flat[base + 1], flat[base + 2] = cat, t, e
            self._expiry_of[row] = e
            heapq.heappush(self._heap, (e, row))
            return
        # Python on the row's items, not _apply: for a single request's write, the compiled
        # loop's call and its four arrays would cost more than the work.
        flat, width = self._view
        free = -1
        for i in range(3 * width * row, 3 * width * (row + 1), 3):
            c = flat[i]
            if c == cat:  # comparisons, not max(): a call costs more than the rest of the line
                if t > flat[i + 1]:  # noqa: PLR1730
                    flat[i + 1] = t
                if e > flat[i + 2]:  # noqa: PLR1730
                    flat[i + 2] = e
                break
            if c == _NO_CATEGORY and free < 0:
                free = i
        else:
            if free < 0:  # a category too many: one more column for every row
                self._resize(len(self._expiry), width + 1)
                flat, width = self._view
                free = 3 * width * (row + 1) - 3
            flat[free], flat[free + 1], flat[free + 2] = cat, t, e
        expiry = self._expiry_of
        if e > expiry[row]:  # noqa: PLR1730
            expiry[row] = e

    def _drop(self, row: int) -> None:
        """Free a device's row, cleared: nothing of it stays in memory."""
        key = self._key_of[row]
        assert key is not None
        del self._row[key]
        self._key_of[row] = None
        if self._indexed[row]:
            self._unindex(key, row)
            self._indexed[row] = False
            self._keys32[row] = 0
        self._records[row] = _NO_CATEGORY  # times too: nothing of the device is left
        self._expiry[row] = -np.inf
        self._free.append(row)

    def _trim_heap(self) -> None:
        """Rebuild the heap once stale entries outnumber live devices."""
        if len(self._heap) > 2 * len(self._row) + 1024:
            self._rebuild_heap()

    def _sweep(self, now: float) -> None:
        """Drop every device whose last record has expired."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, row = heapq.heappop(heap)
            if self._key_of[row] is None:
                continue  # forgotten, swept or evicted already: a stale entry
            expiry = float(self._expiry[row])
            if expiry <= now:
                self._drop(row)
            else:  # written to since the entry was pushed: it lives on, until `expiry`
                heapq.heappush(heap, (expiry, row))

    def _evict_one(self) -> None:
        """Drop the device whose last record expires soonest, to make room for a new one."""
        heap = self._heap
        while heap:
            e, row = heapq.heappop(heap)
            if self._key_of[row] is None:
                continue
            expiry = float(self._expiry[row])
            if expiry > e:  # an early entry: every entry is at most its device's expiry, so
                heapq.heappush(heap, (expiry, row))  # the soonest device still surfaces first
                continue
            self._drop(row)
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
        rows = list(self._row.values())
        self._heap = list(zip(self._expiry[rows].tolist(), rows, strict=True))
        heapq.heapify(self._heap)

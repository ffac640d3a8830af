"""The contract every presence backend keeps."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence, Sized
from typing import Any

import numpy as np
import numpy.typing as npt

_FEW = 16

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
# Hashed device keys as the rows of an (n, 32) array, as `DeviceHasher` makes them for a batch.
Digests = npt.NDArray[np.uint8]


def as_keys(digests: Digests) -> list[bytes]:
    """The rows of a digest array as bytes keys, in one C loop (a 32-byte void view; "S32"
    would drop trailing NULs)."""
    keys: list[bytes] = np.ascontiguousarray(digests).view("V32").ravel().tolist()
    return keys


def as_digests(keys: Sequence[bytes]) -> Digests:
    """32-byte keys as the rows of a digest array (one join)."""
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)


def record_lists(
    keys: Sequence[bytes],
    categories: npt.NDArray[np.uint8],
    times: npt.NDArray[np.float64],
    expires_at: npt.NDArray[np.float64],
) -> tuple[list[int], list[float], list[float]]:
    """`record_arrays` as Python lists (much faster per item than NumPy scalars)."""
    cats, ts, exps = record_arrays(keys, categories, times, expires_at)
    return cats.tolist(), ts.tolist(), exps.tolist()


def record_arrays(
    keys: Sized,
    categories: npt.NDArray[np.uint8],
    times: npt.NDArray[np.float64],
    expires_at: npt.NDArray[np.float64],
) -> tuple[I64, F64, F64]:
    """`record_many`'s arguments checked: categories, times and expiries as arrays.

    Raises ValueError, before anything is written, when the four inputs differ in length or a
    time or expiry is not a finite number. Such a record means nothing (a NaN time blocks no one,
    an infinite expiry never ends), and no backend can keep it faithfully: Redis cannot set the
    expiry, SQLite turns NaN into NULL, and NaN breaks the memory store's expiry heap. A
    ValueError is not `PresenceUnavailable`, so the engine drops such records instead of holding
    them for a retry that could never succeed.
    """
    cats = np.asarray(categories).astype(np.int64, copy=False)
    ts = np.asarray(times, dtype=np.float64)
    exps = np.asarray(expires_at, dtype=np.float64)
    if not (len(keys) == len(cats) == len(ts) == len(exps)):
        raise ValueError("record_many: keys, categories, times and expires_at differ in length")
    # A few records (one request's presence): Python's checks, not NumPy calls of ~0.5 us.
    if len(ts) <= _FEW:
        finite = all(map(math.isfinite, ts.tolist())) and all(map(math.isfinite, exps.tolist()))
    else:
        finite = bool(np.isfinite(ts).all() and np.isfinite(exps).all())
    if not finite:
        bad = ~(np.isfinite(ts) & np.isfinite(exps))
        raise ValueError(
            f"record_many: {int(bad.sum())} of {len(ts)} records have a time or expiry that is "
            "not a finite number; nothing was recorded"
        )
    return cats, ts, exps


class PresenceStore(ABC):
    """Where presence records live. Every method may raise `PresenceUnavailable`.

    A record is (key, category code, time T, expires_at). A store keeps only the latest T per
    (key, category) and may drop a record once `expires_at` has passed.
    """

    url: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Route a subclass's reads through its own `latest_many`, and its writes through its
        own `record_many`, when it redefines that alone.

        Backends speed up `latest`, `latest_found` and `record` with code of their own; a
        subclass that wraps `latest_many` or `record_many` (a fault injector, a metrics wrapper)
        expects every read or write to pass through it, so the shortcuts it would inherit are
        replaced by the generic ones.
        """
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "record_many" in own and "record" not in own:
            cls.record = PresenceStore.record  # type: ignore[method-assign]
        if "latest_many" in own:
            if "latest" not in own:
                cls.latest = PresenceStore.latest  # type: ignore[method-assign]
            if "latest_found" not in own:
                cls.latest_found = PresenceStore.latest_found  # type: ignore[method-assign]
        if ("latest_many" in own or "latest_found" in own) and "latest_records" not in own:
            cls.latest_records = PresenceStore.latest_records  # type: ignore[method-assign]
        # The digest forms go through the bytes forms unless the subclass redefines them too.
        reads = ("latest_many", "latest_found", "latest_records")
        if any(name in own for name in reads) and "latest_records_of" not in own:
            cls.latest_records_of = PresenceStore.latest_records_of  # type: ignore[method-assign]
        if "record_many" in own and "record_many_of" not in own:
            cls.record_many_of = PresenceStore.record_many_of  # type: ignore[method-assign]

    @abstractmethod
    def record_many(
        self,
        keys: Sequence[bytes],
        categories: npt.NDArray[np.uint8],
        times: npt.NDArray[np.float64],
        expires_at: npt.NDArray[np.float64],
    ) -> None:
        """Record presence; arrays are parallel to `keys`. One round trip for remote stores."""

    @abstractmethod
    def latest_many(self, keys: Sequence[bytes]) -> list[dict[int, float]]:
        """For each key, {category code: latest presence time}; {} when nothing is recorded."""

    @abstractmethod
    def forget(self, key: bytes) -> None:
        """Erase everything recorded for one hashed device (a consumer's deletion request)."""

    def record(self, key: bytes, category: int, time_s: float, expires_at: float) -> None:
        """One record (a single request's presence); `record_many`'s rules apply."""
        self.record_many(
            [key],
            np.array([category], dtype=np.uint8),
            np.array([time_s], dtype=np.float64),
            np.array([expires_at], dtype=np.float64),
        )

    def latest(self, key: bytes) -> dict[int, float]:
        return self.latest_many([key])[0]

    def latest_found(self, keys: Sequence[bytes]) -> dict[int, dict[int, float]]:
        """{position in `keys`: {category code: latest time}} for the keys that have records.

        What the engine reads: most devices have no history, and a store that knows which keys
        it holds can skip building an empty result for each of the others.
        """
        return {i: h for i, h in enumerate(self.latest_many(keys)) if h}

    def latest_records(self, keys: Sequence[bytes]) -> tuple[I64, I64, F64]:
        """`latest_found` as arrays (position, category, time), one row per record.

        A key's records are adjacent, in the order its `latest_found` dict lists them. What
        the engine reads: it settles every device's block in one compiled pass over these,
        instead of a Python call per device with a history.
        """
        found = self.latest_found(keys)
        position = [i for i, h in found.items() for _ in h]
        category = [c for h in found.values() for c in h]
        times = [t for h in found.values() for t in h.values()]
        return (
            np.array(position, dtype=np.int64),
            np.array(category, dtype=np.int64),
            np.array(times, dtype=np.float64),
        )

    def latest_records_of(self, digests: Digests) -> tuple[I64, I64, F64]:
        """`latest_records` of the keys given as the rows of a digest array.

        What the engine calls for a batch: a store that looks keys up in arrays (the memory
        store) skips making a bytes object per device; others get the bytes.
        """
        return self.latest_records(as_keys(digests))

    def record_many_of(
        self,
        digests: Digests,
        categories: npt.NDArray[np.uint8],
        times: npt.NDArray[np.float64],
        expires_at: npt.NDArray[np.float64],
    ) -> None:
        """`record_many` of the keys given as the rows of a digest array."""
        self.record_many(as_keys(digests), categories, times, expires_at)

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing to release
        """Release connections and files."""

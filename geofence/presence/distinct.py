"""A batch's device ids as packed bytes: checked, and reduced to distinct devices, compiled.

The common batch has every id plain ASCII text, most devices more than once. Checking each id
(five C-level passes over a list, and one more for missing ids), finding the distinct ones
(pandas' hash table of objects) and joining those again for the hash took about 60 ms for 200k
requests over 100k devices; here the ids are checked and packed back to back in one C pass
(`_ids.pack_ascii`; where it is not built, joined with NUL separators and checked by a compiled
pass), and compiled passes over the bytes find the distinct ones and pack those. A batch that is
not of that kind (other types, non-ASCII text, a blank or too long id, an id holding a NUL)
gets None from `pack_ids`, and the caller's general path decides it, as before.

The distinct ids are found with a hash table keyed by a random per-process seed (not a
cryptographic hash: which ids collide is merely unknown outside the process). A probe run
longer than MAX_PROBES (odds about 1e-21 a lookup at the table's load of at most 1/2), or more
than PROBE_BUDGET probes a lookup over the batch, gives up and the caller falls back to pandas,
on Python's SipHash: ids crafted to collide cost that fallback, not a quadratic table.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
import pandas as pd
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from geofence.kernels import prefetch

try:  # built by `pip install` where a C compiler is found (pyproject.toml: optional)
    from geofence.presence._ids import pack_ascii as _pack_ascii
except ImportError:  # pragma: no cover - depends on the install
    _pack_ascii = None  # type: ignore[assignment]

logger = logging.getLogger("geofence.presence")

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
Ip = npt.NDArray[np.intp]

# A batch's device ids as a caller gives them: a list, a tuple, or a NumPy array.
IdBatch = Sequence[Any] | npt.NDArray[Any]

MAX_PROBES = 256
PROBE_BUDGET = 32  # probes past the first, per lookup, over a whole batch
_SEED = np.uint64(int.from_bytes(os.urandom(8), "little"))
_M1 = np.uint64(0xFF51AFD7ED558CCD)  # MurmurHash3's 64-bit finaliser constants
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_K = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True, slots=True)
class PackedIds:
    """n device ids, each valid: id i is blob[start[i]:start[i] + length[i]] (ASCII)."""

    blob: U8
    start: I64
    length: I64


def pack_ids(seq: IdBatch, max_len: int) -> PackedIds | None:
    """The ids (a list, a tuple or a 1-D array of objects) packed when each is a plain str of
    ASCII, not blank and at most `max_len` characters; else None (the general path decides
    them).

    Why only those: for ASCII a character is a byte, so the length and blankness checks are
    byte checks, and every such id is valid UTF-8.
    """
    if not len(seq) or not compiled_passes_agree():
        return None
    if isinstance(seq, np.ndarray) and not (
        seq.dtype == object and seq.ndim == 1 and seq.flags.c_contiguous
    ):
        seq = seq.tolist()  # text dtypes become str; other layouts a list
    elif not isinstance(seq, list | tuple | np.ndarray):
        seq = list(seq)
    return _packed(seq, max_len)


def _packed(seq: IdBatch, max_len: int) -> PackedIds | None:
    """`pack_ids`'s work: the C extension's pass where it is built (~10 ns an id against ~150
    for `_pack`), else `_pack`. An array of objects is read in place."""
    if _pack_ascii is None:
        return _pack(seq, max_len)
    start = np.empty(len(seq), dtype=np.int64)
    length = np.empty(len(seq), dtype=np.int64)
    blob = _pack_ascii(seq, max_len, start, length)
    if blob is None:
        return None
    # A bytearray, not bytes: numba types a read-only array slower at every call.
    return PackedIds(np.frombuffer(blob, dtype=np.uint8), start, length)


def _pack(seq: IdBatch, max_len: int) -> PackedIds | None:
    """`pack_ids` by Python passes and a compiled one: the ids joined with NUL separators."""
    if set(map(type, seq)) != {str}:
        return None
    joined = "\0".join(seq)  # every element is a str, checked above
    if not joined.isascii():
        return None
    # A bytearray, not bytes: numba types a read-only array slower at every call.
    blob = np.frombuffer(bytearray(joined, "ascii"), dtype=np.uint8)
    start = np.empty(len(seq), dtype=np.int64)
    length = np.empty(len(seq), dtype=np.int64)
    if not _split(blob, max_len, start, length):
        return None
    return PackedIds(blob, start, length)


@functools.cache
def compiled_passes_agree() -> bool:
    """Whether the compiled passes load and find pandas' distinct ids on a known sample.

    When they do not (a numba or LLVM that refuses the word load or the prefetch, say), every
    batch takes the general path, as before they existed; the failure is logged once.
    """
    try:
        sample = [f"ifa-{i % 37}-" + "x" * (i % 19) for i in range(300)]
        packed = _packed(list(sample), len(sample[-1]) + 20)
        found = None if packed is None else distinct_ids(packed, np.arange(len(sample)))
        if found is None:
            raise RuntimeError("the compiled passes refused a plain sample")
        codes, uniques = pd.factorize(np.array(sample, dtype=object))
        raw = found[1].tobytes()
        ends = found[2].tolist()
        texts = [raw[a:b].decode("ascii") for a, b in itertools.pairwise(ends)]
        if found[0].tolist() != codes.tolist() or texts != uniques.tolist():
            raise RuntimeError("the compiled passes disagree with pandas on a plain sample")
    except Exception:
        logger.exception("device ids: the compiled passes are not used")
        return False
    return True


def distinct_ids(packed: PackedIds, rows: Ip) -> tuple[Ip, U8, I64] | None:
    """(dev, blob, offsets): dev[j] is the distinct device of id rows[j], numbered in order of
    first appearance; device d's id is blob[offsets[d]:offsets[d + 1]]. None if the hash table
    met a probe run past MAX_PROBES (crafted ids): the caller uses its general path.
    """
    size = 1 << max(4, (2 * len(rows)).bit_length())  # load at most 1/2
    dev = np.empty(len(rows), dtype=np.intp)
    first = np.empty(len(rows), dtype=np.int64)
    m = _distinct(packed.blob, packed.start, packed.length, rows, size, _SEED, dev, first)
    if m < 0:
        return None
    blob, offsets = _gather(packed.blob, packed.start, packed.length, first[:m])
    return dev, blob, offsets


@numba.njit(cache=True, nogil=True)
def _gather(blob: U8, start: I64, length: I64, rows: I64) -> tuple[U8, I64]:
    """The ids `rows` back to back, and their offsets (one copy; NumPy's gather took three
    index arrays as long as the bytes)."""
    offsets = np.zeros(rows.size + 1, dtype=np.int64)
    for i in range(rows.size):
        offsets[i + 1] = offsets[i] + length[rows[i]]
    out = np.empty(offsets[-1], dtype=np.uint8)
    for i in range(rows.size):
        out[offsets[i] : offsets[i + 1]] = blob[start[rows[i]] : start[rows[i]] + length[rows[i]]]
    return out, offsets


@numba.njit(cache=True, nogil=True)
def _split(blob: U8, max_len: int, start: I64, length: I64) -> bool:
    """Fill start and length of each NUL-separated id; False unless there are exactly
    len(start) ids, each with a non-whitespace byte and at most max_len bytes."""
    n = start.size
    i = 0
    begin = 0
    blank = True
    for pos in range(blob.size):
        b = blob[pos]
        if b == 0:
            if i >= n - 1 or blank or pos - begin > max_len:
                return False  # an id holding a NUL, or a blank or too long one
            start[i], length[i] = begin, pos - begin
            i += 1
            begin = pos + 1
            blank = True
        elif blank and not (b == 32 or 9 <= b <= 13 or 28 <= b <= 31):
            blank = False  # str.isspace's ASCII whitespace, what str.strip removes
    if i != n - 1 or blank or blob.size - begin > max_len:
        return False
    start[i], length[i] = begin, blob.size - begin
    return True


@intrinsic
def _word(typingctx: Any, blob: Any, at: Any) -> tuple[Any, Any]:
    """The 8 bytes blob[at:at + 8] as one (little-endian) word: one unaligned load.

    Why: a byte at a time, hashing and comparing ids cost twice as long. The caller keeps
    at + 8 within the array (numba does not check).
    """
    sig = types.uint64(blob, types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        word = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(word, align=1)

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _tail(blob: U8, begin: int, count: int) -> np.uint64:
    """The last count % 8 bytes of blob[begin:begin + count] as one word (0 when none)."""
    word = np.uint64(0)
    for k in range(begin + count - count % 8, begin + count):
        word = (word << np.uint64(8)) | np.uint64(blob[k])
    return word


@numba.njit(cache=True, nogil=True, inline="always")
def _hash(blob: U8, begin: int, count: int, seed: np.uint64) -> np.uint64:
    """A seeded 64-bit hash of blob[begin:begin + count]: a word at a time, then mixed."""
    h = seed ^ np.uint64(count)
    for k in range(begin, begin + count - 7, 8):
        h = (h ^ _word(blob, k)) * _K
        h ^= h >> np.uint64(29)
    h = (h ^ _tail(blob, begin, count)) * _M1
    h ^= h >> np.uint64(33)
    h *= _M2
    h ^= h >> np.uint64(33)
    return h


@numba.njit(cache=True, nogil=True, inline="always")
def _same(blob: U8, a: int, b: int, count: int) -> bool:
    """Whether blob[a:a + count] and blob[b:b + count] hold the same bytes."""
    for k in range(0, count - 7, 8):
        if _word(blob, a + k) != _word(blob, b + k):
            return False
    return _tail(blob, a, count) == _tail(blob, b, count)


@numba.njit(cache=True, nogil=True)
def _distinct(
    blob: U8, start: I64, length: I64, rows: Ip, size: int, seed: np.uint64, dev: Ip, first: I64
) -> int:
    """dev[j]: the distinct number of id rows[j]; first[d]: the id first showing device d.
    Returns the number of distinct ids, or -1 after a probe run past MAX_PROBES or more than
    PROBE_BUDGET probes a lookup over the batch."""
    # A slot holds (the hash's high 32 bits << 32) | (device + 1), 0 when empty: one memory
    # access finds a slot's device and rules out nearly every other one; `where` holds each
    # device's (start, length), so that a match costs one more access and the byte compare.
    # (Separate arrays of hashes, first rows and lengths made a lookup ~4 cache misses.)
    n = rows.size
    hashes = np.empty(n, dtype=np.uint64)
    for j in range(n):
        hashes[j] = _hash(blob, start[rows[j]], length[rows[j]], seed)
    mask = np.uint64(size - 1)
    table = np.zeros(size, dtype=np.int64)
    where = np.empty((n, 2), dtype=np.int64)
    m = 0
    # A lookup makes under 2 probes on average at this load. Ids crafted to collide (should
    # the seeded hash allow it) could make each run long without any reaching MAX_PROBES: the
    # whole batch's budget bounds that too, and pandas, on Python's SipHash, takes over. (A
    # batch of one device many times over trips it only if that id sits 32 slots from home.)
    budget = PROBE_BUDGET * (n + 16)
    for j in range(n):
        # Each lookup waits on up to three cache misses (its slot, the device found there,
        # that device's bytes), one after the other. Fetching them ahead for the lookups
        # 16, 8 and 4 places on lets them overlap: the pass took less than half the time.
        # A prefetch never faults; one for a slot's other device only wastes a fetch.
        if j + 16 < n:
            prefetch(table, np.int64(hashes[j + 16] & mask))
        if j + 8 < n:
            ahead = (table[hashes[j + 8] & mask] & 0xFFFFFFFF) - 1
            if 0 <= ahead < m:
                prefetch(where, ahead)
        if j + 4 < n:
            ahead = (table[hashes[j + 4] & mask] & 0xFFFFFFFF) - 1
            if 0 <= ahead < m:
                prefetch(blob, where[ahead, 0])
        r = rows[j]
        a, count = start[r], length[r]
        h = hashes[j]
        tag = np.int64(h >> np.uint64(32)) << 32
        slot = h & mask
        for _ in range(MAX_PROBES):
            v = table[slot]
            if v == 0:
                table[slot] = tag | (m + 1)
                where[m, 0], where[m, 1] = a, count
                first[m] = r
                dev[j] = m
                m += 1
                break
            d = (v & 0xFFFFFFFF) - 1
            if v - d - 1 == tag and where[d, 1] == count and _same(blob, a, where[d, 0], count):
                dev[j] = d
                break
            slot = (slot + np.uint64(1)) & mask
            budget -= 1
        else:
            return -1
        if budget < 0:
            return -1
    return m

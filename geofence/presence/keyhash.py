"""The keyed hash of device ids (HMAC-SHA256): the only form in which a store sees a device.

A batch of ids is hashed in one compiled loop that calls OpenSSL's SHA-256 (the libcrypto
CPython's `hashlib` is built on, so the CPU's SHA instructions are used) on precomputed HMAC
states. Python's own hashlib costs about 0.5 us an id, most of it interpreter calls around two
short hashes; the loop costs about 0.15 us. Where libcrypto cannot be loaded, or its answer
differs from the `hmac` module's on the known-answer check, hashlib does the work.

One id at a time (a single request), the C extension `_hmac` makes the same two libcrypto calls
on the same states: 0.1 us against hashlib's 0.45. It is optional; without it, hashlib.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import hmac
import itertools
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from geofence.presence.base import Digests, as_digests, as_keys

try:  # built by `pip install` where a C compiler is found (pyproject.toml: optional)
    from geofence.presence._hmac import Keyer as _Keyer
except ImportError:  # pragma: no cover - depends on the install
    _Keyer = None  # type: ignore[misc,assignment]

logger = logging.getLogger("geofence.presence")

# RFC 2104's pads, as translation tables: key.translate(_IPAD) is K XOR ipad, byte by byte.
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_BLOCK = 64  # SHA-256's block size, and so the HMAC key length
# OpenSSL's SHA256_CTX is 112 bytes; room to spare costs nothing and guards a layout change.
_CTX_BYTES = 256
# Below this many ids the compiled call's own cost (about 2 us) outweighs what it saves.
NATIVE_MIN_IDS = 16

U8 = npt.NDArray[np.uint8]


class DeviceHasher:
    """HMAC-SHA256 of a device id under a secret: the only form in which a device is stored.

    The secret makes the hash useless to anyone who reads a store without it (a plain SHA-256 of
    an advertising id is reversible by enumerating ids).

    HMAC(K, m) = H(K^opad || H(K^ipad || m)). The SHA-256 states after the two padded-key blocks
    are computed once; a key then copies each and absorbs the rest. One id at a time, the C
    extension does it (0.1 us) or else hashlib (0.45 us, against 0.9 for `hmac.HMAC.copy` and
    1.3 for `hmac.digest`); a batch goes through `_hmac_many`, the compiled loop over libcrypto.
    """

    __slots__ = ("_inner", "_native", "_outer", "_padded_key", "key_of_bytes")

    # `key` of a device id already encoded as UTF-8 (a caller that checked it has it). An
    # attribute, not a method: the first call binds it to the C extension's method (or to
    # hashlib's), so later calls reach C without a Python frame in between.
    key_of_bytes: Callable[[bytes], bytes]

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("presence secret must be at least 16 bytes")
        key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))
        # The compiled loop is loaded (and checked) at the first batch, not here: that takes
        # about 0.1 s, which start-up from a compiled file should not pay.
        self._padded_key = key
        self._native: _NativeStates | bool | None = False  # False: not looked at yet
        self.key_of_bytes = self._bind_key_of_bytes

    def key(self, device_id: str) -> bytes:
        """The 32-byte keyed hash of one device id."""
        return self.key_of_bytes(device_id.encode("utf-8"))

    def _bind_key_of_bytes(self, device_id: bytes) -> bytes:
        """`key_of_bytes` at its first call: bind it to the fastest checked path, then use it."""
        native = self._native_states()
        keyer = None if native is None else native.keyer
        self.key_of_bytes = self.key_of_bytes_hashlib if keyer is None else keyer.key
        return self.key_of_bytes(device_id)

    @property
    def native_single(self) -> bool:
        """Whether single ids are hashed by the C extension."""
        native = self._native_states()
        return native is not None and native.keyer is not None

    def key_of_bytes_hashlib(self, device_id: bytes) -> bytes:
        """`key_of_bytes` by hashlib alone."""
        inner = self._inner.copy()
        inner.update(device_id)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def keys(self, device_ids: Sequence[str]) -> list[bytes]:
        """`key` of each id, in order."""
        native = self._native_states()
        if native is not None and len(device_ids) >= NATIVE_MIN_IDS:
            return native.keys(device_ids)
        if native is None or native.keyer is None:
            return self.keys_hashlib(device_ids)
        key = native.keyer.key  # a few ids: one C call each beats the compiled loop's call
        return [key(d.encode("utf-8")) for d in device_ids]

    def digests(self, device_ids: Sequence[str]) -> Digests:
        """`keys` as the rows of an (n, 32) array, what a batch hands the store."""
        native = self._native_states()
        if native is not None and len(device_ids) >= NATIVE_MIN_IDS:
            return native.digests(device_ids)
        return as_digests(self.keys(device_ids))

    def digests_packed(self, blob: U8, offsets: npt.NDArray[np.int64]) -> Digests:
        """`key_of_bytes` of each blob[offsets[i]:offsets[i + 1]] (ids already UTF-8), in order,
        as the rows of an (n, 32) array.

        A batch whose ids are packed already (`distinct.distinct_ids`) goes to the compiled
        loop as it is, without joining and encoding them again.
        """
        native = self._native_states()
        if native is not None:
            return native.digests_of_blob(blob, offsets)
        raw = blob.tobytes()
        ends = offsets.tolist()
        keys = [self.key_of_bytes_hashlib(raw[a:b]) for a, b in itertools.pairwise(ends)]
        return as_digests(keys)

    def keys_hashlib(self, device_ids: Sequence[str]) -> list[bytes]:
        """`keys` by hashlib alone (the loop inlined: a call per id would cost 10%)."""
        inner_copy = self._inner.copy
        outer_copy = self._outer.copy
        out: list[bytes] = []
        append = out.append
        for d in device_ids:
            inner = inner_copy()
            inner.update(d.encode("utf-8"))
            outer = outer_copy()
            outer.update(inner.digest())
            append(outer.digest())
        return out

    def _native_states(self) -> _NativeStates | None:
        # Two threads may both build the states on the first batch; both get equal ones.
        if self._native is False:
            self._native = _NativeStates.of(self._padded_key)
        return self._native if isinstance(self._native, _NativeStates) else None

    @property
    def native(self) -> bool:
        """Whether batches are hashed by the compiled loop over libcrypto."""
        return self._native_states() is not None


# --- the compiled batch ---------------------------------------------------------------------------


def _c_call(builder: Any, args: Any, sized: bool) -> Any:
    """LLVM for int fn(void *a, void *b[, size_t n]) where fn, a and b arrive as addresses."""
    void_p = ir.IntType(8).as_pointer()
    params = [void_p, void_p] + ([ir.IntType(64)] if sized else [])
    fn_ptr = builder.inttoptr(args[0], ir.FunctionType(ir.IntType(32), params).as_pointer())
    pointers = [builder.inttoptr(a, void_p) for a in args[1:3]]
    return builder.call(fn_ptr, pointers + list(args[3:]))


# C calls by address, which numba can cache: a ctypes function referenced as a global makes
# numba refuse to cache the loop, and one passed as an argument costs 16 us a call to type.
@intrinsic
def _update(typingctx: Any, fn: Any, ctx: Any, data: Any, size: Any) -> tuple[Any, Any]:
    """SHA256_Update(ctx, data, size)."""
    sig = types.int32(types.int64, types.int64, types.int64, types.int64)
    return sig, lambda context, builder, signature, args: _c_call(builder, args, sized=True)


@intrinsic
def _final(typingctx: Any, fn: Any, digest: Any, ctx: Any) -> tuple[Any, Any]:
    """SHA256_Final(digest, ctx)."""
    sig = types.int32(types.int64, types.int64, types.int64)
    return sig, lambda context, builder, signature, args: _c_call(builder, args, sized=False)


@intrinsic
def _transform(typingctx: Any, fn: Any, ctx: Any, block: Any) -> tuple[Any, Any]:
    """SHA256_Transform(ctx, block): one 64-byte block into the state (a void function)."""
    sig = types.void(types.int64, types.int64, types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        void_p = ir.IntType(8).as_pointer()
        fn_type = ir.FunctionType(ir.VoidType(), [void_p, void_p])
        fn_ptr = builder.inttoptr(args[0], fn_type.as_pointer())
        builder.call(fn_ptr, [builder.inttoptr(a, void_p) for a in args[1:3]])
        return context.get_dummy_value()

    return sig, codegen


# The longest id whose inner hash is one block: 64 - 1 (the 0x80 byte) - 8 (the bit length).
_ONE_BLOCK = 55


@numba.njit(cache=True, nogil=True)
def _hmac_many(
    blob: U8, offsets: npt.NDArray[np.int64], inner: U8, outer: U8, out: U8,
    functions: npt.NDArray[np.int64],
) -> None:  # fmt: skip
    """out[i] = HMAC of blob[offsets[i]:offsets[i+1]], from the padded-key states.

    functions: the addresses of libcrypto's SHA256_Update, SHA256_Final and SHA256_Transform
    (0 when the last is not to be used).
    """
    update, final, transform = functions[0], functions[1], functions[2]
    ctx = np.empty(_CTX_BYTES, dtype=np.uint8)
    digest = np.empty(32, dtype=np.uint8)
    block = np.zeros(64, dtype=np.uint8)
    c, d, b, k = ctx.ctypes.data, digest.ctypes.data, blob.ctypes.data, block.ctypes.data
    for i in range(offsets.size - 1):
        start = offsets[i]
        size = offsets[i + 1] - start
        if transform != 0 and size <= _ONE_BLOCK:
            # Both hashes are one block each, padded here: SHA256_Transform on a copy of the
            # state, where Update and Final buffer, pad, count and copy (a third of the time).
            # Only the state words h[0..7] (the context's first 32 bytes) take part.
            ctx[:32] = inner[:32]
            block[:size] = blob[start : start + size]
            block[size] = 0x80
            block[size + 1 : 62] = 0
            bits = (_BLOCK + size) * 8  # the key block, then the id
            block[62], block[63] = bits >> 8, bits & 0xFF
            _transform(transform, c, k)
            for q in range(32):  # the digest: each (little-endian) state word, big-endian
                block[q] = ctx[q ^ 3]
            ctx[:32] = outer[:32]
            block[32] = 0x80
            block[33:62] = 0
            block[62], block[63] = 3, 0  # (64 + 32) * 8 = 768 bits
            _transform(transform, c, k)
            for q in range(32):
                out[i, q] = ctx[q ^ 3]
            continue
        ctx[:] = inner
        _update(update, c, b + start, size)
        _final(final, d, c)
        ctx[:] = outer
        _update(update, c, d, 32)
        _final(final, out[i].ctypes.data, c)


class _LibCrypto:
    """SHA256_Init, _Update and _Final of the libcrypto in this process, typed for ctypes."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        vp, size = ctypes.c_void_p, ctypes.c_size_t
        self.init = lib.SHA256_Init
        self.update = lib.SHA256_Update
        self.final = lib.SHA256_Final
        self.init.argtypes = [vp]
        self.update.argtypes = [vp, vp, size]
        self.final.argtypes = [vp, vp]
        for fn in (self.init, self.update, self.final):
            fn.restype = ctypes.c_int
        # One block into the state: the batch's short ids. Its state words are read as
        # little-endian, so it is used only there; without it, Update and Final do all ids.
        self.transform = getattr(lib, "SHA256_Transform", None)
        if sys.byteorder != "little":
            self.transform = None


def _open_libcrypto() -> _LibCrypto | None:
    """libcrypto, preferring the one `hashlib` loaded (OpenSSL 3 keeps the SHA256_* calls)."""
    names = ["libcrypto.so.3", ctypes.util.find_library("crypto"), "libcrypto.so"]
    for name in dict.fromkeys(n for n in names if n):
        try:
            return _LibCrypto(ctypes.CDLL(name))
        except (OSError, AttributeError):
            continue
    return None


# Lengths either side of SHA-256's padding boundaries (55/56 and 64 bytes), and non-ASCII ids.
_KNOWN_ANSWER_IDS = ["", "a", "x" * 55, "y" * 56, "z" * 63, "w" * 64, "v" * 65, "é✓" * 30]
_KNOWN_ANSWER_IDS += [f"{i:08x}-0000-4000-8000-{i * 7919:012x}" for i in range(NATIVE_MIN_IDS)]


@functools.cache
def _libcrypto() -> _LibCrypto | None:
    """The library, opened and checked once per process, or None (hashlib does the work)."""
    lib = _open_libcrypto()
    if lib is None:
        logger.info("libcrypto not found: device ids are hashed by hashlib")
    elif not _known_answers_hold(lib):
        logger.warning(
            "libcrypto's SHA-256 disagrees with hmac on the known-answer check: "
            "device ids are hashed by hashlib"
        )
    else:
        return lib
    return None


def _known_answers_hold(lib: _LibCrypto) -> bool:
    """Whether the compiled loop gives `hmac`'s bytes, for a key of each length class."""
    try:
        for secret in (b"k" * 16, b"K" * 64, bytes(range(100))):
            key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
            states = _NativeStates(lib, key.ljust(_BLOCK, b"\0"))
            want = [
                hmac.new(secret, d.encode(), hashlib.sha256).digest() for d in _KNOWN_ANSWER_IDS
            ]
            if states.keys(_KNOWN_ANSWER_IDS) != want:
                return False
            if states.keyer is not None and [
                states.keyer.key(d.encode()) for d in _KNOWN_ANSWER_IDS
            ] != want:
                return False
    except Exception:  # any failure of the native path means: use hashlib
        logger.exception("the compiled HMAC loop failed its check")
        return False
    return True


class _NativeStates:
    """The padded-key SHA-256 states of one secret, as libcrypto contexts, and the batch call."""

    __slots__ = ("_functions", "_inner", "_lib", "_outer", "keyer")

    def __init__(self, lib: _LibCrypto, padded_key: bytes) -> None:
        self._lib = lib
        functions = (lib.update, lib.final, lib.transform)
        update, final, transform = (
            0 if f is None else ctypes.cast(f, ctypes.c_void_p).value or 0 for f in functions
        )
        self._functions = np.array([update, final, transform], dtype=np.int64)
        self._inner = self._state(padded_key.translate(_IPAD))
        self._outer = self._state(padded_key.translate(_OPAD))
        # One id at a time: the same calls on copies of the same states, from C.
        self.keyer = (
            None
            if _Keyer is None
            else _Keyer(update, final, self._inner.tobytes(), self._outer.tobytes())
        )

    @classmethod
    def of(cls, padded_key: bytes) -> _NativeStates | None:
        lib = _libcrypto()
        return None if lib is None else cls(lib, padded_key)

    def _state(self, block: bytes) -> U8:
        ctx = np.zeros(_CTX_BYTES, dtype=np.uint8)
        data = np.frombuffer(block, dtype=np.uint8).copy()
        if not (
            self._lib.init(ctx.ctypes.data)
            and self._lib.update(ctx.ctypes.data, data.ctypes.data, len(block))
        ):
            raise RuntimeError("SHA256_Init or SHA256_Update failed")
        return ctx

    def keys(self, device_ids: Sequence[str]) -> list[bytes]:
        """The keys of `device_ids`, in order, from one compiled call."""
        return as_keys(self.digests(device_ids))

    def digests(self, device_ids: Sequence[str]) -> Digests:
        """`keys` as the rows of an (n, 32) array."""
        n = len(device_ids)
        joined = "".join(device_ids)
        lengths: Any
        blob: bytes | bytearray
        if joined.isascii():  # the usual case: one encode, and lengths in characters are bytes
            blob = bytearray(joined, "ascii")
            lengths = map(len, device_ids)
        else:
            encoded = [d.encode("utf-8") for d in device_ids]
            blob = bytearray(b"".join(encoded))
            lengths = map(len, encoded)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(lengths, dtype=np.int64, count=n), out=offsets[1:])
        # A bytearray, not bytes: numba types a read-only array 4 us slower at every call.
        return self.digests_of_blob(np.frombuffer(blob, dtype=np.uint8), offsets)

    def digests_of_blob(self, blob: U8, offsets: npt.NDArray[np.int64]) -> Digests:
        """The keys of the ids blob[offsets[i]:offsets[i + 1]] as the rows of an (n, 32)
        array, from one compiled call."""
        out = np.empty((len(offsets) - 1, 32), dtype=np.uint8)
        _hmac_many(blob, offsets, self._inner, self._outer, out, self._functions)
        return out

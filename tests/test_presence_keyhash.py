"""DeviceHasher: HMAC-SHA256 of device ids, one at a time and in compiled batches."""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import logging
import os
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.presence import keyhash
from geofence.presence.base import as_keys
from geofence.presence.keyhash import NATIVE_MIN_IDS, DeviceHasher

SECRET = b"0123456789abcdef-test-secret"


def standard(secret: bytes, device_ids: list[str]) -> list[bytes]:
    return [hmac.new(secret, d.encode("utf-8"), hashlib.sha256).digest() for d in device_ids]


@pytest.fixture
def fresh_library() -> Iterator[None]:
    """Forget which libcrypto this process found, before and after a test that swaps it."""
    keyhash._libcrypto.cache_clear()
    yield
    keyhash._libcrypto.cache_clear()


def test_hasher_is_keyed_and_stable() -> None:
    h1, h2 = DeviceHasher(SECRET), DeviceHasher(SECRET)
    other = DeviceHasher(b"another-secret-of-16+bytes")
    assert h1.key("ifa-SECRET-123") == h2.key("ifa-SECRET-123")
    assert h1.key("ifa-SECRET-123") != other.key("ifa-SECRET-123")
    assert len(h1.key("x")) == 32
    assert h1.keys(["a", "b"]) == [h1.key("a"), h1.key("b")]
    with pytest.raises(ValueError, match="16 bytes"):
        DeviceHasher(b"short")


@settings(max_examples=300, deadline=None)
@given(
    secret=st.binary(min_size=16, max_size=200),
    device_ids=st.lists(st.text(max_size=300), max_size=3 * NATIVE_MIN_IDS)
    | st.lists(st.text(max_size=80), min_size=NATIVE_MIN_IDS, max_size=4 * NATIVE_MIN_IDS),
)
def test_hasher_matches_the_standard_hmac(secret: bytes, device_ids: list[str]) -> None:
    """Keys are byte for byte `hmac`'s on every path (one id, hashlib batch, compiled batch).

    Secrets longer than a SHA-256 block (64 bytes) are hashed first, as RFC 2104 says. Keys
    ending in zero bytes must keep them (a fixed-width bytes view would drop them).
    """
    h = DeviceHasher(secret)
    expected = standard(secret, device_ids)
    assert h.keys(device_ids) == expected
    assert h.keys_hashlib(device_ids) == expected
    assert [h.key(d) for d in device_ids] == expected
    assert [h.key_of_bytes_hashlib(d.encode()) for d in device_ids] == expected


@pytest.mark.skipif(sys.platform != "linux", reason="libcrypto.so.3 is looked for on Linux")
def test_batches_use_the_compiled_loop_here() -> None:
    """On this platform (CPython's hashlib is built on libcrypto) batches take the fast path."""
    h = DeviceHasher(SECRET)
    assert h.native
    ids = [f"ifa-{i}" for i in range(1000)]
    # Keys ending in a zero byte: about 1 in 256, so several among 5,000 ids.
    many = [f"ifa-{i}" for i in range(5000)]
    keys = h.keys(many)
    assert sum(k.endswith(b"\0") for k in keys) > 0
    assert keys == standard(SECRET, many)
    assert h.keys(ids) == keys[:1000]


def _need_the_c_extension() -> None:
    """Skip where `pip install` found no C compiler; CI builds it, so there it must exist."""
    if keyhash._Keyer is None:
        message = "geofence.presence._hmac is not built (no C compiler at install time)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + ": single ids are hashed by hashlib")


@pytest.mark.skipif(sys.platform != "linux", reason="libcrypto.so.3 is looked for on Linux")
def test_single_ids_use_the_c_extension_here() -> None:
    """After its first call, key_of_bytes is the C method itself, and gives hmac's bytes."""
    _need_the_c_extension()
    h = DeviceHasher(SECRET)
    assert h.native_single
    first = h.key_of_bytes(b"ifa-1")
    assert type(h.key_of_bytes).__name__ == "builtin_function_or_method"
    ids = [f"ifa-{i}" for i in range(2000)]
    keys = [h.key_of_bytes(d.encode()) for d in ids]
    assert [first, *keys] == standard(SECRET, ["ifa-1", *ids])
    assert sum(k.endswith(b"\0") for k in keys) > 0  # trailing zero bytes are kept


def test_the_c_keyer_refuses_what_it_cannot_use() -> None:
    """Wrong state sizes, null addresses and non-bytes ids raise; nothing is called."""
    _need_the_c_extension()
    keyer_type = keyhash._Keyer
    assert keyer_type is not None
    state = bytes(keyhash._CTX_BYTES)
    for args in ((1, 1, state[:-1], state), (1, 1, state, state + b"x"), (0, 1, state, state)):
        with pytest.raises(ValueError, match="two function addresses"):
            keyer_type(*args)
    h = DeviceHasher(SECRET)
    native = h._native_states()
    assert native is not None and native.keyer is not None
    with pytest.raises(TypeError, match="bytes"):
        native.keyer.key("ifa-text")  # type: ignore[arg-type]


def test_without_the_c_extension_single_ids_use_hashlib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keyhash, "_Keyer", None)
    h = DeviceHasher(SECRET)
    assert not h.native_single
    assert h.key_of_bytes(b"ifa-1") == standard(SECRET, ["ifa-1"])[0]
    assert h.key_of_bytes == h.key_of_bytes_hashlib


def test_lone_surrogate_fails_the_same_on_every_path() -> None:
    h = DeviceHasher(SECRET)
    ids = [f"ifa-{i}" for i in range(NATIVE_MIN_IDS)] + ["bad-\ud800"]
    with pytest.raises(UnicodeEncodeError):
        h.keys(ids)
    with pytest.raises(UnicodeEncodeError):
        h.keys_hashlib(ids)


def test_without_libcrypto_hashlib_does_the_work(
    monkeypatch: pytest.MonkeyPatch, fresh_library: None
) -> None:
    monkeypatch.setattr(keyhash, "_open_libcrypto", lambda: None)
    h = DeviceHasher(SECRET)
    ids = [f"ifa-{i}" for i in range(100)]
    assert not h.native
    assert not h.native_single
    assert h.keys(ids) == standard(SECRET, ids)
    assert [h.key(d) for d in ids] == standard(SECRET, ids)
    offsets = np.cumsum([0, *map(len, ids)])
    blob = np.frombuffer(bytearray("".join(ids), "ascii"), dtype=np.uint8)
    assert as_keys(h.digests_packed(blob, offsets)) == standard(SECRET, ids)
    assert as_keys(h.digests(ids)) == standard(SECRET, ids)


@pytest.mark.skipif(sys.platform != "linux", reason="libcrypto.so.3 is looked for on Linux")
def test_a_library_failing_the_known_answers_is_not_used(
    monkeypatch: pytest.MonkeyPatch, fresh_library: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A libcrypto whose states give other bytes is refused, loudly.

    Here SHA224_Init stands in for SHA256_Init: the same context layout (so nothing is read or
    written out of place), other initial values and a 28-byte digest.
    """
    open_real = keyhash._open_libcrypto

    def wrong() -> keyhash._LibCrypto:
        lib = open_real()
        assert lib is not None
        sha224_init = ctypes.CDLL("libcrypto.so.3").SHA224_Init
        sha224_init.argtypes = [ctypes.c_void_p]
        sha224_init.restype = ctypes.c_int
        lib.init = sha224_init
        return lib

    monkeypatch.setattr(keyhash, "_open_libcrypto", wrong)
    _assert_refused_loudly(caplog)


def _assert_refused_loudly(caplog: pytest.LogCaptureFixture) -> None:
    """A hasher made now uses neither native path, the log says why, and keys stay hmac's."""
    with caplog.at_level(logging.WARNING, logger="geofence.presence"):
        h = DeviceHasher(SECRET)
        assert not h.native
        assert not h.native_single
    assert "known-answer" in caplog.text
    ids = [f"ifa-{i}" for i in range(100)]
    assert h.keys(ids) == standard(SECRET, ids)
    assert [h.key(d) for d in ids] == standard(SECRET, ids)


def test_a_c_keyer_failing_the_known_answers_is_not_used(
    monkeypatch: pytest.MonkeyPatch, fresh_library: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The known-answer check covers the single-id path too: a keyer that answers wrong bytes
    (here, one that swaps the inner and outer states) makes both paths fall back to hashlib."""
    _need_the_c_extension()
    real = keyhash._Keyer
    assert real is not None

    def swapped(update: int, final: int, inner: bytes, outer: bytes) -> object:
        return real(update, final, outer, inner)

    monkeypatch.setattr(keyhash, "_Keyer", swapped)
    _assert_refused_loudly(caplog)


@pytest.mark.skipif(sys.platform != "linux", reason="libcrypto.so.3 is looked for on Linux")
def test_ids_of_one_block_are_hashed_by_sha256_transform_and_agree() -> None:
    """Ids up to 55 bytes go through SHA256_Transform on blocks padded by the loop; longer
    ones through Update and Final. Both give the standard HMAC, on either side of the limit."""
    h = DeviceHasher(SECRET)
    native = h._native_states()
    assert native is not None
    assert native._functions[2] != 0  # the one-block path is in use
    ids = ["x" * n for n in range(90)] + ["é" * 27, "é" * 28, "ü" + "a" * 54]
    assert native.keys(ids) == standard(SECRET, ids)
    native._functions = native._functions.copy()
    native._functions[2] = 0  # Update and Final for every id
    assert native.keys(ids) == standard(SECRET, ids)

"""Packed device ids: the compiled checks and distinct-device table against plain references.

Why: `pack_ids` replaces the engine's Python checks of each id, and `distinct_ids` pandas'
factorize, on the common batch. Either getting one id wrong would decide a request for the
wrong device, so both are compared here with the code they replace.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.engine import MAX_DEVICE_ID, _device_id
from geofence.presence import distinct
from geofence.presence.base import as_keys
from geofence.presence.distinct import PackedIds, distinct_ids, pack_ids
from geofence.presence.keyhash import DeviceHasher

SECRET = b"0123456789abcdef-test-secret"


def unpacked(blob: np.ndarray, start: np.ndarray, length: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    spans = zip(start.tolist(), length.tolist(), strict=True)
    return [raw[a : a + n].decode("ascii") for a, n in spans]


needs_c_packer = pytest.mark.skipif(
    distinct._pack_ascii is None, reason="the C extension geofence.presence._ids is not built"
)


def packers() -> list[Callable[[list[object], int], PackedIds | None]]:
    """The ways ids are packed here: the C pass where built, and the Python passes."""
    return [distinct._pack] + ([distinct._packed] if distinct._pack_ascii is not None else [])


@pytest.fixture(params=["c", "python"])
def packer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """`pack_ids` by the C pass, then by the Python passes (the install without a compiler)."""
    if request.param == "c" and distinct._pack_ascii is None:
        pytest.skip("the C extension geofence.presence._ids is not built")
    if request.param == "python":
        monkeypatch.setattr(distinct, "_pack_ascii", None)
    return str(request.param)


def assert_distinct_is_factorize(seq: list[str], rows: np.ndarray) -> None:
    """distinct_ids of the packed ids numbers rows' devices as pandas' factorize does (order
    of first appearance), and gives back the same distinct ids."""
    packed = pack_ids(seq, MAX_DEVICE_ID)
    assert packed is not None
    found = distinct_ids(packed, rows)
    assert found is not None
    dev, blob, offsets = found
    codes, uniques = pd.factorize(np.array(seq, dtype=object)[rows])
    assert dev.tolist() == codes.tolist()
    assert unpacked(blob, offsets[:-1], np.diff(offsets)) == uniques.tolist()


@pytest.mark.parametrize(
    "odd",
    [
        "",  # blank: no id, not a packed one
        "   ",
        "\t\x1c",  # str.isspace's ASCII whitespace includes the file separators
        "x" * (MAX_DEVICE_ID + 1),
        "ifa-é",  # non-ASCII: the general path
        "a\0b",  # a NUL would split the packed text
        "\0",
        None,
        5,
        np.str_("ifa-numpy"),  # a str subclass: the general path keeps its str()
    ],
)
def test_a_batch_with_any_other_kind_of_id_is_not_packed(odd: object, packer: str) -> None:
    assert pack_ids(["ifa-1", odd, "ifa-2"], MAX_DEVICE_ID) is None
    assert pack_ids([odd], MAX_DEVICE_ID) is None
    assert pack_ids([], MAX_DEVICE_ID) is None


ascii_ids = st.text(st.characters(max_codepoint=127), max_size=MAX_DEVICE_ID + 3)


@settings(max_examples=400, deadline=None)
@given(seq=st.lists(ascii_ids, min_size=1, max_size=40))
def test_packing_accepts_exactly_the_ids_the_general_path_finds_valid(seq: list[str]) -> None:
    """Packed when every id is valid by `_device_id` (and then each unpacks to itself), by the
    C pass and by the Python passes alike."""
    valid = all(_device_id(d) == (d, False) for d in seq) and all("\0" not in d for d in seq)
    for pack in packers():
        packed = pack(list(seq), MAX_DEVICE_ID)
        assert (packed is not None) == valid
        if packed is not None:
            assert unpacked(packed.blob, packed.start, packed.length) == seq


class Text(str):
    """A str subclass whose str() differs from its text."""

    def __str__(self) -> str:
        return "other"


any_id = st.one_of(
    ascii_ids,
    st.text(max_size=12),  # non-ASCII, surrogates
    st.sampled_from(["", " ", "\x1c", "a\0", "x" * MAX_DEVICE_ID, "y" * (MAX_DEVICE_ID + 1)]),
    st.builds(Text, st.text("ab", min_size=1, max_size=3)),
    st.builds(np.str_, st.text("ab", min_size=1, max_size=3)),
    st.sampled_from([None, 5, b"ifa", 1.5]),
)


@needs_c_packer
@settings(max_examples=500, deadline=None)
@given(seq=st.lists(any_id, min_size=1, max_size=30), max_len=st.sampled_from([1, 7, 256]))
def test_the_c_pass_packs_exactly_what_the_python_passes_pack(
    seq: list[object], max_len: int
) -> None:
    """The same batches refused, and the same ids out of those taken: the C pass replaces the
    Python ones wherever it is built, so they must never differ."""
    by_c = distinct._packed(seq, max_len)
    by_python = distinct._pack(seq, max_len)
    by_c_of_array = distinct._packed(object_array(seq), max_len)  # read in place
    assert (by_c is None) == (by_python is None) == (by_c_of_array is None)
    if by_c is not None and by_python is not None and by_c_of_array is not None:
        assert unpacked(by_c.blob, by_c.start, by_c.length) == seq
        assert unpacked(by_python.blob, by_python.start, by_python.length) == seq
        assert unpacked(by_c_of_array.blob, by_c_of_array.start, by_c_of_array.length) == seq


def object_array(seq: list[object]) -> np.ndarray:
    out = np.empty(len(seq), dtype=object)
    out[:] = seq
    return out


def test_arrays_of_ids_pack_as_their_lists(packer: str) -> None:
    """An array of objects (read in place by the C pass), a strided view of one and an array of
    fixed-width text (both made lists first) pack as their tolist() does."""
    seq = [f"ifa-{i}" for i in range(50)]
    whole = object_array(seq)
    for ids in (whole, whole[::3], np.array(seq), np.array(seq)[::-1], tuple(seq)):
        packed = pack_ids(ids, MAX_DEVICE_ID)
        assert packed is not None
        assert unpacked(packed.blob, packed.start, packed.length) == list(ids)
    odd = whole.copy()
    odd[7] = np.str_("ifa-7")  # a str subclass, as in a list: the general path
    assert pack_ids(odd, MAX_DEVICE_ID) is None
    assert pack_ids(whole.reshape(5, 10), MAX_DEVICE_ID) is None  # 2-D: rows are not ids


@needs_c_packer
def test_the_c_pass_grows_its_output_past_its_first_guess() -> None:
    """It guesses 40 bytes an id and doubles from there: ids of every length up to the
    maximum, long ones first, come back whole."""
    seq = [chr(33 + i % 90) * (MAX_DEVICE_ID - i % MAX_DEVICE_ID) for i in range(3 * MAX_DEVICE_ID)]
    packed = distinct._packed(seq, MAX_DEVICE_ID)
    assert packed is not None
    assert unpacked(packed.blob, packed.start, packed.length) == seq
    assert packed.blob.size == sum(map(len, seq))
    assert packed.blob.flags.writeable


@needs_c_packer
def test_the_c_pass_checks_its_arguments() -> None:
    assert distinct._pack_ascii is not None
    start = np.empty(2, dtype=np.int64)
    with pytest.raises(ValueError, match="8 bytes"):
        distinct._pack_ascii(["a", "b"], 5, start, np.empty(1, dtype=np.int64))
    with pytest.raises(TypeError):
        distinct._pack_ascii(iter(["a", "b"]), 5, start, start)  # type: ignore[arg-type]
    with pytest.raises(BufferError):  # read-only
        distinct._pack_ascii(["a", "b"], 5, bytes(16), start)
    strided = object_array(["a", "b", "c", "d"])[::2]
    with pytest.raises(TypeError):  # an array is read in place only when contiguous
        distinct._pack_ascii(strided, 5, start, start)
    with pytest.raises(TypeError):
        distinct._pack_ascii(np.zeros(2), 5, start, start)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    pool=st.lists(st.text("abcxyz-0\x7f", min_size=1, max_size=9).filter(str.strip),
                  min_size=1, max_size=30),
    picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=200),
    keep=st.integers(0, 2**30),
)  # fmt: skip
def test_distinct_devices_are_pandas_factorize(
    pool: list[str], picks: list[int], keep: int
) -> None:
    """The same numbering (order of first appearance) and the same ids, for any rows."""
    seq = [pool[p % len(pool)] for p in picks]
    rng = np.random.default_rng(keep)
    rows = np.flatnonzero(rng.random(len(seq)) < 0.7) if keep % 2 else np.arange(len(seq))
    assert_distinct_is_factorize(seq, rows)


def test_a_large_batch_of_random_ids_is_pandas_factorize() -> None:
    """Enough ids that the table's probe runs and tag matches are exercised."""
    rng = np.random.default_rng(5)
    pool = [f"{rng.integers(0, 2**63):x}-{i}" for i in range(20_000)]
    seq = [pool[i] for i in rng.integers(0, len(pool), 100_000)]
    assert_distinct_is_factorize(seq, np.arange(len(seq)))


def test_packed_keys_are_the_keys_of_the_ids() -> None:
    """`digests_packed` hashes the packed bytes as `keys` and `digests` hash the ids: the
    standard HMAC."""
    seq = ["ifa-1", "ifa-2", "ifa-1", "x" * 64, "y" * 55]
    packed = pack_ids(seq, MAX_DEVICE_ID)
    assert packed is not None
    found = distinct_ids(packed, np.arange(len(seq)))
    assert found is not None
    dev, blob, offsets = found
    h = DeviceHasher(SECRET)
    distinct = ["ifa-1", "ifa-2", "x" * 64, "y" * 55]
    want = [hmac.new(SECRET, d.encode(), hashlib.sha256).digest() for d in distinct]
    assert dev.tolist() == [0, 1, 0, 2, 3]
    assert as_keys(h.digests_packed(blob, offsets)) == want == h.keys(distinct)
    assert as_keys(h.digests(distinct)) == want


def test_ids_differing_in_one_byte_anywhere_are_distinct() -> None:
    """Words and tails: ids of every length up to 40 that differ in a single byte, at every
    position, are different devices; the same ids again are the same ones."""
    seq = []
    for length in range(1, 41):
        base = "".join(chr(97 + (i * 7) % 26) for i in range(length))
        seq += [base[:k] + "Z" + base[k + 1 :] for k in range(length)] + [base]
    twice = seq + seq
    assert_distinct_is_factorize(twice, np.arange(len(twice)))


def test_without_working_compiled_passes_every_batch_takes_the_general_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A numba that cannot build the passes (or builds them wrong) costs speed, not answers."""

    def broken(*args: object) -> int:
        raise RuntimeError("no such intrinsic")

    distinct.compiled_passes_agree.cache_clear()
    monkeypatch.setattr(distinct, "_distinct", broken)
    try:
        with caplog.at_level(logging.ERROR, logger="geofence.presence"):
            assert pack_ids(["ifa-1", "ifa-2"], MAX_DEVICE_ID) is None
        assert "not used" in caplog.text
        monkeypatch.setattr(distinct, "_distinct", lambda *args: 0)  # finds no device
        distinct.compiled_passes_agree.cache_clear()
        assert pack_ids(["ifa-1", "ifa-2"], MAX_DEVICE_ID) is None
    finally:
        distinct.compiled_passes_agree.cache_clear()
    monkeypatch.undo()
    assert pack_ids(["ifa-1", "ifa-2"], MAX_DEVICE_ID) is not None


def test_the_table_gives_up_on_long_probe_runs() -> None:
    """Collisions past what the load allows make `_distinct` return -1 (the caller then uses
    pandas): a full table by MAX_PROBES, and long runs looked up again and again by the batch's
    probe budget (in a table of 256 slots holding 250 ids no run can reach MAX_PROBES)."""
    seq = [f"ifa-{i}" for i in range(300)]
    packed = pack_ids(seq, MAX_DEVICE_ID)
    assert packed is not None

    def run(rows: list[int], size: int) -> int:
        dev = np.empty(len(rows), dtype=np.intp)
        first = np.empty(len(rows), dtype=np.int64)
        at = np.array(rows, dtype=np.intp)
        args = (packed.blob, packed.start, packed.length, at, size, np.uint64(7), dev, first)
        return int(distinct._distinct(*args))

    assert run(list(range(32)), 64) == 32
    assert run(list(range(80)), 64) == -1  # MAX_PROBES: no free slot at all
    held = list(range(250))
    assert run(held + held * 3, 256) == 250  # repeats, each run shorter than MAX_PROBES
    # One id 3000 times over: for an id far from its slot, more than the budget allows.
    gave_up = [i for i in held if run(held + [i] * 3000, 256) == -1]
    assert gave_up
    assert distinct.MAX_PROBES > 250


def test_a_batch_the_table_gives_up_on_takes_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    """`distinct_ids` says None, and the engine's `_distinct_keys` finds the devices by pandas."""
    from geofence.engine import Engine  # noqa: PLC0415 - only here

    seq = ["ifa-1", "ifa-2", "ifa-1"]
    packed = pack_ids(seq, MAX_DEVICE_ID)
    assert packed is not None
    monkeypatch.setattr(distinct, "_distinct", lambda *args: -1)
    assert distinct_ids(packed, np.arange(3)) is None
    engine = Engine.__new__(Engine)
    engine._hasher = DeviceHasher(SECRET)
    dev, digests = engine._distinct_keys(list(seq), packed, np.arange(3))
    assert dev.tolist() == [0, 1, 0]
    assert as_keys(digests) == DeviceHasher(SECRET).keys(["ifa-1", "ifa-2"])

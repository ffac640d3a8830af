"""The audit log: what a line holds (and never holds), rotation, drops, flushing, kills."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from conftest import FakeClock, audit_text_without_clock
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence import Category, Engine, Reason
from geofence import audit as audit_module
from geofence.audit import AuditLog
from geofence.decision import Decision
from geofence.policy import load_policy_text
from geofence.presence.keyhash import DeviceHasher
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

REPO = Path(__file__).resolve().parent.parent
SECRET = b"audit-test-secret-0123456789"
CLINIC = (47.61, -122.33)


def small_engine(clock: Callable[[], float] = time.time) -> Engine:
    zones = [
        Zone("clinic", "", Category.REPRODUCTIVE_HEALTH, shapely.Point(CLINIC[1], CLINIC[0]), 30.0)
    ]
    zs = ZoneSet.compile(zones, load_policy_text('pack = "us-strictest"\n', "<t>"), "v-audit")
    return Engine(zs, presence_secret=SECRET, clock=clock)


def lines(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a file (a torn last line, from a kill, is skipped)."""
    out = []
    for raw in path.read_bytes().splitlines(keepends=True):
        if raw.endswith(b"\n"):
            out.append(json.loads(raw))
    return out


def records(path: Path) -> list[dict[str, Any]]:
    return [r for r in lines(path) if "status" not in r]


def test_rejections_are_written_with_the_fields_and_nothing_identifying(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    # A round hundred seconds: no written time can end in "95.0", a value looked for below.
    t0 = fake_clock.to(math.ceil(fake_clock.now / 100.0) * 100.0)
    e = small_engine(fake_clock)
    h = DeviceHasher(SECRET)
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    inside = e.check_location(lat=CLINIC[0], lon=CLINIC[1], accuracy_m=5.0, device_id="ifa-RAW-1")
    log.record(inside, h.key("ifa-RAW-1"), t0)
    far = e.check_location(lat=40.123456, lon=-100.654321, accuracy_m=5.0)
    assert far.allowed
    log.record(far, None, t0 + 1)  # allowed: not written by default
    lat = np.array([CLINIC[0], 40.123456, 95.0])
    lon = np.array([CLINIC[1], -100.654321, 0.0])
    batch = e.check_many(lat, lon, 5.0, device_ids=["ifa-RAW-2", "ifa-RAW-3", None], at=t0 + 2)
    keys: list[bytes | None] = [h.key("ifa-RAW-2"), h.key("ifa-RAW-3"), None]
    log.record_batch(batch, keys, np.array([t0 + 2, t0 + 3, t0 + 4]))
    log.close()
    got = records(path)
    assert [r["reason"] for r in got] == ["inside_zone", "inside_zone", "invalid_request"]
    first = got[0]
    assert set(first) == {
        "t",
        "reason",
        "allowed",
        "zone_id",
        "category",
        "zone_set_version",
        "device",
        "until",
    }
    assert first == {
        "t": t0,
        "reason": "inside_zone",
        "allowed": False,
        "zone_id": "clinic",
        "category": "reproductive_health",
        "zone_set_version": "v-audit",
        "device": h.key("ifa-RAW-1").hex(),
        "until": None,
    }
    assert got[1]["device"] == h.key("ifa-RAW-2").hex() and got[1]["t"] == t0 + 2
    assert got[2]["device"] is None and got[2]["t"] == t0 + 4 and got[2]["zone_id"] is None
    blob = audit_text_without_clock(path)  # the status line is checked whole below
    for secret in ("ifa-RAW", "47.61", "122.33", "40.123456", "100.654321", "95.0"):
        assert secret not in blob
    assert lines(path)[-1] == {
        "status": "audit",
        "t": pytest.approx(time.time(), abs=60),
        "written": 3,
        "dropped": 0,
        "queued": 0,
    }


def test_detail_text_is_never_written(tmp_path: Path) -> None:
    """A decision's detail may quote an input value (an out-of-range latitude): not logged."""
    e = small_engine()
    d = e.check_openrtb({"device": {"geo": {"lat": 91.123456, "lon": 2.0}}})
    assert d.reason is Reason.INVALID_REQUEST and "91.123456" in d.detail
    log = AuditLog(tmp_path / "a.jsonl")
    log.record(d, None, 1.0)
    log.close()
    assert "91.123456" not in (tmp_path / "a.jsonl").read_text()
    assert records(tmp_path / "a.jsonl")[0]["reason"] == "invalid_request"


def test_include_allowed_and_recently_inside_until(tmp_path: Path) -> None:
    e = small_engine()
    t0 = float(int(time.time()))
    e.observe("ifa-1", CLINIC[0], CLINIC[1], 5.0, at=t0)
    later = e.check_location(lat=40.0, lon=-100.0, accuracy_m=5.0, device_id="ifa-1", at=t0 + 60)
    assert later.reason is Reason.RECENTLY_INSIDE
    allowed = e.check_location(lat=40.0, lon=-100.0, accuracy_m=5.0, at=t0)
    log = AuditLog(tmp_path / "a.jsonl", include_allowed=True)
    log.record(later, b"\x01" * 32, t0 + 60)
    log.record(allowed, None, t0)
    batch = e.check_many([40.0, CLINIC[0]], [-100.0, CLINIC[1]], 5.0)
    log.record_batch(batch, None, t0)
    log.close()
    got = records(tmp_path / "a.jsonl")
    assert [r["reason"] for r in got] == ["recently_inside", "allowed", "allowed", "inside_zone"]
    assert got[0]["until"] == later.until and got[0]["category"] == "reproductive_health"
    assert got[0]["device"] == "01" * 32
    assert got[1]["allowed"] is True


@pytest.mark.parametrize("include_allowed", [False, True])
def test_a_batch_longer_than_a_slice_is_written_whole_and_in_order(
    tmp_path: Path, include_allowed: bool
) -> None:
    """The writer formats in slices of _SLICE lines; a batch of several slices, between single
    records, comes out as one line per element, in order, as each decision alone would."""
    e = small_engine()
    n = 3 * audit_module._SLICE + 17
    rng = np.random.default_rng(5)
    inside = rng.random(n) < 0.4
    lat = np.where(inside, CLINIC[0], 40.0)
    lon = np.where(inside, CLINIC[1], -100.0)
    batch = e.check_many(lat, lon, 5.0)
    keys: list[bytes | None] = [i.to_bytes(32, "big") if i % 3 else None for i in range(n)]
    at = 1_767_225_600.0 + np.arange(n) / 8
    single = Decision(False, Reason.INSIDE_ZONE, "v1", "z", Category.CLINIC)
    log = AuditLog(tmp_path / "a.jsonl", include_allowed=include_allowed)
    log.record(single, None, 1.0)
    log.record_batch(batch, keys, at)
    log.record(single, None, 2.0)
    log.close()
    want = [0] + [i + 1 for i in range(n) if include_allowed or inside[i]] + [n + 1]
    decisions = [single] + [batch.decision(i) for i in range(n)] + [single]
    all_keys = [None, *keys, None]
    times = [1.0, *at.tolist(), 2.0]
    expected = [audit_module._single_lines(decisions[j], all_keys[j], times[j])[0] for j in want]
    text = (tmp_path / "a.jsonl").read_text().splitlines(keepends=True)
    assert [t for t in text if '"status"' not in t] == expected
    assert int(inside.sum()) > audit_module._SLICE  # rejections alone span slices too


def test_rotation_by_size_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, max_bytes=4096, backups=2, flush_interval_s=0.05)
    d = Decision(False, Reason.INSIDE_ZONE, "v1", "zone-x", Category.CLINIC)
    n = 300  # about 200 bytes a line: 60 kB in all, far past three files of 4 kB
    for i in range(n):
        log.record(d, i.to_bytes(32, "big"), float(i))
        if i % 50 == 0:
            time.sleep(0.06)  # several writer passes, so rotation happens between them too
    log.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]
    for f in files:
        assert f.stat().st_size <= 4096
    kept = [int(r["device"], 16) for f in (files[2], files[1], files[0]) for r in records(f)]
    assert kept == list(range(n - len(kept), n))  # the newest, in order, none missing between
    assert len(kept) >= 30


def test_rotation_without_backups_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, max_bytes=2048, backups=0, flush_interval_s=0.05)
    d = Decision(False, Reason.NEAR_ZONE, "v1", "z", Category.COURT)
    for i in range(100):
        log.record(d, None, float(i))
        if i % 10 == 0:
            time.sleep(0.06)
    log.close()
    assert [f.name for f in tmp_path.iterdir()] == ["a.jsonl"]
    assert path.stat().st_size <= 2048
    assert records(path)[-1]["t"] == 99.0


def test_a_full_queue_drops_counts_and_reports_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="geofence.audit")
    path = tmp_path / "a.jsonl"
    release = threading.Event()
    real_write = AuditLog._write_items

    def stuck(self: AuditLog, items: Any) -> None:
        release.wait(10)  # a disk that hangs
        real_write(self, items)

    monkeypatch.setattr(AuditLog, "_write_items", stuck)
    log = AuditLog(path, queue_size=100, status_interval_s=0.0)
    d = Decision(False, Reason.INSIDE_ZONE, "v1", "z", Category.CLINIC)
    log.record(d, None, 0.0)
    time.sleep(0.1)  # the writer has taken that one and is stuck writing it
    slowest = 0.0
    for i in range(5000):
        t = time.perf_counter()
        log.record(d, None, float(i))
        slowest = max(slowest, time.perf_counter() - t)
    batch = small_engine().check_many(np.full(1000, 95.0), np.zeros(1000))  # 1000 rejections
    t = time.perf_counter()
    log.record_batch(batch, None, 0.0)
    slowest_batch = time.perf_counter() - t
    # A call that waited for the writer would take the whole 10 s hang; the bounds leave room
    # for a loaded machine (building the engine inside the timed span once took 51 ms).
    assert slowest < 0.5, f"record() took {slowest * 1e3:.1f} ms with the writer stuck"
    assert slowest_batch < 0.5, f"record_batch() took {slowest_batch * 1e3:.1f} ms"
    assert log.dropped == 4900 + 1000
    assert log.status()["queued"] == 100
    release.set()
    log.close()
    got = lines(path)
    assert len([r for r in got if "status" not in r]) == 101
    status = [r for r in got if "status" in r]
    assert status and status[-1]["dropped"] == 5900 and status[-1]["written"] == 101
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert warnings and "5900 records dropped" in warnings[-1].getMessage()


def test_writer_errors_do_not_reach_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "a.jsonl", flush_interval_s=0.05)

    def full_disk(self: AuditLog, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(AuditLog, "_write_bytes", full_disk)
    d = Decision(False, Reason.INSIDE_ZONE, "v1", "z", Category.CLINIC)
    with caplog.at_level(logging.ERROR, logger="geofence.audit"):
        for _ in range(3):
            log.record(d, None, 0.0)
            time.sleep(0.1)
        log.close()
    assert [r.levelname for r in caplog.records].count("ERROR") == 1  # said once, not per record


# --- the line format ---------------------------------------------------------------------------

_ANY_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.none(),
    st.text(max_size=5),
)


@settings(max_examples=500, deadline=None)
@given(
    at=_ANY_NUMBER,
    reason=st.sampled_from(list(Reason)),
    allowed=st.booleans(),
    zone_id=st.none() | st.text(),
    category=st.none() | st.sampled_from(list(Category)),
    version=st.text(),
    key=st.none() | st.binary(max_size=40),
    until=_ANY_NUMBER,
)
def test_a_line_is_exactly_what_json_dumps_writes(
    at: Any,
    reason: Reason,
    allowed: bool,
    zone_id: str | None,
    category: Category | None,
    version: str,
    key: bytes | None,
    until: Any,
) -> None:
    """The hand-built line equals json.dumps of the record, for any text, number or key."""

    finite = audit_module._finite  # numbers json.dumps can write: finite floats, else null
    expected = {
        "t": finite(at),
        "reason": reason.value,
        "allowed": allowed,
        "zone_id": zone_id,
        "category": None if category is None else category.value,
        "zone_set_version": version,
        "device": None if key is None else key.hex(),
        "until": finite(until),
    }
    line = audit_module._line(at, reason, allowed, zone_id, category, version, key, until)
    assert line == json.dumps(expected, separators=(",", ":")) + "\n"
    assert json.loads(line) == expected


def test_arguments_are_checked(tmp_path: Path) -> None:
    for bad in ({"max_bytes": 10}, {"backups": -1}, {"queue_size": 0}, {"flush_interval_s": 0}):
        with pytest.raises(ValueError):
            AuditLog(tmp_path / "a.jsonl", **bad)  # type: ignore[arg-type]


def test_record_only_enqueues_and_the_writer_thread_serialises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """record() returns with the writer held, and no line is made on the caller's thread.

    Its cost is measured by benchmarks/bench_batch.py (check_location with and without an audit
    log), not timed here: a timed bound flaked on a loaded 2-core CI machine.
    """
    release = threading.Event()
    real_write = AuditLog._write_items
    writer_threads: set[int] = set()

    def held(self: AuditLog, items: Any) -> None:
        writer_threads.add(threading.get_ident())
        release.wait(10)
        real_write(self, items)

    monkeypatch.setattr(AuditLog, "_write_items", held)
    made_on: set[int] = set()
    real_lines = audit_module._single_lines

    def counted_lines(*item: Any) -> Any:
        made_on.add(threading.get_ident())
        return real_lines(*item)

    monkeypatch.setattr(audit_module, "_single_lines", counted_lines)
    log = AuditLog(tmp_path / "a.jsonl", queue_size=1_000_000)
    d = Decision(False, Reason.INSIDE_ZONE, "v1", "z", Category.CLINIC)
    n = 20_000
    for i in range(n):
        log.record(d, b"k" * 32, float(i))
    # All n calls returned while the writer waits: none waited for a write.
    assert not release.is_set()
    assert log.written == 0
    assert records(tmp_path / "a.jsonl") == []
    release.set()
    log.close()
    me = threading.get_ident()
    assert me not in made_on and me not in writer_threads
    assert made_on == writer_threads and len(made_on) == 1
    assert len(records(tmp_path / "a.jsonl")) == n


# --- flush on exit, and what a kill loses --------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from geofence.audit import AuditLog
    from geofence.categories import Category
    from geofence.decision import Decision
    from geofence.reasons import Reason

    path, interval, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    log = AuditLog(path, flush_interval_s=interval)
    d = Decision(False, Reason.INSIDE_ZONE, "v1", "zone", Category.CLINIC)
    if mode == "exit":  # record, then leave without close(): atexit must flush
        for i in range(1000):
            log.record(d, i.to_bytes(32, "big"), float(i))
        sys.exit(0)
    i = 0
    while True:  # one record per millisecond, reporting each submission's wall time
        log.record(d, i.to_bytes(32, "big"), float(i))
        if i % 20 == 0:
            print(i, repr(time.time()), flush=True)
        i += 1
        time.sleep(0.001)
    """
)


def run_child(path: Path, interval: float, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(interval), mode],
        stdout=subprocess.PIPE,
        env=env,
    )


def test_records_are_flushed_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    child = run_child(path, 3600.0, "exit")  # the interval never elapses: only atexit writes
    assert child.wait(30) == 0
    assert [int(r["device"], 16) for r in records(path)] == list(range(1000))


@pytest.mark.parametrize("interval", [0.2, 1.0])
def test_a_kill_loses_at_most_the_flush_interval(tmp_path: Path, interval: float) -> None:
    """SIGKILL the writer's process mid-stream: every record submitted more than
    flush_interval_s (plus 0.25 s of scheduling slack) before the kill is on disk."""
    path = tmp_path / "a.jsonl"
    child = run_child(path, interval, "loop")
    assert child.stdout is not None
    submitted: list[tuple[int, float]] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            i, t = line.split()
            submitted.append((int(i), float(t)))
            if submitted[-1][0] >= 1500:  # ~1.5 s of records at 1 per ms
                break
        killed_at = time.time()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert submitted and submitted[-1][0] >= 1500
    on_disk = sorted(int(r["device"], 16) for r in records(path))
    assert on_disk == list(range(len(on_disk)))  # a prefix: nothing missing in between
    must_have = [i for i, t in submitted if t < killed_at - interval - 0.25]
    assert must_have, "the run was too short to measure"
    assert on_disk and on_disk[-1] >= must_have[-1], (
        f"lost records submitted {killed_at - dict(submitted)[must_have[-1]]:.2f} s before "
        f"the kill (flush interval {interval} s)"
    )
    lost = submitted[-1][0] + 1 - len(on_disk)  # at least this many were submitted, not on disk
    assert lost <= (interval + 0.25) * 1000 + 50  # one record per ms
    print(f"audit kill, flush interval {interval} s: {len(on_disk)} on disk, >= {lost} lost")

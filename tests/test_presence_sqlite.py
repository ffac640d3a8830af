"""Tests for geofence.presence.sqlite: durability, kill safety, recovery, privacy of the file."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from geofence.errors import PresenceConfigError, PresenceUnavailable
from geofence.presence import DeviceHasher, SQLiteStore
from geofence.presence.sqlite import path_from_url

REPO = Path(__file__).resolve().parent.parent
SECRET = b"0123456789abcdef-test-secret"
DEVICE_IDS = [f"ifa-SECRET-{i}" for i in range(50)]
COORDINATES = ["40.712776", "-74.005974", "47.6062", "-122.3321"]


def rows(path: Path) -> list[tuple[bytes, int, float, float]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT key, category, time, expires_at FROM presence").fetchall()


def test_file_is_wal_synchronous_full_with_one_table(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    conn = store._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(tmp_path / "p.db") as other:
        tables = other.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == [("presence",)]
    store.close()


def test_close_and_reopen_keeps_records(tmp_path: Path) -> None:
    h = DeviceHasher(SECRET)
    now = time.time()
    store = SQLiteStore(tmp_path / "p.db")
    store.record(h.key("ifa-1"), 5, now - 3, now + 600)
    store.close()
    assert SQLiteStore(tmp_path / "p.db").latest(h.key("ifa-1")) == {5: now - 3}
    # close() only drops the connection: the same object reopens on its next call.
    assert store.latest(h.key("ifa-1")) == {5: now - 3}
    store.close()


def test_upsert_keeps_latest_time_and_longest_expiry(tmp_path: Path) -> None:
    k = DeviceHasher(SECRET).key("ifa-1")
    now = time.time()
    store = SQLiteStore(tmp_path / "p.db")
    store.record(k, 1, now - 10, now + 900)
    store.record(k, 1, now - 5, now + 60)  # later presence from a shorter-lookback rule
    assert rows(tmp_path / "p.db") == [(k, 1, now - 5, now + 900)]
    store.close()


def test_expired_rows_are_deleted_periodically(tmp_path: Path) -> None:
    h = DeviceHasher(SECRET)
    now = time.time()
    store = SQLiteStore(tmp_path / "p.db")
    store.record(h.key("ifa-old"), 1, now, now + 0.2)
    time.sleep(0.3)
    assert store.latest(h.key("ifa-old")) == {}  # hidden at once
    store.record(h.key("ifa-new"), 1, now, now + 60)  # no sweep yet: one ran on the first write
    assert len(rows(tmp_path / "p.db")) == 2
    store._next_sweep = 0.0  # as if SWEEP_INTERVAL had passed
    store.record(h.key("ifa-new"), 1, now, now + 60)
    assert [r[0] for r in rows(tmp_path / "p.db")] == [h.key("ifa-new")]
    store.close()


def test_many_keys_in_one_lookup(tmp_path: Path) -> None:
    """More keys than SQLite accepts as parameters of one statement."""
    h = DeviceHasher(SECRET)
    now = time.time()
    keys = h.keys([f"ifa-{i}" for i in range(2500)])
    n = len(keys)
    store = SQLiteStore(tmp_path / "p.db")
    store.record_many(
        keys, np.full(n, 3, np.uint8), np.arange(n, dtype=np.float64) + now, np.full(n, now + 60)
    )
    assert store.latest_many(keys) == [{3: now + i} for i in range(n)]
    store.close()


def test_urls() -> None:
    assert path_from_url("sqlite:////tmp/x.db") == "/tmp/x.db"
    assert path_from_url("sqlite:///relative/x.db") == "relative/x.db"
    assert path_from_url("sqlite:///x.db?timeout=2") == "x.db"
    for bad in ("sqlite://x.db", "sqlite:///", "sqlite:////tmp/", "memory://"):
        with pytest.raises(PresenceConfigError):
            path_from_url(bad)


def test_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(PresenceUnavailable, match="unavailable"):
        SQLiteStore(tmp_path / "no-such-dir" / "p.db")


def test_locked_database_fails_closed_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = DeviceHasher(SECRET)
    now = time.time()
    store = SQLiteStore(tmp_path / "p.db", timeout=0.1)
    store.record(h.key("ifa-1"), 1, now, now + 60)
    blocker = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    caplog.set_level(logging.INFO, logger="geofence.presence")
    t0 = time.monotonic()
    with pytest.raises(PresenceUnavailable, match="locked"):
        store.record(h.key("ifa-2"), 1, now, now + 60)
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(PresenceUnavailable):
        store.record(h.key("ifa-2"), 1, now, now + 60)
    blocker.execute("ROLLBACK")
    blocker.close()
    store.record(h.key("ifa-2"), 1, now, now + 60)  # the same object, without being recreated
    assert store.latest_many(h.keys(["ifa-1", "ifa-2"])) == [{1: now}, {1: now}]
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == ["WARNING", "INFO"]  # one each, not one per call
    assert "presence store recovered" in messages[1][1]
    store.close()


def test_a_replaced_file_fails_closed_then_recovers(tmp_path: Path) -> None:
    """A call reopens the file: garbage there is unavailable, a usable file works again."""
    path = tmp_path / "p.db"
    h = DeviceHasher(SECRET)
    now = time.time()
    store = SQLiteStore(path)
    store.record(h.key("ifa-1"), 1, now, now + 60)
    store.close()
    for f in tmp_path.glob("p.db*"):
        f.unlink()
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(PresenceUnavailable, match="not a database"):
        store.latest(h.key("ifa-1"))
    path.unlink()
    assert store.latest(h.key("ifa-1")) == {}  # a fresh, empty file
    store.record(h.key("ifa-1"), 1, now, now + 60)
    assert store.latest(h.key("ifa-1")) == {1: now}
    store.close()


CHILD = textwrap.dedent(
    """
    import sys, time
    from geofence.presence import DeviceHasher, SQLiteStore

    store = SQLiteStore(sys.argv[1])
    h = DeviceHasher(sys.argv[2].encode())
    now = time.time()
    i = 0
    while True:
        store.record(h.key(f"ifa-SECRET-{i}"), i % 17, now + i, now + 3600)
        print(f"committed {i}", flush=True)
        i += 1
    """
)


def test_committed_records_survive_a_kill(tmp_path: Path) -> None:
    """A process SIGKILLed mid-run loses nothing it had committed."""
    path = tmp_path / "p.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), SECRET.decode()],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    committed: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(committed) < 200 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            committed.append(int(line.split()[1]))
        child.send_signal(signal.SIGKILL)
        committed += [int(line.split()[1]) for line in child.stdout.read().splitlines()]
    finally:
        child.kill()
        child.wait()
    assert len(committed) >= 200, f"the child committed only {len(committed)} records"
    h = DeviceHasher(SECRET)
    store = SQLiteStore(path)
    found = store.latest_many(h.keys([f"ifa-SECRET-{i}" for i in committed]))
    missing = [i for i, f in zip(committed, found, strict=True) if f.get(i % 17) is None]
    assert missing == []
    store.close()


def test_nothing_stored_reveals_a_device_id_or_a_place(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    h = DeviceHasher(SECRET)
    now = float(int(time.time()))  # whole seconds: a stored time cannot spell a coordinate
    keys = h.keys(DEVICE_IDS)
    n = len(keys)
    store = SQLiteStore(path)
    store.record_many(
        keys, np.arange(n, dtype=np.uint8) % 17, np.full(n, now), np.full(n, now + 600)
    )
    # Every row of every table, as SQLite returns it.
    with sqlite3.connect(path) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        dumped = [row for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')]
    assert {r[0] for r in dumped} == set(keys)
    # And the raw bytes of the database, its write-ahead log and shared-memory index.
    files = sorted(tmp_path.glob("p.db*"))
    assert path in files
    blob = repr(dumped).encode() + b"".join(f.read_bytes() for f in files)
    assert all(k in blob for k in keys)  # the check reads the right bytes
    for value in [*DEVICE_IDS, "ifa-SECRET", *COORDINATES]:
        assert value.encode() not in blob
        assert value.encode("utf-16-le") not in blob
    store.close()

"""A presence store in one SQLite file: durable across restarts, shared by the processes of a host.

WAL mode lets readers run while one process writes; synchronous=FULL makes every committed batch
survive a crash or a kill. Any SQLite failure becomes `PresenceUnavailable` (decisions that need
presence then fail closed) and the store reopens the file by itself on the next call.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from geofence.errors import PresenceConfigError, PresenceUnavailable
from geofence.presence.base import PresenceStore, record_lists

logger = logging.getLogger("geofence.presence")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS presence (
    key BLOB NOT NULL,
    category INTEGER NOT NULL,
    time REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, category)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS presence_expires_at ON presence (expires_at);
"""
# WITHOUT ROWID: the primary key is the only lookup path, so the table is that b-tree itself.

# Keep both the latest time and the longest expiry: a later record may come from a rule with a
# shorter lookback, and it must not cut short the block an earlier, longer one started.
_UPSERT = """
INSERT INTO presence (key, category, time, expires_at) VALUES (?, ?, ?, ?)
ON CONFLICT (key, category) DO UPDATE SET
    time = max(time, excluded.time),
    expires_at = max(expires_at, excluded.expires_at)
"""

# Well under SQLITE_MAX_VARIABLE_NUMBER of any SQLite build (999 before 3.32).
_CHUNK = 500

SWEEP_INTERVAL = 60.0  # seconds between deletions of expired rows


def path_from_url(url: str) -> str:
    """The file path in a sqlite:/// URL: sqlite:////abs/x.db is absolute, sqlite:///x.db not."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise PresenceConfigError(
            f"not a SQLite presence URL: {url!r} (expected sqlite:////absolute/path.db "
            "or sqlite:///relative/path.db)"
        )
    path = url[len(prefix) :].split("?", 1)[0]
    if not path or path.endswith("/"):
        raise PresenceConfigError(f"SQLite presence URL {url!r} names no file")
    return path


class SQLiteStore(PresenceStore):
    """Presence in a SQLite file; one connection shared by threads under a lock.

    A single connection (rather than one per thread) keeps recovery simple, one place to reopen,
    and costs little: SQLite serialises writers anyway and each call is short.
    """

    def __init__(self, path: str | Path, *, timeout: float = 0.5) -> None:
        """Open (creating if needed) the file at `path`; raise PresenceUnavailable if impossible.

        `timeout` is how long a call waits for another process's write lock before it gives up.
        """
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._failed = False
        self._next_sweep = 0.0
        with self._lock:
            self._call(lambda conn: None)

    # -- the contract --------------------------------------------------------------------------

    def record_many(
        self,
        keys: Sequence[bytes],
        categories: npt.NDArray[np.uint8],
        times: npt.NDArray[np.float64],
        expires_at: npt.NDArray[np.float64],
    ) -> None:
        """Upsert the records in one transaction (committed, and synced, when this returns)."""
        cats, ts, exps = record_lists(keys, categories, times, expires_at)
        rows = [(bytes(k), c, t, e) for k, c, t, e in zip(keys, cats, ts, exps, strict=True)]
        now = time.time()

        def write(conn: sqlite3.Connection) -> None:
            # IMMEDIATE takes the write lock up front, so a busy database fails here, before any
            # work, instead of at COMMIT.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_UPSERT, rows)
                if now >= self._next_sweep:
                    conn.execute("DELETE FROM presence WHERE expires_at <= ?", (now,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_INTERVAL

        if not rows:
            return
        with self._lock:
            self._call(write)

    def latest_many(self, keys: Sequence[bytes]) -> list[dict[int, float]]:
        """For each key, {category code: latest time} of its unexpired rows."""
        now = time.time()
        wanted = [bytes(k) for k in keys]
        found: dict[bytes, dict[int, float]] = {}

        def read(conn: sqlite3.Connection) -> None:
            unique = list(dict.fromkeys(wanted))
            for i in range(0, len(unique), _CHUNK):
                chunk = unique[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, category, time FROM presence "
                    f"WHERE key IN ({marks}) AND expires_at > ?",
                    (*chunk, now),
                )
                for key, cat, t in rows:
                    found.setdefault(key, {})[cat] = t

        if wanted:
            with self._lock:
                self._call(read)
        return [dict(found.get(k, {})) for k in wanted]

    def forget(self, key: bytes) -> None:
        """Delete every row of one device, durably."""

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM presence WHERE key = ?", (bytes(key),))

        with self._lock:
            self._call(delete)

    def close(self) -> None:
        """Close the connection; a later call reopens it."""
        with self._lock:
            self._drop_connection()

    # -- connection and failure handling; the caller holds the lock -----------------------------

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: the module issues no implicit BEGIN, transactions are ours.
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _call(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` on a (re)opened connection; turn any SQLite failure into PresenceUnavailable."""
        try:
            if self._conn is None:
                self._conn = self._open()
            result = op(self._conn)
        except (sqlite3.Error, OSError) as exc:
            # The connection may be wedged (a lost file, a half-done transaction): drop it and
            # start from a fresh one next time.
            self._drop_connection()
            if not self._failed:
                self._failed = True
                logger.warning("presence store %s unavailable: %s", self.url, exc)
            raise PresenceUnavailable(f"presence store {self.url} unavailable: {exc}") from exc
        if self._failed:
            self._failed = False
            logger.info("presence store recovered: %s", self.url)
        return result

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing a broken connection may fail too; it is dropped either way.
            with contextlib.suppress(sqlite3.Error):
                conn.close()

"""Shared fixtures: paths to the repository's data and to ../shared/data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS_DATA = REPO / "tests" / "data"
BUNDLED_ZONES = REPO / "zones"
SHARED_DATA = REPO.parent / "shared" / "data"


def record_batch(
    records: list[tuple[bytes, int, float, float]],
) -> tuple[list[bytes], np.ndarray, np.ndarray, np.ndarray]:
    """A presence store's record_many arguments from (key, category, time, expires_at) tuples."""
    return (
        [r[0] for r in records],
        np.array([r[1] for r in records], dtype=np.uint8),
        np.array([r[2] for r in records], dtype=np.float64),
        np.array([r[3] for r in records], dtype=np.float64),
    )


def audit_text_without_clock(path: Path) -> str:
    """An audit log's text with each status line's wall-clock "t" left out.

    A status line's time is the wall clock, which may hold any digits (1795662795.07 holds
    "95.0"): a search of the log for input values must not look at it.
    """
    return "\n".join(
        json.dumps({k: v for k, v in json.loads(line).items() if k != "t"})
        if '"status"' in line
        else line
        for line in path.read_text().splitlines()
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a skip that says why (a user's clone does not have it; CI does)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (present in CI only)")
    return SHARED_DATA


# ---- time: a clock tests move by hand ---------------------------------------------------------


class FakeClock:
    """A clock for `Engine(clock=...)` that moves only when a test moves it.

    The engine rejects request times more than MAX_CLOCK_SKEW_S after its clock, so a test
    that simulates days passing moves this clock first, and the request stays in the present.
    """

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds`; return the new time."""
        if seconds < 0:
            raise ValueError("a FakeClock only moves forward")
        self.now += seconds
        return self.now

    def to(self, when: float) -> float:
        """Move forward to `when` (staying put if it is not later); return the new time."""
        self.now = max(self.now, float(when))
        return self.now


@pytest.fixture
def fake_clock() -> FakeClock:
    """A FakeClock at the current second (presence stores expire records by the wall clock,
    so simulated times start from the real present)."""
    return FakeClock(float(int(time.time())))


# ---- presence: a shared redis-server (tests/redis_server.py) --------------------------------
# Tests that kill or restart Redis start their own RedisServer instead of using this one.

from collections.abc import Iterator  # noqa: E402

from redis_server import RedisServer, free_port  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the session; fails in CI (CI=1) and skips elsewhere if not installed."""
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's redis-server, emptied for this test."""
    import redis  # noqa: PLC0415 - only tests that use Redis pay for importing the client

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


# ---- end of presence section -----------------------------------------------------------------

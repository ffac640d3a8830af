"""Shared fixtures: paths to the repository's data and to ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS_DATA = REPO / "tests" / "data"
BUNDLED_ZONES = REPO / "zones"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a skip that says why (a user's clone does not have it; CI does)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (present in CI only)")
    return SHARED_DATA


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

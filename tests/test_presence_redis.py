"""Tests for geofence.presence.redis: layout, TTLs, round trips, failure and recovery, privacy."""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis_server import RedisServer, free_port

from geofence.errors import PresenceUnavailable
from geofence.presence import DeviceHasher
from geofence.presence.redis import CHUNK, MAX_EXPIRY_MS, RedisStore

SECRET = b"0123456789abcdef-test-secret"
DEVICE_IDS = [f"ifa-SECRET-{i}" for i in range(50)]
COORDINATES = ["40.712776", "-74.005974", "47.6062", "-122.3321"]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client to look at what the store wrote."""
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    s = RedisStore(redis_url)
    yield s
    s.close()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server this test may kill and restart."""
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def batch_of(keys: list[bytes], cat: int, t: float, exp: float) -> tuple[Any, ...]:
    n = len(keys)
    return keys, np.full(n, cat, np.uint8), np.full(n, t), np.full(n, exp)


def test_layout_one_hash_per_device(store: RedisStore, client: redis.Redis) -> None:
    k = DeviceHasher(SECRET).key("ifa-1")
    now = time.time()
    store.record(k, 3, now - 1.25, now + 600)
    store.record(k, 16, now, now + 600)
    assert client.keys("*") == [b"gf:p:" + k.hex().encode()]
    assert client.hgetall(b"gf:p:" + k.hex().encode()) == {
        b"3": repr(now - 1.25).encode(),
        b"16": repr(now).encode(),
    }


def test_ttl_follows_the_longest_record_and_never_shortens(
    store: RedisStore, client: redis.Redis
) -> None:
    k = DeviceHasher(SECRET).key("ifa-1")
    name = b"gf:p:" + k.hex().encode()
    now = time.time()
    store.record(k, 1, now, now + 100)
    assert 98 <= client.ttl(name) <= 100
    store.record(k, 2, now, now + 50)  # a shorter record must not cut the hash's life
    assert 98 <= client.ttl(name) <= 100
    store.record(k, 2, now, now + 200)
    assert 198 <= client.ttl(name) <= 200


def test_expiry_removes_the_hash(store: RedisStore, client: redis.Redis) -> None:
    k = DeviceHasher(SECRET).key("ifa-1")
    now = time.time()
    store.record(k, 1, now, now + 0.3)
    assert client.exists(b"gf:p:" + k.hex().encode()) == 1
    time.sleep(0.5)
    assert client.exists(b"gf:p:" + k.hex().encode()) == 0
    assert store.latest(k) == {}


class RoundTrips:
    """Counts round trips on Redis connections, as the client library sends and reads them.

    A round trip starts with a send that follows a reply (or comes first): commands sent before
    any reply is read travel together, however many send calls carry them, while a client that
    waits for a reply between two sends makes two trips.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._replied = True
        conn_class = redis.connection.AbstractConnection
        send, read = conn_class.send_packed_command, conn_class.read_response

        def counting_send(conn: Any, command: Any, check_health: bool = True) -> None:
            if self._replied:
                self.count += 1
                self._replied = False
            send(conn, command, check_health)

        def counting_read(conn: Any, *args: Any, **kwargs: Any) -> Any:
            self._replied = True
            return read(conn, *args, **kwargs)

        monkeypatch.setattr(conn_class, "send_packed_command", counting_send)
        monkeypatch.setattr(conn_class, "read_response", counting_read)


def test_round_trip_counter_counts_waits(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counter itself: two commands one after the other are two trips, pipelined one."""
    client.ping()  # connect outside the count
    trips = RoundTrips(monkeypatch)
    client.get("a")
    client.get("b")
    assert trips.count == 2
    pipe = client.pipeline(transaction=False)
    pipe.get("a")
    pipe.get("b")
    pipe.execute()
    assert trips.count == 3


def test_one_round_trip_per_batch(
    store: RedisStore, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch spanning several script chunks still makes exactly one round trip."""
    h = DeviceHasher(SECRET)
    now = time.time()
    store.record(h.key("warm-up"), 1, now, now + 60)  # connects and loads the scripts
    n = 2 * CHUNK + CHUNK // 2
    keys = h.keys([f"ifa-{i}" for i in range(n)])
    recorded = keys[::3]  # a third have a record, so reads return some devices and skip others
    client.config_resetstat()
    trips = RoundTrips(monkeypatch)
    store.record_many(*batch_of(recorded, 4, now, now + 60))
    assert trips.count == 1
    found = store.latest_many(keys)
    assert trips.count == 2
    assert store.latest_found(keys) == {i: {4: now} for i in range(0, n, 3)}
    assert trips.count == 3
    monkeypatch.undo()
    assert found == [{4: now} if i % 3 == 0 else {} for i in range(n)]
    stats = client.info("commandstats")
    chunks = -(-len(recorded) // CHUNK) + 2 * -(-n // CHUNK)  # one script call per chunk
    assert stats["cmdstat_evalsha"]["calls"] == chunks
    # Scripts' own commands count too: each key read once per read, inside those calls.
    assert stats["cmdstat_hgetall"]["calls"] == 2 * n
    assert "cmdstat_multi" not in stats and "cmdstat_exec" not in stats  # no transaction
    assert "cmdstat_script|load" not in stats and "cmdstat_script|exists" not in stats


def test_reads_match_what_a_plain_client_sees(store: RedisStore, client: redis.Redis) -> None:
    """The scripted read returns each device's hash exactly, across chunk boundaries."""
    h = DeviceHasher(SECRET)
    now = time.time()
    rng = np.random.default_rng(3)
    keys = h.keys([f"ifa-{i}" for i in range(CHUNK + 7)])
    chosen = [k for k in keys if rng.random() < 0.4]
    cats = rng.integers(0, 17, len(chosen)).astype(np.uint8)
    times = now - rng.uniform(0, 1e6, len(chosen))
    store.record_many(chosen, cats, times, np.full(len(chosen), now + 600))
    plain = []
    for k in keys:
        fields: dict[bytes, bytes] = client.hgetall(b"gf:p:" + k.hex().encode())  # type: ignore[assignment]
        plain.append({int(c): float(t) for c, t in fields.items()})
    assert store.latest_many(keys) == plain
    assert sum(1 for p in plain if p) == len(set(chosen))


def test_non_finite_records_are_refused_and_nothing_is_written(
    store: RedisStore, client: redis.Redis
) -> None:
    """A NaN or infinite time or expiry is a ValueError (not an outage), before any write."""
    h = DeviceHasher(SECRET)
    now = time.time()
    good, bad = h.keys(["ifa-good", "ifa-bad"])
    for t, e in ((now, math.inf), (now, math.nan), (math.nan, now + 60), (math.inf, now + 60)):
        with pytest.raises(ValueError, match="not a finite number"):
            store.record_many(
                [good, bad], np.array([1, 2], np.uint8), np.array([now, t]), np.array([now + 60, e])
            )
    assert client.keys("*") == []


def test_a_far_future_expiry_is_clamped_not_refused(store: RedisStore, client: redis.Redis) -> None:
    """An absurd but finite expiry is kept as long as Redis can (the record still blocks)."""
    k = DeviceHasher(SECRET).key("ifa-far")
    now = time.time()
    store.record(k, 5, now, 1e300)
    assert store.latest(k) == {5: now}
    ttl_ms = client.pttl(b"gf:p:" + k.hex().encode())  # PTTL: PEXPIRETIME needs Redis 7
    assert abs(now * 1000 + ttl_ms - MAX_EXPIRY_MS) < 60_000


def test_lost_script_cache_is_reloaded(store: RedisStore, client: redis.Redis) -> None:
    k = DeviceHasher(SECRET).key("ifa-1")
    now = time.time()
    store.record(k, 1, now, now + 60)
    client.script_flush()
    store.record(k, 2, now, now + 60)
    client.script_flush()
    assert store.latest(k) == {1: now, 2: now}  # the read script is reloaded too


def test_foreign_data_fails_closed(store: RedisStore, client: redis.Redis) -> None:
    k = DeviceHasher(SECRET).key("ifa-1")
    client.hset(b"gf:p:" + k.hex().encode(), "x", "not a number")
    with pytest.raises(PresenceUnavailable):
        store.latest(k)


def test_no_server_fails_closed_fast() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    t0 = time.monotonic()
    with pytest.raises(PresenceUnavailable, match="unavailable"):
        store.latest(b"k" * 32)
    assert time.monotonic() - t0 < 1.0


def test_a_server_that_never_answers_fails_closed_within_the_timeout() -> None:
    """A hung server (connects, never replies) costs one op timeout, not a retry loop."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel accepts connections; nobody ever reads or answers
        port = listener.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(PresenceUnavailable):
            store.latest(b"k" * 32)
        assert time.monotonic() - t0 < 1.0
        store.close()


def test_server_killed_mid_run_then_restarted(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Fails closed quickly while down, works again unaided, loses nothing acknowledged."""
    h = DeviceHasher(SECRET)
    store = RedisStore(own_server.url)
    now = time.time()
    acked: list[int] = []  # batches record_many returned from
    failures: list[float] = []  # how long each failing call took
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            keys = h.keys([f"ifa-{i}-{j}" for j in range(10)])
            t0 = time.monotonic()
            try:
                store.record_many(*batch_of(keys, i % 17, now + i, now + 3600))
                acked.append(i)
            except PresenceUnavailable:
                failures.append(time.monotonic() - t0)
                time.sleep(0.01)
            i += 1

    def wait_for(cond: Any, what: str) -> None:
        deadline = time.monotonic() + 10
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    caplog.set_level(logging.INFO, logger="geofence.presence")
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(acked) >= 20, "writes before the kill")
        own_server.kill()
        wait_for(lambda: len(failures) >= 3, "failures while down")
        t0 = time.monotonic()
        with pytest.raises(PresenceUnavailable):
            store.latest(h.key("ifa-0-0"))
        assert time.monotonic() - t0 < 1.0
        own_server.restart()
        before = len(acked)
        wait_for(lambda: len(acked) >= before + 20, "writes after the restart")
    finally:
        stop.set()
        thread.join()
    assert max(failures) < 1.0, f"slowest failing call took {max(failures):.2f} s"
    # Every acknowledged batch is there, read by the same store object.
    for i in acked:
        keys = h.keys([f"ifa-{i}-{j}" for j in range(10)])
        assert store.latest_many(keys) == [{i % 17: now + i}] * 10, f"batch {i} lost"
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels[0][0] == "WARNING" and "unavailable" in levels[0][1]
    assert ("INFO", f"presence store recovered: {own_server.url}") in levels
    store.close()


def test_nothing_stored_reveals_a_device_id_or_a_place(
    store: RedisStore, client: redis.Redis, redis_server: RedisServer
) -> None:
    h = DeviceHasher(SECRET)
    now = float(int(time.time()))  # whole seconds: a stored time cannot spell a coordinate
    keys = h.keys(DEVICE_IDS)
    n = len(keys)
    store.record_many(
        keys, np.arange(n, dtype=np.uint8) % 17, np.full(n, now), np.full(n, now + 600)
    )
    # Every key and every field and value, as Redis returns them.
    names: list[bytes] = list(client.scan_iter(count=1000))
    assert sorted(names) == sorted(b"gf:p:" + k.hex().encode() for k in keys)
    blob = b"".join(names)
    for name in names:
        assert client.type(name) == b"hash"
        fields: dict[bytes, bytes] = client.hgetall(name)  # type: ignore[assignment]
        for field, value in fields.items():
            blob += field + b"=" + value + b";"
    # And the append-only file the server persists (it logs the commands it executed).
    aof = b"".join(f.read_bytes() for f in redis_server.dir.rglob("*.aof*") if f.is_file())
    assert keys[0].hex().encode() in aof  # the check reads the right bytes
    blob += aof
    for text in [*DEVICE_IDS, "ifa-SECRET", *COORDINATES]:
        assert text.encode() not in blob
        assert text.encode("utf-16-le") not in blob

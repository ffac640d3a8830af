"""Presence through the engine, on every backend: fail-closed and recovery with a real Redis that
is killed mid-run, privacy of everything the stores hold, SQLite restarts, configuration from the
environment, and requests without a device id."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import shapely
from conftest import FakeClock
from redis_server import RedisServer, free_port

from geofence import Category, Engine, PresenceConfigError, Reason
from geofence import engine as engine_module
from geofence.policy import load_policy_text
from geofence.presence import DeviceHasher, MemoryStore
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

SECRET = "engine-presence-test-secret-0123456789"
T0 = float(int(time.time()))  # stores expire records by the wall clock
DAY = 86_400.0
CLINIC = (47.61, -122.33)  # a reproductive-health point zone, radius 30 m (lookback 60 days)
FAR = (40.0, -100.0)  # far from every zone
BACKENDS = ["memory", "sqlite", "redis"]


def zone_set(policy: str = 'pack = "us-strictest"\n') -> ZoneSet:
    zones = [
        Zone("clinic", "", Category.REPRODUCTIVE_HEALTH, shapely.Point(CLINIC[1], CLINIC[0]), 30.0),
        Zone(
            "church", "", Category.PLACE_OF_WORSHIP, shapely.box(-122.40, 47.60, -122.399, 47.601)
        ),
    ]
    return ZoneSet.compile(zones, load_policy_text(policy, "<test>"), "v-presence-engine")


def at_clinic(device: str | None, at: float = T0) -> dict[str, Any]:
    return {"lat": CLINIC[0], "lon": CLINIC[1], "accuracy_m": 5.0, "device_id": device, "at": at}


def far(device: str | None, at: float = T0 + 3600) -> dict[str, Any]:
    return {"lat": FAR[0], "lon": FAR[1], "accuracy_m": 5.0, "device_id": device, "at": at}


def an_hour_later(clock: FakeClock) -> FakeClock:
    """The clock at T0 + 1 h, when `far` requests are made by default (an hour after the clinic
    visits `at_clinic` dates at T0): the engine refuses request times ahead of its clock."""
    clock.to(T0 + 3600)
    return clock


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server this test may kill, restart and read the files of."""
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def presence_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/presence.db"
    return str(request.getfixturevalue("redis_url"))


# --- 2. fail closed and recover, with a real Redis killed mid-run ------------------------------


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def test_redis_killed_fails_closed_fast_and_the_same_engine_recovers(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture, fake_clock: FakeClock
) -> None:
    caplog.set_level(logging.INFO, logger="geofence")
    clock = an_hour_later(fake_clock)
    e = Engine(zone_set(), presence=own_server.url, presence_secret=SECRET, clock=clock)
    # Acknowledged before the kill: one device by a request, fifty by a batch of pings.
    assert e.check_location(**at_clinic("ifa-before")).reason is Reason.INSIDE_ZONE
    batch_ids = [f"ifa-batch-{i}" for i in range(50)]
    b = e.observe_many(batch_ids, np.full(50, CLINIC[0]), np.full(50, CLINIC[1]), 5.0, at=T0)
    assert set(b.reasons()) == {Reason.INSIDE_ZONE}
    assert e.check_location(**far("ifa-before")).reason is Reason.RECENTLY_INSIDE
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    own_server.kill()  # SIGKILL, as a crash: only what was fsynced survives

    slowest = 0.0
    for i in range(20):
        device = f"ifa-during-{i % 3}"
        d, took = timed(lambda: e.check_location(**far(device)))  # noqa: B023 - called at once
        assert (d.allowed, d.reason) == (False, Reason.STATE_UNAVAILABLE)
        slowest = max(slowest, took)
        # Without a device id nothing needs the store: decided on location, as usual.
        anonymous, took = timed(lambda: e.check_location(**far(None)))
        assert anonymous.reason is Reason.ALLOWED
        slowest = max(slowest, took)
    inside, took = timed(lambda: e.observe(**at_clinic("ifa-during-0")))
    assert inside.reason is Reason.INSIDE_ZONE  # the location decides; history is not needed
    slowest = max(slowest, took)
    lat = np.array([FAR[0], FAR[0], CLINIC[0], FAR[0]])
    lon = np.array([FAR[1], FAR[1], CLINIC[1], FAR[1]])
    batch, took = timed(
        lambda: e.check_many(lat, lon, 5.0, device_ids=["a", None, "b", "ifa-before"], at=T0)
    )
    assert batch.reasons() == [
        Reason.STATE_UNAVAILABLE,
        Reason.ALLOWED,
        Reason.INSIDE_ZONE,
        Reason.STATE_UNAVAILABLE,
    ]
    slowest = max(slowest, took)
    assert slowest < 1.0, f"a request took {slowest:.3f} s with Redis down"
    down = [
        r
        for r in caplog.records
        if r.name == "geofence.presence" and "unavailable" in r.getMessage()
    ]
    assert len(down) == 1 and down[0].levelno == logging.WARNING  # the transition, logged once
    assert "recovered" not in caplog.text

    own_server.restart()  # same port, same append-only file

    # The same engine, no reconnect call: the very first request is decided from history again.
    clock.to(T0 + 59 * DAY)
    d = e.check_location(**far("ifa-before", at=T0 + 59 * DAY))
    assert (d.reason, d.category) == (Reason.RECENTLY_INSIDE, Category.REPRODUCTIVE_HEALTH)
    assert d.until == pytest.approx(T0 + 60 * DAY)
    after = e.check_many(np.full(50, FAR[0]), np.full(50, FAR[1]), 5.0, batch_ids, T0 + DAY)
    assert set(after.reasons()) == {Reason.RECENTLY_INSIDE}  # all fifty survived the kill
    assert e.check_location(**far("ifa-never-seen")).reason is Reason.ALLOWED
    recovered = [
        r for r in caplog.records if r.name == "geofence.presence" and "recovered" in r.getMessage()
    ]
    assert len(recovered) == 1 and recovered[0].levelno == logging.INFO
    assert own_server.url.split("//")[1] in recovered[0].getMessage()
    assert caplog.records.index(down[0]) < caplog.records.index(recovered[0])
    # New presence is written again after the recovery.
    e.observe(**at_clinic("ifa-after", at=T0 + 2 * DAY))
    assert e.check_location(**far("ifa-after", at=T0 + 3 * DAY)).reason is Reason.RECENTLY_INSIDE
    e.close()


def test_redis_hung_fails_closed_within_the_timeout_and_recovers(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture, fake_clock: FakeClock
) -> None:
    """A server that accepts connections but never answers (SIGSTOP) costs one timeout, < 1 s."""
    caplog.set_level(logging.INFO, logger="geofence")
    assert own_server.proc is not None
    clock = an_hour_later(fake_clock)
    e = Engine(zone_set(), presence=own_server.url, presence_secret=SECRET, clock=clock)
    e.observe(**at_clinic("ifa-1"))
    os.kill(own_server.proc.pid, 19)  # SIGSTOP
    try:
        for _ in range(3):
            d, took = timed(lambda: e.check_location(**far("ifa-1")))
            assert d.reason is Reason.STATE_UNAVAILABLE
            assert took < 1.0
    finally:
        os.kill(own_server.proc.pid, 18)  # SIGCONT
    assert e.check_location(**far("ifa-1")).reason is Reason.RECENTLY_INSIDE
    assert "presence store recovered" in caplog.text
    e.close()


# --- 3. privacy: nothing in any store is a raw device id or a coordinate -----------------------

# Distinctive values, so a hit cannot be a coincidence.
DEVICES = [
    "ifa-PRIVACY-7c1e2d",
    "6D92078A-8246-4BA4-AE5B-76104861E7DC",
    "aaid-private-0042",
    "ifa-openrtb-PRIVACY-9",
]
INSIDE_POINTS = [(47.6100123, -122.3300456), (47.6001234, -122.3995678)]  # clinic, church
FAR_POINTS = [(40.1234567, -100.7654321), (-33.8712345, 151.2098765)]


def needles() -> list[bytes]:
    """Every form in which a device id or a coordinate could leak into a store."""
    out: list[bytes] = []
    for d in [*DEVICES, "ifa-forgotten-PRIVACY"]:
        for form in (d, d.lower(), d.upper()):
            out += [form.encode("utf-8"), form.encode("utf-16-le")]
        # An unkeyed hash is reversible by enumerating ids: it must not be what is stored.
        out += [
            hashlib.sha256(d.encode()).digest(),
            hashlib.sha256(d.encode()).hexdigest().encode(),
        ]
    for lat, lon in INSIDE_POINTS + FAR_POINTS:
        for v in (lat, lon):
            out += [repr(v).encode(), f"{v:.7f}".encode(), f"{v:.6f}".encode()]
            out += [f"{v:.5f}".encode(), f"{v:.4f}".encode(), str(round(v * 1e7)).encode()]
            out += [struct.pack("<d", v), struct.pack(">d", v)]
            out += [struct.pack("<f", v), struct.pack(">f", v)]
    return out


def leaks(blob: bytes) -> list[bytes]:
    return [n for n in needles() if n in blob]


def floats_in(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def coordinate_values(values: list[float]) -> list[float]:
    coords = [c for p in INSIDE_POINTS + FAR_POINTS for c in p]
    return [v for v in values if any(abs(v - c) < 1e-3 for c in coords)]


def exercise(e: Engine) -> None:
    """Every request path that reads or writes presence, with the distinctive ids and points."""
    (lat0, lon0), (lat1, lon1) = INSIDE_POINTS
    (flat0, flon0), (flat1, flon1) = FAR_POINTS
    assert e.check_location(lat0, lon0, 8.0, DEVICES[0], T0).reason is Reason.INSIDE_ZONE
    assert e.check_location(flat0, flon0, 8.0, DEVICES[0], T0 + 60).reason is (
        Reason.RECENTLY_INSIDE
    )
    assert e.observe(DEVICES[1], lat1, lon1, 12.5, T0 + 1).reason is Reason.INSIDE_ZONE
    b = e.check_many(
        np.array([lat0, flat1, lat1]),
        np.array([lon0, flon1, lon1]),
        np.array([3.0, 4.0, 5.0]),
        device_ids=[DEVICES[2], DEVICES[2], DEVICES[0]],
        at=np.array([T0 + 2, T0 + 3, T0 + 4]),
    )
    assert b.reasons() == [Reason.INSIDE_ZONE, Reason.RECENTLY_INSIDE, Reason.INSIDE_ZONE]
    e.observe_many([DEVICES[1], DEVICES[2]], [flat0, lat0], [flon0, lon0], [6.0, 7.0], T0 + 5)
    bid = {
        "id": "privacy-bid",
        "device": {"ifa": DEVICES[3], "geo": {"lat": lat0, "lon": lon0, "accuracy": 5, "type": 1}},
    }
    assert e.check_openrtb(json.dumps(bid)).reason is Reason.INSIDE_ZONE
    e.observe("ifa-forgotten-PRIVACY", lat0, lon0, 5.0, T0 + 6)
    e.forget("ifa-forgotten-PRIVACY")
    assert e.check_location(flat0, flon0, 8.0, "ifa-forgotten-PRIVACY", T0 + 7).allowed


def expected_keys() -> set[bytes]:
    h = DeviceHasher(SECRET.encode())
    return {h.key(d) for d in DEVICES}


def test_the_leak_detector_finds_planted_values() -> None:
    """The needles below would be found: the privacy tests are not vacuous."""
    assert leaks(b"x" + DEVICES[1].lower().encode() + b"y")
    assert leaks(struct.pack("<d", INSIDE_POINTS[0][1]))
    assert leaks(b"lat=47.61001")
    assert leaks(hashlib.sha256(DEVICES[0].encode()).hexdigest().encode())
    assert not leaks(b"1763047610.0" + bytes(range(256)))
    assert coordinate_values([47.6100123, T0]) == [47.6100123]


def test_memory_store_holds_no_device_id_or_coordinate() -> None:
    store = MemoryStore()
    e = Engine(zone_set(), presence=store, presence_secret=SECRET)
    exercise(e)
    dump = store.dump()
    assert set(dump) == expected_keys()  # only keyed hashes; the forgotten device is gone
    values: list[Any] = []
    blob = b"".join(dump)
    for records in dump.values():
        for cat, (t, exp) in records.items():
            values += [cat, t, exp]
            blob += repr((cat, t, exp)).encode() + struct.pack("<dd", t, exp)
    assert all(isinstance(k, bytes) and len(k) == 32 for k in dump)
    assert not leaks(blob)
    assert not coordinate_values(floats_in(values))
    assert {c for r in dump.values() for c in r} == {
        Category.REPRODUCTIVE_HEALTH.code,
        Category.PLACE_OF_WORSHIP.code,
    }


def test_sqlite_file_holds_no_device_id_or_coordinate(tmp_path: Path) -> None:
    db = tmp_path / "presence.db"
    e = Engine(zone_set(), presence=f"sqlite:///{db}", presence_secret=SECRET)
    exercise(e)

    def files_blob() -> bytes:
        files = sorted(tmp_path.glob("presence.db*"))
        assert db in files
        return b"".join(f.read_bytes() for f in files)

    open_blob = files_blob()  # while open: the WAL holds the latest pages
    e.close()
    closed_blob = files_blob()  # after close: checkpointed into the main file
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert tables == ["presence"]
        cells: list[Any] = []
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):
                cells += list(row)
        keys = {bytes(c) for c in cells if isinstance(c, bytes)}
        schema = " ".join(r[0] or "" for r in conn.execute("SELECT sql FROM sqlite_master"))
    conn.close()
    assert keys == expected_keys()
    assert not leaks(open_blob) and not leaks(closed_blob)
    assert not leaks(b"".join(repr(c).encode() for c in cells) + schema.encode())
    assert not coordinate_values(floats_in(cells))


def redis_contents(client: redis.Redis) -> tuple[set[bytes], list[Any]]:
    """Every key of every database, and every value, read by its type."""
    keys: set[bytes] = set()
    values: list[Any] = []
    dbs = [int(name[2:]) for name in client.info("keyspace")]
    for db in dbs:
        c = client.connection_pool.connection_kwargs
        conn = redis.Redis(host=c["host"], port=c["port"], db=db)
        for key in conn.scan_iter(count=1000):
            keys.add(key)
            kind = conn.type(key)
            if kind == b"hash":
                for f, v in conn.hgetall(key).items():
                    values += [f, v]
            elif kind == b"string":
                values.append(conn.get(key))
            elif kind == b"list":
                values += conn.lrange(key, 0, -1)
            elif kind == b"set":
                values += list(conn.smembers(key))
            elif kind == b"zset":
                values += list(conn.zrange(key, 0, -1, withscores=True))
            else:
                values.append(conn.dump(key))
            values.append(conn.pttl(key))
        conn.close()
    return keys, values


def test_redis_holds_no_device_id_or_coordinate(own_server: RedisServer) -> None:
    e = Engine(zone_set(), presence=own_server.url, presence_secret=SECRET)
    exercise(e)
    e.close()
    client = redis.Redis.from_url(own_server.url)
    keys, values = redis_contents(client)
    client.close()
    assert keys == {b"gf:p:" + k.hex().encode() for k in expected_keys()}
    assert not leaks(b"".join(keys))
    assert not leaks(b"".join(v if isinstance(v, bytes) else repr(v).encode() for v in values))
    numbers = [float(v) for v in values if isinstance(v, bytes) and v.replace(b".", b"").isdigit()]
    assert numbers and not coordinate_values(numbers)
    # On disk too: the append-only file holds every write the server acknowledged.
    own_server.stop()
    disk = b"".join(f.read_bytes() for f in own_server.dir.rglob("*") if f.is_file())
    assert b"gf:p:" in disk
    assert not leaks(disk)


# --- 4. SQLite restarts, configuration from the environment, secrets required ------------------


def test_sqlite_engine_restart_keeps_presence(tmp_path: Path, fake_clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    first = Engine(zone_set(), presence=url, presence_secret=SECRET, clock=fake_clock)
    first.observe(**at_clinic("ifa-restart"))
    first.check_many(
        np.array([CLINIC[0]]), np.array([CLINIC[1]]), 5.0, device_ids=["ifa-restart-2"], at=T0
    )
    first.close()
    del first
    second = Engine(zone_set(), presence=url, presence_secret=SECRET, clock=fake_clock)
    fake_clock.to(T0 + 30 * DAY)
    d = second.check_location(**far("ifa-restart", at=T0 + 30 * DAY))
    assert (d.reason, d.category) == (Reason.RECENTLY_INSIDE, Category.REPRODUCTIVE_HEALTH)
    assert d.until == pytest.approx(T0 + 60 * DAY)
    assert second.check_location(**far("ifa-restart-2")).reason is Reason.RECENTLY_INSIDE
    fake_clock.to(T0 + 60 * DAY)
    assert second.check_location(**far("ifa-restart", at=T0 + 60 * DAY)).allowed
    second.close()
    # Another secret: every device is a stranger (why a durable store refuses a random one).
    other = Engine(zone_set(), presence=url, presence_secret=SECRET + "-other", clock=fake_clock)
    assert other.check_location(**far("ifa-restart")).reason is Reason.ALLOWED
    other.close()


@pytest.fixture
def zones_dir(tmp_path: Path) -> Path:
    """A zone folder for Engine.from_paths: one clinic as a CSV point zone and a policy."""
    folder = tmp_path / "zones"
    folder.mkdir()
    (folder / "clinic.csv").write_text(
        f"id,category,lat,lon,radius_m\nclinic,reproductive_health,{CLINIC[0]},{CLINIC[1]},30\n"
    )
    (folder / "policy.toml").write_text('pack = "us-strictest"\n')
    return folder


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_url_and_secret_from_the_environment(
    backend: str,
    zones_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    fake_clock: FakeClock,
) -> None:
    url = presence_url(backend, request, tmp_path)
    clock = an_hour_later(fake_clock)
    monkeypatch.setenv("GEOFENCE_PRESENCE_URL", url)
    monkeypatch.setenv("GEOFENCE_PRESENCE_SECRET", SECRET)
    e = Engine.from_paths(zones_dir, clock=clock)
    assert e.check_location(**at_clinic("ifa-env")).reason is Reason.INSIDE_ZONE
    e.close()
    # The record went to the store the environment named, under the environment's secret.
    monkeypatch.delenv("GEOFENCE_PRESENCE_URL")
    monkeypatch.delenv("GEOFENCE_PRESENCE_SECRET")
    explicit = Engine.from_paths(zones_dir, presence=url, presence_secret=SECRET, clock=clock)
    assert explicit.check_location(**far("ifa-env")).reason is Reason.RECENTLY_INSIDE
    explicit.close()
    # The arguments win over the environment.
    monkeypatch.setenv("GEOFENCE_PRESENCE_URL", "memory://")
    monkeypatch.setenv("GEOFENCE_PRESENCE_SECRET", "an-environment-secret-that-is-wrong")
    winner = Engine.from_paths(zones_dir, presence=url, presence_secret=SECRET, clock=clock)
    assert winner.check_location(**far("ifa-env")).reason is Reason.RECENTLY_INSIDE
    winner.close()


def test_memory_from_the_environment_and_a_random_secret(
    zones_dir: Path, monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock
) -> None:
    monkeypatch.setenv("GEOFENCE_PRESENCE_URL", "memory://?max_devices=5")
    monkeypatch.delenv("GEOFENCE_PRESENCE_SECRET", raising=False)
    e = Engine.from_paths(zones_dir, clock=an_hour_later(fake_clock))
    e.observe(**at_clinic("ifa-mem"))
    assert e.check_location(**far("ifa-mem")).reason is Reason.RECENTLY_INSIDE
    assert e.check_location(**far("ifa-other")).reason is Reason.ALLOWED


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("how", ["argument", "environment"])
def test_durable_stores_refuse_to_start_without_a_secret(
    backend: str,
    how: str,
    zones_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = (
        f"sqlite:///{tmp_path}/refused.db"
        if backend == "sqlite"
        else f"redis://127.0.0.1:{free_port()}/0"  # never contacted: refused before that
    )
    monkeypatch.delenv("GEOFENCE_PRESENCE_SECRET", raising=False)
    monkeypatch.delenv("GEOFENCE_PRESENCE_URL", raising=False)
    with pytest.raises(PresenceConfigError, match="needs a secret"):
        if how == "argument":
            Engine.from_paths(zones_dir, presence=url)
        else:
            monkeypatch.setenv("GEOFENCE_PRESENCE_URL", url)
            Engine.from_paths(zones_dir)
    with pytest.raises(PresenceConfigError, match="needs a secret"):
        Engine(zone_set(), presence=url)
    with pytest.raises(PresenceConfigError, match="must be at least 16"):
        Engine(zone_set(), presence=url, presence_secret="short")
    assert not (tmp_path / "refused.db").exists()  # refused before any file was created


# --- 5. requests without a device id --------------------------------------------------------


def store_is_empty(e: Engine, backend: str, url: str) -> bool:
    if backend == "memory":
        store = e._store  # the store the URL opened
        assert isinstance(store, MemoryStore)
        return len(store.dump()) == 0
    if backend == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            n = conn.execute("SELECT count(*) FROM presence").fetchone()[0]
        conn.close()
        return bool(n == 0)
    client = redis.Redis.from_url(url)
    n = client.dbsize()
    client.close()
    return bool(n == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_device_id_is_judged_on_location_alone(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, fake_clock: FakeClock
) -> None:
    url = presence_url(backend, request, tmp_path)
    clock = an_hour_later(fake_clock)
    e = Engine(zone_set(), presence=url, presence_secret=SECRET, clock=clock)
    assert e.check_location(**at_clinic(None)).reason is Reason.INSIDE_ZONE
    assert e.observe(None, CLINIC[0], CLINIC[1], 5.0, T0).reason is Reason.INSIDE_ZONE
    assert e.check_location(**far(None)).reason is Reason.ALLOWED
    assert e.check_location(**far("")).reason is Reason.ALLOWED  # blank counts as none
    assert store_is_empty(e, backend, url)  # nothing recorded without an id
    e.observe(**at_clinic("ifa-known"))
    b = e.check_many(
        np.full(4, FAR[0]), np.full(4, FAR[1]), 5.0, device_ids=[None, "ifa-known", "", "x"], at=T0
    )
    assert b.reasons() == [
        Reason.ALLOWED,
        Reason.RECENTLY_INSIDE,
        Reason.ALLOWED,
        Reason.ALLOWED,
    ]
    assert not store_is_empty(e, backend, url)
    e.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_device_id_reject_policy(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, fake_clock: FakeClock
) -> None:
    url = presence_url(backend, request, tmp_path)
    policy = 'pack = "us-strictest"\n[requests]\nno_device_id = "reject"\n'
    clock = an_hour_later(fake_clock)
    e = Engine(zone_set(policy), presence=url, presence_secret=SECRET, clock=clock)
    assert e.check_location(**far(None)).reason is Reason.INVALID_REQUEST
    assert e.check_location(**at_clinic(None)).reason is Reason.INVALID_REQUEST
    assert e.check_location(**far("ifa-1")).reason is Reason.ALLOWED
    e.observe(**at_clinic("ifa-1"))
    b = e.check_many(np.full(2, FAR[0]), np.full(2, FAR[1]), 5.0, device_ids=["ifa-1", None])
    assert b.reasons() == [Reason.RECENTLY_INSIDE, Reason.INVALID_REQUEST]
    e.close()


# --- a large batch's keys, made on a second thread --------------------------------------------


def _mixed_batch(n: int, seed: int) -> tuple[Any, Any, list[str], Any]:
    """n requests by 300 devices, a third at the clinic, in time order over an hour."""
    rng = np.random.default_rng(seed)
    inside = rng.random(n) < 1 / 3
    lat = np.where(inside, CLINIC[0], FAR[0])
    lon = np.where(inside, CLINIC[1], FAR[1])
    ids = [f"ifa-{d}" for d in rng.integers(0, 300, n)]
    return lat, lon, ids, T0 + np.sort(rng.uniform(0, 3600, n))


def _keys_threads(monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0) -> list[str]:
    """The names of the threads on which the engine makes a batch's keys, as it does so."""
    names: list[str] = []
    real = Engine._distinct_keys

    def spy(self: Engine, *a: Any) -> Any:
        names.append(threading.current_thread().name)
        time.sleep(delay_s)  # a slow hash: the caller must still wait for it
        return real(self, *a)

    monkeypatch.setattr(Engine, "_distinct_keys", spy)
    return names


def test_keys_made_on_a_second_thread_decide_and_record_as_made_inline(
    monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock
) -> None:
    names = _keys_threads(monkeypatch)
    clock = an_hour_later(fake_clock)
    lat, lon, ids, at = _mixed_batch(2_000, 3)
    runs = []
    for threshold in (500, 10**9):  # above 500 ids: a second thread; never: inline
        monkeypatch.setattr(engine_module, "BACKGROUND_KEYS_MIN", threshold)
        e = Engine(zone_set(), presence="memory://", presence_secret=SECRET, clock=clock)
        first = e.check_many(lat, lon, 5.0, device_ids=ids, at=at)
        later = e.check_many(np.full(300, FAR[0]), np.full(300, FAR[1]), 5.0,
                             device_ids=[f"ifa-{d}" for d in range(300)], at=T0 + 3600)  # fmt: skip
        runs.append((first, later))
        e.close()
    assert names[:2] == ["geofence-keys", "MainThread"]  # the 300-id batch: inline both times
    assert names[2:] == ["MainThread", "MainThread"]
    (a, a_later), (b, b_later) = runs
    for x, y in ((a, b), (a_later, b_later)):
        assert x.reasons() == y.reasons()
        assert np.array_equal(x.category, y.category)
        assert np.array_equal(x.until, y.until, equal_nan=True)
    # The batch both recorded and read its own presence: later requests of its devices were
    # blocked within it, and every device that was at the clinic is blocked afterwards.
    assert Reason.RECENTLY_INSIDE in a.reasons()
    seen = {ids[i] for i in np.flatnonzero(lat == CLINIC[0])}
    assert [r is Reason.RECENTLY_INSIDE for r in a_later.reasons()] == [
        f"ifa-{d}" in seen for d in range(300)
    ]


@pytest.mark.parametrize("fails", ["keys", "locate"])
def test_a_failure_beside_the_keys_thread_fails_closed_and_leaves_no_thread(
    fails: str, monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock
) -> None:
    monkeypatch.setattr(engine_module, "BACKGROUND_KEYS_MIN", 10)
    clock = an_hour_later(fake_clock)
    e = Engine(zone_set(), presence="memory://", presence_secret=SECRET, clock=clock)
    names = _keys_threads(monkeypatch, delay_s=0.3)
    if fails == "keys":
        monkeypatch.setattr(
            engine_module, "distinct_ids", lambda *a: (_ for _ in ()).throw(RuntimeError("x"))
        )
    else:
        index = type(e.zone_set.index)
        monkeypatch.setattr(index, "locate", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    lat, lon, ids, at = _mixed_batch(200, 4)
    b = e.check_many(lat, lon, 5.0, device_ids=ids, at=at)
    assert names == ["geofence-keys"]
    assert b.reasons() == [Reason.INTERNAL_ERROR] * 200
    assert not [t for t in threading.enumerate() if t.name == "geofence-keys"]
    e.close()

"""Store faults under load: Redis killed and restarted, SQLite writer killed mid-write.

Redis: a thread makes observe/check calls with device ids without pause; the server is SIGKILLed
and restarted under it. While it is down, every call that needs history is state_unavailable;
after the restart the same engine recovers unaided; and every presence record whose observe call
returned before the kill is still there (the server runs with appendonly yes and appendfsync
always, as docs/operations.md requires).

SQLite: a child process records presence through Engine.observe / observe_many in a loop and is
SIGKILLed mid-run; every record it reported as done is in the file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapely
from conftest import FakeClock
from redis_server import RedisServer, free_port

from geofence import Category, Engine, Reason
from geofence.policy import load_policy_text
from geofence.presence import DeviceHasher, SQLiteStore
from geofence.presence.redis import RedisStore
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

REPO = Path(__file__).resolve().parent.parent
SECRET = "store-faults-test-secret-0123456789"
T0 = float(int(time.time()))
DAY = 86_400.0
CLINIC = (47.61, -122.33)
FAR = (40.0, -100.0)
CLINIC_CODE = Category.REPRODUCTIVE_HEALTH.code


def zone_set() -> ZoneSet:
    zones = [
        Zone("clinic", "", Category.REPRODUCTIVE_HEALTH, shapely.Point(CLINIC[1], CLINIC[0]), 30.0)
    ]
    return ZoneSet.compile(zones, load_policy_text('pack = "us-strictest"\n', "<t>"), "v-faults")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis")  # appendonly yes, appendfsync always
    server.start()
    yield server
    server.stop()


def test_redis_killed_and_restarted_under_load(own_server: RedisServer) -> None:
    engine = Engine(zone_set(), presence=own_server.url, presence_secret=SECRET)
    # (kind, device index, started, finished, reason), kind "observe" (at the clinic), "check"
    # (far away, needs the device's history) or "anon" (far away, no device id).
    log: list[tuple[str, int, float, float, Reason]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        try:
            while not stop.is_set():
                t = time.monotonic()
                d = engine.observe(f"dev-{i}", CLINIC[0], CLINIC[1], 5.0, at=T0)
                log.append(("observe", i, t, time.monotonic(), d.reason))
                t = time.monotonic()
                d = engine.check_location(
                    lat=FAR[0], lon=FAR[1], accuracy_m=5.0, device_id=f"dev-{i}", at=T0 + 60
                )
                log.append(("check", i, t, time.monotonic(), d.reason))
                t = time.monotonic()
                d = engine.check_location(lat=FAR[0], lon=FAR[1], accuracy_m=5.0, at=T0 + 60)
                log.append(("anon", i, t, time.monotonic(), d.reason))
                i += 1
        except BaseException as exc:
            errors.append(exc)

    def wait_for(cond: object, what: str, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: len(log) >= 600, "calls before the kill")
        kill_started = time.monotonic()
        own_server.kill()
        down_from = time.monotonic()
        wait_for(lambda: len([e for e in log if e[2] > down_from]) >= 30, "calls while down")
        time.sleep(0.5)
        down_until = time.monotonic()
        own_server.restart()
        up_from = time.monotonic()
        wait_for(
            lambda: len([e for e in log if e[2] > up_from and e[0] == "check"]) >= 100,
            "calls after the restart",
        )
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
    assert errors == []

    before = [e for e in log if e[3] < kill_started]
    down = [e for e in log if down_from < e[2] and e[3] < down_until]
    after = [e for e in log if e[2] > up_from]
    # Up: the usual answers.
    assert {e[4] for e in before if e[0] == "observe"} == {Reason.INSIDE_ZONE}
    assert {e[4] for e in before if e[0] == "check"} == {Reason.RECENTLY_INSIDE}
    # Down: whatever needs history fails closed; location alone still decides.
    assert {e[4] for e in down if e[0] == "check"} == {Reason.STATE_UNAVAILABLE}
    assert {e[4] for e in down if e[0] == "observe"} == {Reason.INSIDE_ZONE}
    assert {e[4] for e in down if e[0] == "anon"} == {Reason.ALLOWED}
    assert len([e for e in down if e[0] == "check"]) >= 10
    assert max(e[3] - e[2] for e in down) < 1.0  # failing closed is fast
    # Restarted: the same engine recovers by itself, within a second of the server answering.
    first_ok = min(e[3] for e in after if e[4] is not Reason.STATE_UNAVAILABLE)
    assert first_ok - up_from < 1.0
    late = [e for e in after if e[2] > first_ok + 0.5]
    assert {e[4] for e in late if e[0] == "check"} == {Reason.RECENTLY_INSIDE}

    # No presence record acknowledged before the kill is lost: read them back through a new
    # engine (no process memory) and a plain store.
    acked = sorted({e[1] for e in before if e[0] == "observe"})
    assert len(acked) >= 150
    fresh = Engine(
        zone_set(), presence=own_server.url, presence_secret=SECRET, clock=FakeClock(T0 + DAY)
    )
    lost = [
        i
        for i in acked
        if fresh.check_location(
            lat=FAR[0], lon=FAR[1], accuracy_m=5.0, device_id=f"dev-{i}", at=T0 + DAY
        ).reason
        is not Reason.RECENTLY_INSIDE
    ]
    assert lost == []
    store = RedisStore(own_server.url)
    h = DeviceHasher(SECRET.encode())
    found = store.latest_many(h.keys([f"dev-{i}" for i in acked]))
    assert all(f.get(CLINIC_CODE) == T0 for f in found)
    during = sorted({e[1] for e in down if e[0] == "observe"})
    kept = sum(bool(f) for f in store.latest_many(h.keys([f"dev-{i}" for i in during])))
    print(
        f"redis kill: {len(acked)} records acknowledged before the kill, 0 lost; "
        f"{len(down)} calls while down; {kept}/{len(during)} pings from the outage written "
        f"after it; recovered {first_ok - up_from:.3f} s after the restart; "
        f"{len(log)} decisions in all"
    )
    store.close()
    fresh.close()
    engine.close()


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import shapely
    from geofence import Category, Engine
    from geofence.policy import load_policy_text
    from geofence.zones import Zone
    from geofence.zoneset import ZoneSet

    path, secret, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3])
    zones = [Zone("clinic", "", Category.REPRODUCTIVE_HEALTH, shapely.Point(-122.33, 47.61), 30.0)]
    zs = ZoneSet.compile(zones, load_policy_text('pack = "us-strictest"\\n', "<t>"), "v")
    now = [t0]  # the engine's clock follows the simulated write times (t0 + i)
    engine = Engine(zs, presence="sqlite:///" + path, presence_secret=secret, clock=lambda: now[0])
    i = 0
    while True:
        now[0] = t0 + i
        if i % 4:
            d = engine.observe(f"dev-{i}", 47.61, -122.33, 5.0, at=t0 + i)
            assert d.reason.value == "inside_zone", d
            print("done", i, flush=True)
            i += 1
        else:  # a batch of five devices in one transaction
            ids = [f"dev-{i + k}" for k in range(5)]
            engine.observe_many(ids, np.full(5, 47.61), np.full(5, -122.33), 5.0, t0 + i)
            print("done", *range(i, i + 5), flush=True)
            i += 5
    """
)


def test_sqlite_writer_killed_mid_write_loses_no_committed_record(tmp_path: Path) -> None:
    path = tmp_path / "presence.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), SECRET, repr(T0)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    done: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(done) < 300 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            done += [int(x) for x in line.split()[1:]]
        child.send_signal(signal.SIGKILL)  # mid-run: it is writing the next record now
        done += [int(x) for ln in child.stdout.read().splitlines() for x in ln.split()[1:]]
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(done) >= 300, f"the child recorded only {len(done)}"
    store = SQLiteStore(path)  # opens (and recovers) the WAL the killed process left
    h = DeviceHasher(SECRET.encode())
    found = store.latest_many(h.keys([f"dev-{i}" for i in done]))
    missing = [i for i, f in zip(done, found, strict=True) if CLINIC_CODE not in f]
    assert missing == []
    store.close()
    engine = Engine(
        zone_set(), presence=f"sqlite:///{path}", presence_secret=SECRET, clock=FakeClock(T0 + DAY)
    )
    d = engine.check_location(
        lat=FAR[0], lon=FAR[1], accuracy_m=5.0, device_id=f"dev-{done[-1]}", at=T0 + DAY
    )
    assert d.reason is Reason.RECENTLY_INSIDE
    engine.close()


# Found by fuzzing; the engine now drops records a store refuses outright.
def test_one_absurd_time_does_not_poison_the_redis_engine(redis_url: str) -> None:
    """A record Redis refuses (its expiry overflows) is dropped, not retried before every request.

    The engine's clock reads the absurd time too, so the request is not refused as being from
    the future and its record really reaches the store.
    """
    clock = FakeClock(1.7e308)
    engine = Engine(zone_set(), presence=redis_url, presence_secret=SECRET, clock=clock)
    engine.check_location(
        lat=CLINIC[0], lon=CLINIC[1], accuracy_m=5.0, device_id="absurd", at=1.7e308
    )
    d = engine.check_location(lat=FAR[0], lon=FAR[1], accuracy_m=5.0, device_id="someone-else")
    engine.close()
    assert d.reason is Reason.ALLOWED

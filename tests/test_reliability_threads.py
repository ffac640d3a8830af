"""Thread safety: concurrent check*, observe and forget give the results of the same calls in
sequence, on every presence backend (memory, a SQLite file, a real Redis).

Each thread works on its own devices, so the outcome of its calls does not depend on how the
threads interleave: run one after the other, and then all at once on a fresh store, every call
must return the same decision and the stores must end up holding the same records.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from conftest import FakeClock

from geofence import Category, Engine
from geofence.beacons import Beacon, BeaconRegistry
from geofence.policy import load_policy_text
from geofence.presence.keyhash import DeviceHasher
from geofence.presence.memory import MemoryStore
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

SECRET = "thread-safety-test-secret-0123456789"
T0 = float(int(time.time()))  # stores expire records by the wall clock
CLINIC = (47.61, -122.33)  # reproductive health, radius 30 m
CHURCH = (47.6005, -122.3995)  # inside the church box
FAR = (40.0, -100.0)
BEACON = "f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:7"  # linked to the clinic
THREADS = 4
DEVICES_PER_THREAD = 3
OPS_PER_THREAD = 80


def zone_set() -> ZoneSet:
    zones = [
        Zone("clinic", "", Category.REPRODUCTIVE_HEALTH, shapely.Point(CLINIC[1], CLINIC[0]), 30.0),
        Zone(
            "church", "", Category.PLACE_OF_WORSHIP, shapely.box(-122.40, 47.60, -122.399, 47.601)
        ),
    ]
    beacons = BeaconRegistry(
        (Beacon(BEACON, "ibeacon", None, None, 70.0, "active", "clinic", None, None, 0),)
    )
    return ZoneSet.compile(
        zones, load_policy_text('pack = "us-strictest"\n', "<t>"), "v-threads", beacons=beacons
    )


def script(thread: int) -> list[tuple[Any, ...]]:
    """A thread's calls, fixed by its number: every API, presence written, read and forgotten."""
    rng = np.random.default_rng(thread)
    devices = [f"ifa-t{thread}-d{k}" for k in range(DEVICES_PER_THREAD)]
    ops: list[tuple[Any, ...]] = []
    for j in range(OPS_PER_THREAD):
        at = T0 + 60.0 * j
        dev = devices[int(rng.integers(len(devices)))]
        kind = int(rng.integers(9))
        place = [CLINIC, CHURCH, FAR][int(rng.integers(3))]
        if kind == 0:
            ops.append(("observe", dev, place, at))
        elif kind in (1, 2):
            ops.append(("check_location", dev, place, at))
        elif kind == 3:
            ops.append(("check_many", list(devices), [place, FAR, CLINIC], at))
        elif kind == 4:
            ops.append(("check_beacon", dev, at))
        elif kind == 5:
            ops.append(("check_openrtb", dev, FAR, False))  # reads history (time is "now")
        elif kind == 6:
            ops.append(("check_openrtb", dev, place, True))  # lmt=1: neither reads nor writes
        elif kind == 7:
            ops.append(("forget", dev))
        else:
            ops.append(("observe_many", list(devices), place, at))
    return ops


def run(engine: Engine, op: tuple[Any, ...]) -> Any:
    kind = op[0]
    if kind == "observe":
        _, dev, (lat, lon), at = op
        return engine.observe(dev, lat, lon, 5.0, at=at)
    if kind == "check_location":
        _, dev, (lat, lon), at = op
        return engine.check_location(lat=lat, lon=lon, accuracy_m=5.0, device_id=dev, at=at)
    if kind == "check_many":
        _, devs, places, at = op
        lat = np.array([p[0] for p in places])
        lon = np.array([p[1] for p in places])
        b = engine.check_many(lat, lon, 5.0, devs, np.array([at, at + 1, at + 2]))
        return [d for d in b]
    if kind == "observe_many":
        _, devs, (lat, lon), at = op
        n = len(devs)
        b = engine.observe_many(devs, np.full(n, lat), np.full(n, lon), 5.0, np.full(n, at))
        return [d for d in b]
    if kind == "check_beacon":
        _, dev, at = op
        return engine.check_beacon(BEACON, device_id=dev, at=at)
    if kind == "check_openrtb":
        _, dev, (lat, lon), lmt = op
        req = {
            "id": "r",
            "device": {
                "ifa": dev,
                "lmt": int(lmt),
                "geo": {"lat": lat, "lon": lon, "accuracy": 5, "type": 1},
            },
        }
        return engine.check_openrtb(json.dumps(req).encode())
    _, dev = op
    engine.forget(dev)
    return None


def contents(engine: Engine, store: Any) -> dict[str, dict[int, float]]:
    """What the store holds for every device the scripts use."""
    h = DeviceHasher(SECRET.encode())
    devices = [f"ifa-t{t}-d{k}" for t in range(THREADS) for k in range(DEVICES_PER_THREAD)]
    found = store.latest_many(h.keys(devices))
    return dict(zip(devices, found, strict=True))


def presence_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path, run: str) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/{run}.db"
    url = str(request.getfixturevalue("redis_url"))
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    return url


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_concurrent_calls_equal_sequential_calls(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, fake_clock: FakeClock
) -> None:
    scripts = [script(t) for t in range(THREADS)]
    kinds = {op[0] for s in scripts for op in s}
    assert kinds == {
        "observe",
        "check_location",
        "check_many",
        "observe_many",
        "check_beacon",
        "check_openrtb",
        "forget",
    }

    # Both engines' clocks stand still at the end of the scripted times, so every call's time
    # is in the engine's present or past, and OpenRTB's "now" is the same in both runs.
    fake_clock.to(T0 + 60.0 * OPS_PER_THREAD)
    # In sequence: thread 0's calls, then thread 1's, ...
    seq_engine = Engine(
        zone_set(),
        presence=presence_url(backend, request, tmp_path, "seq"),
        presence_secret=SECRET,
        clock=fake_clock,
    )
    sequential = [[run(seq_engine, op) for op in s] for s in scripts]
    seq_contents = contents(seq_engine, seq_engine._store)
    seq_engine.close()

    # All at once, on a fresh store; a barrier lines the threads up so they really overlap.
    par_engine = Engine(
        zone_set(),
        presence=presence_url(backend, request, tmp_path, "par"),
        presence_secret=SECRET,
        clock=fake_clock,
    )
    results: list[list[Any]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for op in scripts[t]:
                results[t].append(run(par_engine, op))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert errors == []
    par_contents = contents(par_engine, par_engine._store)
    if isinstance(par_engine._store, MemoryStore):  # and nothing else, for the in-process store
        h = DeviceHasher(SECRET.encode())
        assert set(par_engine._store.dump()) <= set(h.keys(list(par_contents)))
    par_engine.close()

    for t in range(THREADS):
        for j, (a, b) in enumerate(zip(sequential[t], results[t], strict=True)):
            assert a == b, (t, j, scripts[t][j], a, b)
    assert par_contents == seq_contents
    # The workload is not trivial: presence was recorded, read back, and forgotten.
    reasons = {
        d.reason.value
        for s in sequential
        for r in s
        for d in (r if isinstance(r, list) else [r])
        if d is not None
    }
    assert {"inside_zone", "recently_inside", "beacon_in_zone", "allowed"} <= reasons
    assert any(par_contents.values()) and not all(par_contents.values())

"""Beacon checks per second and OpenRTB requests per second, single and batched, in one run.

    .venv/bin/python benchmarks/bench_beacons_openrtb.py [--n 20000] [--zones zones/]

Beacon sightings cycle through every row of the zone folder's `beacons.csv` plus one unknown
id, each with its own device id (so every check reads and may write the presence memory).
OpenRTB requests are JSON bytes (parsing included): a GPS fix with accuracy and ifa, half of
them also carrying a `device.ext.beacons` sighting; a tenth have no location at all.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from geofence import Engine
from geofence.presence.memory import MemoryStore

ROOT = Path(__file__).resolve().parent.parent


def _timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zones", type=Path, default=ROOT / "zones")
    ap.add_argument("--n", type=int, default=20_000, help="requests per measurement")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    engine = Engine.from_paths(args.zones, presence=MemoryStore())
    reg = engine.zone_set.beacons
    ids = [b.beacon_id for b in reg.beacons] if reg is not None else []
    ids.append("00000000-1111-4222-8333-444444444444:1:1")  # unknown
    n = args.n
    rng = np.random.default_rng(args.seed)
    now = time.time()
    beacon_ids = [ids[i % len(ids)] for i in range(n)]
    devices = [f"dev-{i}" for i in range(n)]
    at = [now] * n

    lat = rng.uniform(51.48, 51.535, n)
    lon = rng.uniform(-0.21, -0.06, n)
    requests = []
    for i in range(n):
        device: dict[str, Any] = {"ifa": f"ifa-{i}", "ua": "Mozilla/5.0", "ip": "203.0.113.7"}
        if i % 10:
            device["geo"] = {
                "lat": round(float(lat[i]), 6),
                "lon": round(float(lon[i]), 6),
                "accuracy": 20,
                "type": 1,
                "lastfix": 30,
            }
        if i % 2:
            device["ext"] = {"beacons": [{"id": beacon_ids[i], "rssi": -70}]}
        req = {"id": f"r{i}", "imp": [{"id": "1", "banner": {"w": 320, "h": 50}}], "device": device}
        requests.append(json.dumps(req).encode())

    # Warm up (imports, first index queries) outside the timings.
    engine.check_beacon(ids[0], "warm", now)
    engine.check_openrtb(requests[0])

    rows = []
    t, single = _timed(
        lambda: [
            engine.check_beacon(b, d, a) for b, d, a in zip(beacon_ids, devices, at, strict=True)
        ]
    )
    rows.append(("check_beacon (one call each)", n, t, Counter(d.reason.value for d in single)))
    engine = Engine.from_paths(args.zones, presence=MemoryStore())
    t, many = _timed(lambda: engine.check_beacons_many(beacon_ids, devices, at))
    rows.append(("check_beacons_many (one batch)", n, t, Counter(d.reason.value for d in many)))
    engine = Engine.from_paths(args.zones, presence=MemoryStore())
    t, single = _timed(lambda: [engine.check_openrtb(r) for r in requests])
    rows.append(
        ("check_openrtb (bytes, one call each)", n, t, Counter(d.reason.value for d in single))
    )
    engine = Engine.from_paths(args.zones, presence=MemoryStore())
    t, many = _timed(lambda: engine.check_openrtb_many(requests))
    rows.append(
        ("check_openrtb_many (bytes, one batch)", n, t, Counter(d.reason.value for d in many))
    )

    print(
        f"geofence beacons/OpenRTB benchmark: {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}, {platform.processor() or '?'}"
    )
    print(
        f"zones {len(engine.zone_set)} from {args.zones}, beacons {len(ids) - 1} (+1 unknown), "
        f"memory presence store, one run"
    )
    print()
    head = ("method", "requests", "seconds", "per second", "us each")
    print(f"| {head[0]:<38} | {head[1]:>8} | {head[2]:>7} | {head[3]:>10} | {head[4]:>7} |")
    print(f"|{'-' * 40}|{'-' * 9}:|{'-' * 8}:|{'-' * 11}:|{'-' * 8}:|")
    for name, count, secs, _ in rows:
        rate, each = count / secs, secs / count * 1e6
        print(f"| {name:<38} | {count:>8} | {secs:>7.3f} | {rate:>10,.0f} | {each:>7.1f} |")
    print()
    for name, _, _, reasons in rows:
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    agree = rows[0][3] == rows[1][3] and rows[2][3] == rows[3][3]
    print("single and batched agree" if agree else "MISMATCH between single and batched")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())

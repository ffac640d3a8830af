"""Hot reload under load: 100 reloads, good and corrupt alternating, while threads decide.

Three reader threads call check_location, check_many and check_openrtb without pause; a fourth
reloads the zone folder 100 times, alternating good zone sets (three variants, so the version
changes) and corrupt ones (bad geometry, a truncated file, an unknown category). Every corrupt
reload must raise and leave the serving set in place; no call may raise; every decision must name
a version that was serving, and match what that version decides for the same probe point
(precomputed per version from an engine built on that set alone).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geofence import Engine, Reason, ZoneFileError
from geofence.zoneset import ZoneSet

N_ZONES = 30
VARIANTS = 3
RELOADS = 100
POLICY = 'pack = "us-strictest"\n'
CATEGORIES = ["clinic", "place_of_worship", "school_childcare"]


def centre(i: int) -> tuple[float, float]:
    """(lon, lat) of zone slot i: a grid 0.05 degrees apart near Seattle (buffers never touch)."""
    return -122.5 + 0.05 * (i % 6), 47.4 + 0.05 * (i // 6)


def variant_features(k: int) -> list[dict[str, Any]]:
    """Variant k holds the slots i with (i + k) % VARIANTS != 0, categories rotated by k."""
    out = []
    for i in range(N_ZONES):
        if (i + k) % VARIANTS == 0:
            continue
        lon, lat = centre(i)
        d = 0.001
        out.append(
            {
                "type": "Feature",
                "properties": {"id": f"z{i}", "category": CATEGORIES[(i + k) % len(CATEGORIES)]},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
                    ],
                },
            }
        )
    return out


def good_text(k: int) -> str:
    return json.dumps({"type": "FeatureCollection", "features": variant_features(k)})


def corrupt_text(kind: str) -> str:
    """A defective zone file of one of three kinds."""
    data = json.loads(good_text(0))
    if kind == "bad_geometry":  # a self-intersecting ring (a bow tie)
        lon, lat = centre(1)
        data["features"][0]["geometry"]["coordinates"] = [
            [
                [lon, lat],
                [lon + 0.001, lat + 0.001],
                [lon + 0.001, lat],
                [lon, lat + 0.001],
                [lon, lat],
            ]
        ]
        return json.dumps(data)
    if kind == "unknown_category":
        data["features"][3]["properties"]["category"] = "hospitl"
        return json.dumps(data)
    text = json.dumps(data)
    return text[: len(text) // 2]  # truncated mid-write


CORRUPT = ["bad_geometry", "truncated", "unknown_category"]
CORRUPT_MESSAGE = {
    "bad_geometry": "invalid geometry",
    "truncated": "cannot be read",
    "unknown_category": "hospitl",
}


def write_set(folder: Path, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "policy.toml").write_text(POLICY)
    (folder / "zones.geojson").write_text(text)


def probes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inside, near and clear of every slot, plus far away: (lat, lon, accuracy)."""
    lat, lon = [], []
    for i in range(N_ZONES):
        x, y = centre(i)
        for dx, dy in ((0.0005, 0.0005), (0.004, 0.0005), (0.02, 0.02)):
            lon.append(x + dx)
            lat.append(y + dy)
    lat.append(10.0)
    lon.append(10.0)
    return np.array(lat), np.array(lon), np.full(len(lat), 10.0)


def test_reload_under_load(tmp_path: Path) -> None:
    lat, lon, acc = probes()
    n = len(lat)
    # What each good version decides for every probe, from an engine on that set alone.
    expected: dict[str, tuple[list[Reason], list[str | None]]] = {}
    for k in range(VARIANTS):
        folder = tmp_path / f"variant{k}"
        write_set(folder, good_text(k))
        zs = ZoneSet.from_paths(folder)
        b = Engine(zs).check_many(lat, lon, acc)
        expected[zs.version] = (b.reasons(), b.zone_id_array().tolist())
    versions = list(expected)
    assert len(set(versions)) == VARIANTS
    # The variants disagree on many probes, so a decision attributed to the wrong set shows.
    assert sum(expected[versions[0]][0][i] != expected[versions[1]][0][i] for i in range(n)) > 10
    assert {r for v in versions for r in expected[v][0]} >= {
        Reason.INSIDE_ZONE,
        Reason.NEAR_ZONE,
        Reason.ALLOWED,
    }

    serving = tmp_path / "serving"
    write_set(serving, good_text(0))
    engine = Engine.from_paths(serving)
    assert engine.version == versions[0]
    served = {engine.version}  # every version that was ever swapped in

    stop = threading.Event()
    errors: list[BaseException] = []
    # Each decision is checked as it is made, against the outcome of the version it names (a
    # list of every decision grew to millions and its garbage collection starved the reloader).
    by_api: dict[str, int] = {}
    versions_seen: set[str] = set()
    mismatches: list[tuple[str, str, int, Reason, str | None, Reason, str | None]] = []
    lock = threading.Lock()

    def check(api: str, version: str, i: int, reason: Reason, zone: str | None) -> None:
        if version not in expected:
            raise AssertionError(f"{api}: decision names an unknown version {version}")
        want_reason, want_zone = expected[version][0][i], expected[version][1][i]
        if (reason, zone) != (want_reason, want_zone) and len(mismatches) < 5:
            mismatches.append((api, version, i, reason, zone, want_reason, want_zone))

    def reader(api: str) -> None:
        rng = np.random.default_rng(hash(api) % 2**32)
        count = 0
        seen_here: set[str] = set()
        try:
            while not stop.is_set():
                if api == "check_many":
                    b = engine.check_many(lat, lon, acc)
                    zones = b.zone_id_array().tolist()
                    for i, r in enumerate(b.reasons()):
                        check(api, b.zone_set_version, i, r, zones[i])
                    seen_here.add(b.zone_set_version)
                    count += n
                    time.sleep(0)
                    continue
                i = int(rng.integers(n))
                if api == "check_location":
                    d = engine.check_location(lat=lat[i], lon=lon[i], accuracy_m=acc[i])
                else:
                    geo = {"lat": lat[i], "lon": lon[i], "accuracy": acc[i], "type": 1}
                    req: Any = {"id": "r", "device": {"geo": geo}}
                    if i % 2:
                        req = json.dumps(req).encode()
                    d = engine.check_openrtb(req)
                check(api, d.zone_set_version, i, d.reason, d.zone_id)
                seen_here.add(d.zone_set_version)
                count += 1
                # Back to back, but yielding the GIL between calls: three threads that never
                # yield starve the reloader (CPython's GIL convoy), which measures the
                # interpreter's scheduling, not geofence.
                time.sleep(0)
        except BaseException as exc:  # the test: nothing may escape a check
            errors.append(exc)
        with lock:
            by_api[api] = count
            versions_seen.update(seen_here)

    refused: list[tuple[str, str, str]] = []  # (kind, version before, version after)

    def reloader() -> None:
        try:
            for r in range(RELOADS):
                if r % 2:
                    kind = CORRUPT[(r // 2) % len(CORRUPT)]
                    before = engine.version
                    write_set(serving, corrupt_text(kind))
                    with pytest.raises(ZoneFileError) as info:
                        engine.reload(serving)
                    assert CORRUPT_MESSAGE[kind] in str(info.value), str(info.value)
                    refused.append((kind, before, engine.version))
                else:
                    write_set(serving, good_text((r // 2 + 1) % VARIANTS))
                    version = engine.reload(serving)
                    assert version in expected and engine.version == version
                    served.add(version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(api,)) for api in expected_apis()]
    for t in threads:
        t.start()
    start = time.monotonic()
    reload_thread = threading.Thread(target=reloader)
    reload_thread.start()
    reload_thread.join(120)
    took = time.monotonic() - start
    stop.set()
    for t in threads:
        t.join(30)
    assert not reload_thread.is_alive()
    assert errors == [], errors[:3]
    assert len(refused) == RELOADS // 2
    assert {k for k, _, _ in refused} == set(CORRUPT)
    assert all(before == after for _, before, after in refused)  # the serving set stayed
    assert served == set(versions)

    assert mismatches == [], mismatches
    assert set(by_api) == set(expected_apis())
    assert all(count >= 50 for count in by_api.values()), by_api
    # Decisions were made under every version (the readers ran all along, not only at the end).
    assert versions_seen == set(versions)
    print(f"{RELOADS} reloads in {took:.1f} s; decisions: {by_api}")


def expected_apis() -> list[str]:
    return ["check_location", "check_many", "check_openrtb"]

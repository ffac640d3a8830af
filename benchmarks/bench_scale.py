"""geofence against shapely STRtree, geopandas sjoin and an rtree loop at 1k, 50k and 1M zones.

One command, one table, a plot (issue 6). Zones are real footprints (London places of worship and
Malaysian schools from ../shared/data/zones/), sampled or replicated to size; every method runs in
its own fresh process under a memory and time watchdog. See benchmarks/README.md.

    .venv/bin/python benchmarks/bench_scale.py             # 1k, 50k, 1M zones
    .venv/bin/python benchmarks/bench_scale.py --quick     # 1k, 50k
    .venv/bin/python benchmarks/bench_scale.py --sizes 1000,200000 --points 100000
    .venv/bin/python benchmarks/bench_scale.py --startup-only --sizes 50000   # .gfz only
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere without installing
    sys.path.insert(0, str(REPO))

from benchmarks.bench_batch import (  # noqa: E402
    ACCURACY_M,
    M_PER_DEG,
    SHARED,
    TILE_DEG,
    best_of,
    buffer_metric,
    effective_buffers,
    load_shared,
    machine_info,
    make_points,
    method_rtree,
    method_sjoin,
    method_strtree,
    pct,
    proc_status_mb,
    replicate,
    reset_peak,
    rss_mb,
    versions,
)
from geofence.engine import Engine  # noqa: E402
from geofence.reasons import Reason  # noqa: E402
from geofence.zones import Zone  # noqa: E402
from geofence.zoneset import ZoneSet  # noqa: E402

F64 = npt.NDArray[np.float64]
RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (1_000, 50_000, 1_000_000)
QUICK = (1_000, 50_000)

# One process per core: the workers and their libraries run single-threaded.
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


# --- zones ----------------------------------------------------------------------------------------


def spread_copies(
    zones: list[Zone], n: int, rng: np.random.Generator, jitter_m: float
) -> list[Zone]:
    """n zones: the real ones plus copies placed in fresh 1-degree cells, density kept real.

    Copy k moves the zones of each 1-degree cell the real set occupies (by zone centre) into its
    own unoccupied cell (|lat| < 60), keeping each zone's place within the cell, then shifts
    every zone by up to +-jitter_m east and north. Longitudes are rescaled about the zone's
    centre by cos(source lat) / cos(destination lat), so a footprint keeps its size in metres.
    So a 1M set looks like ~50 copies of London and Malaysia side by side (a country's worth of
    towns), not 50 footprints piled on each real one. A copy that comes out invalid is redrawn.
    """
    if n <= len(zones):
        return replicate(zones, n, rng)
    geoms = np.array([z.geometry for z in zones], dtype=object)
    b = shapely.bounds(geoms)
    mx, my = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    cell_x, cell_y = np.floor(mx).astype(int), np.floor(my).astype(int)
    occupied = set(zip(cell_x.tolist(), cell_y.tolist(), strict=True))
    free = [(x, y) for x in range(-179, 179) for y in range(-60, 60) if (x, y) not in occupied]
    pool = [free[i] for i in rng.permutation(len(free))]
    cells = sorted(occupied)
    out = list(zones)
    copy = 0
    while len(out) < n:
        copy += 1
        if len(pool) < len(cells):
            raise SystemExit(f"not enough free 1-degree cells for {n:,} zones")
        dest = {c: pool.pop() for c in cells}
        take = min(len(zones), n - len(out))
        src = np.sort(rng.choice(len(zones), take, replace=False))
        dx = np.array([dest[(cell_x[i], cell_y[i])][0] - cell_x[i] for i in src], float)
        dy = np.array([dest[(cell_x[i], cell_y[i])][1] - cell_y[i] for i in src], float)
        new_my = my[src] + dy
        east, north = rng.uniform(-jitter_m, jitter_m, (2, take))
        ratio = np.cos(np.radians(my[src])) / np.cos(np.radians(new_my))
        coords, owner = shapely.get_coordinates(geoms[src], return_index=True)
        x = mx[src][owner] + dx[owner] + (coords[:, 0] - mx[src][owner]) * ratio[owner]
        x += (east / (M_PER_DEG * np.cos(np.radians(new_my))))[owner]
        y = coords[:, 1] + dy[owner] + (north / M_PER_DEG)[owner]
        moved = shapely.from_wkb(shapely.to_wkb(geoms[src]))  # copies: set_coordinates is in place
        moved = shapely.set_coordinates(moved, np.column_stack([x, y]))
        nb = shapely.bounds(moved)
        ok = shapely.is_valid(moved) & (nb[:, 0] > -180) & (nb[:, 2] < 180)
        for i, g, good in zip(src, moved, ok, strict=True):
            if good:
                z = zones[i]
                out.append(replace(z, id=f"{z.id}#{copy}", geometry=g))
    return out[:n]


def make_zones(
    real: list[Zone], n: int, layout: str, rng: np.random.Generator, jitter_m: float
) -> list[Zone]:
    if layout == "pile":  # bench_batch's --zones: copies jittered around the originals
        return replicate(real, n, rng, jitter_m)
    return spread_copies(real, n, rng, jitter_m)


def device_pool(n: int, rng: np.random.Generator) -> list[str]:
    """n advertising-id-like strings (a UUID's 36 characters), as bench_presence.py makes them."""
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    cuts = ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))
    return ["-".join(h[a:z] for a, z in cuts) for h in (bytes(r).hex().upper() for r in raw)]


# --- workers (fresh processes) --------------------------------------------------------------------


def load_job(job: dict[str, Any], buffered: bool = False) -> dict[str, Any]:
    pts = np.load(job["points"])
    ctx: dict[str, Any] = {
        "lon": pts["lon"],
        "lat": pts["lat"],
        "near": pts["near"],
        "runs": job["runs"],
        "subsample": np.arange(job["rtree_points"]),
    }
    if buffered:
        with open(job["buffered"], "rb") as fh:
            ctx["buffered"] = pickle.load(fh)
    return ctx


def kinds_of(ctx: dict[str, Any], *arrays: npt.NDArray[Any]) -> dict[str, tuple[Any, ...]]:
    """The arrays' uniform points and their near-edge points, each kind contiguous.

    Why: the two kinds cost an index very differently (a uniform point is mostly far from every
    zone; a near-edge one must be measured), so the table's mix is also timed kind by kind.
    """
    near = ctx["near"]
    return {
        kind: tuple(np.ascontiguousarray(a[sel]) for a in arrays)
        for kind, sel in (("uniform", ~near), ("near_edges", near))
    }


def reason_counts(codes: npt.NDArray[np.uint8]) -> dict[str, int]:
    values, counts = np.unique(codes, return_counts=True)
    return {Reason.from_code(int(c)).value: int(k) for c, k in zip(values, counts, strict=True)}


def worker_geofence(job: dict[str, Any]) -> dict[str, Any]:
    """Compile, save, batch without ids, batch with ids + memory presence, single calls."""
    with open(job["zones"], "rb") as fh:
        zones, policy = pickle.load(fh)
    ctx = load_job(job)
    inputs_mb = rss_mb()
    t = time.perf_counter()
    zs = ZoneSet.compile(zones, policy, "bench")
    compile_s = time.perf_counter() - t
    Path(job["mark"]).write_text(f"{compile_s}\n")  # the watchdog's compile clock stops here
    compile_peak = rss_mb()
    del zones
    gc.collect()
    after_compile = proc_status_mb("VmRSS")
    engine = Engine(zs)
    saving = timed_save(engine, job["gfz"])

    lon, lat = ctx["lon"], ctx["lat"]
    n = len(lon)
    acc = np.full(n, ACCURACY_M)
    engine.check_many(lat[:1000], lon[:1000], acc[:1000])  # warm-up (numba cache load)
    secs, d = best_of(job["runs"], lambda: engine.check_many(lat, lon, acc))
    cpu = time.process_time()
    engine.check_many(lat, lon, acc)
    cpu_s = time.process_time() - cpu
    by_kind = {}
    for kind, (la, lo, ac) in kinds_of(ctx, lat, lon, acc).items():
        secs_kind, _ = best_of(job["runs"], partial(engine.check_many, la, lo, ac))
        by_kind[kind] = {"n": len(la), "secs": secs_kind}

    rng = np.random.default_rng(job["seed"])
    pool = device_pool(job["devices"], rng)
    ids = np.empty(n, dtype=object)
    ids[:] = [pool[i] for i in rng.integers(0, len(pool), n)]
    at = np.full(n, float(int(time.time())) - 60.0)
    with_ids = Engine(zs, presence="memory://")
    d_ids = with_ids.check_many(lat, lon, acc, device_ids=ids, at=at)  # warm-up: store presence

    # Each timed batch comes a second after the one before, as live traffic does: a batch
    # replayed at the same time would change no stored record, and write-free batches ran
    # about a fifth faster than live ones (1k zones: 2.2 against 1.7 M/s).
    def next_batch() -> Any:
        at[:] += 1.0
        return with_ids.check_many(lat, lon, acc, device_ids=ids, at=at)

    secs_ids, d_ids = best_of(job["runs"], next_batch)
    # Both threads' CPU: a batch this large hashes its device ids on a second thread.
    cpu = time.process_time()
    next_batch()
    cpu_ids_s = time.process_time() - cpu

    calls = job["latency_calls"]
    lat_l, lon_l, ids_l = lat[:calls].tolist(), lon[:calls].tolist(), ids[:calls].tolist()
    now = float(at[0])
    check = with_ids.check_location
    for i in range(min(500, calls)):  # warm-up
        check(lat_l[i], lon_l[i], ACCURACY_M, device_id=ids_l[i], at=now)
    clock = time.perf_counter_ns
    ns = np.empty(calls, dtype=np.int64)
    single_allowed = np.empty(calls, dtype=bool)
    # What the tail is made of: calls the grid could not settle (they take the batch path and
    # the exact index), and full garbage collections during the loop.
    exact_calls = 0
    full_path = with_ids._batch

    def counted(*a: Any, **k: Any) -> Any:
        nonlocal exact_calls
        exact_calls += 1
        return full_path(*a, **k)

    with_ids._batch = counted  # type: ignore[method-assign]
    gen2 = gc.get_stats()[2]["collections"]
    for i in range(calls):
        t0 = clock()
        dec = check(lat_l[i], lon_l[i], ACCURACY_M, device_id=ids_l[i], at=now)
        ns[i] = clock() - t0
        single_allowed[i] = dec.allowed
    gen2 = gc.get_stats()[2]["collections"] - gen2
    del with_ids._batch
    return {
        "n": n,
        "inputs_mb": inputs_mb,
        "compile_s": compile_s,
        "compile_peak_mb": compile_peak,
        "rss_after_compile_mb": after_compile,
        **saving,
        "gfz_mb": Path(job["gfz"]).stat().st_size / 2**20,
        "secs": secs,
        "cpu_s": cpu_s,
        "by_kind": by_kind,
        "reject": ~d.allowed,
        "reasons": reason_counts(d.reason),
        "secs_ids": secs_ids,
        "cpu_ids_s": cpu_ids_s,
        "reasons_ids": reason_counts(d_ids.reason),
        "single_ns": ns,
        "single_vs_batch_ids": int((single_allowed != d_ids.allowed[:calls]).sum()),
        "single_exact_calls": exact_calls,
        "single_full_gcs": gen2,
    }


def timed_save(engine: Engine, path: str) -> dict[str, Any]:
    """engine.save(path): its seconds, its own peak RSS, and the worker's peak before it.

    Why its own peak: a compile's caller saves next (`geofence compile -o`), so compile and
    save must each fit the memory budget. The peak is restarted for it (None where it cannot
    be); worker_main counts the peak before it into the worker's.
    """
    before = rss_mb()
    reset = reset_peak()
    t = time.perf_counter()
    engine.save(path)
    save_s = time.perf_counter() - t
    return {
        "save_s": save_s,
        "save_peak_mb": rss_mb() if reset else None,
        "peak_before_reset_mb": before,
    }


def worker_compile_save(job: dict[str, Any]) -> dict[str, Any]:
    """Compile and save only (--startup-only): the .gfz's size and the time to write it."""
    with open(job["zones"], "rb") as fh:
        zones, policy = pickle.load(fh)
    t = time.perf_counter()
    zs = ZoneSet.compile(zones, policy, "bench")
    compile_s = time.perf_counter() - t
    Path(job["mark"]).write_text(f"{compile_s}\n")
    del zones
    gc.collect()
    saving = timed_save(Engine(zs), job["gfz"])
    return {
        "compile_s": compile_s,
        **saving,
        "gfz_mb": Path(job["gfz"]).stat().st_size / 2**20,
    }


def worker_strtree(job: dict[str, Any]) -> dict[str, Any]:
    """bench_batch's STRtree batch, plus tree.query(Point) per call, each call timed alone."""
    ctx = load_job(job, buffered=True)
    inputs_mb = rss_mb()
    res = method_strtree(ctx)
    res["by_kind"] = {
        kind: {"n": len(la), "secs": method_strtree({**ctx, "lon": lo, "lat": la})["secs"]}
        for kind, (la, lo) in kinds_of(ctx, ctx["lat"], ctx["lon"]).items()
    }
    tree = shapely.STRtree(ctx["buffered"])
    calls = job["latency_calls"]
    lon, lat = ctx["lon"][:calls].tolist(), ctx["lat"][:calls].tolist()
    for x, y in zip(lon[:500], lat[:500], strict=True):
        tree.query(shapely.Point(x, y), predicate="intersects")
    clock = time.perf_counter_ns
    ns = np.empty(calls, dtype=np.int64)
    for i, (x, y) in enumerate(zip(lon, lat, strict=True)):
        t0 = clock()
        tree.query(shapely.Point(x, y), predicate="intersects")
        ns[i] = clock() - t0
    res.update(inputs_mb=inputs_mb, single_ns=ns)
    return res


def worker_sjoin(job: dict[str, Any]) -> dict[str, Any]:
    ctx = load_job(job, buffered=True)
    inputs_mb = rss_mb()
    return {**method_sjoin(ctx), "inputs_mb": inputs_mb}


def worker_rtree(job: dict[str, Any]) -> dict[str, Any]:
    ctx = load_job(job, buffered=True)
    inputs_mb = rss_mb()
    return {**method_rtree(ctx), "inputs_mb": inputs_mb}


WORKERS = {
    "geofence": worker_geofence,
    "compile_save": worker_compile_save,
    "strtree": worker_strtree,
    "sjoin": worker_sjoin,
    "rtree": worker_rtree,
}

# Start-up from a compiled file, in an interpreter that imports nothing but geofence.
STARTUP = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from geofence.engine import Engine
t1 = time.perf_counter()
engine = Engine.load(sys.argv[1])
t2 = time.perf_counter()
engine.check_location(51.5, -0.1, 20.0, device_id="ifa-startup")
t3 = time.perf_counter()
hwm = None
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1]) / 1024
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_check_s": t3 - t2,
                  "peak_rss_mb": hwm}))
"""


# --- the watchdog ---------------------------------------------------------------------------------


def mem_available_mb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def pid_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def watched(
    cmd: list[str],
    max_rss_mb: float,
    min_free_mb: float,
    max_s: float,
    mark: Path | None = None,
    max_compile_s: float | None = None,
) -> dict[str, Any]:
    """Run cmd, polling its RSS; kill it (by its pid) past the limits. Returns how it ended."""
    env = {**os.environ, **WORKER_ENV}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    peak, stopped, timeline = 0.0, None, []
    next_sample = 0.0
    while proc.poll() is None:
        elapsed = time.perf_counter() - start
        rss = pid_rss_mb(proc.pid)
        peak = max(peak, rss)
        if elapsed >= next_sample:
            timeline.append((round(elapsed, 1), round(rss)))
            next_sample += 5.0
        free = mem_available_mb()
        compiling = mark is not None and not mark.exists()
        if rss > max_rss_mb:
            stopped = f"RSS {rss / 1024:.1f} GB > {max_rss_mb / 1024:g} GB"
        elif free < min_free_mb:
            stopped = f"machine memory low ({free:,.0f} MB free) at RSS {rss / 1024:.1f} GB"
        elif compiling and max_compile_s is not None and elapsed > max_compile_s:
            stopped = f"compile still running after {max_compile_s:g} s"
        elif elapsed > max_s:
            stopped = f"still running after {max_s:g} s"
        if stopped:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    return {
        "returncode": proc.returncode,
        "stopped": (f"{stopped} after {time.perf_counter() - start:.0f} s" if stopped else None),
        "wall_s": time.perf_counter() - start,
        "watch_peak_mb": peak,
        "timeline": timeline,
        "stdout": out,
        "compiling_when_stopped": bool(stopped and mark is not None and not mark.exists()),
    }


def run_worker(name: str, job_path: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    job = json.loads(job_path.read_text())
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, str(job_path), str(out)]
    w = watched(
        cmd,
        args.max_rss_gb * 1024,
        args.min_free_gb * 1024,
        args.max_worker_s,
        Path(job["mark"]) if name in ("geofence", "compile_save") else None,
        args.max_compile_s if name in ("geofence", "compile_save") else None,
    )
    if w["stopped"] or w["returncode"] != 0 or not out.exists():
        return {"failed": w["stopped"] or f"exit {w['returncode']}", "watch": w}
    with out.open("rb") as fh:
        res = pickle.load(fh)
    res["watch"] = {k: v for k, v in w.items() if k != "stdout"}
    return res


def worker_main(name: str, job_path: Path, out: Path) -> int:
    job = json.loads(job_path.read_text())
    res = WORKERS[name](job)
    # The whole worker's peak, also where it restarted VmHWM to measure a step's own.
    res["peak_rss_mb"] = max(rss_mb(), res.pop("peak_before_reset_mb", 0.0))
    with out.open("wb") as fh:
        pickle.dump(res, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return 0


# --- one size -------------------------------------------------------------------------------------


def measure_size(
    real: list[Zone],
    policy: Any,
    n_zones: int,
    args: argparse.Namespace,
    tmp: Path,
    methods: tuple[str, ...] = ("geofence", "strtree", "sjoin", "rtree"),
) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + n_zones)
    t = time.perf_counter()
    zones = make_zones(real, n_zones, args.layout, rng, args.jitter_km * 1000)
    make_s = time.perf_counter() - t
    geoms = np.array([z.geometry for z in zones], dtype=object)
    radius = np.array([z.radius_m for z in zones], dtype=np.float64)
    buffer_m = effective_buffers(zones, policy)
    reach = radius + buffer_m + ACCURACY_M
    lon, lat, counts, near = make_points(geoms, reach, radius, args.points, rng, "regions")
    t = time.perf_counter()
    buffered = buffer_metric(geoms, reach, args.quad_segs)
    buffer_s = time.perf_counter() - t
    n_invalid = int((~shapely.is_valid(buffered)).sum())
    kinds = Counter(shapely.get_type_id(geoms).tolist())
    print(
        f"  {n_zones:,} zones: made in {make_s:.1f} s ({args.layout}); {len(lon):,} points "
        f"({counts['uniform']:,} uniform over {counts['uniform_boxes']} 1-degree boxes, "
        f"{counts['near_edge'] + counts['near_reach']:,} near edges); baseline buffering "
        f"{buffer_s:.1f} s",
        flush=True,
    )
    d = tmp / str(n_zones)
    d.mkdir()
    with (d / "zones.pickle").open("wb") as fh:
        pickle.dump((zones, policy), fh, protocol=pickle.HIGHEST_PROTOCOL)
    with (d / "buffered.pickle").open("wb") as fh:
        pickle.dump(buffered, fh, protocol=pickle.HIGHEST_PROTOCOL)
    np.savez(d / "points.npz", lon=lon, lat=lat, near=near)
    del zones, geoms, buffered
    gc.collect()
    job = {
        "zones": str(d / "zones.pickle"),
        "buffered": str(d / "buffered.pickle"),
        "points": str(d / "points.npz"),
        "gfz": str(d / "zones.gfz"),
        "mark": str(d / "compiled.mark"),
        "runs": args.runs,
        "seed": args.seed,
        "devices": args.devices,
        "rtree_points": min(args.rtree_points, len(lon)),
        "latency_calls": min(args.latency_calls, len(lon)),
    }
    job_path = d / "job.json"
    job_path.write_text(json.dumps(job))

    res: dict[str, Any] = {
        "zones": n_zones,
        "points": {"count": len(lon), **counts, "accuracy_m": ACCURACY_M},
        "zone_types": {shapely.GeometryType(k).name: v for k, v in kinds.items()},
        "buffers_m": {str(k): v for k, v in Counter(buffer_m.tolist()).items()},
        "make_zones_s": make_s,
        "buffer_s": buffer_s,
        "invalid_buffers": n_invalid,
        "methods": {},
    }
    for name in methods:
        r = run_worker(name, job_path, d / f"{name}.out", args)
        r["load_avg"] = os.getloadavg()
        res["methods"][name] = r
        status = r.get("failed") or "ok"
        print(f"    {name:<9} {status}", flush=True)
        if name == "geofence" and "failed" not in r:
            startup = watched(
                [sys.executable, "-c", STARTUP, job["gfz"]],
                args.max_rss_gb * 1024,
                args.min_free_gb * 1024,
                args.max_worker_s,
            )
            if startup["stopped"] or startup["returncode"] != 0:
                res["startup"] = {"failed": startup["stopped"] or f"exit {startup['returncode']}"}
            else:
                res["startup"] = json.loads(startup["stdout"].strip().splitlines()[-1])
            print(f"    startup   {res['startup'].get('failed', 'ok')}", flush=True)
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    return res


def warm_up(real: list[Zone], policy: Any, args: argparse.Namespace, tmp: Path) -> None:
    """geofence's whole worker once on 200 zones, so numba's on-disk cache holds every kernel.

    Why: a fresh install compiles its kernels on first use (up to a minute here), which the first
    size's compile, load and peak memory would otherwise count (1k zones: compile 8.0 against
    1.3 s, load 0.92 against 0.45 s, +ids peak 803 against 342 MB).
    """
    t = time.perf_counter()
    small = argparse.Namespace(
        **{**vars(args), "points": 2_000, "latency_calls": 200, "runs": 1, "devices": 1_000}
    )
    res = measure_size(real, policy, 200, small, tmp, methods=("geofence",))
    failed = res["methods"]["geofence"].get("failed") or res.get("startup", {}).get("failed")
    print(
        f"warm-up : {'FAILED (' + str(failed) + ')' if failed else 'numba cache filled'} in "
        f"{time.perf_counter() - t:.1f} s",
        flush=True,
    )


def startup(gfz: str, args: argparse.Namespace) -> dict[str, Any]:
    """STARTUP in a fresh interpreter: its JSON, or why it failed."""
    run = watched(
        [sys.executable, "-c", STARTUP, gfz],
        args.max_rss_gb * 1024,
        args.min_free_gb * 1024,
        args.max_worker_s,
    )
    if run["stopped"] or run["returncode"] != 0:
        return {"failed": run["stopped"] or f"exit {run['returncode']}"}
    return dict(json.loads(run["stdout"].strip().splitlines()[-1]))


def startup_only(real: list[Zone], policy: Any, sizes: list[int], args: argparse.Namespace) -> int:
    """--startup-only: per size, compile and save a .gfz once, then load it --startup-runs times.

    Each load runs in a fresh interpreter, one after another, so the spread between runs shows
    how much of start-up is the machine (page cache, fresh memory) rather than the loader.
    Nothing is written to the results folder: the full run owns scale.json.
    """
    rows = []
    with tempfile.TemporaryDirectory(prefix="geofence-startup-") as tmp:
        warm_up(real, policy, args, Path(tmp))
        for n in sizes:
            rng = np.random.default_rng(args.seed + n)
            zones = make_zones(real, n, args.layout, rng, args.jitter_km * 1000)
            d = Path(tmp) / str(n)
            d.mkdir()
            with (d / "zones.pickle").open("wb") as fh:
                pickle.dump((zones, policy), fh, protocol=pickle.HIGHEST_PROTOCOL)
            del zones
            job = {"zones": str(d / "zones.pickle"), "gfz": str(d / "zones.gfz"),
                   "mark": str(d / "compiled.mark")}  # fmt: skip
            (d / "job.json").write_text(json.dumps(job))
            made = run_worker("compile_save", d / "job.json", d / "compile_save.out", args)
            if "failed" in made:
                print(f"  {n:,} zones: compile stopped: {made['failed']}", flush=True)
                continue
            loads = [startup(job["gfz"], args) for _ in range(args.startup_runs)]
            ok = [r["load_s"] for r in loads if "failed" not in r]
            rows.append((n, made, loads))
            print(
                f"  {n:,} zones: compile {made['compile_s']:.1f} s; .gfz {made['gfz_mb']:,.0f} MB "
                f"saved in {made['save_s']:.2f} s; load "
                + ", ".join(f"{x:.2f}" for x in ok)
                + (f" s (median {float(np.median(ok)):.2f} s)" if ok else " (failed)")
                + "; peak "
                + ", ".join(f"{r.get('peak_rss_mb') or 0:,.0f}" for r in loads)
                + " MB",
                flush=True,
            )
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    return 0


# --- the table, JSON and plot ---------------------------------------------------------------------


def rows_of(size: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of one size: geofence (2 rows), STRtree, sjoin, rtree."""
    m = size["methods"]
    st = m["strtree"]
    st_pps = st["n"] / st["secs"] if "failed" not in st else None
    g = m["geofence"]
    g_reject = g.get("reject")
    rows: list[dict[str, Any]] = []

    def rate(n: int, secs: float) -> dict[str, Any]:
        pps = n / secs
        return {
            "points_per_s": pps,
            "us_per_point": 1e6 / pps,
            "vs_strtree": pps / st_pps if st_pps else None,
        }

    if "failed" in g:
        rows.append({"key": "geofence", "method": "geofence check_many", "failed": g["failed"]})
        rows.append(
            {"key": "geofence_ids", "method": "geofence check_many +ids", "failed": g["failed"]}
        )
    else:
        su = size.get("startup", {})
        ns = g["single_ns"]
        rows.append(
            {
                "key": "geofence",
                "method": "geofence check_many",
                "build_s": g["compile_s"],
                "load_s": su.get("load_s"),
                "peak_rss_mb": g["compile_peak_mb"],
                **rate(g["n"], g["secs"]),
                "load_avg_1m": g["load_avg"][0],
            }
        )
        rows.append(
            {
                "key": "geofence_ids",
                "method": "geofence check_many +ids",
                "peak_rss_mb": g["peak_rss_mb"],
                **rate(g["n"], g["secs_ids"]),
                "p50_us": pct(ns, 50),
                "p99_us": pct(ns, 99),
                "p999_us": pct(ns, 99.9),
                "single": "check_location(id, memory presence)",
                "load_avg_1m": g["load_avg"][0],
            }
        )
    labels = {"strtree": "shapely STRtree.query", "sjoin": "geopandas sjoin", "rtree": "rtree loop"}
    for key, label in labels.items():
        r = m[key]
        if "failed" in r:
            rows.append({"key": key, "method": label, "failed": r["failed"]})
            continue
        row = {
            "key": key,
            "method": label + (f" ({r['n'] // 1000}k)" if key == "rtree" else ""),
            "buffer_s": size["buffer_s"],
            "build_s": r["build_s"],
            "peak_rss_mb": r["peak_rss_mb"],
            **rate(r["n"], r["secs"]),
            "load_avg_1m": r["load_avg"][0],
        }
        if g_reject is not None:
            gr = g_reject[: r["n"]]
            row["b_rej_g_ok"] = int((r["reject"] & ~gr).sum())
            row["b_ok_g_rej"] = int((~r["reject"] & gr).sum())
        if key == "strtree":
            ns = r["single_ns"]
            row.update(p50_us=pct(ns, 50), p99_us=pct(ns, 99), p999_us=pct(ns, 99.9))
            row["single"] = "tree.query(Point)"
        rows.append(row)
    return rows


COLUMNS = (
    # key, header, width, format
    ("zones", "zones", 9, "{:,}"),
    ("method", "  method", 36, "{}"),
    ("buffer_s", "buffer s", 9, "{:.1f}"),
    ("build_s", "build s", 8, "{:.2f}"),
    ("load_s", "load s", 7, "{:.2f}"),
    ("peak_rss_mb", "peak MB", 8, "{:,.0f}"),
    ("points_per_s", "pts/s/core", 12, "{:,.0f}"),
    ("us_per_point", "us/pt", 7, "{:.3f}"),
    ("vs_strtree", "x STRtree", 10, "{:.2f}"),
    ("p50_us", "p50 us", 7, "{:.1f}"),
    ("p99_us", "p99 us", 8, "{:.1f}"),
    ("p999_us", "p999 us", 9, "{:.1f}"),
    ("b_rej_g_ok", "B-rej G-ok", 11, "{:,}"),
    ("load_avg_1m", "load", 6, "{:.1f}"),
)


def kind_rates(size: dict[str, Any]) -> str:
    """geofence's and STRtree's batch rates on each kind of point, or "" if either is missing."""
    g, st = size["methods"]["geofence"].get("by_kind"), size["methods"]["strtree"].get("by_kind")
    if not g or not st:
        return ""
    parts = []
    for kind, label in (("uniform", "uniform"), ("near_edges", "near edges")):
        g_pps = g[kind]["n"] / g[kind]["secs"]
        st_pps = st[kind]["n"] / st[kind]["secs"]
        parts.append(
            f"{label} ({g[kind]['n']:,} points) geofence {g_pps / 1e6:.2f} M/s, STRtree "
            f"{st_pps / 1e6:.2f} M/s ({g_pps / st_pps:.1f}x)"
        )
    return "; ".join(parts)


def table(sizes: list[dict[str, Any]]) -> tuple[str, list[str]]:
    lines = []
    head = "".join(f"{h:<{w}}" if k in ("method",) else f"{h:>{w}}" for k, h, w, _ in COLUMNS)
    lines.append(head)
    lines.append("-" * len(head))
    notes = []
    for s in sizes:
        for raw in s["rows"]:
            row = {"zones": s["zones"], **raw}
            cells = []
            for k, _, w, f in COLUMNS:
                v = row.get(k)
                text = "-" if v is None else f.format(v)
                if k == "method":
                    text = "  " + row["method"] + (" [STOPPED]" if "failed" in row else "")
                cells.append(f"{text:<{w}}" if k == "method" else f"{text:>{w}}")
            lines.append("".join(cells).rstrip())
            if "failed" in row:
                notes.append(f"{s['zones']:,} zones, {row['method']}: stopped: {row['failed']}")
    return "\n".join(lines), notes


def plot(sizes: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415  (only here: the workers need not import it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    series = [
        ("geofence", "geofence check_many (batch)", "C0", "-", "o"),
        ("geofence_ids", "geofence check_many + device ids, memory presence", "C0", "--", "s"),
        ("strtree", "shapely STRtree.query (batch)", "C1", "-", "o"),
        ("sjoin", "geopandas sjoin", "C2", "-", "o"),
        ("rtree", "rtree loop (per point, Python)", "C3", "-", "o"),
    ]
    fig, ax = plt.subplots(figsize=(12.5, 5.5))

    def points_of(key: str, field: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for s in sizes:
            for r in s["rows"]:
                if r["key"] == key and r.get(field) is not None:
                    xs.append(s["zones"])
                    ys.append(r[field])
        return xs, ys

    for key, label, color, style, marker in series:
        xs, ys = points_of(key, "us_per_point")
        if xs:
            ax.plot(xs, ys, style, color=color, marker=marker, label=label)
    for key, label, color in (
        ("geofence_ids", "geofence check_location p50 (single, device id)", "C0"),
        ("strtree", "STRtree.query(Point) p50 (single)", "C1"),
    ):
        xs, ys = points_of(key, "p50_us")
        if xs:
            ax.plot(xs, ys, ":", color=color, marker="^", label=label)
    for s in sizes:
        for r in s["rows"]:
            if r["key"] == "geofence" and "failed" in r:
                ax.axvline(s["zones"], color="C0", alpha=0.3)
                ax.annotate(
                    "geofence stopped:\n" + r["failed"],
                    (s["zones"], 0.03),
                    xycoords=("data", "axes fraction"),
                    ha="right",
                    va="bottom",
                    fontsize=8,
                    color="C0",
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("zones")
    ax.set_ylabel("µs per point (log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO, capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            return ""

    dirty = git("status", "--porcelain", "--", "geofence")
    return {"commit": git("log", "-1", "--format=%h") or "?", "geofence_dirty": dirty.splitlines()}


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", help="zone counts, comma-separated (1000,50000,1000000)")
    ap.add_argument("--quick", action="store_true", help="1k and 50k zones only")
    ap.add_argument("--data", type=Path, default=SHARED, help=f"shared data folder ({SHARED})")
    ap.add_argument(
        "--layout",
        choices=["spread", "pile"],
        default="spread",
        help="copies beyond the real ~20k: in fresh 1-degree cells at real density (spread, "
        "default) or jittered around the originals like bench_batch --zones (pile)",
    )
    ap.add_argument("--jitter-km", type=float, default=5.0, help="copies shift up to +-this (5)")
    ap.add_argument("--points", type=int, default=200_000, help="points per batch (200000)")
    ap.add_argument("--rtree-points", type=int, default=20_000, help="rtree loop subsample")
    ap.add_argument("--latency-calls", type=int, default=20_000, help="single calls (20000)")
    ap.add_argument("--devices", type=int, default=100_000, help="distinct device ids (100000)")
    ap.add_argument("--runs", type=int, default=3, help="best of this many runs (3)")
    ap.add_argument("--quad-segs", type=int, default=8, help="baseline buffer segments (8)")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--max-rss-gb", type=float, default=16.0, help="kill a worker above (16)")
    ap.add_argument(
        "--min-free-gb", type=float, default=1.5, help="kill a worker when the machine has less"
    )
    ap.add_argument(
        "--max-compile-s", type=float, default=600.0, help="stop geofence's compile after (600)"
    )
    ap.add_argument("--max-worker-s", type=float, default=1800.0, help="stop any worker after")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"results folder ({RESULTS})")
    ap.add_argument("--replot", type=Path, help="only redraw the plot from a scale.json")
    ap.add_argument(
        "--startup-only",
        action="store_true",
        help="only compile, save and load a .gfz per size (no baselines, no results written)",
    )
    ap.add_argument("--startup-runs", type=int, default=3, help="loads per size (3)")
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        name, job, out = args.worker
        return worker_main(name, Path(job), Path(out))
    if args.replot:
        saved = json.loads(args.replot.read_text())
        png = args.replot.with_suffix(".png")
        plot(saved["sizes"], png, saved.get("plot_title", "geofence vs baselines"))
        print(f"wrote {png}")
        return 0
    if args.sizes:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    else:
        sizes = list(QUICK if args.quick else SIZES)

    t_start = time.perf_counter()
    mach, vers, gitinfo = machine_info(), versions(), git_state()
    load0 = os.getloadavg()
    dirty = gitinfo["geofence_dirty"]
    header = [
        f"machine : {mach['cpu']}; {mach['cores']} cores ({mach['usable_cores']} usable); "
        f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} (1/5/15 min) at start",
        f"          {mach['platform']}; Python {mach['python']}",
        "packages: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"geofence: commit {gitinfo['commit']}, geofence/ "
        + (f"with {len(dirty)} uncommitted change(s)" if dirty else "clean"),
    ]
    print("\n".join(header), flush=True)
    real, policy, label = load_shared(args.data, "both")
    print(f"zones   : {label} real; policy pack {policy.pack}; sizes {sizes}", flush=True)
    if args.startup_only:
        return startup_only(real, policy, sizes, args)

    results = []
    with tempfile.TemporaryDirectory(prefix="geofence-scale-") as tmp:
        warm_up(real, policy, args, Path(tmp))
        for n in sizes:
            size = measure_size(real, policy, n, args, Path(tmp))
            size["rows"] = rows_of(size)
            results.append(size)
    load1 = os.getloadavg()
    total = time.perf_counter() - t_start

    text, notes = table(results)
    print()
    print("\n".join(header))
    print(
        f"zones   : {label}, sampled or replicated ({args.layout}, jitter "
        f"+-{args.jitter_km:g} km); "
        f"{args.points:,} points per size (80% uniform over the zones' 1-degree cells + 2 km, "
        f"20% within 30 m of zone or reach edges), accuracy {ACCURACY_M:g} m"
    )
    print()
    print(text)
    print(
        f"best of {args.runs}; single thread per method (pts/s/core), except geofence's batch "
        "with ids, which hashes the device ids on a second thread while the index locates (its "
        "CPU time is below); us/pt = 1e6 / pts/s; x STRtree = pts/s over STRtree's in the same "
        "run"
    )
    print(
        "buffer s: the baselines' metric pre-buffering (AEQD per "
        f"{TILE_DEG} deg tile), not counted in pts/s; build s: geofence ZoneSet.compile (grid "
        "included) / the baseline's index build"
    )
    print(
        "load s: Engine.load(saved .gfz) in a fresh interpreter; peak MB: VmHWM of the method's "
        "fresh process (geofence rows: at end of compile / at end of the whole worker)"
    )
    print(
        f"single: p50/p99/p999 of {args.latency_calls:,} calls each timed alone: "
        "check_location(lat, lon, 20, device_id, memory presence) / STRtree.query(Point)"
    )
    print(
        "B-rej G-ok: points the baseline rejects and geofence allows (must be 0); load: 1-min "
        "load average after the method ran"
    )
    for note in notes:
        print("note: " + note)
    for s in results:
        g = s["methods"]["geofence"]
        if "failed" not in g:
            su = s.get("startup", {})
            print(
                f"{s['zones']:,} zones: geofence reasons {g['reasons']}; with ids "
                f"{g['reasons_ids']}, best {g['secs_ids'] * 1e3:.0f} ms wall, CPU of one batch "
                f"{g.get('cpu_ids_s', float('nan')) * 1e3:.0f} ms; .gfz {g['gfz_mb']:.1f} MB "
                f"saved in {g['save_s']:.2f} s (peak {g.get('save_peak_mb') or float('nan'):,.0f}"
                " MB); "
                f"start-up: import {su.get('import_s', float('nan')):.2f} s + load "
                f"{su.get('load_s', float('nan')):.2f} s + first check "
                f"{su.get('first_check_s', float('nan')):.3f} s, peak "
                f"{su.get('peak_rss_mb') or float('nan'):,.0f} MB; single calls through the exact "
                f"index {g.get('single_exact_calls', 0):,} of {args.latency_calls:,}, full GCs "
                f"during them {g.get('single_full_gcs', 0)}"
            )
    for s in results:
        line = kind_rates(s)
        if line:
            print(f"{s['zones']:,} zones, batch by point kind: {line}")
    print(
        f"load average {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} at end; "
        f"total wall time {total:.0f} s"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "scale.png"
    title = (
        f"geofence vs baselines, cost per point ({args.points:,} points, accuracy 20 m); "
        f"{mach['cpu']}, {mach['cores']} cores, load {load0[0]:.1f}; commit {gitinfo['commit']}"
        + ("+dirty" if dirty else "")
    )
    plot(results, png, title)
    # The README's plot is the full run's: a --quick or partial run leaves it alone (it used to
    # overwrite the tracked file on every run).
    readme_png = Path(__file__).resolve().parent / "scale.png"
    full = sorted(sizes) == sorted(SIZES)
    if full:
        shutil.copyfile(png, readme_png)

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items() if k not in ("reject", "single_ns")}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    out = {
        "machine": {**mach, "load_avg_start": load0, "load_avg_end": load1},
        "versions": vers,
        "git": gitinfo,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "real_zones": label,
        "sizes": clean(results),
        "table": text,
        "plot_title": title,
        "notes": notes,
        "total_s": total,
    }
    (args.out / "scale.json").write_text(json.dumps(out, indent=2) + "\n")
    also = f" and {readme_png}" if full else f" ({readme_png} is only replaced by a full run)"
    print(f"wrote {png}, {args.out / 'scale.json'}{also}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

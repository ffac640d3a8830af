"""Batch throughput of `Engine.check_many` against shapely STRtree, geopandas sjoin and rtree.

Every method answers the same question for the same points: is the point within
(zone radius + effective buffer + accuracy) metres of a zone? The baselines get the zones
pre-buffered in metres (each zone projected to a local AEQD frame with pyproj, buffered, projected
back to WGS84); that pre-processing is timed separately and not counted. See benchmarks/README.md.

    .venv/bin/python benchmarks/bench_batch.py                 # bundled zones/ (675 zones)
    .venv/bin/python benchmarks/bench_batch.py --shared        # London + Malaysia (~20k zones)
    .venv/bin/python -m benchmarks.bench_batch --zones 100000 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pyogrio
import pyproj
import rtree
import shapely

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere without installing
    sys.path.insert(0, str(REPO))

from geofence.audit import AuditLog  # noqa: E402
from geofence.engine import Engine  # noqa: E402
from geofence.kernels import groups  # noqa: E402
from geofence.policy import Policy  # noqa: E402
from geofence.reasons import Reason  # noqa: E402
from geofence.zones import Zone, read_zones  # noqa: E402
from geofence.zoneset import ZoneSet  # noqa: E402

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]

BUNDLED = REPO / "zones"
SHARED = REPO.parent / "shared" / "data"
LONDON = Path("zones/london_osm_pofw_a")
MALAYSIA = Path(
    "zones/malaysia_hotosm_education_geometry_only/"
    "hotosm_mys_education_facilities_polygons_geometry_only.geojson"
)
ACCURACY_M = 20.0
MARGIN_M = 2_000.0  # the uniform points' box extends this far beyond the zones
TILE_DEG = 0.5  # baseline buffering: one AEQD frame per tile of this size (as geofence does)
SEGMENT_DEG = 0.002  # densify lon/lat edges before projecting (as geofence does)
M_PER_DEG = 111_320.0  # only for placing points and jitter; never for a decision


# --- machine and versions -------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
    }


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("geofence", "numpy", "shapely", "pyproj", "geopandas", "rtree", "pandas"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    out["GEOS"] = shapely.geos_version_string
    out["PROJ"] = pyproj.proj_version_str
    with contextlib.suppress(Exception):
        out["libspatialindex"] = rtree.core.rt.SIDX_Version().decode()
    return out


def proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak() -> bool:
    """Restart VmHWM from the current RSS, so rss_mb() gives the peak of what follows.

    Linux only (/proc/self/clear_refs, value 5); False where it cannot be done.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_mb() -> float:
    """Peak RSS of this process so far, in MB.

    On Linux this is VmHWM, the high-water mark of this process's own memory. ru_maxrss is not
    used there: the kernel carries the parent's peak into a child across fork+exec, so a worker
    started by a big parent would report the parent's peak (seen: every worker "15 GB" after the
    parent compiled 50k zones). Elsewhere, ru_maxrss (KB on Linux, bytes on macOS).
    """
    hwm = proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def effective_buffers(zones: list[Zone], policy: Policy) -> F64:
    """Each zone's effective buffer in metres, as ZoneSet.compile resolves it (without the index).

    The policy's buffer for the zone's category, widened by the zone's own `buffer_m`.
    """
    return np.array(
        [max(policy.rule(z.category).buffer_m, z.buffer_m or 0.0) for z in zones],
        dtype=np.float64,
    )


# --- zones ----------------------------------------------------------------------------------------


def load_bundled() -> tuple[list[Zone], Policy, str]:
    zones, problems = read_zones([BUNDLED])
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise SystemExit(f"bundled zones have {len(errors)} errors, e.g. {errors[0]}")
    policy_file = BUNDLED / "policy.toml"
    policy = Policy.load(policy_file) if policy_file.is_file() else Policy.default()
    return zones, policy, "zones/ (bundled)"


def load_shared(data: Path, which: str) -> tuple[list[Zone], Policy, str]:
    """The shared real data sets, given the id and category they lack, read by read_zones.

    London keeps Geofabrik's osm_id (`osm:pofw_a/<osm_id>`, place_of_worship); the geometry-only
    Malaysia file gets its feature position (`hotosm-mys-edu:<i>`, school_childcare), the same ids
    tools/make_bundled_zones.py gives. Invalid source geometries are rejected by read_zones (and
    counted), never repaired.
    """
    sources = []
    if which in ("london", "both"):
        sources.append(("london", data / LONDON, "osm:pofw_a/", "place_of_worship"))
    if which in ("malaysia", "both"):
        sources.append(("malaysia", data / MALAYSIA, "hotosm-mys-edu:", "school_childcare"))
    zones: list[Zone] = []
    labels = []
    with tempfile.TemporaryDirectory(prefix="geofence-bench-") as tmp:
        for name, path, prefix, category in sources:
            if not path.exists():
                raise SystemExit(f"shared data not found: {path}")
            df = pyogrio.read_dataframe(path)
            if "osm_id" in df.columns:
                df["id"] = [f"{prefix}{v}" for v in df["osm_id"]]
            else:
                df["id"] = [f"{prefix}{i}" for i in range(len(df))]
            df["category"] = category
            df = df[["id", "category", "geometry"]]
            out = Path(tmp) / f"{name}.gpkg"
            pyogrio.write_dataframe(df, out, layer=name, promote_to_multi=False)
            got, problems = read_zones([out])
            errors = Counter(p.message.split(":")[0] for p in problems if p.severity == "error")
            skipped = f"; skipped {dict(errors)}" if errors else ""
            labels.append(f"{name} {len(got):,}/{len(df):,}{skipped}")
            zones += got
    return zones, Policy.default(), "shared: " + ", ".join(labels)


def replicate(
    zones: list[Zone], n: int, rng: np.random.Generator, jitter_m: float = 5_000.0
) -> list[Zone]:
    """n zones from real footprints: a sample if n is smaller, else jittered copies.

    Copies are shifted by up to +-jitter_m east and north (so they do not coincide with the
    original); a copy that comes out invalid (floating point) is dropped and redrawn.
    """
    if n <= len(zones):
        keep = np.sort(rng.choice(len(zones), n, replace=False))
        return [zones[i] for i in keep]
    out = list(zones)
    copy = 0
    while len(out) < n:
        copy += 1
        take = min(len(zones), n - len(out))
        src = rng.choice(len(zones), take, replace=False)
        geoms = np.array([zones[i].geometry for i in src], dtype=object)
        lat = shapely.bounds(geoms)[:, 1]
        east, north = rng.uniform(-jitter_m, jitter_m, (2, take))
        shift = np.column_stack([east / (M_PER_DEG * np.cos(np.radians(lat))), north / M_PER_DEG])
        coords, owner = shapely.get_coordinates(geoms, return_index=True)
        moved = shapely.from_wkb(shapely.to_wkb(geoms))  # copies: set_coordinates is in place
        moved = shapely.set_coordinates(moved, coords + shift[owner])
        b = shapely.bounds(moved)
        ok = shapely.is_valid(moved) & (np.abs(b[:, 1]) < 85) & (np.abs(b[:, 3]) < 85)
        ok &= (b[:, 0] > -180) & (b[:, 2] < 180)
        for i, g, good in zip(src, moved, ok, strict=True):
            if good:
                z = zones[i]
                out.append(replace(z, id=f"{z.id}#{copy}", geometry=g))
    return out[:n]


# --- points ---------------------------------------------------------------------------------------


def make_points(
    geoms: npt.NDArray[np.object_],
    reach_m: F64,
    radius_m: F64,
    n: int,
    rng: np.random.Generator,
    spread: str,
) -> tuple[F64, F64, dict[str, int], BOOL]:
    """80% uniform over the zones' box(es) + 2 km, 10% near zone edges, 10% near the reach edge.

    Returns (lon, lat, counts, near): `near` marks the points placed near an edge, so a run
    can time the two kinds apart (they cost an index very differently).
    """
    n_near = n // 5
    n_uniform = n - n_near
    b = shapely.bounds(geoms)
    if spread == "bbox":
        groups = [np.arange(len(geoms))]
    else:  # one box per 1-degree cell of zone centres: zones spread over continents stay dense
        cx = np.floor((b[:, 0] + b[:, 2]) / 2)
        cy = np.floor((b[:, 1] + b[:, 3]) / 2)
        _, cell = np.unique(np.column_stack([cx, cy]), axis=0, return_inverse=True)
        cell = cell.ravel()
        order = np.argsort(cell, kind="stable")  # groups by sorting: thousands of cells at 1M
        groups = np.split(order, np.flatnonzero(np.diff(cell[order])) + 1)
    share = rng.multinomial(n_uniform, [len(g) / len(geoms) for g in groups])
    lons, lats = [], []
    for g, k in zip(groups, share, strict=True):
        x0, y0 = b[g, 0].min(), b[g, 1].min()
        x1, y1 = b[g, 2].max(), b[g, 3].max()
        dlat = MARGIN_M / M_PER_DEG
        dlon = MARGIN_M / (M_PER_DEG * np.cos(np.radians(max(abs(y0), abs(y1)) + dlat)))
        lons.append(rng.uniform(x0 - dlon, x1 + dlon, k))
        lats.append(rng.uniform(y0 - dlat, y1 + dlat, k))

    # Near the edges: a random point of a random zone's boundary (a point zone's circle), moved
    # outward from the zone's centre by a random distance: for half of them within 30 m of the
    # edge itself, for the other half within 30 m of the reach (radius + buffer + accuracy).
    z = rng.integers(0, len(geoms), n_near)
    centre = shapely.centroid(geoms[z])
    cx, cy = shapely.get_x(centre), shapely.get_y(centre)
    is_point = shapely.get_type_id(geoms[z]) == 0
    frac = rng.uniform(0, 1, n_near)
    ex, ey = cx.copy(), cy.copy()
    poly = np.flatnonzero(~is_point)
    edge = shapely.line_interpolate_point(
        shapely.boundary(geoms[z[poly]]), frac[poly], normalized=True
    )
    ex[poly], ey[poly] = shapely.get_x(edge), shapely.get_y(edge)
    coslat = np.cos(np.radians(cy))
    angle = rng.uniform(0, 2 * np.pi, n_near)
    ux, uy = np.cos(angle), np.sin(angle)
    # For polygons: outward = from the centroid through the boundary point (in metres).
    px, py = (ex - cx) * M_PER_DEG * coslat, (ey - cy) * M_PER_DEG
    norm = np.hypot(px, py)
    poly_dir = norm > 0
    ux = np.where(is_point | ~poly_dir, ux, px / np.where(poly_dir, norm, 1))
    uy = np.where(is_point | ~poly_dir, uy, py / np.where(poly_dir, norm, 1))
    at_reach = rng.uniform(0, 1, n_near) < 0.5
    base = np.where(is_point, radius_m[z], 0.0)
    offset = np.where(at_reach, reach_m[z] - radius_m[z], 0.0) + rng.uniform(-30, 30, n_near)
    dist = base + offset
    lons.append(ex + ux * dist / (M_PER_DEG * coslat))
    lats.append(ey + uy * dist / M_PER_DEG)

    lon = np.concatenate(lons)
    lat = np.concatenate(lats)
    near = np.arange(n) >= n_uniform
    order = rng.permutation(n)  # mix, so that any subsample sees every kind
    lon, lat, near = lon[order], lat[order], near[order]
    lat = np.clip(lat, -90, 90)
    lon = (lon + 180) % 360 - 180
    counts = {"uniform": int(n_uniform), "near_edge": int(n_near - at_reach.sum())}
    counts["near_reach"] = int(at_reach.sum())
    counts["uniform_boxes"] = len(groups)
    return lon, lat, counts, near


# --- the baselines' pre-processing ----------------------------------------------------------------


def buffer_metric(
    geoms: npt.NDArray[np.object_], distance_m: F64, quad_segs: int
) -> npt.NDArray[np.object_]:
    """Buffer each geometry by its distance in true metres, returned in WGS84 lon/lat.

    Each zone is projected to the AEQD frame of the TILE_DEG tile holding its centre (pyproj,
    WGS84 ellipsoid; a zone is at most a few tens of km from its frame's centre, where AEQD
    stretches lengths by < 1e-5), buffered there with `quad_segs` segments per quarter circle,
    and projected back. Rounded parts become inscribed polygons: slightly smaller than the true
    buffer, so a baseline can only allow a point geofence rejects near the rim, not the reverse.
    """
    b = shapely.bounds(geoms)
    mx, my = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    col = np.floor((mx + 180) / TILE_DEG).astype(np.int64)
    row = np.floor((my + 90) / TILE_DEG).astype(np.int64)
    key = row * 10_000 + col
    dense = shapely.segmentize(geoms, SEGMENT_DEG)
    out = np.empty(len(geoms), dtype=object)
    for k, sel in groups(key):
        r, c = divmod(k, 10_000)
        lon0 = -180 + (c + 0.5) * TILE_DEG
        lat0 = -90 + (r + 0.5) * TILE_DEG
        t = pyproj.Transformer.from_pipeline(
            "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad "
            f"+step +proj=aeqd +lat_0={lat0!r} +lon_0={lon0!r} +ellps=WGS84"
        )

        def fwd(xy: np.ndarray, t: pyproj.Transformer = t) -> np.ndarray:
            return np.column_stack(t.transform(xy[:, 0], xy[:, 1]))

        def inv(xy: np.ndarray, t: pyproj.Transformer = t) -> np.ndarray:
            return np.column_stack(t.transform(xy[:, 0], xy[:, 1], direction="INVERSE"))

        metric = shapely.transform(dense[sel], fwd)
        grown = shapely.buffer(metric, distance_m[sel], quad_segs=quad_segs)
        out[sel] = shapely.transform(grown, inv)
    return out


# --- the methods (each run in its own process so that its peak RSS is its own) ----------------


def best_of(runs: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def method_geofence(ctx: dict[str, Any]) -> dict[str, Any]:
    t = time.perf_counter()
    zs = ZoneSet.compile(ctx["zones"], ctx["policy"], "bench")
    engine = Engine(zs)
    build = time.perf_counter() - t
    lon, lat = ctx["lon"], ctx["lat"]
    acc = np.full(len(lon), ACCURACY_M)
    secs, d = best_of(ctx["runs"], lambda: engine.check_many(lat, lon, acc))
    codes, counts = np.unique(d.reason, return_counts=True)
    reasons = {Reason.from_code(int(c)).value: int(k) for c, k in zip(codes, counts, strict=True)}
    return {
        "secs": secs,
        "n": len(lon),
        "build_s": build,
        "reject": ~d.allowed,
        "reasons": dict(reasons),
    }


def method_strtree(ctx: dict[str, Any]) -> dict[str, Any]:
    t = time.perf_counter()
    tree = shapely.STRtree(ctx["buffered"])
    build = time.perf_counter() - t
    lon, lat = ctx["lon"], ctx["lat"]

    def run() -> BOOL:
        pts = shapely.points(lon, lat)
        hit, _ = tree.query(pts, predicate="intersects")
        reject = np.zeros(len(lon), dtype=bool)
        reject[hit] = True
        return reject

    secs, reject = best_of(ctx["runs"], run)
    return {"secs": secs, "n": len(lon), "build_s": build, "reject": reject}


def method_sjoin(ctx: dict[str, Any]) -> dict[str, Any]:
    t = time.perf_counter()
    right = gpd.GeoDataFrame(
        {"zone": np.arange(len(ctx["buffered"]))}, geometry=ctx["buffered"], crs="EPSG:4326"
    )
    _ = right.sindex  # sjoin queries the right frame's index: build it outside the timing
    build = time.perf_counter() - t
    lon, lat = ctx["lon"], ctx["lat"]

    def run() -> BOOL:
        left = gpd.GeoDataFrame(geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
        joined = gpd.sjoin(left, right, predicate="intersects", how="inner")
        reject = np.zeros(len(lon), dtype=bool)
        reject[joined.index.to_numpy()] = True
        return reject

    secs, reject = best_of(ctx["runs"], run)
    return {"secs": secs, "n": len(lon), "build_s": build, "reject": reject}


def method_rtree(ctx: dict[str, Any]) -> dict[str, Any]:
    buffered = ctx["buffered"]
    t = time.perf_counter()
    b = shapely.bounds(buffered)
    idx = rtree.index.Index((i, tuple(b[i]), None) for i in range(len(buffered)))
    prepared = shapely.from_wkb(shapely.to_wkb(buffered))  # own copies (--in-process shares)
    shapely.prepare(prepared)
    build = time.perf_counter() - t
    sub = ctx["subsample"]
    lon, lat = ctx["lon"][sub].tolist(), ctx["lat"][sub].tolist()
    geoms = prepared.tolist()

    def run() -> BOOL:
        reject = np.zeros(len(lon), dtype=bool)
        for i, (x, y) in enumerate(zip(lon, lat, strict=True)):
            p = None
            for j in idx.intersection((x, y, x, y)):
                p = p or shapely.Point(x, y)
                if geoms[j].intersects(p):
                    reject[i] = True
                    break
        return reject

    secs, reject = best_of(ctx["runs"], run)
    return {"secs": secs, "n": len(lon), "build_s": build, "reject": reject}


def method_latency(ctx: dict[str, Any]) -> dict[str, Any]:
    """Single requests: check_location (without and with an audit log) vs STRtree.query(Point).

    Each call is timed alone. The audited engine writes every decision (include_allowed), so its
    row is the worst case of what the audit log adds to the request path: the enqueue, and the
    writer thread's share of the GIL while it serialises beside the caller.
    """
    zs = ZoneSet.compile(ctx["zones"], ctx["policy"], "bench")
    engine = Engine(zs)
    tree = shapely.STRtree(ctx["buffered"])
    sub = ctx["latency_idx"]
    lon, lat = ctx["lon"][sub].tolist(), ctx["lat"][sub].tolist()
    clock = time.perf_counter_ns

    def timed(call: Callable[[float, float], bool]) -> tuple[npt.NDArray[np.int64], BOOL]:
        for x, y in zip(lon[:500], lat[:500], strict=True):  # warm up
            call(x, y)
        ns = np.empty(len(lon), dtype=np.int64)
        out = np.empty(len(lon), dtype=bool)
        for i, (x, y) in enumerate(zip(lon, lat, strict=True)):
            t = clock()
            out[i] = call(x, y)
            ns[i] = clock() - t
        return ns, out

    g_ns, g_allowed = timed(lambda x, y: engine.check_location(y, x, ACCURACY_M).allowed)
    with tempfile.TemporaryDirectory(prefix="geofence-bench-audit-") as tmp:
        audit = AuditLog(Path(tmp) / "audit.jsonl", include_allowed=True)
        audited = Engine(zs, audit=audit)
        a_ns, a_allowed = timed(lambda x, y: audited.check_location(y, x, ACCURACY_M).allowed)
        audit.close()
        audit_written, audit_dropped = audit.written, audit.dropped
    s_ns, s_reject = timed(
        lambda x, y: len(tree.query(shapely.Point(x, y), predicate="intersects")) > 0
    )
    return {
        "geofence_ns": g_ns,
        "geofence_allowed": g_allowed,
        "audited_ns": a_ns,
        "audited_disagreements": int((a_allowed != g_allowed).sum()),
        "audit_written": audit_written,
        "audit_dropped": audit_dropped,
        "strtree_ns": s_ns,
        "strtree_reject": s_reject,
    }


def method_inputs_only(ctx: dict[str, Any]) -> dict[str, Any]:
    """The floor: a worker that imports everything and loads the inputs, then stops."""
    return {}


METHODS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "inputs": method_inputs_only,
    "geofence": method_geofence,
    "strtree": method_strtree,
    "sjoin": method_sjoin,
    "rtree": method_rtree,
    "latency": method_latency,
}


def worker(name: str, inputs: Path, output: Path) -> int:
    """Entry point of a worker process: run one method on the pickled inputs."""
    with inputs.open("rb") as fh:
        ctx = pickle.load(fh)
    res = METHODS[name](ctx)
    res["peak_rss_mb"] = rss_mb()
    with output.open("wb") as fh:
        pickle.dump(res, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return 0


def run_isolated(name: str, inputs: Path, tmp: Path, fresh: bool) -> dict[str, Any]:
    """Run a method in a fresh Python process, so that its peak RSS (ru_maxrss) is its own."""
    if not fresh:
        with inputs.open("rb") as fh:
            res = METHODS[name](pickle.load(fh))
        res["peak_rss_mb"] = rss_mb()
        return res
    output = tmp / f"{name}.out.pickle"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        str(inputs),
        str(output),
    ]
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0 or not output.exists():
        raise RuntimeError(f"worker {name!r} failed (exit {proc.returncode})")
    with output.open("rb") as fh:
        return pickle.load(fh)


# --- report ---------------------------------------------------------------------------------------


def pct(ns: npt.NDArray[np.int64], q: float) -> float:
    return float(np.percentile(ns, q)) / 1000.0  # microseconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--shared",
        nargs="?",
        const="both",
        choices=["both", "london", "malaysia"],
        help="use ../shared/data instead of the bundled zones/ (default: both sets)",
    )
    ap.add_argument("--data", type=Path, default=SHARED, help=f"shared data folder ({SHARED})")
    ap.add_argument("--zones", type=int, help="replicate+jitter (or sample) to N zones")
    ap.add_argument(
        "--jitter-km", type=float, default=5.0, help="--zones copies shift up to +-this (5)"
    )
    ap.add_argument("--points", type=int, default=200_000, help="points per batch (200000)")
    ap.add_argument(
        "--rtree-points",
        type=int,
        default=20_000,
        help="subsample for the per-point rtree loop (20000)",
    )
    ap.add_argument(
        "--latency-calls",
        type=int,
        default=20_000,
        help="single calls for the latency percentiles (20000)",
    )
    ap.add_argument("--runs", type=int, default=3, help="best of this many runs (3)")
    ap.add_argument(
        "--quad-segs",
        type=int,
        default=8,
        help="baseline buffer segments per quarter circle (shapely default 8)",
    )
    ap.add_argument(
        "--spread",
        choices=["regions", "bbox"],
        default="regions",
        help="uniform points: one box per 1-degree cell of zones (default) or one "
        "box around all zones",
    )
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run every method in this process (faster start; peak RSS is then cumulative)",
    )
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "IN", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="write the results as JSON to this path")
    args = ap.parse_args(argv)
    if args.worker:
        name, inputs, output = args.worker
        return worker(name, Path(inputs), Path(output))
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    mach, vers = machine_info(), versions()
    print(f"machine : {mach['platform']}; Python {mach['python']}")
    print(f"cpu     : {mach['cpu']}; {mach['cores']} cores ({mach['usable_cores']} usable)")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in vers.items()))

    # Zones.
    t = time.perf_counter()
    if args.shared:
        zones, policy, label = load_shared(args.data, args.shared)
    else:
        zones, policy, label = load_bundled()
    real = len(zones)
    if args.zones:
        zones = replicate(zones, args.zones, rng, args.jitter_km * 1000)
        label += f"; {'sampled' if args.zones <= real else 'replicated+jittered'} to {len(zones):,}"
    load_s = time.perf_counter() - t
    geoms = np.array([z.geometry for z in zones], dtype=object)
    radius = np.array([z.radius_m for z in zones], dtype=np.float64)
    # The effective buffers without compiling here: a compile in this process would make it
    # big, and geofence's compile is timed (and its memory measured) in its own worker.
    buffer_m = effective_buffers(zones, policy)
    if any(z.valid_from is not None or z.valid_until is not None for z in zones):
        print("note: some zones have validity windows; the baselines ignore them")
    reach = radius + buffer_m + ACCURACY_M
    kinds = Counter(g.geom_type for g in geoms)
    buffers = Counter(float(b) for b in buffer_m)
    print(
        f"zones   : {len(zones):,} ({label}); " + ", ".join(f"{k} {v:,}" for k, v in kinds.items())
    )
    print(
        f"policy  : pack {policy.pack}; effective buffers (m): "
        + ", ".join(f"{b:g} x{n:,}" for b, n in sorted(buffers.items()))
        + f"; accuracy {ACCURACY_M:g} m for every point"
    )

    # Points.
    lon, lat, counts, _ = make_points(geoms, reach, radius, args.points, rng, args.spread)
    print(
        f"points  : {len(lon):,} (uniform {counts['uniform']:,} over "
        f"{counts['uniform_boxes']} box(es) +{MARGIN_M / 1000:g} km, near zone edge "
        f"{counts['near_edge']:,}, near reach edge {counts['near_reach']:,}); seed {args.seed}"
    )

    # Baseline pre-processing (not counted in the throughput).
    t = time.perf_counter()
    buffered = buffer_metric(geoms, reach, args.quad_segs)
    buffer_s = time.perf_counter() - t
    n_bad = int((~shapely.is_valid(buffered)).sum())
    print(
        f"prep    : load {load_s:.2f} s, baseline metric "
        f"buffering {buffer_s:.2f} s (AEQD per {TILE_DEG} deg tile, quad_segs "
        f"{args.quad_segs}){f', {n_bad} invalid buffers' if n_bad else ''}; geofence's compile "
        "is its build s below"
    )

    n_sub = min(args.rtree_points, len(lon))
    ctx = {
        "zones": zones,
        "policy": policy,
        "lon": lon,
        "lat": lat,
        "buffered": buffered,
        "runs": args.runs,
        "subsample": np.arange(n_sub),
        "latency_idx": np.arange(min(args.latency_calls, len(lon))),
    }
    fresh = not args.in_process
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="geofence-bench-") as tmp_name:
        tmp = Path(tmp_name)
        inputs = tmp / "inputs.pickle"
        with inputs.open("wb") as fh:
            pickle.dump(ctx, fh, protocol=pickle.HIGHEST_PROTOCOL)
        floor = run_isolated("inputs", inputs, tmp, fresh)["peak_rss_mb"]
        for label_, key in (
            ("geofence check_many", "geofence"),
            ("shapely STRtree.query", "strtree"),
            ("geopandas sjoin", "sjoin"),
            (f"rtree loop ({n_sub // 1000}k pts)", "rtree"),
        ):
            results[label_] = run_isolated(key, inputs, tmp, fresh)
        lat_res = run_isolated("latency", inputs, tmp, fresh)

    g = results["geofence check_many"]
    g_reject = g["reject"]
    strtree_pps = results["shapely STRtree.query"]["n"] / results["shapely STRtree.query"]["secs"]
    rows = []
    for name, r in results.items():
        gr = g_reject[: r["n"]]
        pps = r["n"] / r["secs"]
        rows.append(
            {
                "method": name,
                "points": r["n"],
                "best_s": r["secs"],
                "points_per_s": pps,
                "us_per_point": 1e6 / pps,
                "vs_strtree": pps / strtree_pps,
                "build_s": r["build_s"],
                "rejected": int(r["reject"].sum()),
                "base_rejects_geofence_allows": int((r["reject"] & ~gr).sum()),
                "base_allows_geofence_rejects": int((~r["reject"] & gr).sum()),
                "peak_rss_mb": r["peak_rss_mb"],
            }
        )

    print()
    head = (
        f"{'method':<24}{'points':>9}{'points/s':>12}{'us/pt':>8}{'x STRtree':>10}"
        f"{'rejected':>10}{'B-rej G-ok':>11}{'B-ok G-rej':>11}{'build s':>9}{'peak RSS MB':>13}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        print(
            f"{row['method']:<24}{row['points']:>9,}{row['points_per_s']:>12,.0f}"
            f"{row['us_per_point']:>8.2f}{row['vs_strtree']:>10.2f}{row['rejected']:>10,}"
            f"{row['base_rejects_geofence_allows']:>11,}{row['base_allows_geofence_rejects']:>11,}"
            f"{row['build_s']:>9.2f}{row['peak_rss_mb']:>13,.0f}"
        )
    print(f"best of {args.runs}; x STRtree = points/s over STRtree's; B = baseline, G = geofence")
    print("B-rej G-ok: baseline rejects, geofence allows (must be 0); B-ok G-rej: the reverse")
    if fresh:
        print(
            "peak RSS: a fresh process that loads the inputs and runs only that method "
            f"(loading alone: {floor:,.0f} MB)"
        )
    else:
        print("peak RSS: --in-process, so cumulative in run order")
    print("geofence reasons: " + ", ".join(f"{k} {v:,}" for k, v in g["reasons"].items()))

    gl, sl = lat_res["geofence_ns"], lat_res["strtree_ns"]
    n_lat = len(gl)
    single_vs_batch = int((lat_res["geofence_allowed"] != ~g_reject[:n_lat]).sum())
    lat_rows = {
        "geofence check_location": {q: pct(gl, q) for q in (50, 99, 99.9)},
        "  + audit log (every call)": {q: pct(lat_res["audited_ns"], q) for q in (50, 99, 99.9)},
        "STRtree.query(Point)": {q: pct(sl, q) for q in (50, 99, 99.9)},
    }
    print()
    print(
        f"{'single request (' + format(n_lat, ',') + ' calls)':<30}{'p50 us':>9}{'p99 us':>9}"
        f"{'p999 us':>9}"
    )
    for name, p in lat_rows.items():
        print(f"{name:<30}{p[50]:>9.1f}{p[99]:>9.1f}{p[99.9]:>9.1f}")
    print(
        f"check_location vs check_many disagreements: {single_vs_batch}; "
        f"STRtree single vs geofence: B-rej G-ok "
        f"{int((lat_res['strtree_reject'] & lat_res['geofence_allowed']).sum())}, B-ok G-rej "
        f"{int((~lat_res['strtree_reject'] & ~lat_res['geofence_allowed']).sum())}"
    )
    print(
        f"audit log: {lat_res['audit_written']:,} records written (warm-up included), "
        f"{lat_res['audit_dropped']:,} dropped, {lat_res['audited_disagreements']} decisions "
        "differ from the engine without it"
    )
    total = time.perf_counter() - t_start
    print(f"total wall time {total:.1f} s")

    if args.json:
        out = {
            "machine": mach,
            "versions": vers,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "zones": {
                "count": len(zones),
                "real": real,
                "label": label,
                "types": dict(kinds),
                "policy_pack": policy.pack,
                "buffers_m": {str(k): v for k, v in buffers.items()},
            },
            "points": {"count": len(lon), **counts, "accuracy_m": ACCURACY_M},
            "prep_s": {
                "load": load_s,
                "geofence_compile": g["build_s"],
                "baseline_buffer": buffer_s,
            },
            "geofence_reasons": g.get("reasons", {}),
            "batch": rows,
            "inputs_only_peak_rss_mb": floor if fresh else None,
            "latency_us": {k: {str(q): v for q, v in p.items()} for k, p in lat_rows.items()},
            "latency_calls": n_lat,
            "check_location_vs_check_many_disagreements": single_vs_batch,
            "audit": {
                k: lat_res[k] for k in ("audit_written", "audit_dropped", "audited_disagreements")
            },
            "total_s": total,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

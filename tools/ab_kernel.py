#!/usr/bin/env python3
"""Two versions of the grid kernel, timed alternately in one process on the same arrays.

    .venv/bin/python tools/ab_kernel.py HEAD geofence/grid.py              # the bundled zones
    .venv/bin/python tools/ab_kernel.py HEAD~1 HEAD --gfz set.gfz --points pts.npz

Each version is a `grid.py`: a file, or a git revision (its `geofence/grid.py`). Both are
imported under names of their own and run `grid_kernel` (no presence) over the same points and
the same loaded zone set, turn about, `--reps` times; a version's figure is the mean of its
fastest quarter of runs, in ns a point. The answers are compared point by point: a change
meant only for speed must show 0 differences.

Why a tool: on a shared VM a process can run 40% slower than the one before it, for minutes,
so two benchmark runs cannot tell a 5% change. Alternating in one process can.

Each version is copied into a temporary folder first. numba's on-disk cache is keyed by the
source file's path, so importing the repository's own grid.py under another name would leave
a cache entry that the real `geofence.grid` then fails to load.
`--points` is an .npz with `lon` and `lat`, and optionally `near` (bool) to time the uniform
and the near-edge points apart, as benchmarks/bench_scale.py writes them; without it, the
bench's point mix (bench_batch.make_points) over the zones.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere without installing
    sys.path.insert(0, str(REPO))

from geofence.grid import NO_PRESENCE, GridIndex  # noqa: E402
from tools.perf_kernel import kernel_inputs  # noqa: E402


def source_of(version: str) -> str:
    """A grid.py's text: the file `version`, or geofence/grid.py at git revision `version`."""
    path = Path(version)
    if path.is_file():
        return path.read_text()
    shown = subprocess.run(
        ["git", "show", f"{version}:geofence/grid.py"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if shown.returncode != 0:
        raise SystemExit(f"{version}: neither a file nor a git revision with geofence/grid.py")
    return shown.stdout


def import_copy(source: str, name: str, folder: Path) -> ModuleType:
    """Import `source` as module `name` from a file of its own in `folder`."""
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba finds a function's module by name
    spec.loader.exec_module(module)
    return module


def run_kernel(module: ModuleType, index: GridIndex, lon: Any, lat: Any, acc: Any) -> tuple:
    """One batch through `module`'s grid_kernel: (seconds, kind, zone, todo)."""
    n = len(lon)
    kind, zone, todo = np.empty(n, np.int8), np.empty(n, np.int32), np.empty(n, np.bool_)
    start = time.perf_counter()
    module.grid_kernel(lon, lat, acc, *index._packed, kind, zone, todo, *NO_PRESENCE)
    return time.perf_counter() - start, kind, zone, todo


def compare(
    modules: dict[str, ModuleType],
    index: GridIndex,
    lon: npt.NDArray[np.float64],
    lat: npt.NDArray[np.float64],
    acc: npt.NDArray[np.float64],
    reps: int,
) -> dict[str, Any]:
    """ns a point for each version (mean of its fastest quarter), and how many answers differ."""
    seconds: dict[str, list[float]] = {label: [] for label in modules}
    answers: dict[str, tuple] = {}
    for _ in range(reps):
        for label, module in modules.items():
            took, *answer = run_kernel(module, index, lon, lat, acc)
            seconds[label].append(took)
            answers[label] = tuple(answer)
    keep = max(1, reps // 4)
    ns = {k: float(np.mean(sorted(v)[:keep])) / max(len(lon), 1) * 1e9 for k, v in seconds.items()}
    (_, a), (_, b) = answers.items()
    names = ("kind", "zone", "todo")
    differ = {n: int((x != y).sum()) for n, x, y in zip(names, a, b, strict=True)}
    return {"ns": ns, "differ": differ}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", help="a grid.py file or a git revision")
    ap.add_argument("new", help="a grid.py file or a git revision")
    ap.add_argument("--gfz", type=Path, help="a compiled zone set (default: the bundled zones)")
    ap.add_argument("--points", type=Path, help=".npz with lon, lat (and near)")
    ap.add_argument("--accuracy", type=float, default=20.0, help="metres, every point (20)")
    ap.add_argument("--reps", type=int, default=12, help="runs of each version (12)")
    args = ap.parse_args(argv)
    index, lon, lat, near = kernel_inputs(args.gfz, args.points)
    with tempfile.TemporaryDirectory(prefix="ab-kernel-") as tmp:
        modules = {
            label: import_copy(source_of(version), f"ab_kernel_{label}", Path(tmp))
            for label, version in (("old", args.old), ("new", args.new))
        }
        kinds = {"all": np.ones(len(lon), dtype=bool)}
        if near is not None:
            kinds.update(uniform=~near, near_edges=near)
        for kind, sel in kinds.items():
            x, y = np.ascontiguousarray(lon[sel]), np.ascontiguousarray(lat[sel])
            acc = np.full(len(x), args.accuracy)
            r = compare(modules, index, x, y, acc, args.reps)
            differ = ", ".join(f"{k} {v}" for k, v in r["differ"].items())
            print(
                f"{kind:<10} {len(x):>8,} points: old {r['ns']['old']:.0f} ns, "
                f"new {r['ns']['new']:.0f} ns a point; answers differing: {differ}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Where the grid kernel spends its time, instruction by instruction (Linux perf, numba JIT).

    .venv/bin/python tools/perf_kernel.py                       # the bundled zones
    .venv/bin/python tools/perf_kernel.py --gfz set.gfz --points pts.npz [--only-lists]

Runs `grid_kernel` over the points for a few seconds under `perf record -e cpu-clock` (a
software event: it works on VMs without hardware counters), then prints the kernel's hottest
instructions, each with the two before it. A sample lands just after an instruction that
stalls, so a load's miss shows on the instruction that follows it.

Why a tool: perf cannot name numba's JIT code. The worker prints the kernel's address
(`library.get_pointer_to_function`) and dumps its bytes (`ctypes.string_at`); objdump
disassembles them at that address and `perf script -F ip` gives the sampled addresses.
Needs `perf` (Debian: linux-perf) and `objdump` (binutils). `--points` is an .npz with `lon`
and `lat` arrays, as benchmarks/bench_scale.py writes; without it, the bench's point mix
(bench_batch.make_points) over the given zones.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere without installing
    sys.path.insert(0, str(REPO))

from benchmarks.bench_batch import ACCURACY_M, effective_buffers, make_points  # noqa: E402
from geofence import compiled, grid  # noqa: E402
from geofence.engine import Engine  # noqa: E402
from geofence.grid import GridIndex  # noqa: E402
from geofence.kernels import find  # noqa: E402

F64 = npt.NDArray[np.float64]

CODE_BYTES = 1 << 17  # the kernel's machine code is ~10-20 KB; dump generously


def kernel_inputs(
    gfz: str | Path | None, points: str | Path | None
) -> tuple[GridIndex, F64, F64, npt.NDArray[np.bool_] | None]:
    """(grid index, lon, lat, near) for a kernel run: the compiled set `gfz` (default: the
    bundled zones, compiled) and the points in `points` (.npz of lon, lat and optionally near),
    else the bench's mix over the zones. `near` marks the near-edge points, where known."""
    zs = compiled.load(gfz) if gfz else Engine.from_paths(REPO / "zones").zone_set
    index = zs.index
    if not isinstance(index, GridIndex):
        raise SystemExit("this zone set has no grid (too few zones?)")
    if points:
        pts = np.load(points)
        near = pts["near"].astype(bool) if "near" in pts.files else None
        return index, pts["lon"], pts["lat"], near
    geoms = np.array([z.geometry for z in zs.zones], dtype=object)
    radius = np.array([z.radius_m for z in zs.zones])
    reach = radius + effective_buffers(list(zs.zones), zs.policy) + ACCURACY_M
    rng = np.random.default_rng(1)
    lon, lat, _, near = make_points(geoms, reach, radius, 200_000, rng, "regions")
    return index, lon, lat, near


def worker(args: argparse.Namespace, out: Path) -> None:
    """Run the kernel for args.seconds; write its address and machine code to `out`."""
    index, lon, lat, _ = kernel_inputs(args.gfz, args.points)
    acc = np.full(len(lon), args.accuracy)
    kind = np.empty(len(lon), np.int8)
    zone = np.empty(len(lon), np.int32)
    todo = np.empty(len(lon), np.bool_)
    lon, lat = np.ascontiguousarray(lon), np.ascontiguousarray(lat)
    run = grid.grid_kernel
    run(lon, lat, acc, *index._packed, kind, zone, todo, *grid.NO_PRESENCE)
    if args.only_lists:  # keep the points a list settles: those whose answer is not the state's
        lists = lists_of(index, lon, lat, acc)
        lon, lat, acc = lon[lists], lat[lists], acc[lists]
        kind, zone, todo = kind[lists], zone[lists], todo[lists]
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        run(lon, lat, acc, *index._packed, kind, zone, todo, *grid.NO_PRESENCE)
        calls += 1
    took = (time.perf_counter() - start) / calls / len(lon) * 1e9
    overload = run.overloads[run.signatures[0]]
    address = overload.library.get_pointer_to_function(overload.fndesc.llvm_func_name)
    out.write_bytes(address.to_bytes(8, "little") + ctypes.string_at(address, CODE_BYTES))
    print(f"{len(lon):,} points, {calls} passes, {took:.0f} ns a point in the kernel")


def lists_of(index: GridIndex, lon: F64, lat: F64, acc: F64) -> npt.NDArray[np.bool_]:
    """Which points reach a fine cell's or a subcell's list (not settled by a state)."""
    p = index._packed
    f_table, f_ints, f_floats, sub_base, s_ints, s_floats = p[2], p[3], p[4], p[7], p[8], p[9]
    size = np.int64(len(f_table))
    out = np.zeros(len(lon), dtype=bool)
    for i, (x, y, a) in enumerate(zip(lon.tolist(), lat.tolist(), acc.tolist(), strict=True)):
        row = int(np.floor((y + 90.0) * grid.FINE_PER_DEG))
        col = int(np.floor((x + 180.0) * grid.FINE_PER_DEG)) % grid.FINE_COLS
        slot = int(find(f_table, size, np.int64(row * grid.FINE_COLS + col)))
        if slot < 0:
            continue
        ints, floats = f_ints, f_floats
        if f_ints[slot, 0] == grid.STATE_SUB:
            srow = int(np.floor((y + 90.0) * grid.SUB_PER_DEG))
            scol = int(np.floor((x + 180.0) * grid.SUB_PER_DEG)) % grid.SUB_COLS
            srow = min(max(srow, row * grid.SUB), row * grid.SUB + grid.SUB - 1) - row * grid.SUB
            scol = min(max(scol, col * grid.SUB), col * grid.SUB + grid.SUB - 1) - col * grid.SUB
            slot = int(sub_base[slot]) * grid.SUB * grid.SUB + srow * grid.SUB + scol
            ints, floats = s_ints, s_floats
        state = ints[slot, 0]
        settled = state in (grid.STATE_INSIDE, grid.STATE_NEAR) or a >= floats[slot, 1]
        out[i] = not (settled or (state == grid.STATE_CLEAR and a <= floats[slot, 0]))
    return out


def report(code: Path, samples: Path, top: int) -> None:
    """The hottest kernel instructions, from perf's samples and the dumped machine code."""
    raw = code.read_bytes()
    base = int.from_bytes(raw[:8], "little")
    body = code.with_suffix(".bin")
    body.write_bytes(raw[8:])
    asm = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", f"--adjust-vma={base:#x}",
         str(body)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    lines: list[tuple[int, str]] = []
    for line in asm.splitlines():
        head, _, rest = line.partition(":\t")
        if rest:
            try:
                lines.append((int(head.strip(), 16), rest.split("\t")[-1].strip()))
            except ValueError:
                continue
    ips = subprocess.run(
        ["perf", "script", "-i", str(samples), "-F", "ip"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    counts = collections.Counter(int(ip, 16) for ip in ips)
    inside = {ip: n for ip, n in counts.items() if base <= ip < base + CODE_BYTES}
    total, kernel = sum(counts.values()), sum(inside.values())
    print(f"{kernel:,} of {total:,} samples in the kernel")
    where = {a: k for k, (a, _) in enumerate(lines)}
    for ip, n in sorted(inside.items(), key=lambda item: -item[1])[:top]:
        k = where.get(ip)
        context = " | ".join(t for _, t in lines[max(0, k - 2) : k + 1]) if k is not None else "?"
        print(f"  +{ip - base:#06x} {n / kernel:6.1%}  {context[:100]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gfz", help="a compiled zone set (default: compile the bundled zones)")
    ap.add_argument("--points", help="an .npz of lon and lat (default: the bench's mix)")
    ap.add_argument("--accuracy", type=float, default=20.0, help="metres (20)")
    ap.add_argument("--only-lists", action="store_true", help="only points a list settles")
    ap.add_argument("--seconds", type=float, default=8.0, help="kernel time under perf (8)")
    ap.add_argument("--top", type=int, default=20, help="instructions to show (20)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args, args.worker)
        return 0
    with tempfile.TemporaryDirectory(prefix="perf-kernel-") as tmp:
        code, samples = Path(tmp) / "kernel.code", Path(tmp) / "perf.data"
        again = list(argv if argv is not None else sys.argv[1:])
        subprocess.run(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-o", str(samples),
             sys.executable, __file__, *again, "--worker", str(code)],
            check=True,
        )  # fmt: skip
        report(code, samples, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

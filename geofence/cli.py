"""The `geofence` command line: check, validate, compile, diff, map, import-osm.

Exit codes, for every command: 0 success (allowed / clean / equal), 1 a finding (rejected /
problems / different), 2 a usage or input error that prevented the command from running.
Every command that reads zones takes a folder, zone files, or one compiled `.gfz` file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geofence import compiled
from geofence.engine import Engine
from geofence.errors import GeofenceError, ProblemsError
from geofence.zones import zone_files
from geofence.zoneset import ZoneSet

EXIT_OK, EXIT_FINDING, EXIT_USAGE = 0, 1, 2

EPILOG = """examples:
  geofence check zones/ --lat 51.5138 --lon -0.0984 --accuracy 25
  geofence check zones.gfz --lat 60.1696 --lon 24.9435 --device ifa-123 --at 1767225600
  geofence import-osm monaco.osm.pbf -o zones/monaco.geojson
  geofence validate zones/
  geofence validate zones/ --fix -o zones-fixed/
  geofence compile zones/ -o zones.gfz
  geofence diff zones.gfz zones/
  geofence map zones/ -o map.html

exit codes: 0 ok (allowed, clean, equal), 1 a finding (rejected, problems, different),
2 a usage or input error. See zones/README.md for the workflow and every validation message.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ProblemsError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return EXIT_USAGE
    except (GeofenceError, OSError, ValueError) as exc:
        print(f"geofence: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _sub(
    sub: Any, name: str, help_text: str, description: str, examples: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geofence",
        description="Fail-closed geofence compliance guard for location-triggered ads.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = _sub(
        sub,
        "check",
        "decide one request; prints one JSON decision",
        "Decide one location request against the zones in PATH (a folder, zone files, or a "
        "compiled .gfz) and print the decision as JSON. Exit 0 when allowed, 1 when rejected, "
        "2 when the zones cannot be loaded.",
        "  geofence check zones/ --lat 51.5138 --lon -0.0984 --accuracy 25\n"
        "  geofence check zones.gfz --lat 60.1696 --lon 24.9435 --source ip\n",
    )
    check.add_argument("path", nargs="+", help="zone folder, zone files, or one .gfz")
    check.add_argument("--lat", type=float, required=True)
    check.add_argument("--lon", type=float, required=True)
    check.add_argument("--accuracy", type=float, default=None, help="accuracy radius, metres")
    check.add_argument("--device", default=None, help="device id (presence is in memory only)")
    check.add_argument("--at", type=float, default=None, help="time of the fix, Unix seconds")
    check.add_argument("--source", default="gps", choices=["gps", "ip", "user", "unknown"])
    check.set_defaults(func=_check)

    validate = _sub(
        sub,
        "validate",
        "check zone files, policy and beacons; one line per problem",
        "Check every zone file, policy.toml and beacons.csv. Prints one line per problem: "
        "file, feature index, id, severity, what is wrong and a hint. zones/README.md explains "
        "each message. Exit 0 when there is no error (warnings allowed unless --strict), 1 "
        "otherwise. With --fix -o OUT, writes a repaired copy to the folder OUT (WGS84 GeoJSON, "
        "outlines made valid, open rings closed, misspelt categories corrected, unfixable "
        "features dropped) and lists each repair; the exit code still reports the input.",
        "  geofence validate zones/\n"
        "  geofence validate zones/extra.geojson --json\n"
        "  geofence validate zones/ --max-area-km2 5 --strict\n"
        "  geofence validate zones/ --fix -o zones-fixed/\n",
    )
    validate.add_argument("path", nargs="+", help="zone folder, zone files, or a .gfz")
    validate.add_argument(
        "--json", action="store_true", help="one JSON object per problem (and per repair)"
    )
    validate.add_argument(
        "--max-area-km2",
        type=float,
        default=25.0,
        help="warn about zones larger than this (default 25 km²)",
    )
    validate.add_argument("--strict", action="store_true", help="warnings also exit 1")
    validate.add_argument("--fix", action="store_true", help="write a repaired copy (needs -o)")
    validate.add_argument("-o", "--output", help="folder for the repaired copy (with --fix)")
    validate.set_defaults(func=_validate)

    comp = _sub(
        sub,
        "compile",
        "compile zones and policy; print a summary; -o writes a .gfz",
        "Compile the zone set and print: zones per category and per source file, the buffer "
        "and lookback of each category with the pack (and statute) that set it, the total "
        f"area protected (up to {AREA_MAX_ZONES:,} zones unless --area), and the zone-set "
        "version. A progress bar shows on a terminal when a "
        "step takes over a second: zone files read, then each stage of the index build (exact "
        "index, coarse cells, fine cells, subcells) chunk by chunk. -o writes one checksummed "
        "compiled file that `Engine.load` and every command here open.",
        "  geofence compile zones/\n  geofence compile zones/ -o zones.gfz\n"
        "  geofence compile zones.gfz --json\n",
    )
    comp.add_argument("path", nargs="+", help="zone folder, zone files, or one .gfz")
    comp.add_argument("--json", action="store_true", help="print the summary as JSON")
    comp.add_argument("-o", "--output", help="write the compiled zone set to this .gfz file")
    area = comp.add_mutually_exclusive_group()
    area.add_argument("--no-area", action="store_true", help="skip the protected-area sum")
    area.add_argument(
        "--area",
        action="store_true",
        help=f"measure the protected area even above {AREA_MAX_ZONES:,} zones (minutes, GBs)",
    )
    comp.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    comp.set_defaults(func=_compile)

    diff = _sub(
        sub,
        "diff",
        "what changed between two zone sets; exit 1 when they differ",
        "Compare two zone sets (folders or .gfz files): zones added, removed, re-identified "
        "(same place, new id), moved (centroid distance in metres), reshaped, recategorised, "
        "and buffers or lookbacks changed by a policy edit. Exit 0 when equal, 1 when different.",
        "  geofence diff old-zones/ zones/\n  geofence diff deployed.gfz zones/ --json\n",
    )
    diff.add_argument("old", help="the zone set before (folder or .gfz)")
    diff.add_argument("new", help="the zone set after (folder or .gfz)")
    diff.add_argument("--json", action="store_true", help="print the diff as one JSON object")
    diff.add_argument("--move-tolerance-m", type=float, default=1.0, help="default 1 m")
    diff.add_argument("--shape-tolerance-m", type=float, default=1.0, help="default 1 m")
    diff.set_defaults(func=_diff)

    mp = _sub(
        sub,
        "map",
        "write a self-contained HTML map of zones, buffers and beacons",
        "Write one HTML file that opens with no network (Leaflet inlined): zones coloured by "
        "category, buffers as dashed outlines, beacons with their range, a popup per zone, a "
        "legend and a search box. No background tiles unless --tiles is given. Geometry is "
        "simplified for display only.",
        "  geofence map zones/ -o map.html\n"
        "  geofence map zones.gfz -o map.html --tiles 'https://tile.openstreetmap.org/{z}/{x}/{y}.png'\n",
    )
    mp.add_argument("path", nargs="+", help="zone folder, zone files, or one .gfz")
    mp.add_argument("-o", "--output", required=True, help="the HTML file to write")
    mp.add_argument("--tiles", default=None, help="optional tile URL template ({z}/{x}/{y})")
    mp.add_argument("--renderer", choices=["auto", "svg", "canvas"], default="auto")
    mp.add_argument("--simplify-m", type=float, default=None, help="display simplification, metres")
    mp.set_defaults(func=_map)

    osm = _sub(
        sub,
        "import-osm",
        "turn an OpenStreetMap extract into a zone file",
        "Read an OSM extract (.osm.pbf or .osm): areas (closed ways, multipolygon relations "
        "with their holes) and nodes (as circles of --radius-m), map their tags to categories "
        "with the table in geofence/osm_categories.toml (or --mapping), and write a GeoJSON zone "
        "file with ids osm:way/<id>, osm:relation/<id>, osm:node/<id>. Prints the count per "
        "category and what was skipped and why.",
        "  geofence import-osm monaco.osm.pbf -o zones/monaco.geojson\n"
        "  geofence import-osm city.osm.pbf -o zones/city.geojson --radius-m 75 --json\n"
        "  geofence import-osm --show-mapping\n",
    )
    osm.add_argument("file", nargs="?", help="the .osm.pbf (or .osm) extract")
    osm.add_argument("-o", "--output", help="the GeoJSON zone file to write")
    osm.add_argument("--radius-m", type=float, default=50.0, help="radius of node zones (50)")
    osm.add_argument("--mapping", default=None, help="a mapping table to use instead")
    osm.add_argument("--json", action="store_true", help="print the report as JSON")
    osm.add_argument("--show-mapping", action="store_true", help="print the mapping table")
    osm.set_defaults(func=_import_osm)
    return parser


# --- loading -------------------------------------------------------------------------------------


def _is_compiled(paths: Sequence[str]) -> bool:
    return len(paths) == 1 and Path(paths[0]).suffix.lower() == ".gfz"


@contextmanager
def _progress(desc: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """A tqdm bar on stderr that appears only after a second, and only on a terminal."""
    with _bar(desc, total, enabled) as bar:
        yield lambda: bar.update(1)


@contextmanager
def _bar(desc: str, total: int | None, enabled: bool = True) -> Iterator[Any]:
    """The tqdm bar of `_progress` itself, for work that moves on by more than one at a time."""
    from tqdm import tqdm  # noqa: PLC0415 - only commands with long work pay for importing it

    bar = tqdm(
        total=total,
        desc=desc,
        delay=1.0,
        file=sys.stderr,
        disable=None if enabled else True,
        leave=False,
        unit="",
    )
    try:
        yield bar
    finally:
        bar.close()


def _stage_reporter(bar: Any, prefix: str) -> Callable[[str, int, int], None]:
    """A BuildProgress that moves `bar` on: each new stage restarts it with its own total."""
    current: list[str] = []

    def report(stage: str, done: int, total: int) -> None:
        if current != [stage]:
            current[:] = [stage]
            bar.set_description(f"{prefix}{stage}", refresh=False)
            bar.unit_scale = True  # millions of (cell, piece) pairs read as 2.1M/4.8M
            bar.reset(total=total)
        bar.update(done - bar.n)

    return report


def load_zone_set(paths: Sequence[str], progress: bool = False) -> ZoneSet:
    """A compiled .gfz, or the zone files and policy of `paths` compiled as ZoneSet.from_paths."""
    if _is_compiled(paths):
        return compiled.load(paths[0])
    if not progress:
        return ZoneSet.from_paths(*paths)
    # One bar: over the zone files, then over each stage of the index build, chunk by chunk.
    with _bar("reading zone files", len(zone_files(paths))) as bar:
        return ZoneSet.from_paths(
            *paths,
            progress=lambda _f: bar.update(1),
            build_progress=_stage_reporter(bar, "building the index: "),
        )


# --- check ---------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    if _is_compiled(args.path):
        engine = Engine.load(args.path[0], presence="memory://")
    else:
        engine = Engine.from_paths(*args.path, presence="memory://")
    decision = engine.check_location(
        lat=args.lat,
        lon=args.lon,
        accuracy_m=args.accuracy,
        device_id=args.device,
        at=args.at,
        source=args.source,
    )
    print(json.dumps(decision.to_dict()))
    return EXIT_OK if decision.allowed else EXIT_FINDING


# --- validate ------------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    from geofence import validate as v  # noqa: PLC0415

    if args.fix and not args.output:
        print(
            "geofence validate: --fix needs -o OUT (a folder for the repaired copy)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.output and not args.fix:
        print("geofence validate: -o is for --fix", file=sys.stderr)
        return EXIT_USAGE
    if not args.max_area_km2 > 0:
        print("geofence validate: --max-area-km2 must be > 0", file=sys.stderr)
        return EXIT_USAGE
    report = v.validate(args.path, args.max_area_km2)
    for p in report.problems:
        print(json.dumps(v.problem_dict(p), ensure_ascii=False) if args.json else p)
    errors, warns = len(report.errors), len(report.warnings)
    summary = f"{len(report.files)} file(s), {errors} error(s), {warns} warning(s)"
    if args.fix:
        repairs, after = v.fix(args.path, args.output, args.max_area_km2)
        for r in repairs:
            print(json.dumps(r.to_dict(), ensure_ascii=False) if args.json else r)
        for p in after.problems:  # what the copy still has (warnings; policy/beacon errors)
            if args.json:
                print(json.dumps({"in_output": True, **v.problem_dict(p)}, ensure_ascii=False))
            else:
                print(f"in {args.output}: {p}")
        summary += (
            f"; wrote {args.output}: {sum(not r.dropped for r in repairs)} repair(s), "
            f"{sum(r.dropped for r in repairs)} drop(s), {len(after.errors)} error(s) left"
        )
    if not args.json:
        print(summary, file=sys.stderr)
    finding = errors or (args.strict and warns)
    return EXIT_FINDING if finding else EXIT_OK


# --- compile -------------------------------------------------------------------------------------

# Above this many zones `compile` leaves the protected area out unless --area asks for it. The
# union of every buffered zone grows faster than the compile: 50k zones 27 s and 0.4 GB, 200k
# 236 s and 1.5 GB, so 1M about 20 min and 7 GB, where the compile itself takes 76 s in 3.6 GB.
AREA_MAX_ZONES = 50_000
AREA_METHOD = (
    "union of the zones widened by their buffers (drawn in true metres in each zone's tile "
    "AEQD frame), measured geodesically on WGS84; overlaps count once"
)


def _compile(args: argparse.Namespace) -> int:
    from geofence.validate import protected_area_km2  # noqa: PLC0415

    show = not args.no_progress
    zs = load_zone_set(args.path, progress=show)
    if args.output:
        compiled.save(zs, args.output)
    counts = zs.counts_by_category()
    sources = Counter(z.source for z in zs.zones)
    summary: dict[str, Any] = {
        "version": zs.version,
        "zones": len(zs),
        "pack": zs.policy.pack,
        "sources": dict(sorted(sources.items())),
        "categories": {
            c.value: {
                "zones": counts.get(c, 0),
                "buffer_m": zs.policy.rule(c).buffer_m,
                "lookback_days": zs.policy.rule(c).lookback_days,
                "set_by": zs.policy.rule(c).set_by,
            }
            for c in zs.policy.rules
        },
        "warnings": [str(w) for w in zs.warnings],
    }
    measure_area = args.area or (not args.no_area and len(zs) <= AREA_MAX_ZONES)
    if not args.no_area and not measure_area:
        summary["area_not_measured"] = (
            f"{len(zs):,} zones, over {AREA_MAX_ZONES:,}: --area measures it"
        )
    if measure_area:
        with _progress("measuring protected area", len(zs), show) as tick:
            zones_km2, buffered_km2 = protected_area_km2(
                zs.zones, zs.buffer_m.tolist(), progress=lambda _i: tick()
            )
        summary["area_km2"] = {
            "zones": round(zones_km2, 3),
            "with_buffers": round(buffered_km2, 3),
            "method": AREA_METHOD,
        }
    if args.output:
        summary["output"] = str(args.output)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"zone set {zs.version}: {len(zs)} zones, pack {zs.policy.pack}")
    print("zones per source file:")
    for name, n in summary["sources"].items():
        print(f"  {name:<48}{n:>7}")
    print(f"{'category':<22}{'zones':>7}{'buffer m':>10}{'lookback d':>12}  set by")
    for name, row in summary["categories"].items():
        print(
            f"{name:<22}{row['zones']:>7}{row['buffer_m']:>10.1f}{row['lookback_days']:>12g}"
            f"  {row['set_by']}"
        )
    if "area_km2" in summary:
        a = summary["area_km2"]
        print(
            f"protected area: {a['with_buffers']:.2f} km² with buffers "
            f"({a['zones']:.2f} km² of zones alone); {AREA_METHOD}"
        )
    elif "area_not_measured" in summary:
        print(f"protected area: not measured ({summary['area_not_measured']})")
    if args.output:
        print(f"wrote {args.output}")
    for w in zs.warnings:
        print(w, file=sys.stderr)
    return EXIT_OK


# --- diff ----------------------------------------------------------------------------------------


def _diff(args: argparse.Namespace) -> int:
    from geofence.diff import diff_zone_sets, summary_line  # noqa: PLC0415

    old = load_zone_set([args.old])
    new = load_zone_set([args.new])
    d = diff_zone_sets(
        old,
        new,
        move_tolerance_m=args.move_tolerance_m,
        shape_tolerance_m=args.shape_tolerance_m,
    )
    if args.json:
        print(json.dumps(d.to_dict(), ensure_ascii=False, default=str))
    else:
        for c in d.changes:
            print(c)
        print(summary_line(d), file=sys.stderr)
    return EXIT_OK if d.equal else EXIT_FINDING


# --- map -----------------------------------------------------------------------------------------


def _map(args: argparse.Namespace) -> int:
    from geofence.mapview import write_map  # noqa: PLC0415

    zs = load_zone_set(args.path)
    out = write_map(
        zs, args.output, tiles=args.tiles, renderer=args.renderer, simplify_m=args.simplify_m
    )
    beacons = len(zs.beacons) if zs.beacons is not None else 0
    print(f"wrote {out}: {len(zs)} zones, {beacons} beacons, zone set {zs.version}")
    return EXIT_OK


# --- import-osm ----------------------------------------------------------------------------------


def _import_osm(args: argparse.Namespace) -> int:
    from geofence import osm  # noqa: PLC0415

    mapping = osm.load_mapping(args.mapping)
    if args.show_mapping:
        for n, (tags, cat, why) in enumerate(mapping.table(), start=1):
            print(f"{n:>3}  {tags:<60} -> {cat}" + (f"   # {why}" if why else ""))
        if not args.file:
            return EXIT_OK
    if not args.file or not args.output:
        print("geofence import-osm: give FILE and -o OUT.geojson", file=sys.stderr)
        return EXIT_USAGE
    src = Path(args.file)
    if not src.is_file():
        print(f"geofence import-osm: no such file: {src}", file=sys.stderr)
        return EXIT_USAGE
    if not args.radius_m > 0:
        print("geofence import-osm: --radius-m must be > 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = osm.import_osm(src, radius_m=args.radius_m, mapping=mapping)
    except Exception as exc:  # GDAL's errors for a file that is not OSM
        print(f"geofence import-osm: cannot read {src}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    osm.write_geojson(result, args.output)
    report = result.summary() | {"output": str(args.output)}
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return EXIT_OK
    print(f"wrote {args.output}: {len(result.features)} zones from {src.name}")
    for cat, n in sorted(result.categories.items()):
        print(f"  {cat:<22}{n:>6}")
    print(
        f"skipped: {sum(result.skipped.values())} mapped but unusable, "
        f"{result.not_sensitive} not sensitive (e.g. pharmacies), "
        f"{result.unmapped} with no mapped tag"
    )
    for why, n in sorted(result.skipped.items()):
        print(f"  {n:>5} x {why}")
    for zid, cat, why in result.skipped_ids:
        print(f"  skipped {zid} ({cat}): {why}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""The `geofence` command line: check, validate, compile.

Exit codes, for every command: 0 success (allowed / clean), 1 a finding (rejected / problems),
2 a usage or input error that prevented the command from running.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from geofence import compiled
from geofence.engine import Engine
from geofence.errors import GeofenceError, Problem, ProblemsError
from geofence.policy import Policy
from geofence.zones import read_zones, zone_files
from geofence.zoneset import ZoneSet, _policy_path

EXIT_OK, EXIT_FINDING, EXIT_USAGE = 0, 1, 2

EPILOG = """examples:
  geofence check zones/ --lat 51.5138 --lon -0.0984 --accuracy 25
  geofence check zones/ --lat 60.1696 --lon 24.9435 --device ifa-123 --at 1767225600
  geofence validate zones/
  geofence compile zones/ -o zones.gfz
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
    except (GeofenceError, OSError) as exc:
        print(f"geofence: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geofence",
        description="Fail-closed geofence compliance guard for location-triggered ads.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser(
        "check",
        help="decide one request; prints one JSON decision",
        description="Decide one location request against the zones in PATH and print the "
        "decision as JSON. Exit 0 when allowed, 1 when rejected.",
        epilog="example:\n  geofence check zones/ --lat 51.5138 --lon -0.0984 --accuracy 25",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("path", nargs="+", help="zone folder or files")
    check.add_argument("--lat", type=float, required=True)
    check.add_argument("--lon", type=float, required=True)
    check.add_argument("--accuracy", type=float, default=None, help="accuracy radius, metres")
    check.add_argument("--device", default=None, help="device id (presence is in memory only)")
    check.add_argument("--at", type=float, default=None, help="time of the fix, Unix seconds")
    check.add_argument("--source", default="gps", choices=["gps", "ip", "user", "unknown"])
    check.set_defaults(func=_check)

    validate = sub.add_parser(
        "validate",
        help="check zone files and policy; one line per problem",
        description="Check every zone file and the policy. Prints one line per problem "
        "(file, feature index, id, what is wrong, a hint). Exit 0 when clean, 1 otherwise.",
        epilog="example:\n  geofence validate zones/\n  geofence validate zones/extra.geojson",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("path", nargs="+")
    validate.add_argument("--json", action="store_true", help="print problems as JSON lines")
    validate.set_defaults(func=_validate)

    comp = sub.add_parser(
        "compile",
        help="compile zones and policy; print a summary",
        description="Compile the zone set and print zones per category, the buffer and "
        "lookback of each category with what set it, and the zone-set version.",
        epilog="example:\n  geofence compile zones/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    comp.add_argument("path", nargs="+")
    comp.add_argument("--json", action="store_true", help="print the summary as JSON")
    comp.add_argument("-o", "--output", help="write the compiled zone set to this .gfz file")
    comp.set_defaults(func=_compile)
    return parser


def _check(args: argparse.Namespace) -> int:
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


def _validate(args: argparse.Namespace) -> int:
    problems: list[Problem] = []
    files = zone_files(args.path)
    if not files:
        problems.append(Problem(" ".join(args.path), "no zone files found"))
    _, zone_problems = read_zones(files)
    problems += zone_problems
    policy_path = _policy_path(args.path)
    if policy_path is not None:
        try:
            problems += list(Policy.load(policy_path).warnings)
        except ProblemsError as exc:
            problems += exc.problems
    for p in problems:
        if args.json:
            print(
                json.dumps(
                    {
                        "file": p.file,
                        "feature": p.feature,
                        "id": p.zone_id,
                        "severity": p.severity,
                        "message": p.message,
                        "hint": p.hint,
                    }
                )
            )
        else:
            print(p)
    errors = sum(p.severity == "error" for p in problems)
    if not args.json:
        print(
            f"{len(files)} file(s), {errors} error(s), {len(problems) - errors} warning(s)",
            file=sys.stderr,
        )
    return EXIT_FINDING if errors else EXIT_OK


def _compile(args: argparse.Namespace) -> int:
    zs = ZoneSet.from_paths(*args.path)
    if args.output:
        compiled.save(zs, args.output)
    counts = zs.counts_by_category()
    summary = {
        "version": zs.version,
        "zones": len(zs),
        "pack": zs.policy.pack,
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
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    print(f"zone set {zs.version}: {len(zs)} zones, pack {zs.policy.pack}")
    print(f"{'category':<22}{'zones':>7}{'buffer m':>10}{'lookback d':>12}  set by")
    for name, row in summary["categories"].items():  # type: ignore[attr-defined]
        print(
            f"{name:<22}{row['zones']:>7}{row['buffer_m']:>10.1f}{row['lookback_days']:>12g}"
            f"  {row['set_by']}"
        )
    for w in zs.warnings:
        print(w, file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""A compiled zone set: zones plus policy, resolved to arrays and an index. Immutable, versioned."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from geofence.beacons import BeaconRegistry, load_beacon_registry
from geofence.categories import Category
from geofence.decision import Decision
from geofence.errors import Problem
from geofence.grid import BuildProgress, GridIndex
from geofence.index import ExactIndex, LocationIndex
from geofence.policy import Policy
from geofence.reasons import Reason
from geofence.zones import Zone, content_hash, load_zones, zone_files

POLICY_FILE = "policy.toml"
BEACONS_FILE = "beacons.csv"


@dataclass(frozen=True, slots=True, eq=False)
class ZoneSet:
    """Everything a decision needs about the zones, fixed at compile time.

    `version` is a content hash of the zone files and the policy (with the packs it uses), so the
    same inputs always give the same version and any edit gives a new one.
    """

    version: str
    policy: Policy
    zones: tuple[Zone, ...]
    ids: tuple[str, ...]
    category: npt.NDArray[np.uint8]  # Category.code per zone
    buffer_m: npt.NDArray[np.float64]  # effective buffer per zone (policy, widened per zone)
    lookback_s: npt.NDArray[np.float64]  # per category code
    index: LocationIndex  # the serving index: GridIndex in front of `exact`
    exact: ExactIndex  # the reference index
    warnings: tuple[Problem, ...] = ()
    beacons: BeaconRegistry | None = None  # zones/beacons.csv, when the folder has one
    positions: Mapping[str, int] = field(default_factory=dict)  # zone id -> index
    # The single-request path's inside_zone/near_zone decisions by (kind, zone), made once:
    # a Decision costs about 0.9 us to build, a fifth of a rejected request. At most two a zone.
    rejections: dict[tuple[int, int], Decision] = field(default_factory=dict, repr=False)
    # policy.max_lookback_s, which takes the maximum over every category on each call (~1 us):
    # every request's time is checked against it.
    max_lookback_s: float = field(init=False, repr=False)
    # The allowed decision, made once (it names only the version).
    allowed: Decision = field(init=False, repr=False)
    # Presence counts a circle's centre only (the policy's "center_inside" rule).
    presence_center_only: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_lookback_s", float(self.policy.max_lookback_s))
        object.__setattr__(self, "allowed", Decision(True, Reason.ALLOWED, self.version))
        object.__setattr__(
            self, "presence_center_only", self.policy.presence.rule == "center_inside"
        )

    def __len__(self) -> int:
        return len(self.zones)

    def counts_by_category(self) -> dict[Category, int]:
        counts = Counter(z.category for z in self.zones)
        return {c: counts[c] for c in Category if counts[c]}

    @classmethod
    def compile(
        cls,
        zones: Sequence[Zone],
        policy: Policy,
        version: str,
        warnings: Iterable[Problem] = (),
        beacons: BeaconRegistry | None = None,
        build_progress: BuildProgress | None = None,
    ) -> ZoneSet:
        """Resolve buffers from the policy and build the index.

        `build_progress`, if given, is called with (stage, done, total) as the index is built:
        at 1M zones that takes about two minutes.
        """
        n = len(zones)
        warns = list(warnings) + list(policy.warnings)
        buffer = np.empty(n, dtype=np.float64)
        for i, z in enumerate(zones):
            rule = policy.rule(z.category).buffer_m
            if z.buffer_m is not None and z.buffer_m < rule:
                warns.append(
                    Problem(
                        z.source,
                        f"buffer_m {z.buffer_m:g} is below the policy's {rule:g} m for "
                        f"{z.category.value}; the policy's buffer applies",
                        zone_id=z.id,
                        severity="warning",
                    )
                )
            buffer[i] = max(rule, z.buffer_m or 0.0)
        geoms = np.empty(n, dtype=object)
        geoms[:] = [z.geometry for z in zones]
        if build_progress is not None:
            build_progress("exact index", 0, 1)
        exact = ExactIndex(
            geoms,
            radius_m=np.array([z.radius_m for z in zones], dtype=np.float64),
            buffer_m=buffer,
            valid_from=np.array(
                [-np.inf if z.valid_from is None else z.valid_from for z in zones], np.float64
            ),
            valid_until=np.array(
                [np.inf if z.valid_until is None else z.valid_until for z in zones], np.float64
            ),
        )
        return cls(
            version=version,
            policy=policy,
            zones=tuple(zones),
            ids=tuple(z.id for z in zones),
            category=np.array([z.category.code for z in zones], dtype=np.uint8),
            buffer_m=buffer,
            lookback_s=np.array([policy.rule(c).lookback_s for c in Category], dtype=np.float64),
            index=GridIndex(exact, policy.requests.max_accuracy_m, build_progress),
            exact=exact,
            warnings=tuple(warns) + (beacons.warnings if beacons else ()),
            beacons=beacons,
            positions={z.id: i for i, z in enumerate(zones)},
        )

    def zone_position(self, zone_id: str) -> int:
        """The index of a zone by id, or -1."""
        return self.positions.get(zone_id, -1)

    @classmethod
    def from_paths(
        cls,
        *paths: str | Path,
        progress: Callable[[Path], None] | None = None,
        build_progress: BuildProgress | None = None,
    ) -> ZoneSet:
        """Load zone files and the folder's policy.toml; raise ZoneFileError/PolicyError.

        `progress`, if given, is called with each zone file once it has been read;
        `build_progress` as `compile` says.
        """
        files = zone_files(paths)
        policy_path = _policy_path(paths)
        policy = Policy.load(policy_path) if policy_path else Policy.default()
        zones, warnings = load_zones(files, progress=progress)
        beacon_path = _beside(paths, BEACONS_FILE)
        beacons = load_beacon_registry(beacon_path, {z.id for z in zones}) if beacon_path else None
        extra = [policy.fingerprint.encode()]
        version = content_hash(files + ([beacon_path] if beacon_path else []), extra)
        return cls.compile(zones, policy, version, warnings, beacons, build_progress)


def _policy_path(paths: Iterable[str | Path]) -> Path | None:
    """The policy.toml of the first folder given (or beside the first file) that has one."""
    return _beside(paths, POLICY_FILE)


def _beside(paths: Iterable[str | Path], name: str) -> Path | None:
    """The file `name` in the first folder given (or beside the first file) that has one."""
    for raw in paths:
        p = Path(raw)
        folder = p if p.is_dir() else p.parent
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None

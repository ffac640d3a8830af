"""The one exception hierarchy of geofence.

`check*` methods never raise these to the caller: they turn into rejecting decisions. They are
raised by loading, compiling and configuring, where a person can fix the cause.
"""

from __future__ import annotations

from dataclasses import dataclass


class GeofenceError(Exception):
    """Base of every error geofence raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One defect found in an input file, located precisely enough to fix it."""

    file: str
    message: str
    feature: int | None = None  # 0-based feature (or data row) index within the file
    zone_id: str | None = None
    hint: str | None = None
    severity: str = "error"  # "error" blocks compilation; "warning" does not

    def __str__(self) -> str:
        where = self.file
        if self.feature is not None:
            where += f": feature {self.feature}"
        if self.zone_id is not None:
            where += f" (id {self.zone_id!r})"
        text = f"{where}: {self.severity}: {self.message}"
        if self.hint:
            text += f" [hint: {self.hint}]"
        return text


class ProblemsError(GeofenceError):
    """An error that carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem], what: str = "problems") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} {what}:\n{lines}")


class ZoneFileError(ProblemsError):
    """One or more zone files are defective; `.problems` lists each defect."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems, "zone file problem(s)")


class PolicyError(ProblemsError):
    """The policy file or a rule pack is defective."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems, "policy problem(s)")


class BeaconRegistryError(ProblemsError):
    """The beacon registry (beacons.csv) is defective."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems, "beacon registry problem(s)")


class CompiledFileError(GeofenceError):
    """A compiled zone-set file is corrupt, truncated, foreign or from another format version."""


class PresenceConfigError(GeofenceError):
    """The presence store cannot be configured (bad URL, missing secret)."""


class PresenceUnavailable(GeofenceError):
    """The presence store cannot answer right now; decisions that need it fail closed."""

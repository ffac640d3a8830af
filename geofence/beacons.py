"""The beacon registry: which BLE beacon is where (`zones/beacons.csv`).

A beacon sighting in a bid request is only as trustworthy as the registry row it matches, so the
loader is strict: every defect is an error naming its row, and all of them are reported at once
(`BeaconRegistryError`) so a person can fix the file in one pass. Ids that parse but do not
identify one beacon in practice (factory defaults) are warnings: the registry still loads, and
`BeaconRegistry.warnings` says which rows a sighting cannot be pinned on.

Columns (UTF-8, a leading BOM tolerated; cells are stripped of surrounding whitespace):

=========== ======== ========================================================================
column      required meaning
=========== ======== ========================================================================
beacon_id   yes      iBeacon / AltBeacon `UUID:major:minor` (UUID in 8-4-4-4-12 hex, major and
                     minor integers 0-65535) or Eddystone-UID `namespace:instance` (20 and 12
                     hex digits). Case-insensitive; stored lowercase.
type        yes      `ibeacon`, `eddystone_uid` or `altbeacon` (case-insensitive)
lat, lon    yes      WGS84 degrees; both empty only when `zone_id` links the beacon to a zone
range_m     yes      how far the beacon is heard, metres; empty means `DEFAULT_RANGE_M[type]`
status      yes      `active`, `inactive` or `decommissioned` (case-insensitive)
zone_id     no       the zone the beacon marks
floor       no       indoor level, free text
name        no       free text
=========== ======== ========================================================================

The column must be present even when every cell in it is empty. AltBeacon ids use the iBeacon
form: the AltBeacon 20-byte id is conventionally split as a 16-byte UUID and two 2-byte fields
(as the Android Beacon Library does).
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from geofence.errors import BeaconRegistryError, Problem

__all__ = [
    "BEACON_TYPES",
    "DEFAULT_RANGE_M",
    "FACTORY_DEFAULT_UUIDS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "STATUSES",
    "Beacon",
    "BeaconRegistry",
    "load_beacon_registry",
    "normalize_beacon_id",
]

BEACON_TYPES = ("ibeacon", "eddystone_uid", "altbeacon")
STATUSES = ("active", "inactive", "decommissioned")
REQUIRED_COLUMNS = ("beacon_id", "type", "lat", "lon", "range_m", "status")
OPTIONAL_COLUMNS = ("zone_id", "floor", "name")

# Range used when `range_m` is empty. BLE advertising at the usual 0 dBm transmit power is heard
# over tens of metres indoors (walls and bodies absorb it; open halls carry it further). A range
# that is too small lets a device inside a sensitive place be treated as outside, so the default
# takes a conservative upper value rather than a typical one. All three formats ride the same
# BLE advertising radio, hence one value; set `range_m` per row when the real one is known.
DEFAULT_RANGE_M: Mapping[str, float] = MappingProxyType(
    {"ibeacon": 70.0, "eddystone_uid": 70.0, "altbeacon": 70.0}
)

# Proximity UUIDs that beacons ship with or that sample code hard-wires. Beacons never
# reconfigured advertise them in unrelated deployments everywhere, so a sighting of such an id
# may come from someone else's beacon next door. Lowercase, canonical form.
FACTORY_DEFAULT_UUIDS: Mapping[str, str] = MappingProxyType(
    {
        "e2c56db5-dffb-48d2-b060-d0f5a71096e0": "Apple AirLocate sample, default on many beacons",
        "5a4bcfce-174e-4bac-a814-092e77f6b7e5": "Apple AirLocate sample",
        "74278bda-b644-4520-8f0c-720eaf059935": "Apple AirLocate sample",
        "fda50693-a4e2-4fb1-afcf-c6eb07647825": "WeChat default, on many beacons sold in China",
        "b9407f30-f5f8-466e-aff9-25556b57fe6d": "Estimote factory default",
        "f7826da6-4fa2-4e98-8024-bc5b71e0893e": "Kontakt.io factory default",
        "2f234454-cf6d-4a0f-adf2-f4911ba9ffa6": "Radius Networks / Android Beacon Library sample",
    }
)

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX = re.compile(r"[0-9a-f]+")
_DIGITS = re.compile(r"[0-9]+")
# A plain decimal number. float() alone would also take "nan", "inf", "1_000" and non-ASCII
# digits, none of which belong in a coordinate column.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Beacon:
    """One registry row, validated. `row` is the 0-based data row it came from."""

    beacon_id: str
    type: str
    lat: float | None
    lon: float | None
    range_m: float
    status: str
    zone_id: str | None
    floor: str | None
    name: str | None
    row: int


@dataclass(frozen=True, slots=True)
class BeaconRegistry:
    """The loaded registry: beacons by normalised id, and the warnings found while loading."""

    beacons: tuple[Beacon, ...]
    warnings: tuple[Problem, ...] = ()
    _by_id: Mapping[str, Beacon] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, Beacon] = {}
        for beacon in self.beacons:
            key = normalize_beacon_id(beacon.beacon_id)
            if key in by_id:
                raise ValueError(f"duplicate beacon id {key!r}")
            by_id[key] = beacon
        object.__setattr__(self, "beacons", tuple(self.beacons))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))

    def get(self, beacon_id: str) -> Beacon | None:
        """The beacon with this id (any case, surrounding whitespace), or None.

        A malformed id is simply unknown: the caller decides what an unknown beacon means.
        """
        if not isinstance(beacon_id, str):
            return None
        try:
            key = normalize_beacon_id(beacon_id)
        except ValueError:
            return None
        return self._by_id.get(key)

    def __len__(self) -> int:
        return len(self.beacons)

    def __contains__(self, beacon_id: object) -> bool:
        return isinstance(beacon_id, str) and self.get(beacon_id) is not None


# --- ids ---------------------------------------------------------------------------------------


def _quote(text: str, limit: int = 60) -> str:
    """`text` quoted for a message, cut short so one bad cell cannot flood the report."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def normalize_beacon_id(text: str) -> str:
    """The canonical form of a beacon id: lowercase, no surrounding whitespace, decimal major/minor.

    iBeacon/AltBeacon `UUID:major:minor` or Eddystone-UID `namespace:instance`. Raises
    ValueError saying precisely what is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(f"beacon id must be a string, not {type(text).__name__}")
    cleaned = text.strip().lower()
    if not cleaned:
        raise ValueError("beacon id is empty")
    parts = [p.strip() for p in cleaned.split(":")]
    if len(parts) == 3:
        uuid, major, minor = parts
        if not _UUID.fullmatch(uuid):
            raise ValueError(
                f"beacon id {_quote(text)}: UUID {_quote(uuid)} is not 8-4-4-4-12 hex digits"
            )
        return f"{uuid}:{_short(major, 'major', text)}:{_short(minor, 'minor', text)}"
    if len(parts) == 2:
        namespace, instance = parts
        if len(namespace) != 20 or not _HEX.fullmatch(namespace):
            raise ValueError(
                f"beacon id {_quote(text)}: Eddystone namespace {_quote(namespace)} "
                "is not 20 hex digits"
            )
        if len(instance) != 12 or not _HEX.fullmatch(instance):
            raise ValueError(
                f"beacon id {_quote(text)}: Eddystone instance {_quote(instance)} "
                "is not 12 hex digits"
            )
        return f"{namespace}:{instance}"
    raise ValueError(
        f"beacon id {_quote(text)} is neither UUID:major:minor (iBeacon, AltBeacon) "
        "nor namespace:instance (Eddystone-UID)"
    )


def _short(text: str, what: str, beacon_id: str) -> int:
    """An iBeacon major or minor: a decimal integer 0-65535 (leading zeros allowed)."""
    # Leading zeros are stripped before int() so that a cell of 5,000 zeros cannot trip
    # Python's limit on long integer strings instead of this message.
    if (
        not _DIGITS.fullmatch(text)
        or len(text.lstrip("0")) > 5
        or int(text.lstrip("0") or "0") > 65535
    ):
        raise ValueError(
            f"beacon id {_quote(beacon_id)}: {what} {_quote(text)} is not an integer in 0-65535"
        )
    return int(text.lstrip("0") or "0")


def _is_eddystone(normalized_id: str) -> bool:
    return normalized_id.count(":") == 1


# --- loading -----------------------------------------------------------------------------------


def load_beacon_registry(path: Path, zone_ids: Collection[str] | None = None) -> BeaconRegistry:
    """Load and validate `beacons.csv`.

    `zone_ids`, when given, are the zones a `zone_id` cell may name. Raises BeaconRegistryError
    listing every error; warnings do not raise and are in the result's `.warnings`.
    """
    file = str(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            records = list(csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise BeaconRegistryError(
            [Problem(file=file, message=f"not UTF-8: {exc}", hint="save the file as UTF-8")]
        ) from None
    except (OSError, csv.Error) as exc:
        raise BeaconRegistryError([Problem(file=file, message=f"cannot read: {exc}")]) from None
    return _build(file, records, zone_ids)


def _build(file: str, records: list[list[str]], zone_ids: Collection[str] | None) -> BeaconRegistry:
    if not records:
        raise BeaconRegistryError([Problem(file=file, message="file is empty (no header row)")])
    header = [name.strip() for name in records[0]]
    problems, warnings = _check_header(file, header)
    if problems:
        # Without the required columns no row can be read; the header problems are the report.
        raise BeaconRegistryError(problems)

    known = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    column = {name: header.index(name) for name in known if name in header}
    known_zones = None if zone_ids is None else frozenset(zone_ids)
    beacons: list[Beacon] = []
    first_row: dict[str, int] = {}
    rows = [r for r in records[1:] if any(cell.strip() for cell in r)]  # blank lines are skipped
    for index, record in enumerate(rows):
        beacon, row_problems = _row(file, index, record, header, column, known_zones)
        problems.extend(row_problems)
        if beacon is None:
            continue
        if beacon.beacon_id in first_row:
            problems.append(
                _error(
                    file,
                    index,
                    f"duplicate beacon_id {beacon.beacon_id!r} (first in row "
                    f"{first_row[beacon.beacon_id]})",
                    "a beacon id may appear once; a sighting must name one place",
                )
            )
            continue
        first_row[beacon.beacon_id] = index
        beacons.append(beacon)
        warnings.extend(_row_warnings(file, beacon))

    if problems:
        raise BeaconRegistryError(problems)
    warnings.extend(_default_uuid_warnings(file, beacons))
    return BeaconRegistry(beacons=tuple(beacons), warnings=tuple(warnings))


def _error(file: str, row: int | None, message: str, hint: str | None = None) -> Problem:
    return Problem(file=file, feature=row, message=message, hint=hint)


def _warning(file: str, row: int | None, message: str, hint: str | None = None) -> Problem:
    return Problem(file=file, feature=row, message=message, hint=hint, severity="warning")


def _check_header(file: str, header: list[str]) -> tuple[list[Problem], list[Problem]]:
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for name in REQUIRED_COLUMNS:
        if name not in header:
            problems.append(
                _error(
                    file,
                    None,
                    f"missing required column {name!r}",
                    "the header needs " + ", ".join(REQUIRED_COLUMNS),
                )
            )
    for name, count in Counter(header).items():
        if count > 1:
            problems.append(_error(file, None, f"column {name!r} appears {count} times"))
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    for name in header:
        if name not in known:
            # A misspelt optional column (say "zoneid") would otherwise vanish without a word.
            warnings.append(
                _warning(
                    file,
                    None,
                    f"unknown column {name!r} is ignored",
                    "known columns: " + ", ".join((*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)),
                )
            )
    return problems, warnings


def _row(
    file: str,
    index: int,
    record: list[str],
    header: list[str],
    column: dict[str, int],
    known_zones: frozenset[str] | None,
) -> tuple[Beacon | None, list[Problem]]:
    """One data row as a Beacon, or None and every problem the row has."""
    problems: list[Problem] = []

    def fail(message: str, hint: str | None = None) -> None:
        problems.append(_error(file, index, message, hint))

    if len(record) != len(header):
        fail(f"row has {len(record)} fields, the header has {len(header)}")
        return None, problems

    def cell(name: str) -> str:
        return record[column[name]].strip() if name in column else ""

    def number(name: str) -> float | None:
        try:
            return _number(cell(name), name)
        except ValueError as exc:
            fail(str(exc))
            return None

    beacon_id: str | None = None
    try:
        beacon_id = normalize_beacon_id(cell("beacon_id"))
    except ValueError as exc:
        fail(str(exc), "iBeacon/AltBeacon: UUID:major:minor; Eddystone-UID: namespace:instance")

    kind = cell("type").lower()
    if kind not in BEACON_TYPES:
        fail(f"unknown type {_quote(cell('type'))}", "one of: " + ", ".join(BEACON_TYPES))
    elif beacon_id is not None and _is_eddystone(beacon_id) != (kind == "eddystone_uid"):
        form = "namespace:instance" if _is_eddystone(beacon_id) else "UUID:major:minor"
        fail(f"beacon_id {beacon_id!r} has the {form} form, which type {kind!r} does not use")

    status = cell("status").lower()
    if status not in STATUSES:
        fail(f"unknown status {_quote(cell('status'))}", "one of: " + ", ".join(STATUSES))

    lat = number("lat")
    lon = number("lon")
    if lat is not None and not -90 <= lat <= 90:
        fail(f"lat {lat} out of range [-90, 90]")
    if lon is not None and not -180 <= lon <= 180:
        fail(f"lon {lon} out of range [-180, 180]")
    zone_id = cell("zone_id") or None
    if bool(cell("lat")) != bool(cell("lon")):
        given, missing = ("lat", "lon") if cell("lat") else ("lon", "lat")
        fail(f"{given} is given without {missing}")
    elif not cell("lat") and zone_id is None:
        fail(
            "no position: lat and lon are empty and there is no zone_id",
            "give lat/lon, or link the beacon to a zone with zone_id",
        )
    if zone_id is not None and known_zones is not None and zone_id not in known_zones:
        fail(f"zone_id {_quote(zone_id)} is not a known zone")

    range_m: float | None = None
    if cell("range_m"):
        range_m = number("range_m")
        if range_m is not None and range_m < 0:
            fail(f"range_m {range_m} is negative")
    elif kind in DEFAULT_RANGE_M:
        range_m = DEFAULT_RANGE_M[kind]

    if problems or beacon_id is None or range_m is None:
        return None, problems
    return (
        Beacon(
            beacon_id=beacon_id,
            type=kind,
            lat=lat,
            lon=lon,
            range_m=range_m,
            status=status,
            zone_id=zone_id,
            floor=cell("floor") or None,
            name=cell("name") or None,
            row=index,
        ),
        problems,
    )


def _number(text: str, what: str) -> float | None:
    """A finite decimal number, None when the cell is empty; ValueError saying what is wrong."""
    if not text:
        return None
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{what} {_quote(text)} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{what} {_quote(text)} is not a finite number")
    return value


def _row_warnings(file: str, beacon: Beacon) -> Iterable[Problem]:
    if _is_eddystone(beacon.beacon_id):
        if beacon.beacon_id.endswith(":000000000000"):
            yield _warning(
                file,
                beacon.row,
                "Eddystone instance 000000000000 is an unconfigured default: other beacons "
                "advertise the same id, so a sighting of it may not be this beacon",
                "give each beacon a distinct instance",
            )
    elif beacon.beacon_id.endswith(":0:0"):
        yield _warning(
            file,
            beacon.row,
            "major 0 and minor 0 are an unconfigured default: other beacons advertise the "
            "same id, so a sighting of it may not be this beacon",
            "give each beacon a distinct major/minor",
        )


def _default_uuid_warnings(file: str, beacons: list[Beacon]) -> Iterable[Problem]:
    """One warning per factory-default UUID in use, at its first row, with how many rows use it."""
    rows: dict[str, list[int]] = {}
    for beacon in beacons:
        if not _is_eddystone(beacon.beacon_id):
            rows.setdefault(beacon.beacon_id.split(":", 1)[0], []).append(beacon.row)
    for uuid, where in rows.items():
        if uuid in FACTORY_DEFAULT_UUIDS:
            yield _warning(
                file,
                where[0],
                f"UUID {uuid} is a factory default ({FACTORY_DEFAULT_UUIDS[uuid]}), used by "
                f"{len(where)} row(s): beacons nobody reconfigured advertise it anywhere",
                "configure the beacons with a UUID of your own",
            )

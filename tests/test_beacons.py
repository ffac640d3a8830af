"""Tests for geofence.beacons: id normalisation, the registry loader, and a real registry."""

from __future__ import annotations

import csv
import dataclasses
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.beacons import (
    DEFAULT_RANGE_M,
    FACTORY_DEFAULT_UUIDS,
    Beacon,
    BeaconRegistry,
    load_beacon_registry,
    normalize_beacon_id,
)
from geofence.errors import BeaconRegistryError, GeofenceError, Problem

DATA = Path(__file__).resolve().parent / "data" / "beacons"
ZONES = {"clinic_3", "zone_a"}
ID_HINT = "iBeacon/AltBeacon: UUID:major:minor; Eddystone-UID: namespace:instance"


def problems_of(name: str, zone_ids: set[str] | None = ZONES) -> list[tuple[int | None, str]]:
    """The (row, message) of every problem loading tests/data/beacons/<name> raises."""
    with pytest.raises(BeaconRegistryError) as info:
        load_beacon_registry(DATA / name, zone_ids)
    assert all(p.file == str(DATA / name) for p in info.value.problems)
    assert all(p.severity == "error" for p in info.value.problems)
    return [(p.feature, p.message) for p in info.value.problems]


# --- normalize_beacon_id -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        (
            "F7826DA6-4FA2-4E98-8024-BC5B71E0893E:1:42",
            "f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:42",
        ),
        (
            "  f7826da6-4fa2-4e98-8024-bc5b71e0893e : 00001 : 042 \n",
            "f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:42",
        ),
        (
            "f7826da6-4fa2-4e98-8024-bc5b71e0893e:0:65535",
            "f7826da6-4fa2-4e98-8024-bc5b71e0893e:0:65535",
        ),
        ("EDD1EBEAC04E5DEFA017:0123456789AB", "edd1ebeac04e5defa017:0123456789ab"),
        ("\tedd1ebeac04e5defa017:0123456789ab ", "edd1ebeac04e5defa017:0123456789ab"),
    ],
)
def test_normalize_beacon_id(text: str, normalized: str) -> None:
    assert normalize_beacon_id(text) == normalized
    assert normalize_beacon_id(normalized) == normalized


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "beacon id is empty"),
        ("   ", "beacon id is empty"),
        (
            "f7826da6-4fa2-4e98-8024-bc5b71e0893:1:2",
            "beacon id 'f7826da6-4fa2-4e98-8024-bc5b71e0893:1:2': "
            "UUID 'f7826da6-4fa2-4e98-8024-bc5b71e0893' is not 8-4-4-4-12 hex digits",
        ),
        (
            "f7826da64fa24e988024bc5b71e0893e:1:2",
            "beacon id 'f7826da64fa24e988024bc5b71e0893e:1:2': "
            "UUID 'f7826da64fa24e988024bc5b71e0893e' is not 8-4-4-4-12 hex digits",
        ),
        (
            "{f7826da6-4fa2-4e98-8024-bc5b71e0893e}:1:2",
            "beacon id '{f7826da6-4fa2-4e98-8024-bc5b71e0893e}:1:2': "
            "UUID '{f7826da6-4fa2-4e98-8024-bc5b71e0893e}' is not 8-4-4-4-12 hex digits",
        ),
        (
            "f7826da6-4fa2-4e98-8024-bc5b71e0893e:65536:2",
            "beacon id 'f7826da6-4fa2-4e98-8024-bc5b71e0893e:65536:2': "
            "major '65536' is not an integer in 0-65535",
        ),
        (
            "f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:0x10",
            "beacon id 'f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:0x10': "
            "minor '0x10' is not an integer in 0-65535",
        ),
        (
            "f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:",
            "beacon id 'f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:': "
            "minor '' is not an integer in 0-65535",
        ),
        (
            "f7826da6-4fa2-4e98-8024-bc5b71e0893e:+1:2",
            "beacon id 'f7826da6-4fa2-4e98-8024-bc5b71e0893e:+1:2': "
            "major '+1' is not an integer in 0-65535",
        ),
        (
            # Arabic-Indic digits: int() would take them, a beacon does not advertise them.
            "f7826da6-4fa2-4e98-8024-bc5b71e0893e:\u0661:2",
            "beacon id 'f7826da6-4fa2-4e98-8024-bc5b71e0893e:\u0661:2': "
            "major '\u0661' is not an integer in 0-65535",
        ),
        (
            "edd1ebeac04e5defa017:0123456789a",
            "beacon id 'edd1ebeac04e5defa017:0123456789a': "
            "Eddystone instance '0123456789a' is not 12 hex digits",
        ),
        (
            "0xedd1ebeac04e5defa017:0123456789ab",
            "beacon id '0xedd1ebeac04e5defa017:0123456789ab': "
            "Eddystone namespace '0xedd1ebeac04e5defa017' is not 20 hex digits",
        ),
        (
            "f7826da6-4fa2-4e98-8024-bc5b71e0893e",
            "beacon id 'f7826da6-4fa2-4e98-8024-bc5b71e0893e' is neither UUID:major:minor "
            "(iBeacon, AltBeacon) nor namespace:instance (Eddystone-UID)",
        ),
        (
            "a:b:c:d",
            "beacon id 'a:b:c:d' is neither UUID:major:minor (iBeacon, AltBeacon) "
            "nor namespace:instance (Eddystone-UID)",
        ),
    ],
)
def test_normalize_beacon_id_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_beacon_id(text)
    assert str(info.value) == message


def test_normalize_beacon_id_absurd_major_is_a_clear_error() -> None:
    text = "f7826da6-4fa2-4e98-8024-bc5b71e0893e:" + "0" * 5000 + "1:2"
    assert normalize_beacon_id(text) == "f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:2"
    with pytest.raises(ValueError, match=r"major '9{60}'\.\.\. \(5000 chars\) is not an integer"):
        normalize_beacon_id("f7826da6-4fa2-4e98-8024-bc5b71e0893e:" + "9" * 5000 + ":2")


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=60)
    | st.from_regex(r"\s*[0-9a-fA-F-]{36}:[0-9]{1,7}:[0-9]{1,7}\s*", fullmatch=True)
    | st.from_regex(r"\s*[0-9a-fA-F]{20}:[0-9a-fA-F]{12}\s*", fullmatch=True)
)
def test_property_normalize_is_a_fixed_point_or_value_error(text: str) -> None:
    try:
        normalized = normalize_beacon_id(text)
    except ValueError:
        return
    assert normalize_beacon_id(normalized) == normalized
    assert normalized == normalized.strip().lower()


# --- a good registry ---------------------------------------------------------------------------


def test_good_registry_loads() -> None:
    registry = load_beacon_registry(DATA / "good.csv", ZONES)
    assert len(registry) == 4
    assert registry.warnings == ()
    assert registry.beacons[0] == Beacon(
        beacon_id="3b6f1c2a-8d4e-4f5a-9c7b-2e1d0a9f8b7c:1:42",
        type="ibeacon",
        lat=51.5007,
        lon=-0.1246,
        range_m=DEFAULT_RANGE_M["ibeacon"],
        status="active",
        zone_id=None,
        floor=None,
        name="Westminster entrance",
        row=0,
    )
    eddystone, linked, sydney = registry.beacons[1:]
    assert (eddystone.beacon_id, eddystone.type) == (
        "edd1ebeac04e5defa017:0123456789ab",
        "eddystone_uid",
    )
    assert (eddystone.range_m, eddystone.floor, eddystone.name) == (25.0, "1", None)
    # Positioned only by its zone link; range defaults by type.
    assert (linked.lat, linked.lon, linked.zone_id, linked.status) == (
        None,
        None,
        "clinic_3",
        "inactive",
    )
    assert linked.range_m == DEFAULT_RANGE_M["altbeacon"]
    # Whitespace around the id parts, leading zeros, upper-case status.
    assert sydney.beacon_id == "a1b2c3d4-0000-4000-8000-00000000abcd:12:65535"
    assert (sydney.status, sydney.range_m, sydney.row) == ("decommissioned", 12.5, 3)


def test_good_registry_loads_without_zone_ids() -> None:
    assert len(load_beacon_registry(DATA / "good.csv")) == 4


def test_get_normalises_the_id() -> None:
    registry = load_beacon_registry(DATA / "good.csv", ZONES)
    first = registry.beacons[0]
    assert registry.get("3B6F1C2A-8D4E-4F5A-9C7B-2E1D0A9F8B7C:1:42") is first
    assert registry.get("  3b6f1c2a-8d4e-4f5a-9c7b-2e1d0a9f8b7c:0001:42\n") is first
    assert registry.get("EDD1EBEAC04E5DEFA017:0123456789ab") is registry.beacons[1]
    assert registry.get("3b6f1c2a-8d4e-4f5a-9c7b-2e1d0a9f8b7c:1:43") is None
    assert registry.get("not a beacon") is None  # malformed is unknown, not an exception
    assert registry.get("") is None
    assert registry.get(None) is None  # type: ignore[arg-type]
    assert "3B6F1C2A-8D4E-4F5A-9C7B-2E1D0A9F8B7C:1:42" in registry
    assert "nope" not in registry


def test_registry_is_immutable() -> None:
    registry = load_beacon_registry(DATA / "good.csv", ZONES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        registry.beacons = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        registry.beacons[0].lat = 0.0  # type: ignore[misc]
    assert isinstance(registry.beacons, tuple)
    assert isinstance(registry.warnings, tuple)


def test_registry_constructed_directly_refuses_duplicate_ids() -> None:
    beacon = load_beacon_registry(DATA / "good.csv", ZONES).beacons[0]
    upper = dataclasses.replace(beacon, beacon_id=beacon.beacon_id.upper(), row=9)
    with pytest.raises(ValueError, match="duplicate beacon id"):
        BeaconRegistry(beacons=(beacon, upper))


def test_bom_and_crlf_are_tolerated() -> None:
    registry = load_beacon_registry(DATA / "bom_crlf.csv")
    assert [b.beacon_id for b in registry.beacons] == ["a1b2c3d4-0000-4000-8000-00000000abcd:1:2"]


def test_blank_lines_are_skipped_and_not_counted(tmp_path: Path) -> None:
    text = (DATA / "good.csv").read_text()
    header, *rows = text.strip().splitlines()
    path = tmp_path / "beacons.csv"
    path.write_text(header + "\n\n" + "\n,,,,,,,,\n".join(rows) + "\n\n")
    registry = load_beacon_registry(path, ZONES)
    assert [b.row for b in registry.beacons] == [0, 1, 2, 3]


def test_beacon_registry_error_is_a_geofence_error() -> None:
    assert issubclass(BeaconRegistryError, GeofenceError)


# --- one file per error ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "bad_uuid.csv",
            [
                (
                    1,
                    "beacon id 'a1b2c3d4-0000-4000-8000-00000000abcg:1:2': "
                    "UUID 'a1b2c3d4-0000-4000-8000-00000000abcg' is not 8-4-4-4-12 hex digits",
                )
            ],
        ),
        (
            "bad_uuid_no_hyphens.csv",
            [
                (
                    0,
                    "beacon id 'a1b2c3d4000040008000000000000abcd:1:2': "
                    "UUID 'a1b2c3d4000040008000000000000abcd' is not 8-4-4-4-12 hex digits",
                )
            ],
        ),
        (
            "bad_eddystone_namespace.csv",
            [
                (
                    0,
                    "beacon id 'edd1ebeac04e5defa01:0123456789ab': "
                    "Eddystone namespace 'edd1ebeac04e5defa01' is not 20 hex digits",
                )
            ],
        ),
        (
            "bad_eddystone_instance.csv",
            [
                (
                    0,
                    "beacon id 'edd1ebeac04e5defa017:0123456789az': "
                    "Eddystone instance '0123456789az' is not 12 hex digits",
                )
            ],
        ),
        (
            "bad_id_shape.csv",
            [
                (
                    0,
                    "beacon id 'just-a-name' is neither UUID:major:minor (iBeacon, AltBeacon) "
                    "nor namespace:instance (Eddystone-UID)",
                )
            ],
        ),
        (
            "major_out_of_range.csv",
            [
                (
                    0,
                    "beacon id 'a1b2c3d4-0000-4000-8000-00000000abcd:65536:1': "
                    "major '65536' is not an integer in 0-65535",
                )
            ],
        ),
        (
            "minor_not_integer.csv",
            [
                (
                    0,
                    "beacon id 'a1b2c3d4-0000-4000-8000-00000000abcd:1:-1': "
                    "minor '-1' is not an integer in 0-65535",
                )
            ],
        ),
        ("unknown_type.csv", [(1, "unknown type 'eddystone_eid'")]),
        (
            "type_id_mismatch.csv",
            [
                (
                    0,
                    "beacon_id 'edd1ebeac04e5defa017:0123456789ab' has the namespace:instance "
                    "form, which type 'ibeacon' does not use",
                )
            ],
        ),
        ("unknown_status.csv", [(0, "unknown status 'retired'")]),
        (
            "missing_position.csv",
            [(1, "no position: lat and lon are empty and there is no zone_id")],
        ),
        ("lat_without_lon.csv", [(0, "lat is given without lon")]),
        ("lat_out_of_range.csv", [(0, "lat 90.5 out of range [-90, 90]")]),
        ("lon_out_of_range.csv", [(0, "lon -180.25 out of range [-180, 180]")]),
        ("lat_not_number.csv", [(0, "lat '51,5' is not a number")]),
        ("lon_nan.csv", [(0, "lon 'nan' is not a number")]),
        ("range_negative.csv", [(0, "range_m -5.0 is negative")]),
        ("range_not_finite.csv", [(0, "range_m '1e999' is not a finite number")]),
        ("unknown_zone.csv", [(1, "zone_id 'clinic_9' is not a known zone")]),
        (
            "duplicate_ids.csv",
            [
                (
                    2,
                    "duplicate beacon_id 'a1b2c3d4-0000-4000-8000-00000000abcd:1:1' "
                    "(first in row 0)",
                )
            ],
        ),
        ("missing_column.csv", [(None, "missing required column 'range_m'")]),
        ("field_count.csv", [(0, "row has 8 fields, the header has 9")]),
        ("empty.csv", [(None, "file is empty (no header row)")]),
    ],
)
def test_error_file(name: str, expected: list[tuple[int | None, str]]) -> None:
    assert problems_of(name) == expected


def test_every_error_is_reported_at_once() -> None:
    assert problems_of("many_errors.csv") == [
        (
            1,
            "beacon id 'not-an-id' is neither UUID:major:minor (iBeacon, AltBeacon) "
            "nor namespace:instance (Eddystone-UID)",
        ),
        (1, "unknown type 'beacon'"),
        (1, "unknown status 'lost'"),
        (1, "lat 95.0 out of range [-90, 90]"),
        (1, "range_m -1.0 is negative"),
        (2, "duplicate beacon_id 'a1b2c3d4-0000-4000-8000-00000000abcd:1:1' (first in row 0)"),
    ]


def test_hints_say_how_to_fix() -> None:
    with pytest.raises(BeaconRegistryError) as info:
        load_beacon_registry(DATA / "many_errors.csv")
    hints = [p.hint for p in info.value.problems]
    assert hints[:3] == [
        ID_HINT,
        "one of: ibeacon, eddystone_uid, altbeacon",
        "one of: active, inactive, decommissioned",
    ]
    # The exception text lists every problem with its row, as Problem renders it.
    text = str(info.value)
    assert text.startswith("6 beacon registry problem(s):\n")
    assert f"{DATA / 'many_errors.csv'}: feature 1: error: unknown status 'lost'" in text


def test_zone_ids_are_only_checked_when_given() -> None:
    assert len(load_beacon_registry(DATA / "unknown_zone.csv", None)) == 2
    assert problems_of("unknown_zone.csv", set()) == [
        (0, "zone_id 'clinic_3' is not a known zone"),
        (1, "zone_id 'clinic_9' is not a known zone"),
    ]


def test_missing_every_column_names_each(tmp_path: Path) -> None:
    path = tmp_path / "beacons.csv"
    path.write_text("id,kind\nx,y\n")
    with pytest.raises(BeaconRegistryError) as info:
        load_beacon_registry(path)
    assert [p.message for p in info.value.problems] == [
        "missing required column 'beacon_id'",
        "missing required column 'type'",
        "missing required column 'lat'",
        "missing required column 'lon'",
        "missing required column 'range_m'",
        "missing required column 'status'",
    ]


def test_repeated_column(tmp_path: Path) -> None:
    path = tmp_path / "beacons.csv"
    path.write_text("beacon_id,type,lat,lon,range_m,status,lat\n")
    with pytest.raises(BeaconRegistryError) as info:
        load_beacon_registry(path)
    assert [p.message for p in info.value.problems] == ["column 'lat' appears 2 times"]


def test_unreadable_files_are_registry_errors(tmp_path: Path) -> None:
    missing = tmp_path / "absent.csv"
    with pytest.raises(BeaconRegistryError) as info:
        load_beacon_registry(missing)
    assert info.value.problems[0].message.startswith("cannot read: [Errno 2]")

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(
        b"beacon_id,type,lat,lon,range_m,status,name\n"
        b"a1b2c3d4-0000-4000-8000-00000000abcd:1:1,ibeacon,10,20,,active,Caf\xe9\n"
    )
    with pytest.raises(BeaconRegistryError) as info:
        load_beacon_registry(latin1)
    (problem,) = info.value.problems
    assert problem.message.startswith("not UTF-8: 'utf-8' codec can't decode byte 0xe9")
    assert problem.hint == "save the file as UTF-8"


def test_long_cells_are_cut_short_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "beacons.csv"
    path.write_text(
        "beacon_id,type,lat,lon,range_m,status\n"
        f"a1b2c3d4-0000-4000-8000-00000000abcd:1:1,{'x' * 500},10,20,,active\n"
    )
    assert problems_of_path(path) == [(0, f"unknown type {'x' * 60!r}... (500 chars)")]


def problems_of_path(path: Path) -> list[tuple[int | None, str]]:
    with pytest.raises(BeaconRegistryError) as info:
        load_beacon_registry(path)
    return [(p.feature, p.message) for p in info.value.problems]


# --- warnings ----------------------------------------------------------------------------------

ZERO_WARNING = (
    "major 0 and minor 0 are an unconfigured default: other beacons advertise the same id, "
    "so a sighting of it may not be this beacon"
)


def test_zero_major_minor_warns_per_row() -> None:
    registry = load_beacon_registry(DATA / "zero_major_minor.csv")
    assert len(registry) == 4
    assert [(w.feature, w.severity, w.message) for w in registry.warnings] == [
        (0, "warning", ZERO_WARNING),
        (2, "warning", ZERO_WARNING),  # an AltBeacon written 00:000 normalises to 0:0
        (
            3,
            "warning",
            "Eddystone instance 000000000000 is an unconfigured default: other beacons "
            "advertise the same id, so a sighting of it may not be this beacon",
        ),
    ]


def test_factory_default_uuid_warns_once_per_uuid() -> None:
    registry = load_beacon_registry(DATA / "factory_uuid.csv")
    assert len(registry) == 5
    assert [(w.feature, w.message) for w in registry.warnings] == [
        (
            0,
            "UUID fda50693-a4e2-4fb1-afcf-c6eb07647825 is a factory default (WeChat default, "
            "on many beacons sold in China), used by 3 row(s): beacons nobody reconfigured "
            "advertise it anywhere",
        ),
        (
            4,
            "UUID e2c56db5-dffb-48d2-b060-d0f5a71096e0 is a factory default (Apple AirLocate "
            "sample, default on many beacons), used by 1 row(s): beacons nobody reconfigured "
            "advertise it anywhere",
        ),
    ]


def test_unknown_column_warns() -> None:
    registry = load_beacon_registry(DATA / "unknown_column.csv", ZONES)
    # The misspelt "zoneid" is not a zone link; the row still has a position, so it loads.
    assert registry.beacons[0].zone_id is None
    assert [(w.feature, w.message) for w in registry.warnings] == [
        (None, "unknown column 'zoneid' is ignored")
    ]


def test_factory_default_table_is_canonical() -> None:
    for uuid in FACTORY_DEFAULT_UUIDS:
        assert normalize_beacon_id(f"{uuid}:1:1") == f"{uuid}:1:1"


# --- a real registry (../shared/data/beacons) --------------------------------------------------

HEADER = ["beacon_id", "type", "lat", "lon", "range_m", "status", "zone_id", "floor", "name"]


def _derived_rows(shared_data: Path) -> list[dict[str, str]]:
    path = (
        shared_data / "beacons" / "indoor_location_competition_20" / "ibeacon_registry_derived.csv"
    )
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _as_our_row(row: dict[str, str]) -> list[str]:
    """A derived-registry row in beacons.csv form.

    The survey recorded no beacon positions, so each beacon is linked to the first site/floor it
    was heard on as its zone.
    """
    site_floor = row["site_floors_seen"].split(";")[0]
    return [
        f"{row['uuid']}:{row['major']}:{row['minor']}",
        "ibeacon",
        "",
        "",
        "",
        "active",
        site_floor,
        site_floor.split("/")[1],
        f"mac {row['mac']}",
    ]


def _write(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


@pytest.mark.shared
def test_real_registry_loads_with_zero_id_warnings(shared_data: Path, tmp_path: Path) -> None:
    rows = _derived_rows(shared_data)
    # What the data folder's README says of this file.
    assert len(rows) == 1175
    assert sum(1 for r in rows if (r["major"], r["minor"]) == ("0", "0")) == 343

    # One row per advertised id: the file lists one row per (id, MAC) and ids repeat across MACs.
    by_id: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_id[f"{r['uuid']}:{r['major']}:{r['minor']}".lower()].append(r)
    assert sum(1 for v in by_id.values() if len(v) > 1) == 56  # "56 ids map to several MACs"
    zones = {r["site_floors_seen"].split(";")[0] for r in rows}
    path = _write(tmp_path / "beacons.csv", [_as_our_row(v[0]) for v in by_id.values()])

    registry = load_beacon_registry(path, zones)

    assert len(registry) == len(by_id) == 171
    zero_ids = {i for i, v in by_id.items() if (v[0]["major"], v[0]["minor"]) == ("0", "0")}
    zero_warnings = [w for w in registry.warnings if w.message == ZERO_WARNING]
    assert len(zero_warnings) == len(zero_ids) == 5
    assert {registry.beacons[w.feature].beacon_id for w in zero_warnings} == zero_ids  # type: ignore[index]
    # Those 5 ids are what the 343 zero rows advertise.
    assert sum(len(by_id[i]) for i in zero_ids) == 343
    defaults = {i.split(":")[0] for i in by_id} & set(FACTORY_DEFAULT_UUIDS)
    default_warnings = [w for w in registry.warnings if "factory default" in w.message]
    assert len(default_warnings) == len(defaults) == 2
    assert len(registry.warnings) == 5 + 2
    assert all(b.zone_id in zones and b.lat is None for b in registry.beacons)


@pytest.mark.shared
def test_real_registry_rows_as_is_are_duplicate_ids(shared_data: Path, tmp_path: Path) -> None:
    # Converted row for row, the same id names several transmitters: refused, each repeat named.
    rows = _derived_rows(shared_data)
    path = _write(tmp_path / "beacons.csv", [_as_our_row(r) for r in rows])
    with pytest.raises(BeaconRegistryError) as info:
        load_beacon_registry(path)
    problems = info.value.problems
    assert all(p.message.startswith("duplicate beacon_id ") for p in problems)
    assert len(problems) == 1175 - 171
    assert all(isinstance(p, Problem) and p.feature is not None for p in problems)

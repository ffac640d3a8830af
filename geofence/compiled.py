"""Compiled zone-set files (`.gfz`): one checksummed file that `Engine.load` opens.

The file is a ZIP archive holding `manifest.json` and `zoneset.json`. The manifest names the
format and its version, and gives the SHA-256 of the payload. The payload is plain JSON: zone
attributes with geometry as hex WKB, the resolved policy, and the beacon registry. Loading checks
the magic, the format version, the size limits and the checksum before it parses anything, and
it parses only data. Nothing is unpickled or executed, so a foreign or corrupt file is refused
with a CompiledFileError.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geofence.beacons import Beacon, BeaconRegistry
from geofence.categories import Category
from geofence.errors import CompiledFileError
from geofence.policy import _CHOICES as POLICY_CHOICES
from geofence.policy import BeaconRules, CategoryRule, Policy, PresenceRules, RequestRules
from geofence.zones import MAX_VERTICES_PER_ZONE, MAX_ZONES, POLYGONAL, Zone
from geofence.zoneset import ZoneSet

FORMAT = "geofence-zoneset"
FORMAT_VERSION = 1
# Refused before anything is decompressed or parsed. The sizes are the ones the ZIP declares;
# zipfile stops at a declared size (and fails the CRC) however much a member would inflate to.
MAX_FILE_BYTES = 2 << 30  # the .gfz file itself
MAX_PAYLOAD_BYTES = 2 << 30  # zoneset.json, uncompressed
MAX_MANIFEST_BYTES = 64 * 1024  # manifest.json, uncompressed
MAX_MEMBERS = 16  # entries in the archive (a real file has two)
# Zone count and vertices per zone: the limits of geofence.zones (checked after parsing too).


def save(zone_set: ZoneSet, path: str | Path) -> Path:
    """Write `zone_set` to `path` as a compiled file; return the path."""
    payload = json.dumps(_to_data(zone_set), separators=(",", ":")).encode("utf-8")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "zone_set_version": zone_set.version,
        "zones": len(zone_set),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_bytes": len(payload),
    }
    out = Path(path)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=1))
        zf.writestr("zoneset.json", payload)
    return out


def load(path: str | Path) -> ZoneSet:
    """Read and verify a compiled file; raise CompiledFileError on anything amiss.

    Checked in order, each before the work it guards: the file's size; the archive's members and
    their declared sizes; the manifest (format, version, zone count); the payload's SHA-256; then
    the payload is parsed as JSON and every value checked for type and range (zones: geometry
    type, vertex count, coordinates, validity) before a zone set is compiled from it.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CompiledFileError(
                f"{p}: file of {size} bytes is over the limit of {MAX_FILE_BYTES}"
            )
        with zipfile.ZipFile(p) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise CompiledFileError(
                    f"{p}: {len(members)} archive members; a compiled file has 2"
                )
            info = zf.getinfo("manifest.json")
            if info.file_size > MAX_MANIFEST_BYTES:
                raise CompiledFileError(
                    f"{p}: manifest of {info.file_size} bytes is over the limit of "
                    f"{MAX_MANIFEST_BYTES}"
                )
            manifest = json.loads(zf.read(info))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise CompiledFileError(f"{p}: not a geofence compiled zone set")
            if manifest.get("format_version") != FORMAT_VERSION:
                raise CompiledFileError(
                    f"{p}: format version {manifest.get('format_version')!r}; this geofence "
                    f"reads version {FORMAT_VERSION}: recompile with `geofence compile`"
                )
            zones = manifest.get("zones")
            if isinstance(zones, int) and not isinstance(zones, bool) and zones > MAX_ZONES:
                raise CompiledFileError(
                    f"{p}: {zones} zones, over the limit of {MAX_ZONES} (geofence.zones.MAX_ZONES)"
                )
            info = zf.getinfo("zoneset.json")
            if info.file_size > MAX_PAYLOAD_BYTES:
                raise CompiledFileError(
                    f"{p}: payload of {info.file_size} bytes is over the limit of "
                    f"{MAX_PAYLOAD_BYTES}"
                )
            payload = zf.read(info)
    except CompiledFileError:
        raise
    except (
        OSError,
        KeyError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,  # a compression method zipfile does not implement
        ValueError,
        EOFError,
        RecursionError,
    ) as exc:
        raise CompiledFileError(f"{p}: not a readable compiled zone set ({exc})") from None
    if not isinstance(manifest.get("payload_sha256"), str) or (
        hashlib.sha256(payload).hexdigest() != manifest["payload_sha256"]
    ):
        raise CompiledFileError(f"{p}: checksum mismatch: the file is corrupt or was altered")
    try:
        data = json.loads(payload, parse_constant=_no_constant)
        return _from_data(_checked(data))
    except CompiledFileError as exc:
        raise CompiledFileError(f"{p}: {exc}") from None
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        RecursionError,
        shapely.errors.GEOSException,
    ) as exc:
        raise CompiledFileError(f"{p}: malformed payload ({type(exc).__name__}: {exc})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _to_data(zs: ZoneSet) -> dict[str, Any]:
    p = zs.policy
    return {
        "version": zs.version,
        "policy": {
            "pack": p.pack,
            "fingerprint": p.fingerprint,
            "rules": {c.value: dataclasses.asdict(r) for c, r in p.rules.items()},
            "requests": dataclasses.asdict(p.requests),
            "beacons": dataclasses.asdict(p.beacons),
            "presence": dataclasses.asdict(p.presence),
        },
        "zones": [
            {
                "id": z.id,
                "name": z.name,
                "category": z.category.value,
                "wkb": shapely.to_wkb(z.geometry, hex=True),
                "radius_m": z.radius_m,
                "buffer_m": z.buffer_m,
                "valid_from": z.valid_from,
                "valid_until": z.valid_until,
                "jurisdiction": z.jurisdiction,
                "source": z.source,
            }
            for z in zs.zones
        ],
        "beacons": (
            [dataclasses.asdict(b) for b in zs.beacons.beacons] if zs.beacons is not None else None
        ),
    }


# --- checking a payload: types and ranges, before anything is built from it ---------------------


def _bad(where: str, what: str) -> CompiledFileError:
    return CompiledFileError(f"malformed payload: {where} {what}")


def _obj(value: Any, where: str, keys: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, f"is {type(value).__name__}, not an object")
    if keys is not None and set(value) != keys:
        missing, extra = sorted(keys - set(value)), sorted(set(value) - keys)
        raise _bad(where, f"has the wrong keys (missing {missing}, unknown {extra})")
    return value


def _text(value: Any, where: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise _bad(where, f"is {type(value).__name__}, not a string")


def _num(value: Any, where: str, optional: bool = False, non_negative: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(where, f"is {type(value).__name__}, not a number")
    try:
        f = float(value)
    except OverflowError:
        raise _bad(where, "is too large") from None
    if not math.isfinite(f) or (non_negative and f < 0):
        raise _bad(where, f"must be finite{' and >= 0' if non_negative else ''}, not {value!r}")


def _rules(value: Any, where: str, cls: type) -> None:
    fields = dataclasses.fields(cls)
    table = _obj(value, where, {f.name for f in fields})
    for f in fields:
        v = table[f.name]
        if f.name in POLICY_CHOICES:
            if v not in POLICY_CHOICES[f.name]:
                raise _bad(f"{where}.{f.name}", f"must be one of {POLICY_CHOICES[f.name]}")
        elif f.name == "set_by":
            _text(v, f"{where}.{f.name}")
        else:
            _num(v, f"{where}.{f.name}", optional=f.name == "missing_accuracy_m")


def _checked(data: Any) -> dict[str, Any]:
    """`data` itself once every value in it has the type and range a zone set needs."""
    top = _obj(data, "top level", {"version", "policy", "zones", "beacons"})
    _text(top["version"], "version")
    pd = _obj(
        top["policy"], "policy", {"pack", "fingerprint", "rules", "requests", "beacons", "presence"}
    )
    _text(pd["pack"], "policy.pack")
    _text(pd["fingerprint"], "policy.fingerprint")
    rules = _obj(pd["rules"], "policy.rules")
    if set(rules) != {c.value for c in Category}:
        raise _bad("policy.rules", "does not cover exactly the categories")
    for name, rule in rules.items():
        _rules(rule, f"policy.rules.{name}", CategoryRule)
    _rules(pd["requests"], "policy.requests", RequestRules)
    _rules(pd["beacons"], "policy.beacons", BeaconRules)
    _rules(pd["presence"], "policy.presence", PresenceRules)
    zones = top["zones"]
    if not isinstance(zones, list):
        raise _bad("zones", "is not an array")
    if len(zones) > MAX_ZONES:
        raise _bad("zones", f"holds {len(zones)} zones, over the limit of {MAX_ZONES}")
    keys = {"id", "name", "category", "wkb", "radius_m", "buffer_m", "valid_from",
            "valid_until", "jurisdiction", "source"}  # fmt: skip
    categories = {c.value for c in Category}
    for i, z in enumerate(zones):
        where = f"zones[{i}]"
        _obj(z, where, keys)
        for k in ("id", "name", "source"):
            _text(z[k], f"{where}.{k}")
        _text(z["jurisdiction"], f"{where}.jurisdiction", optional=True)
        if z["category"] not in categories:
            raise _bad(f"{where}.category", "is not a category")
        _num(z["radius_m"], f"{where}.radius_m")
        _num(z["buffer_m"], f"{where}.buffer_m", optional=True)
        for k in ("valid_from", "valid_until"):
            _num(z[k], f"{where}.{k}", optional=True, non_negative=False)
        _text(z["wkb"], f"{where}.wkb")
        # Hex WKB: two characters a byte, 16 bytes a 2-D vertex. A longer string cannot be a
        # geometry within the vertex limit, so it is refused before GEOS allocates anything.
        if len(z["wkb"]) > 64 + 32 * MAX_VERTICES_PER_ZONE * 2:
            raise _bad(f"{where}.wkb", f"is over {MAX_VERTICES_PER_ZONE} vertices")
    beacons = top["beacons"]
    if beacons is not None:
        if not isinstance(beacons, list):
            raise _bad("beacons", "is not an array")
        names = {f.name for f in dataclasses.fields(Beacon)}
        for i, b in enumerate(beacons):
            where = f"beacons[{i}]"
            _obj(b, where, names)
            for k in ("beacon_id", "type", "status"):
                _text(b[k], f"{where}.{k}")
            for k in ("zone_id", "floor", "name"):
                _text(b[k], f"{where}.{k}", optional=True)
            _num(b["lat"], f"{where}.lat", optional=True, non_negative=False)
            _num(b["lon"], f"{where}.lon", optional=True, non_negative=False)
            _num(b["range_m"], f"{where}.range_m")
            if not isinstance(b["row"], int) or isinstance(b["row"], bool):
                raise _bad(f"{where}.row", "is not an integer")
    return top


def _geometry(z: dict[str, Any], i: int) -> BaseGeometry:
    """A zone's geometry from hex WKB, refused unless it is one a zone file could hold."""
    where = f"zones[{i}].wkb"
    geom = shapely.from_wkb(z["wkb"])
    if geom is None or geom.geom_type not in (*POLYGONAL, "Point"):
        kind = None if geom is None else geom.geom_type
        raise _bad(where, f"is a {kind}, not a Polygon, MultiPolygon or Point")
    if geom.is_empty:
        raise _bad(where, "is empty")
    vertices = shapely.get_num_coordinates(geom)
    if vertices > MAX_VERTICES_PER_ZONE:
        raise _bad(where, f"has {vertices} vertices, over the limit of {MAX_VERTICES_PER_ZONE}")
    if shapely.has_z(geom):
        geom = shapely.force_2d(geom)
    b = np.asarray(shapely.bounds(geom), dtype=np.float64)
    if not (np.isfinite(b).all() and -180 <= b[0] <= b[2] <= 180 and -90 <= b[1] <= b[3] <= 90):
        raise _bad(where, "has coordinates outside longitude/latitude ranges")
    if not geom.is_valid:
        raise _bad(where, f"is not valid ({shapely.is_valid_reason(geom)})")
    if geom.geom_type == "Point" and not float(z["radius_m"]) > 0:
        raise _bad(f"zones[{i}].radius_m", "must be > 0 for a Point zone")
    return geom


def _from_data(data: dict[str, Any]) -> ZoneSet:
    pd = data["policy"]
    policy = Policy(
        pack=str(pd["pack"]),
        rules={Category(c): CategoryRule(**r) for c, r in pd["rules"].items()},
        requests=RequestRules(**pd["requests"]),
        beacons=BeaconRules(**pd["beacons"]),
        presence=PresenceRules(**pd["presence"]),
        fingerprint=str(pd["fingerprint"]),
    )
    if set(policy.rules) != set(Category):
        raise ValueError("policy does not cover every category")
    zones = [
        Zone(
            id=str(z["id"]),
            name=str(z["name"]),
            category=Category(z["category"]),
            geometry=_geometry(z, i),
            radius_m=float(z["radius_m"]),
            buffer_m=None if z["buffer_m"] is None else float(z["buffer_m"]),
            valid_from=None if z["valid_from"] is None else float(z["valid_from"]),
            valid_until=None if z["valid_until"] is None else float(z["valid_until"]),
            jurisdiction=z["jurisdiction"],
            source=str(z["source"]),
        )
        for i, z in enumerate(data["zones"])
    ]
    beacons = (
        BeaconRegistry(tuple(Beacon(**b) for b in data["beacons"]))
        if data["beacons"] is not None
        else None
    )
    return ZoneSet.compile(zones, policy, str(data["version"]), beacons=beacons)

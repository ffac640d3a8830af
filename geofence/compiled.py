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
import zipfile
from pathlib import Path
from typing import Any

import shapely

from geofence.beacons import Beacon, BeaconRegistry
from geofence.categories import Category
from geofence.errors import CompiledFileError
from geofence.policy import BeaconRules, CategoryRule, Policy, PresenceRules, RequestRules
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

FORMAT = "geofence-zoneset"
FORMAT_VERSION = 1
MAX_PAYLOAD_BYTES = 2 << 30  # refuse absurd payloads before reading them


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
    """Read and verify a compiled file; raise CompiledFileError on anything amiss."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise CompiledFileError(f"{p}: not a geofence compiled zone set")
            if manifest.get("format_version") != FORMAT_VERSION:
                raise CompiledFileError(
                    f"{p}: format version {manifest.get('format_version')!r}; this geofence "
                    f"reads version {FORMAT_VERSION}: recompile with `geofence compile`"
                )
            info = zf.getinfo("zoneset.json")
            if info.file_size > MAX_PAYLOAD_BYTES:
                raise CompiledFileError(f"{p}: payload of {info.file_size} bytes is too large")
            payload = zf.read("zoneset.json")
    except CompiledFileError:
        raise
    except (OSError, KeyError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise CompiledFileError(f"{p}: not a readable compiled zone set ({exc})") from None
    if hashlib.sha256(payload).hexdigest() != manifest.get("payload_sha256"):
        raise CompiledFileError(f"{p}: checksum mismatch: the file is corrupt or was altered")
    try:
        return _from_data(json.loads(payload))
    except (KeyError, TypeError, ValueError, shapely.errors.GEOSException) as exc:
        raise CompiledFileError(f"{p}: malformed payload ({exc})") from None


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
            geometry=shapely.from_wkb(z["wkb"]),
            radius_m=float(z["radius_m"]),
            buffer_m=None if z["buffer_m"] is None else float(z["buffer_m"]),
            valid_from=None if z["valid_from"] is None else float(z["valid_from"]),
            valid_until=None if z["valid_until"] is None else float(z["valid_until"]),
            jurisdiction=z["jurisdiction"],
            source=str(z["source"]),
        )
        for z in data["zones"]
    ]
    beacons = (
        BeaconRegistry(tuple(Beacon(**b) for b in data["beacons"]))
        if data["beacons"] is not None
        else None
    )
    return ZoneSet.compile(zones, policy, str(data["version"]), beacons=beacons)

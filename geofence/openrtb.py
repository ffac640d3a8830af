"""Parse OpenRTB 2.5/2.6 bid requests into the location facts the geofence engine checks.

Only what a geofence decision needs is read, and all of it is validated strictly: a malformed
field rejects the whole request (`InvalidBidRequest`), because a guess at a broken coordinate can
place a device outside a zone it is inside. Everything else in the request is ignored, however
malformed.

What is read:

* `id` (string) -> `request_id`.
* `device.geo.lat` / `device.geo.lon` -> the position. Never `user.geo`: OpenRTB defines it as
  the user's home base, not where the device is now, so a request with only `user.geo` has no
  location (lat = lon = None) and the engine decides by policy.
* `device.geo.type` (1 GPS, 2 IP address, 3 user-provided), `device.geo.accuracy` (metres),
  `device.geo.lastfix` (seconds since the fix was taken).
* `device.ifa` (advertising id; an empty or all-zero id, as sent when the user denied tracking,
  is no id), `device.lmt` (limit ad tracking, 0 or 1).
* The beacon extension described below.

A JSON `null` is treated as an absent field: it carries no more information than absence does,
and only ever takes information away (a null lat with a numeric lon is still rejected, since the
pair must come together).

Beacon extension (geofence-specific, not part of OpenRTB)
---------------------------------------------------------
An SDK that scans for BLE beacons reports what it saw in `device.ext.beacons`::

    "device": {"ext": {"beacons": [
        {"id": "f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:42", "rssi": -67},
        {"id": "edd1ebeac04e5defa017:0123456789ab"}
    ]}}

* `id` (string, required, non-empty): the beacon's advertised id in the form `beacons.csv` uses,
  iBeacon/AltBeacon `UUID:major:minor` or Eddystone-UID `namespace:instance` (see
  `geofence.beacons.normalize_beacon_id`; the registry normalises case and whitespace on lookup,
  so this parser passes the text through unchanged).
* `rssi` (number, optional): received signal strength in dBm.
* At most `MAX_BEACONS` entries; more rejects the request rather than silently dropping some,
  since a dropped sighting could be the one inside a sensitive zone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from geofence.errors import GeofenceError

__all__ = [
    "MAX_BEACONS",
    "MAX_BYTES",
    "BeaconSighting",
    "BidLocation",
    "InvalidBidRequest",
    "parse_bid_request",
    "parse_many",
]

MAX_BYTES = 1024 * 1024
"""Largest accepted payload (bytes of UTF-8). Real bid requests are a few kB; this bounds work."""

MAX_BEACONS = 64
"""Most beacon sightings accepted in one request (`device.ext.beacons`)."""

# OpenRTB 2.x Location Type list (`geo.type`). Other values (including ones a later version may
# add) map to "unknown" so the engine treats them as the least trustworthy source.
_SOURCES = {1: "gps", 2: "ip", 3: "user"}


class InvalidBidRequest(ValueError, GeofenceError):
    """A bid request that cannot be trusted for a geofence decision; the message says why."""


@dataclass(frozen=True, slots=True)
class BeaconSighting:
    """One beacon the device reported seeing (from `device.ext.beacons`)."""

    beacon_id: str
    rssi: float | None


@dataclass(frozen=True, slots=True)
class BidLocation:
    """What the engine checks about one bid request.

    `lat`/`lon` are both None when the request has no device position (the engine decides by
    policy). `fix_age_s` is 0.0 when `lastfix` is absent.
    """

    lat: float | None
    lon: float | None
    accuracy_m: float | None
    source: str  # "gps", "ip", "user" or "unknown"
    fix_age_s: float
    device_id: str | None
    lmt: bool
    beacons: tuple[BeaconSighting, ...]
    request_id: str | None


def parse_bid_request(request: bytes | bytearray | str | dict[str, Any]) -> BidLocation:
    """Parse one bid request (JSON bytes or text, or an already-decoded dict).

    Raises `InvalidBidRequest`, and nothing else, for any input that is not a well-formed request.
    """
    try:
        return _parse(request)
    except InvalidBidRequest:
        raise
    except Exception as exc:  # fail closed: no other exception may escape
        # Reaching this is a bug in this module; the prefix lets tests tell it from a rejection.
        raise InvalidBidRequest(
            f"internal error while parsing: {type(exc).__name__}: {exc}"
        ) from exc


def parse_many(requests: Iterable[Any]) -> list[BidLocation | InvalidBidRequest]:
    """Parse a batch: a BidLocation or the InvalidBidRequest it raised, per request. Never raises.

    If iterating `requests` itself fails, the error is appended as an InvalidBidRequest and the
    batch ends there, so the caller still gets one result per request it managed to supply.
    """
    results: list[BidLocation | InvalidBidRequest] = []
    try:
        for request in requests:
            try:
                results.append(parse_bid_request(request))
            except InvalidBidRequest as exc:
                results.append(exc)
    except Exception as exc:  # the contract is "never raises"
        results.append(
            InvalidBidRequest(f"could not iterate requests: {type(exc).__name__}: {exc}")
        )
    return results


# --- decoding ------------------------------------------------------------------------------------


class _Object(dict[str, Any]):
    """A decoded JSON object that remembers the keys it saw more than once."""

    __slots__ = ("duplicates",)

    duplicates: tuple[str, ...]


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    # Parsers disagree on which duplicate wins (first or last); a validator upstream may have
    # seen a different lat than we would. Recorded here, rejected where the object is read.
    obj.duplicates = () if len(obj) == len(pairs) else _duplicates(pairs)
    return obj


def _duplicates(pairs: list[tuple[str, Any]]) -> tuple[str, ...]:
    seen: set[str] = set()
    dupes: list[str] = []
    for key, _ in pairs:
        if key in seen and key not in dupes:
            dupes.append(key)
        seen.add(key)
    return tuple(dupes)


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity by default; they are not JSON.
    raise ValueError(f"non-standard constant {name}")


def _decode(request: object) -> object:
    if request is None or isinstance(request, (dict, list, tuple, int, float)):
        return request  # already decoded; anything but a dict is rejected as the top level
    if isinstance(request, (bytearray, memoryview)):
        request = bytes(request)
    if isinstance(request, bytes):
        if len(request) > MAX_BYTES:
            raise InvalidBidRequest(f"request is {len(request)} bytes, over the {MAX_BYTES} limit")
        # RFC 8259 requires UTF-8 between systems; json.loads would also guess UTF-16 and -32,
        # which only widens what a crafted payload can make two parsers disagree on.
        try:
            request = request.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidBidRequest(f"not JSON: {exc}") from None
    elif isinstance(request, str):
        # A character is at least one UTF-8 byte, so the cheap check first.
        if len(request) > MAX_BYTES or len(request.encode("utf-8", "surrogatepass")) > MAX_BYTES:
            raise InvalidBidRequest(f"request is over the {MAX_BYTES}-byte limit")
    else:
        raise InvalidBidRequest(
            f"request must be JSON bytes, text or a dict, got {type(request).__name__}"
        )
    try:
        return json.loads(request, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidBidRequest("not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise InvalidBidRequest(f"not JSON: {exc}") from None


# --- validation ----------------------------------------------------------------------------------


def _json_type(value: object) -> str:
    """How a value reads in a message: the JSON type name with its article."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _show(number: float) -> str:
    """A number for a message, cut short so a 400-digit integer does not flood a log line."""
    text = str(number)
    return text if len(text) <= 32 else f"{text[:24]}...({len(text)} digits)"


def _get(obj: dict[str, Any], key: str, path: str) -> Any:
    """`obj[key]`, None when absent or null; a key given twice in the JSON text is rejected.

    Only keys this module reads are checked, so a duplicate elsewhere (in `imp`, say) does not
    reject a request whose location is unambiguous.
    """
    if key in getattr(obj, "duplicates", ()):
        where = f"{path}.{key}" if path else key
        raise InvalidBidRequest(f"{where} is given more than once")
    return obj.get(key)


def _object(value: object, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidBidRequest(f"{path} is {_json_type(value)}, not an object")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: object, path: str) -> float | None:
    """A finite real number as float, None when absent."""
    if value is None:
        return None
    if not _is_number(value):
        raise InvalidBidRequest(f"{path} is {_json_type(value)}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an integer too large for a float
        raise InvalidBidRequest(f"{path} is too large") from None
    if not math.isfinite(number):
        raise InvalidBidRequest(f"{path} is not a finite number")
    return number


def _non_negative(value: object, path: str) -> float | None:
    number = _number(value, path)
    if number is not None and number < 0:
        raise InvalidBidRequest(f"{path} {_show(number)} is negative")
    return number


def _coordinate(value: object, path: str, limit: int) -> float | None:
    if _is_number(value) and isinstance(value, int):
        try:
            float(value)
        except OverflowError:  # too large for a float, and so far out of range
            raise InvalidBidRequest(
                f"{path} {_show(value)} out of range [-{limit}, {limit}]"
            ) from None
    number = _number(value, path)
    if number is not None and not -limit <= number <= limit:
        raise InvalidBidRequest(f"{path} {_show(number)} out of range [-{limit}, {limit}]")
    return number


def _integer(value: object, path: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidBidRequest(f"{path} is {_json_type(value)}, not an integer")
    return value


def _string(value: object, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidBidRequest(f"{path} is {_json_type(value)}, not a string")
    if not value.isascii():
        # A "\ud800" escape decodes to a lone surrogate, which no UTF-8 encoder downstream (a
        # presence store key, a log line) accepts; refuse it here rather than fail there.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidBidRequest(f"{path} contains a lone surrogate (\\u escape)") from None
    return value


def _device_id(ifa: str | None) -> str | None:
    # iOS (ATT denied / LAT on) and Android (opted out) send a zeroed id; it identifies nobody,
    # and treating it as an id would merge every such device into one presence history.
    if ifa is None or ifa.strip("0-") == "":
        return None
    return ifa


def _beacons(device: dict[str, Any]) -> tuple[BeaconSighting, ...]:
    ext = _object(_get(device, "ext", "device"), "device.ext")
    if ext is None:
        return ()
    raw = _get(ext, "beacons", "device.ext")
    if raw is None:
        return ()
    # A tuple only arrives in a dict the caller decoded or built; _json_type calls it an array
    # too, so refusing it would read "is an array, not an array".
    if not isinstance(raw, (list, tuple)):
        raise InvalidBidRequest(f"device.ext.beacons is {_json_type(raw)}, not an array")
    if len(raw) > MAX_BEACONS:
        raise InvalidBidRequest(
            f"device.ext.beacons has {len(raw)} entries, over the limit of {MAX_BEACONS}"
        )
    sightings = []
    for i, entry in enumerate(raw):
        path = f"device.ext.beacons[{i}]"
        if not isinstance(entry, dict):
            raise InvalidBidRequest(f"{path} is {_json_type(entry)}, not an object")
        beacon_id = _string(_get(entry, "id", path), f"{path}.id")
        if beacon_id is None:
            raise InvalidBidRequest(f"{path}.id is missing")
        if not beacon_id.strip():
            raise InvalidBidRequest(f"{path}.id is empty")
        rssi = _number(_get(entry, "rssi", path), f"{path}.rssi")
        sightings.append(BeaconSighting(beacon_id=beacon_id, rssi=rssi))
    return tuple(sightings)


def _parse(request: object) -> BidLocation:
    top = _decode(request)
    if not isinstance(top, dict):
        raise InvalidBidRequest(f"top level is {_json_type(top)}, not an object")
    request_id = _string(_get(top, "id", ""), "id")
    device = _object(_get(top, "device", ""), "device")
    if device is None:
        return BidLocation(None, None, None, "unknown", 0.0, None, False, (), request_id)

    ifa = _string(_get(device, "ifa", "device"), "device.ifa")
    lmt_flag = _integer(_get(device, "lmt", "device"), "device.lmt")
    if lmt_flag not in (None, 0, 1):
        raise InvalidBidRequest(f"device.lmt is {lmt_flag}, not 0 or 1")
    beacons = _beacons(device)

    lat = lon = accuracy = None
    fix_age = 0.0
    source = "unknown"
    geo = _object(_get(device, "geo", "device"), "device.geo")
    if geo is not None:
        lat = _coordinate(_get(geo, "lat", "device.geo"), "device.geo.lat", 90)
        lon = _coordinate(_get(geo, "lon", "device.geo"), "device.geo.lon", 180)
        if (lat is None) != (lon is None):
            given, missing = ("lat", "lon") if lon is None else ("lon", "lat")
            raise InvalidBidRequest(f"device.geo.{given} is given without device.geo.{missing}")
        accuracy = _non_negative(_get(geo, "accuracy", "device.geo"), "device.geo.accuracy")
        lastfix = _non_negative(_get(geo, "lastfix", "device.geo"), "device.geo.lastfix")
        fix_age = 0.0 if lastfix is None else lastfix
        kind = _integer(_get(geo, "type", "device.geo"), "device.geo.type")
        source = _SOURCES.get(kind, "unknown") if kind is not None else "unknown"

    return BidLocation(
        lat=lat,
        lon=lon,
        accuracy_m=accuracy,
        source=source,
        fix_age_s=fix_age,
        device_id=_device_id(ifa),
        lmt=lmt_flag == 1,
        beacons=beacons,
        request_id=request_id,
    )

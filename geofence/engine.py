"""The engine: the one object an ad server holds and asks "may this request be targeted?".

Every `check*` call returns a decision and never raises: malformed input gives invalid_request,
an unreachable presence store gives state_unavailable, and anything unexpected inside gives
internal_error (logged). The zone set is immutable and swapped atomically by `reload`; each call
reads it once, so a decision is always made by, and names, exactly one zone set.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

from geofence import compiled
from geofence.audit import AuditLog
from geofence.beacons import normalize_beacon_id
from geofence.categories import Category
from geofence.decision import NO_CATEGORY, BatchDecision, Decision
from geofence.errors import PresenceUnavailable
from geofence.index import KIND_CLEAR, KIND_INSIDE
from geofence.openrtb import InvalidBidRequest, parse_bid_request
from geofence.presence.base import Digests, PresenceStore, as_keys
from geofence.presence.blocks import block_ends, fold_events, latest_per_pair
from geofence.presence.distinct import IdBatch, PackedIds, distinct_ids, pack_ids
from geofence.presence.keyhash import DeviceHasher
from geofence.presence.memory import MemoryStore
from geofence.presence.url import open_store, secret_bytes
from geofence.reasons import Reason
from geofence.screen import answer, screen
from geofence.zoneset import ZoneSet

log = logging.getLogger("geofence")

MAX_PENDING = 100_000  # presence records held through a store outage
MAX_BATCH = 50_000_000  # longer "batches" are one invalid request (a lying __len__, say)
# How far a request's time may lie after the engine's clock (device clock skew). Later times are
# invalid_request: a fix cannot be taken in the future, and judging one there lets it outrun
# every lookback ("recently inside" is long over by then). Ten minutes covers the drift of a
# device that has missed NTP for months; presence lookbacks are days, so it opens nothing.
MAX_CLOCK_SKEW_S = 600.0
MAX_DEVICE_ID = 256  # characters; a longer device id is invalid_request
# A batch with at least this many device ids hashes them on a second thread while the index
# locates its points (below it, the thread's start costs more than the overlap gains).
BACKGROUND_KEYS_MIN = 10_000
WARN_EVERY_S = 10.0

F64 = npt.NDArray[np.float64]
SOURCES = ("gps", "ip", "user", "unknown")

_R = {r: np.uint8(r.code) for r in Reason}


class Engine:
    """Decides requests against a compiled zone set and the presence memory."""

    def __init__(
        self,
        zone_set: ZoneSet,
        presence: str | PresenceStore | None = None,
        presence_secret: bytes | str | None = None,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` is the time now, in Unix seconds; tests that simulate time replace it."""
        self._zs = zone_set
        self._clock = clock
        self._store, self._hasher = _open_presence(presence, presence_secret)
        self._audit = audit  # an optional sink for decisions (see audit.py); never blocks
        # Presence records an outage kept from the store (hashed keys only), oldest dropped first.
        self._pending: deque[tuple[bytes, int, float, float]] = deque(maxlen=MAX_PENDING)
        self._pending_lock = threading.Lock()
        self._last_warning = -math.inf

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_paths(
        cls,
        *paths: str | Path,
        presence: str | PresenceStore | None = None,
        presence_secret: bytes | str | None = None,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Engine:
        """Load zone files (and the folder's policy.toml); raise ZoneFileError/PolicyError."""
        return cls(ZoneSet.from_paths(*paths), presence, presence_secret, audit, clock)

    @classmethod
    def load(
        cls,
        path: str | Path,
        presence: str | PresenceStore | None = None,
        presence_secret: bytes | str | None = None,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Engine:
        """Open a compiled zone set (`geofence compile -o`); raise CompiledFileError if bad."""
        return cls(compiled.load(path), presence, presence_secret, audit, clock)

    def save(self, path: str | Path) -> Path:
        """Write the serving zone set as a compiled, checksummed file."""
        return compiled.save(self._zs, path)

    @property
    def zone_set(self) -> ZoneSet:
        return self._zs

    @property
    def version(self) -> str:
        return self._zs.version

    def reload(self, *paths: str | Path) -> str:
        """Compile a new zone set off to the side and swap it in; return its version.

        A defective set raises (ZoneFileError, PolicyError) and the serving set stays in place.
        """
        if len(paths) == 1 and Path(paths[0]).suffix == ".gfz":
            new = compiled.load(paths[0])
        else:
            new = ZoneSet.from_paths(*paths)
        self._zs = new  # a single reference assignment: atomic for every reader
        log.info("zone set %s loaded (%d zones)", new.version, len(new))
        return new.version

    def close(self) -> None:
        self._store.close()

    # --- single requests ------------------------------------------------------------------------

    def check_location(
        self,
        lat: Any = None,
        lon: Any = None,
        accuracy_m: Any = None,
        device_id: Any = None,
        at: Any = None,
        source: Any = "gps",
    ) -> Decision:
        """Decide one location-triggered request. Never raises."""
        zs = self._zs
        # _guarded's work written out: the closure it takes (eight captured variables) and the
        # extra calls cost about 0.5 us, a quarter of a clear request.
        try:
            decision = self._single(zs, lat, lon, accuracy_m, device_id, at, source)
            if decision is None:
                decision = self._batch(
                    zs, [lat], [lon], [accuracy_m], [device_id], [at], [source], record=True
                ).decision(0)
        except Exception:
            decision = _internal_error(zs, "check_location")
        if self._audit is not None:
            self._audit_one(decision, device_id, at)
        return decision

    def _guarded(
        self, zs: ZoneSet, where: str, decide: Callable[[], Decision], device_id: Any, at: Any
    ) -> Decision:
        """Run one decision: an exception inside becomes internal_error; then audit it."""
        try:
            decision = decide()
        except Exception:
            decision = _internal_error(zs, where)
        if self._audit is not None:
            self._audit_one(decision, device_id, at)
        return decision

    def _single(
        self, zs: ZoneSet, lat: Any, lon: Any, accuracy_m: Any, device_id: Any, at: Any,
        source: Any,
    ) -> Decision | None:  # fmt: skip
        """The common case of check_location without NumPy coercion.

        Plain numbers, in range, and a GPS-like source; returns None for anything else (the
        batch path then decides it, malformed input included), and for rejections that carry
        a device id, whose presence the batch path records.
        """
        if type(lat) not in _NUMBER or type(lon) not in _NUMBER:
            return None
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            return None
        rules = zs.policy.requests
        if source not in _PLAIN_SOURCES:
            return None
        if accuracy_m is None:
            if rules.missing_accuracy_m is None:
                return None
            acc = rules.missing_accuracy_m
        elif type(accuracy_m) in _NUMBER and 0.0 <= accuracy_m <= rules.max_accuracy_m:
            acc = float(accuracy_m)
        else:
            return None
        now = self._clock()
        if at is None:
            when = now
        else:
            # _finite and _time_window written out (a fifth of a microsecond): a float is used
            # as it is, NaN and infinities fail the window's comparisons.
            if type(at) is float:
                when = at
            elif type(at) in _NUMBER:
                when_or_none = _finite(at)
                if when_or_none is None:
                    return None
                when = when_or_none
            else:
                return None
            if not now - zs.max_lookback_s <= when <= now + MAX_CLOCK_SKEW_S:
                return None  # the batch path rejects it
        raw_id = b""
        if device_id is None:
            if rules.no_device_id == "reject":
                return None
        elif type(device_id) is str:
            # _device_bytes written out: blank (no id) or malformed ids go to the batch path.
            if len(device_id) > MAX_DEVICE_ID or device_id.isspace() or not device_id:
                return None
            try:
                raw_id = device_id.encode("utf-8")
            except UnicodeEncodeError:
                return None
        else:
            return None
        if device_id is None:
            found = zs.index.locate_one(float(lon), float(lat), acc)
            if found is None:
                return None  # the exact index's case: the batch path, which knows the time
            kind, z = found
            if kind != KIND_CLEAR:
                return zs.rejections.get((kind, z)) or _rejected(zs, kind, z)
            return zs.allowed
        located = zs.index.locate_present_one(
            float(lon), float(lat), acc, zs.presence_center_only
        )
        if located is None:
            return None  # the exact index must tell the place or the presence: the batch path
        kind, z, present = located
        if kind != KIND_CLEAR:
            if present.size:
                self._record_key(zs, self._hasher.key_of_bytes(raw_id), present, when)
            # Already a rejection: the device's history cannot change it, so it is not read.
            return zs.rejections.get((kind, z)) or _rejected(zs, kind, z)
        # Clear of every zone by more than the accuracy: no presence to record, only history.
        try:
            if self._pending:
                self._flush_pending()
            history = self._store.latest(self._hasher.key_of_bytes(raw_id))
        except PresenceUnavailable:
            self._warn("presence store unavailable: failing closed")
            return Decision(False, Reason.STATE_UNAVAILABLE, zs.version)
        if history:  # most devices have none: skip the call
            blocked = _recently_inside(zs, history, when)
            if blocked is not None:
                return blocked
        return zs.allowed

    def observe(
        self,
        device_id: Any,
        lat: Any,
        lon: Any,
        accuracy_m: Any = None,
        at: Any = None,
        source: Any = "gps",
    ) -> Decision:
        """Record a location ping (no ad involved); returns the decision the ping would get."""
        return self.check_location(lat, lon, accuracy_m, device_id, at, source)

    def forget(self, device_id: str) -> None:
        """Erase every presence record of one device (a consumer's deletion request)."""
        self._store.forget(self._hasher.key(str(device_id)))

    def check_openrtb(self, request: Any) -> Decision:
        """Decide an OpenRTB 2.5/2.6 bid request (bytes, str or dict). Never raises.

        Location: `device.geo` only (never `user.geo`, which is a home base); `at` is now minus
        `device.geo.lastfix`; `type` 2 (IP) follows the policy. Device: `device.ifa`, unless
        `device.lmt` is 1 (the user limited ad tracking: no presence is read or written for
        them, so they are judged on location alone). Beacons: `device.ext.beacons`.
        """
        zs = self._zs
        now = self._clock()
        device = None
        try:
            decision, device = self._openrtb(zs, request, now)
        except Exception:
            log.exception("internal error in check_openrtb")
            decision = Decision(False, Reason.INTERNAL_ERROR, zs.version, detail="internal error")
        if self._audit is not None:
            self._audit_one(decision, device, now)
        return decision

    def check_openrtb_many(self, requests: Any) -> list[Decision]:
        """Decide a list of bid requests; one decision per request. Never raises."""
        zs = self._zs
        try:
            items = list(requests)
        except Exception:
            return [Decision(False, Reason.INVALID_REQUEST, zs.version, detail="not a list")]
        now = self._clock()
        out = []
        for r in items:
            device = None
            try:
                decision, device = self._openrtb(zs, r, now)
            except Exception:
                log.exception("internal error in check_openrtb_many")
                decision = Decision(False, Reason.INTERNAL_ERROR, zs.version)
            if self._audit is not None:
                self._audit_one(decision, device, now)
            out.append(decision)
        return out

    def _openrtb(self, zs: ZoneSet, request: Any, now: float) -> tuple[Decision, str | None]:
        """The decision for one bid request, and the device id it was judged for."""
        try:
            bid = parse_bid_request(request)
        except InvalidBidRequest as exc:
            return (
                Decision(False, Reason.INVALID_REQUEST, zs.version, detail=str(exc)[:200]),
                None,
            )
        # lastfix is a non-negative age, so `at` is never after `now`; a huge one is refused
        # here, with the field named, since a fix older than every lookback says nothing of where
        # the device is now and leaves no presence. _batch checks the window again anyway.
        at = now - bid.fix_age_s
        fault = _time_fault(zs, at, now) if bid.lat is not None and bid.lon is not None else None
        if fault is not None:
            return (
                Decision(
                    False, Reason.INVALID_REQUEST, zs.version, detail=f"device.geo.lastfix: {fault}"
                ),
                None,
            )
        device, bad_device = _device_id(bid.device_id)
        if bad_device:
            # Refused whatever lmt says, as the parser refuses an ifa of the wrong type; and
            # here, once, rather than separately by the location and the beacon paths.
            return (
                Decision(
                    False,
                    Reason.INVALID_REQUEST,
                    zs.version,
                    detail=f"device.ifa is over {MAX_DEVICE_ID} characters or not valid UTF-8",
                ),
                None,
            )
        if bid.lmt:
            device = None  # the user limited ad tracking: no presence read or written
        decisions: list[Decision] = []
        if bid.lat is not None and bid.lon is not None:
            source = bid.source if bid.source in SOURCES else "unknown"
            decisions.append(
                self._batch(
                    zs,
                    [bid.lat],
                    [bid.lon],
                    [bid.accuracy_m],
                    [device],
                    [at],
                    [source],
                    record=True,
                ).decision(0)
            )
        for sighting in bid.beacons:
            # lastfix dates the GPS fix only: a beacon in the request was heard now.
            d = self._beacon(zs, sighting.beacon_id, device, now, now)
            if d.reason is not Reason.NO_LOCATION:  # an ignored (decommissioned) beacon
                decisions.append(d)
        if not decisions:
            allowed = zs.policy.requests.no_location == "allow"
            return (
                Decision(
                    allowed,
                    Reason.NO_LOCATION,
                    zs.version,
                    detail="no device.geo location and no beacon",
                ),
                device,
            )
        rejected = [d for d in decisions if not d.allowed]
        return (rejected[0] if rejected else decisions[0]), device

    def check_beacon(
        self, beacon_id: Any, device_id: Any = None, at: Any = None, rssi: Any = None
    ) -> Decision:
        """Decide a beacon-triggered request: a beacon in or near a zone is presence there."""
        zs = self._zs
        return self._guarded(
            zs, "check_beacon", lambda: self._beacon_request(zs, beacon_id, device_id, at, rssi),
            device_id, at,
        )  # fmt: skip

    def _beacon_request(
        self, zs: ZoneSet, beacon_id: Any, device_id: Any, at: Any, rssi: Any
    ) -> Decision:
        """check_beacon's input checks, then the decision."""
        if rssi is not None and (
            isinstance(rssi, bool) or not isinstance(rssi, int | float) or _finite(rssi) is None
        ):
            return Decision(False, Reason.INVALID_REQUEST, zs.version, detail="bad rssi")
        now = self._clock()
        when, bad = _floats([at], 1, missing=now)
        if bad[0] or not math.isfinite(when[0]):
            return Decision(False, Reason.INVALID_REQUEST, zs.version, detail="bad time")
        device, bad_device = _device_id(device_id)
        if bad_device:
            return Decision(False, Reason.INVALID_REQUEST, zs.version, detail="bad device id")
        return self._beacon(zs, beacon_id, device, float(when[0]), now)

    def check_beacons_many(
        self, beacon_ids: Sequence[Any], device_ids: Any = None, at: Any = None
    ) -> list[Decision]:
        """Decide a batch of beacon sightings; one decision per sighting. Never raises."""
        try:
            n = len(beacon_ids)  # a Sequence: an iterator or generator is refused
            if n > MAX_BATCH:
                raise ValueError("batch too large")
            ids = list(beacon_ids)
            if len(ids) != n:
                raise ValueError("len() does not match the items")
            if device_ids is None or isinstance(device_ids, str):
                devices = [device_ids] * n  # one device for every sighting
            else:
                devices = list(device_ids)
            times = list(at) if isinstance(at, list | tuple | np.ndarray) else [at] * n
            if len(devices) != n or len(times) != n:
                raise ValueError("mismatched lengths")
        except Exception:
            return [
                Decision(
                    False,
                    Reason.INVALID_REQUEST,
                    self._zs.version,
                    detail="beacon_ids, device_ids and at must have one length",
                )
            ]
        return [self.check_beacon(b, d, t) for b, d, t in zip(ids, devices, times, strict=True)]

    def _beacon(
        self, zs: ZoneSet, beacon_id: Any, device_id: str | None, at: float, now: float
    ) -> Decision:
        """One beacon sighting heard at `at` by a (validated) device; `now` is the clock."""
        fault = _time_fault(zs, at, now)
        if fault is not None:
            return Decision(False, Reason.INVALID_REQUEST, zs.version, detail=fault)
        rules = zs.policy.beacons
        try:
            normalized = normalize_beacon_id(beacon_id) if isinstance(beacon_id, str) else None
        except ValueError as exc:
            return Decision(False, Reason.INVALID_REQUEST, zs.version, detail=str(exc)[:200])
        if normalized is None:
            return Decision(False, Reason.INVALID_REQUEST, zs.version, detail="beacon id")
        beacon = zs.beacons.get(normalized) if zs.beacons is not None else None
        if beacon is None:
            allowed = rules.unknown == "allow"
            return Decision(
                allowed,
                Reason.ALLOWED if allowed else Reason.UNKNOWN_BEACON,
                zs.version,
                detail="beacon not in the registry",
            )
        if beacon.status == "inactive" and rules.inactive == "reject":
            return Decision(False, Reason.UNKNOWN_BEACON, zs.version, detail="beacon is inactive")
        if beacon.status == "decommissioned":
            if rules.decommissioned == "reject":
                return Decision(
                    False, Reason.UNKNOWN_BEACON, zs.version, detail="beacon is decommissioned"
                )
            allowed = zs.policy.requests.no_location == "allow"
            return Decision(
                allowed, Reason.NO_LOCATION, zs.version, detail="decommissioned beacon ignored"
            )
        linked = zs.zone_position(beacon.zone_id) if beacon.zone_id else -1
        if linked < 0 and (beacon.lat is None or beacon.lon is None):
            # A link to a zone this set does not hold (or no longer active): fail closed.
            return Decision(
                False,
                Reason.UNKNOWN_BEACON,
                zs.version,
                detail="beacon's zone is not in this zone set",
            )
        if linked >= 0:
            zone = zs.zones[linked]
            active = (zone.valid_from is None or zone.valid_from <= at) and (
                zone.valid_until is None or at < zone.valid_until
            )
            if active:
                self._record(zs, device_id, [linked], at)
                return Decision(
                    False,
                    Reason.BEACON_IN_ZONE,
                    zs.version,
                    zone.id,
                    zone.category,
                    detail="beacon linked to this zone",
                )
            if beacon.lat is None or beacon.lon is None:
                # Its zone is not active now: the place protects nobody; history still counts.
                return self._history_only(zs, device_id, at)
        # A positioned beacon: its range circle is the device's accuracy circle.
        d = self._batch(
            zs,
            [beacon.lat],
            [beacon.lon],
            [beacon.range_m],
            [device_id],
            [at],
            ["gps"],
            record=True,
        ).decision(0)
        if d.reason in (Reason.INSIDE_ZONE, Reason.NEAR_ZONE):
            return Decision(
                False,
                Reason.BEACON_IN_ZONE,
                zs.version,
                d.zone_id,
                d.category,
                detail=f"beacon range reaches the zone ({d.reason.value})",
            )
        return d

    def _history_only(self, zs: ZoneSet, device_id: str | None, at: float) -> Decision:
        """A decision from the device's presence history alone (no location to judge)."""
        if not device_id:
            return zs.allowed
        try:
            self._flush_pending()
            history = self._store.latest(self._hasher.key(device_id))
        except PresenceUnavailable:
            return Decision(
                False, Reason.STATE_UNAVAILABLE, zs.version, detail="presence store unavailable"
            )
        blocked = _recently_inside(zs, history, at)
        return zs.allowed if blocked is None else blocked

    def _record(self, zs: ZoneSet, device_id: str | None, zones: list[int], at: float) -> None:
        """Record presence of one device in the given zones (best effort; logged on failure)."""
        if not device_id or not zones:
            return
        self._record_key(zs, self._hasher.key(device_id), np.asarray(zones), at)

    def _record_key(
        self, zs: ZoneSet, key: bytes, zones: npt.NDArray[np.integer], at: float
    ) -> None:
        """Record one hashed device inside each of `zones` at `at`, kept for the longest
        lookback (as the batch path keeps its records)."""
        at = float(at)
        expires = at + zs.max_lookback_s
        if len(zones) == 1:  # the usual case
            self._write_one(key, zs.category.item(zones[0]), at, expires)
            return
        # A store keeps one record per (device, category), and these share their time and
        # expiry: one record per category, each without arrays (nested zones are mostly of
        # one category, and a single request's zones are few).
        for cat in dict.fromkeys(map(zs.category.item, zones.tolist())):
            self._write_one(key, cat, at, expires)

    def _audit_one(self, decision: Decision, device_id: Any, at: Any) -> None:
        """Hand one decision to the audit sink, keyed by the hashed device id. Never raises."""
        try:
            assert self._audit is not None
            key = _audit_key(self._hasher, device_id)
            when = _finite(at) if type(at) in _NUMBER else None
            when = self._clock() if when is None else when
            self._audit.record(decision, key, when)
        except Exception:
            log.exception("audit sink failed")

    def _audit_many(self, batch: BatchDecision, device_ids: Any, at: Any) -> None:
        try:
            assert self._audit is not None
            n = len(batch)
            keys = None
            if isinstance(device_ids, list | tuple | np.ndarray) and len(device_ids) == n:
                keys = [_audit_key(self._hasher, d) for d in device_ids]
            when: Any = self._clock()
            if isinstance(at, np.ndarray) and at.shape == (n,) and at.dtype.kind == "f":
                when = np.where(np.isfinite(at), at, when)
            elif type(at) in _NUMBER and _finite(at) is not None:
                when = float(at)
            self._audit.record_batch(batch, keys, when)
        except Exception:
            log.exception("audit sink failed")

    def _write_presence(
        self,
        digests: Digests,
        cats: npt.NDArray[np.uint8],
        times: F64,
        expires: F64,
    ) -> None:
        """Record presence; while the store is down, keep the records to write when it is back.

        Losing them would fail open: a device seen inside a zone during an outage would be
        allowed again, before its lookback ends, as soon as the store recovers.
        """
        self._write_through(
            self._store.record_many_of,
            (digests, cats, times, expires),
            lambda: zip(
                as_keys(digests), cats.tolist(), times.tolist(), expires.tolist(), strict=True
            ),
            len(digests),
        )

    def _write_one(self, key: bytes, cat: int, t: float, expires: float) -> None:
        """`_write_presence` of one record, through the store's `record`: no arrays."""
        record = (key, cat, t, expires)
        self._write_through(self._store.record, record, lambda: [record], 1)

    def _write_through(
        self,
        write: Callable[..., None],
        args: tuple[Any, ...],
        held: Callable[[], Iterable[tuple[bytes, int, float, float]]],
        n: int,
    ) -> None:
        """write(*args) to the store, or queue `held()` (the same records) while it is down.

        Nothing held back: write straight through, and build the queue's records only if the
        store is down (the detour through the queue cost a tuple and four lists per record).
        """
        if self._pending:
            with self._pending_lock:
                self._pending.extend(held())
            self._flush_pending()
            return
        try:
            write(*args)
        except PresenceUnavailable:
            with self._pending_lock:
                self._pending.extend(held())
                count = len(self._pending)
            self._warn(f"presence store unavailable: {count} presence records held")
        except Exception:
            # As in _flush_pending: records the store refuses can never be written.
            log.exception("dropping %d presence records the store refused", n)

    def _flush_pending(self) -> None:
        """Write presence records held back by an outage; they stay held if it goes on."""
        # Checked before the lock: this runs before every presence read, and the queue is
        # almost always empty. A record queued concurrently is flushed by the thread queueing it.
        if not self._pending:
            return
        with self._pending_lock:
            if not self._pending:
                return
            batch = list(self._pending)
            try:
                self._store.record_many(
                    [k for k, _, _, _ in batch],
                    np.array([c for _, c, _, _ in batch], dtype=np.uint8),
                    np.array([t for _, _, t, _ in batch], dtype=np.float64),
                    np.array([e for _, _, _, e in batch], dtype=np.float64),
                )
            except PresenceUnavailable:
                self._warn(f"presence store unavailable: {len(batch)} presence records held")
                return
            except Exception:
                # Not an outage: these records can never be written (an absurd time, say).
                # Holding them would fail every later request; drop them, and say so.
                log.exception("dropping %d presence records the store refused", len(batch))
            self._pending.clear()

    def _warn(self, message: str) -> None:
        """A warning at most every WARN_EVERY_S seconds: an outage must not flood the log."""
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning(message)

    # --- batches --------------------------------------------------------------------------------

    def check_many(
        self,
        lat: Any,
        lon: Any,
        accuracy_m: Any = None,
        device_ids: Any = None,
        at: Any = None,
        source: Any = None,
    ) -> BatchDecision:
        """Decide a batch given as arrays (scalars broadcast). Never raises.

        A NaN or negative accuracy, or a non-finite or out-of-range coordinate or time, makes
        that element invalid_request; arrays of the wrong length make every element invalid.
        """
        zs = self._zs
        try:
            batch = self._batch(zs, lat, lon, accuracy_m, device_ids, at, source, record=True)
        except Exception:
            log.exception("internal error in check_many")
            batch = _uniform(zs, _guess_len(lat), Reason.INTERNAL_ERROR)
        if self._audit is not None:
            self._audit_many(batch, device_ids, at)
        return batch

    def observe_many(
        self,
        device_ids: Any,
        lat: Any,
        lon: Any,
        accuracy_m: Any = None,
        at: Any = None,
        source: Any = None,
    ) -> BatchDecision:
        """Record a batch of pings; returns the decisions they would get."""
        return self.check_many(lat, lon, accuracy_m, device_ids, at, source)

    # --- the one decision path ------------------------------------------------------------------

    def _batch(
        self,
        zs: ZoneSet,
        lat: Any,
        lon: Any,
        accuracy_m: Any,
        device_ids: Any,
        at: Any,
        source: Any,
        record: bool,
    ) -> BatchDecision:
        n = _guess_len(lat)
        now = self._clock()
        ids, bad_ids, packed = _device_ids(device_ids, n)
        # The usual batch is checked in one compiled pass (screen.py); any other by the NumPy
        # code, the reference the tests compare it with.
        fast = (
            _numeric(lat, n)
            and _numeric(lon, n)
            and _numeric(accuracy_m, n)
            and (at is None or _numeric(at, n))
            and (source is None or isinstance(source, str))
            and (device_ids is None or packed is not None)
        )
        no_id = _no_ids(device_ids, ids, packed, n)
        checked = (_checked_compiled if fast else _checked_numpy)(
            zs, n, now, lat, lon, accuracy_m, at, source, bad_ids, no_id
        )
        lat_a, lon_a, acc, at_a, reason, zone, category, until, ok = checked
        if ok.size:
            has_id = ok[~no_id[ok]]
            keys = self._start_keys(ids, packed, has_id)
            try:
                # The common batch leaves nothing out: its arrays go to the index as they are.
                every = ok.size == n
                need = None if device_ids is None else ~no_id if every else ~no_id[ok]
                loc = zs.index.locate(
                    lon_a if every else lon_a[ok],
                    lat_a if every else lat_a[ok],
                    acc if every else acc[ok],
                    at_a if every else at_a[ok],
                    presence_center_only=zs.presence_center_only,
                    need_presence=need,
                )
                if fast:
                    answer(ok, every, loc.kind, loc.zone, zs.category, reason, zone, category)
                else:
                    hit = loc.kind != KIND_CLEAR
                    hz = loc.zone[hit]
                    reason[ok[hit]] = np.where(
                        loc.kind[hit] == KIND_INSIDE,
                        _R[Reason.INSIDE_ZONE],
                        _R[Reason.NEAR_ZONE],
                    )
                    zone[ok[hit]] = hz
                    category[ok[hit]] = zs.category[hz]
                if has_id.size:
                    self._history(
                        zs,
                        keys,
                        at_a,
                        ok,
                        loc.present_point,
                        loc.present_zone,
                        has_id,
                        no_id,
                        reason,
                        category,
                        until,
                        record,
                    )
            finally:
                keys.join()  # also when locating failed: no thread outlives its batch

        allowed = reason == _R[Reason.ALLOWED]
        return BatchDecision(allowed, reason, zone, category, until, zs.version, zs.ids)

    def _start_keys(
        self, ids: IdBatch, packed: PackedIds | None, has_id: npt.NDArray[np.intp]
    ) -> _Keys:
        """The batch's device keys (see _distinct_keys): on a second thread for a large batch
        of packed ids, whose hashing then runs while the index locates (both release the GIL).
        """
        job = functools.partial(self._distinct_keys, ids, packed, has_id)
        return _Keys(job, background=packed is not None and has_id.size >= BACKGROUND_KEYS_MIN)

    def _distinct_keys(
        self, ids: IdBatch, packed: PackedIds | None, has_id: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], Digests]:
        """(dev, digests): dev[j] is the distinct device of request has_id[j], digests[d] its
        key (a row of 32 bytes: the store reads a batch's keys as one array).

        Each distinct device is hashed and read once (a batch often holds a device many times).
        Packed ids go through the compiled table and are hashed from their packed bytes;
        otherwise pandas' hash table does it in one C pass (half the time of a dict of first
        appearances and a lookup per request).
        """
        found = None if packed is None else distinct_ids(packed, has_id)
        if found is not None:
            dev, blob, offsets = found
            return dev, self._hasher.digests_packed(blob, offsets)
        id_arr = np.array(ids, dtype=object)
        codes, uniques = pd.factorize(id_arr if len(has_id) == len(ids) else id_arr[has_id])
        distinct: list[str] = uniques.tolist()  # has_id holds only requests with a str id
        return codes.astype(np.intp, copy=False), self._hasher.digests(distinct)

    def _history(
        self,
        zs: ZoneSet,
        keys: _Keys,
        at: F64,
        ok: npt.NDArray[np.intp],
        present_point: npt.NDArray[np.int64],
        present_zone: npt.NDArray[np.int64],
        has_id: npt.NDArray[np.intp],
        no_id: npt.NDArray[np.bool_],
        reason: npt.NDArray[np.uint8],
        category: npt.NDArray[np.uint8],
        until: F64,
        record: bool,
    ) -> None:
        """Apply and update the presence memory for requests that carry a device id.

        Per request, the block that applies ends at the latest of: the stored history's block
        end, and the end of every presence this batch records for the same device at or before
        the request's time. No Python runs per request or per device: the store's records come
        back as arrays, and compiled passes settle them (block_ends, fold_events).
        """
        dev, digests = keys.result()
        n_dev = len(digests)
        # Presence seen in this batch: (request, category, time, end of its lookback).
        pres_req = ok[present_point]
        with_id = ~no_id[pres_req]
        pres_req, pres_zone = pres_req[with_id], present_zone[with_id]
        pres_cat = zs.category[pres_zone]
        pres_t = at[pres_req]
        pres_end = pres_t + zs.lookback_s[pres_cat]
        # The common batch: every request has an id, so has_id is 0..n-1 and needs no gathers.
        every = len(has_id) == len(at)
        if every:
            pres_dev = dev[pres_req]
        else:
            dev_of_request = np.full(len(at), -1, dtype=np.intp)
            dev_of_request[has_id] = dev
            pres_dev = dev_of_request[pres_req]
        try:
            self._flush_pending()
            found = self._store.latest_records_of(digests)
        except PresenceUnavailable:
            self._warn(f"presence store unavailable: failing closed for {len(has_id)} requests")
            undecided = has_id[reason[has_id] == _R[Reason.ALLOWED]]
            reason[undecided] = _R[Reason.STATE_UNAVAILABLE]
            found = None
        # Only devices with a stored history, or with presence in this batch, can be blocked.
        if found is not None and (len(found[0]) or len(pres_req)):
            dev_end, dev_cat = block_ends(*found, zs.lookback_s, n_dev)
            req_end = dev_end[dev]
            req_cat = dev_cat[dev]
            req_at = at if every else at[has_id]
            if len(pres_req):
                # Presence recorded in this batch counts for the same device's requests at or
                # after it, as one request at a time (fold_events says how ties go).
                fold_events(
                    dev, req_at, req_end, req_cat,
                    pres_dev, pres_t, pres_end, pres_cat.astype(np.int64), n_dev,
                )  # fmt: skip
            allowed = (reason if every else reason[has_id]) == _R[Reason.ALLOWED]
            blocked = (req_at < req_end) & allowed
            hit = np.flatnonzero(blocked) if every else has_id[blocked]
            reason[hit] = _R[Reason.RECENTLY_INSIDE]
            category[hit] = req_cat[blocked]
            until[hit] = req_end[blocked]
        if record and len(pres_req):
            # One record per (device, category), its latest time: every store keeps just that
            # (and the expiry, which grows with the time). A batch repeats pairs (50k zones:
            # 31k presences, 18.5k pairs), and each record written costs Python work.
            last = latest_per_pair(pres_dev, pres_cat, pres_t)
            pres_dev, pres_cat, pres_t = pres_dev[last], pres_cat[last], pres_t[last]
            self._write_presence(
                digests[pres_dev],
                pres_cat.astype(np.uint8),
                pres_t.astype(np.float64),
                # Kept until the longest lookback of any category ends, so a policy that
                # lengthens one category's lookback still finds the record.
                pres_t + zs.policy.max_lookback_s,
            )


class _Keys:
    """A batch's (dev, digests), made on a thread of its own, or when first asked for.

    A thread per batch rather than a pool: a pool's worker does not survive a fork (a
    pre-forking server), and its start (~0.1 ms) is small beside the hashing it overlaps.
    """

    def __init__(
        self, job: Callable[[], tuple[npt.NDArray[np.intp], Digests]], background: bool
    ) -> None:
        self._job = job
        self._value: tuple[npt.NDArray[np.intp], Digests] | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="geofence-keys", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._job()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def result(self) -> tuple[npt.NDArray[np.intp], Digests]:
        """The keys; an error in making them is raised here, in the caller's thread."""
        if self._thread is None and self._value is None and self._error is None:
            self._run()
        self.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


_NUMBER = (float, int, np.float64)
_PLAIN_SOURCES = (None, "gps", "user", "unknown")


def _internal_error(zs: ZoneSet, where: str) -> Decision:
    """The rejection for an exception inside a decision (logged with its traceback)."""
    log.exception("internal error in %s", where)
    return Decision(False, Reason.INTERNAL_ERROR, zs.version, detail="internal error")


def _rejected(zs: ZoneSet, kind: int, z: int) -> Decision:
    """The (immutable) inside_zone or near_zone decision for zone z, made once per zone set."""
    reason = Reason.INSIDE_ZONE if kind == KIND_INSIDE else Reason.NEAR_ZONE
    decision = Decision(
        False, reason, zs.version, zs.ids[z], Category.from_code(int(zs.category[z]))
    )
    zs.rejections[kind, z] = decision
    return decision



class _Checked(NamedTuple):
    """A batch's requests after their checks: what the index and the answers start from."""

    lat: F64
    lon: F64
    accuracy_m: F64  # the accuracy to judge (the policy's for a missing one, IP fixes widened)
    at: F64
    reason: npt.NDArray[np.uint8]  # allowed, invalid_request or imprecise_location
    zone: npt.NDArray[np.int32]  # -1 each
    category: npt.NDArray[np.uint8]  # NO_CATEGORY each
    until: F64  # NaN each
    ok: npt.NDArray[np.intp]  # the requests that go to the index, ascending


def _numeric(values: Any, n: int) -> bool:
    """Whether `_floats` reads `values` whole and `_missing_mask` finds none missing: a plain
    numeric array of n values, or a number."""
    if type(values) is np.ndarray:
        return values.shape == (n,) and values.dtype.kind in "fiu"
    if isinstance(values, bool):
        return False
    return isinstance(values, float) or (isinstance(values, int) and abs(values) < 2**1000)


def _no_ids(
    device_ids: Any, ids: IdBatch, packed: PackedIds | None, n: int
) -> npt.NDArray[np.bool_]:
    """Which of a batch's requests carry no device id (`_device_ids` says what counts)."""
    if device_ids is None:
        return np.ones(n, dtype=bool)
    if packed is not None:  # every id valid
        return np.zeros(n, dtype=bool)
    return np.fromiter(map(operator.is_, ids, itertools.repeat(None)), bool, count=n)


def _checked_compiled(
    zs: ZoneSet, n: int, now: float, lat: Any, lon: Any, accuracy_m: Any, at: Any,
    source: str | None, bad_ids: npt.NDArray[np.bool_], no_id: npt.NDArray[np.bool_],
) -> _Checked:  # fmt: skip
    """`_checked_numpy` for the usual batch (`_numeric` coordinates, accuracies and times, one
    source, no ids or every id valid: no malformed id, and no_id the same for every request),
    in one compiled pass."""
    rules = zs.policy.requests
    earliest, latest = _time_window(zs, now)
    lat_a, lon_a, acc_a, at_a = (_floats(v, n, missing=now)[0] for v in (lat, lon, accuracy_m, at))
    acc = np.empty(n, dtype=np.float64)  # not acc_a: that may be the caller's own array
    reason = np.empty(n, dtype=np.uint8)
    zone = np.empty(n, dtype=np.int32)
    category = np.empty(n, dtype=np.uint8)
    until = np.empty(n, dtype=np.float64)
    all_invalid = source not in (None, *SOURCES) or (
        rules.no_device_id == "reject" and bool(no_id.all())
    )
    n_ok = screen(
        lat_a, lon_a, acc_a, at_a, earliest, latest, all_invalid,
        rules.max_accuracy_m, source == "ip", rules.ip_location == "reject",
        rules.ip_accuracy_m, reason, acc, zone, category, until,
    )  # fmt: skip
    ok = np.arange(n) if n_ok == n else np.flatnonzero(reason == _R[Reason.ALLOWED])
    return _Checked(lat_a, lon_a, acc, at_a, reason, zone, category, until, ok)


def _checked_numpy(
    zs: ZoneSet, n: int, now: float, lat: Any, lon: Any, accuracy_m: Any, at: Any,
    source: Any, bad_ids: npt.NDArray[np.bool_], no_id: npt.NDArray[np.bool_],
) -> _Checked:  # fmt: skip
    """Check a batch's requests, whatever their form: the reference for `_checked_compiled`."""
    rules = zs.policy.requests
    lat_a, bad = _floats(lat, n)
    lon_a, bad_lon = _floats(lon, n)
    acc_a, bad_acc = _floats(accuracy_m, n, missing=np.nan)
    at_a, bad_at = _floats(at, n, missing=now)
    bad |= bad_lon | bad_acc | bad_at
    earliest, latest = _time_window(zs, now)
    bad |= ~((at_a >= earliest) & (at_a <= latest))  # older than every lookback, or future
    bad |= ~(np.abs(lat_a) <= 90.0) | ~(np.abs(lon_a) <= 180.0) | ~np.isfinite(at_a)
    given_acc = ~_missing_mask(accuracy_m, n)
    bad |= given_acc & ~((acc_a >= 0.0) & np.isfinite(acc_a))
    src, bad_src = _sources(source, n)
    bad |= bad_src
    bad |= bad_ids

    reason = np.full(n, _R[Reason.ALLOWED], dtype=np.uint8)
    zone = np.full(n, -1, dtype=np.int32)
    category = np.full(n, NO_CATEGORY, dtype=np.uint8)
    until = np.full(n, np.nan, dtype=np.float64)

    # Accuracy: missing -> the policy's assumption; IP-derived -> the policy's rule.
    acc = np.where(given_acc, acc_a, np.nan)
    missing_acc = ~given_acc
    if rules.missing_accuracy_m is None:
        imprecise = missing_acc.copy()
    else:
        acc = np.where(missing_acc, rules.missing_accuracy_m, acc)
        imprecise = np.zeros(n, dtype=bool)
    imprecise |= acc > rules.max_accuracy_m
    # IP fixes: rejected, or widened to the policy's IP circle after the max_accuracy_m check
    # (that check is about what a device reports; the IP circle is the policy's own choice).
    is_ip = src == 1
    if rules.ip_location == "reject":
        imprecise |= is_ip
    else:
        acc = np.where(is_ip, np.fmax(acc, rules.ip_accuracy_m), acc)
    if rules.no_device_id == "reject":
        bad |= no_id
    imprecise &= ~bad
    reason[bad] = _R[Reason.INVALID_REQUEST]
    reason[imprecise] = _R[Reason.IMPRECISE_LOCATION]
    ok = np.flatnonzero(~bad & ~imprecise)
    return _Checked(lat_a, lon_a, acc, at_a, reason, zone, category, until, ok)


def _time_window(zs: ZoneSet, now: float) -> tuple[float, float]:
    """The request times accepted when the engine's clock reads `now`: (earliest, latest).

    Both bounds are inclusive. Before the policy's longest lookback, a fix would record presence
    that has already expired, judge temporary zones at a moment long gone, and say nothing of
    where the device is now (a clock reading 1970, a huge OpenRTB lastfix). After
    MAX_CLOCK_SKEW_S, it would outrun every lookback. Either way the request is invalid_request.
    """
    return now - zs.max_lookback_s, now + MAX_CLOCK_SKEW_S


def _time_fault(zs: ZoneSet, at: float, now: float) -> str | None:
    """Why the time `at` is outside the accepted window (the detail of its rejection); None if
    it is inside. NaN is outside."""
    earliest, latest = _time_window(zs, now)
    if at > latest:
        return f"time is more than {MAX_CLOCK_SKEW_S:.0f} s after the engine's clock"
    if not at >= earliest:
        return (
            f"time is more than {now - earliest:.0f} s before the engine's clock "
            "(the policy's longest lookback)"
        )
    return None


def _finite(value: Any) -> float | None:
    """`value` as a finite float, or None (NaN, infinities, ints too large for a float)."""
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _encodable(text: str) -> bool:
    """Whether a device id is valid UTF-8 text (a lone surrogate is not, and cannot be hashed)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _audit_key(hasher: DeviceHasher, device_id: Any) -> bytes | None:
    """The presence key of a usable device id, for the audit log; None otherwise."""
    # str(): a NumPy str_ element (from an array of ids) is keyed as the decision path keys it.
    return hasher.key(str(device_id)) if _valid_device_id(device_id) else None


def _recently_inside(zs: ZoneSet, history: dict[int, float], at: float) -> Decision | None:
    """The recently_inside rejection a device's history gives at `at`, or None."""
    if not history:  # most devices: nothing to compute
        return None
    end, cat = _block_end(history, zs.lookback_s)
    if at < end:
        return Decision(
            False, Reason.RECENTLY_INSIDE, zs.version, category=Category.from_code(cat), until=end
        )
    return None


def _block_end(history: dict[int, float], lookback_s: F64) -> tuple[float, int]:
    """(end of the latest presence block, its category code) from {category: last time}."""
    best_end, best_cat = -math.inf, -1
    for c, t in history.items():
        end = t + lookback_s[c]
        if end > best_end:
            best_end, best_cat = end, c
    return best_end, best_cat


# --- input coercion: every malformed element becomes a flag, never an exception -----------------


def _guess_len(values: Any) -> int:
    """How many requests `values` holds; 1 for anything unmeasurable or absurdly long.

    A single invalid element is then the answer, rather than an exception or a huge allocation.
    """
    if values is None or isinstance(values, str | bytes):
        return 1
    try:
        n = len(values)
    except Exception:
        return 1
    return n if isinstance(n, int) and 0 <= n <= MAX_BATCH else 1


def _missing_mask(values: Any, n: int) -> npt.NDArray[np.bool_]:
    """Which of n values are missing: None, or masked in a NumPy masked array."""
    if values is None:
        return np.ones(n, dtype=bool)
    if isinstance(values, np.ma.MaskedArray):
        masked = np.ma.getmaskarray(values)
        if masked.ndim == 0:
            return np.full(n, bool(masked))
        return masked.copy() if masked.shape == (n,) else np.zeros(n, dtype=bool)
    if isinstance(values, list | tuple) and len(values) == n:
        return np.array([v is None or v is np.ma.masked for v in values], dtype=bool)
    return np.zeros(n, dtype=bool)


def _floats(values: Any, n: int, missing: float = np.nan) -> tuple[F64, npt.NDArray[np.bool_]]:
    """Coerce to a float array of length n, flagging wrong types, shapes and bools."""
    bad = np.zeros(n, dtype=bool)
    if values is None:
        return np.full(n, missing, dtype=np.float64), bad
    if isinstance(values, np.ma.MaskedArray):
        # A masked entry is missing, whatever data lies under the mask (often a fill value or
        # a stale reading): it must not be judged as if it were a real coordinate or accuracy.
        masked = np.ma.getmaskarray(values)
        out, bad = _floats(np.ma.getdata(values), n, missing)
        if masked.ndim == 0:
            masked = np.full(n, bool(masked))
        if masked.shape == (n,):
            out = np.where(masked, missing, out)
            bad &= ~masked
        return out, bad
    if isinstance(values, np.ndarray):
        if values.ndim == 0:
            values = values.reshape(1) if n == 1 else np.full(n, values.item())
        if values.shape != (n,):
            return np.full(n, np.nan), np.ones(n, dtype=bool)
        if values.dtype.kind in "fiu":
            return values.astype(np.float64, copy=False), bad
        values = values.tolist()
    if isinstance(values, int | float) and not isinstance(values, bool):
        try:
            scalar = float(values)
        except OverflowError:  # an int too large for a float
            return np.full(n, np.nan), np.ones(n, dtype=bool)
        return np.full(n, scalar, dtype=np.float64), bad
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        return np.full(n, np.nan), np.ones(n, dtype=bool)
    if len(values) != n:
        return np.full(n, np.nan), np.ones(n, dtype=bool)
    out = np.empty(n, dtype=np.float64)
    for i, v in enumerate(values):
        if v is None or v is np.ma.masked:
            out[i] = missing
        elif isinstance(v, bool | np.timedelta64) or not isinstance(
            v, int | float | np.integer | np.floating
        ):
            out[i], bad[i] = np.nan, True
        else:
            try:
                out[i] = float(v)
            except (OverflowError, ValueError, TypeError):
                out[i], bad[i] = np.nan, True
    return out, bad


def _sources(source: Any, n: int) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
    """Source codes: 0 gps, 1 ip, 2 user, 3 unknown (None counts as gps)."""
    if source is None:
        return np.zeros(n, dtype=np.int8), np.zeros(n, dtype=bool)
    if isinstance(source, str):  # one source for the whole batch: decided once
        if source in SOURCES:
            return np.full(n, SOURCES.index(source), dtype=np.int8), np.zeros(n, dtype=bool)
        return np.zeros(n, dtype=np.int8), np.ones(n, dtype=bool)
    if isinstance(source, np.ndarray | list | tuple) and len(source) == n:
        values = list(source)
    else:
        return np.zeros(n, dtype=np.int8), np.ones(n, dtype=bool)
    codes = np.zeros(n, dtype=np.int8)
    bad = np.zeros(n, dtype=bool)
    for i, s in enumerate(values):
        if s is None:
            continue
        if isinstance(s, str) and s in SOURCES:
            codes[i] = SOURCES.index(s)
        else:
            bad[i] = True
    return codes, bad


def _device_ids(
    device_ids: Any, n: int
) -> tuple[IdBatch, npt.NDArray[np.bool_], PackedIds | None]:
    """The ids (None for none), which are malformed, and the ids packed when every one is a
    valid ASCII id; `_device_id` says what counts as what."""
    bad = np.zeros(n, dtype=bool)
    if device_ids is None:
        return [None] * n, bad, None
    if isinstance(device_ids, str):
        device_ids = [device_ids] * n if n == 1 else None
    if not isinstance(device_ids, np.ndarray | list | tuple) or len(device_ids) != n:
        return [None] * n, np.ones(n, dtype=bool), None
    # The usual batch, plain ASCII ids: checked by the compiled pass that packs them, which
    # reads a list, a tuple or an array of objects as it is. Only the general path copies.
    packed = pack_ids(device_ids, MAX_DEVICE_ID)
    if packed is not None:
        return device_ids, bad, packed
    seq = device_ids.tolist() if isinstance(device_ids, np.ndarray) else list(device_ids)
    # Else every id plain valid text (non-ASCII), checked in a few C-level passes instead of a
    # Python call per id (lone surrogates anywhere make the joined text fail to encode).
    if (
        set(map(type, seq)) <= {str}
        and all(map(str.strip, seq))
        and max(map(len, seq), default=0) <= MAX_DEVICE_ID
        and _encodable("".join(seq))
    ):
        return seq, bad, None
    out: list[str | None] = []
    for i, d in enumerate(device_ids):
        device, bad[i] = _device_id(d)
        out.append(device)
    return out, bad, None


def _valid_device_id(value: Any) -> bool:
    """Whether `value` is a usable device id: non-blank text of at most MAX_DEVICE_ID
    characters that is valid UTF-8 (it is hashed as such)."""
    return isinstance(value, str) and _device_bytes(value) is not None


def _device_bytes(value: str) -> bytes | None:
    """A device id's UTF-8 bytes, what is hashed, or None if it is not a usable id."""
    if len(value) > MAX_DEVICE_ID or not value or value.isspace():
        return None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _device_id(value: Any) -> tuple[str | None, bool]:
    """One device id: (the id, or None for no id; whether it is malformed).

    None and blank text mean "no id" (judged on location alone, as the policy says); anything
    else that is not a valid id is malformed, and its request invalid_request.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, False
    if _valid_device_id(value):
        return str(value), False  # str(): a NumPy str_ element becomes a plain str
    return None, True


def _uniform(zs: ZoneSet, n: int, reason: Reason) -> BatchDecision:
    return BatchDecision(
        allowed=np.zeros(n, dtype=bool),
        reason=np.full(n, reason.code, dtype=np.uint8),
        zone_index=np.full(n, -1, dtype=np.int32),
        category=np.full(n, NO_CATEGORY, dtype=np.uint8),
        until=np.full(n, np.nan),
        zone_set_version=zs.version,
        zone_ids=zs.ids,
    )


def _open_presence(
    presence: str | PresenceStore | None, secret: bytes | str | None
) -> tuple[PresenceStore, DeviceHasher]:
    """A store from a URL (or $GEOFENCE_PRESENCE_URL), or a store object given directly."""
    if isinstance(presence, PresenceStore):
        scheme = "memory" if isinstance(presence, MemoryStore) else "shared"
        return presence, DeviceHasher(secret_bytes(secret, scheme))
    return open_store(presence, secret)

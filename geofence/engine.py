"""The engine: the one object an ad server holds and asks "may this request be targeted?".

Every `check*` call returns a decision and never raises: malformed input gives invalid_request,
an unreachable presence store gives state_unavailable, and anything unexpected inside gives
internal_error (logged). The zone set is immutable and swapped atomically by `reload`; each call
reads it once, so a decision is always made by, and names, exactly one zone set.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geofence import compiled
from geofence.audit import AuditLog
from geofence.beacons import normalize_beacon_id
from geofence.categories import Category
from geofence.decision import NO_CATEGORY, BatchDecision, Decision
from geofence.errors import PresenceUnavailable
from geofence.index import KIND_CLEAR, KIND_INSIDE
from geofence.openrtb import InvalidBidRequest, parse_bid_request
from geofence.presence.base import DeviceHasher, PresenceStore
from geofence.presence.memory import MemoryStore
from geofence.presence.url import open_store, secret_bytes
from geofence.reasons import Reason
from geofence.zoneset import ZoneSet

log = logging.getLogger("geofence")

MAX_PENDING = 100_000  # presence records held through a store outage
MAX_BATCH = 50_000_000  # longer "batches" are one invalid request (a lying __len__, say)
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
    ) -> Engine:
        """Load zone files (and the folder's policy.toml); raise ZoneFileError/PolicyError."""
        return cls(ZoneSet.from_paths(*paths), presence, presence_secret, audit)

    @classmethod
    def load(
        cls,
        path: str | Path,
        presence: str | PresenceStore | None = None,
        presence_secret: bytes | str | None = None,
        audit: AuditLog | None = None,
    ) -> Engine:
        """Open a compiled zone set (`geofence compile -o`); raise CompiledFileError if bad."""
        return cls(compiled.load(path), presence, presence_secret, audit)

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

        def decide() -> Decision:
            decision = self._single(zs, lat, lon, accuracy_m, device_id, at, source)
            if decision is None:
                decision = self._batch(
                    zs, [lat], [lon], [accuracy_m], [device_id], [at], [source], record=True
                ).decision(0)
            return decision

        return self._guarded(zs, "check_location", decide, device_id, at)

    def _guarded(
        self, zs: ZoneSet, where: str, decide: Callable[[], Decision], device_id: Any, at: Any
    ) -> Decision:
        """Run one decision: an exception inside becomes internal_error; then audit it."""
        try:
            decision = decide()
        except Exception:
            log.exception("internal error in %s", where)
            decision = Decision(False, Reason.INTERNAL_ERROR, zs.version, detail="internal error")
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
            when_or_none = _finite(at) if type(at) in _NUMBER else None
            if when_or_none is None:
                return None
            when = when_or_none
        if device_id is None:
            if rules.no_device_id == "reject":
                return None
        elif (
            type(device_id) is not str
            or not device_id.strip()
            or len(device_id) > 256
            or not _encodable(device_id)
        ):
            return None
        loc = zs.index.locate(
            np.array([float(lon)]), np.array([float(lat)]), np.array([acc]), np.array([when])
        )
        if loc.kind[0] != KIND_CLEAR:
            if device_id is not None:
                return None
            z = int(loc.zone[0])
            reason = Reason.INSIDE_ZONE if loc.kind[0] == KIND_INSIDE else Reason.NEAR_ZONE
            return Decision(
                False, reason, zs.version, zs.ids[z], Category.from_code(int(zs.category[z]))
            )
        if device_id is not None:
            # Clear of every zone by more than the accuracy: no presence to record, only history.
            try:
                self._flush_pending()
                history = self._store.latest(self._hasher.key(device_id))
            except PresenceUnavailable:
                self._warn("presence store unavailable: failing closed")
                return Decision(False, Reason.STATE_UNAVAILABLE, zs.version)
            end, cat = _block_end(history, zs.lookback_s)
            if when < end:
                return Decision(
                    False,
                    Reason.RECENTLY_INSIDE,
                    zs.version,
                    category=Category.from_code(cat),
                    until=end,
                )
        return _ALLOWED.get(zs.version) or _allowed(zs.version)

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
        at = now - bid.fix_age_s
        device = None if bid.lmt else bid.device_id
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
            d = self._beacon(zs, sighting.beacon_id, device, now)
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
        if device_id is not None and not (isinstance(device_id, str) and _encodable(device_id)):
            return Decision(False, Reason.INVALID_REQUEST, zs.version, detail="bad device id")
        return self._beacon(zs, beacon_id, device_id, float(when[0]))

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

    def _beacon(self, zs: ZoneSet, beacon_id: Any, device_id: str | None, at: float) -> Decision:
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
            return Decision(True, Reason.ALLOWED, zs.version)
        try:
            self._flush_pending()
            history = self._store.latest(self._hasher.key(device_id))
        except PresenceUnavailable:
            return Decision(
                False, Reason.STATE_UNAVAILABLE, zs.version, detail="presence store unavailable"
            )
        end, cat = _block_end(history, zs.lookback_s)
        if at < end:
            return Decision(
                False,
                Reason.RECENTLY_INSIDE,
                zs.version,
                category=Category.from_code(cat),
                until=end,
            )
        return Decision(True, Reason.ALLOWED, zs.version)

    def _record(self, zs: ZoneSet, device_id: str | None, zones: list[int], at: float) -> None:
        """Record presence of one device in the given zones (best effort; logged on failure)."""
        if not device_id or not zones:
            return
        cats = zs.category[np.asarray(zones)].astype(np.uint8)
        self._write_presence(
            [self._hasher.key(device_id)] * len(zones),
            cats,
            np.full(len(zones), at),
            np.full(len(zones), at + zs.policy.max_lookback_s),
        )

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
        keys: list[bytes],
        cats: npt.NDArray[np.uint8],
        times: F64,
        expires: F64,
    ) -> None:
        """Record presence; while the store is down, keep the records to write when it is back.

        Losing them would fail open: a device seen inside a zone during an outage would be
        allowed again, before its lookback ends, as soon as the store recovers.
        """
        with self._pending_lock:
            self._pending.extend(
                zip(keys, cats.tolist(), times.tolist(), expires.tolist(), strict=True)
            )
        self._flush_pending()

    def _flush_pending(self) -> None:
        """Write presence records held back by an outage; they stay held if it goes on."""
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
        rules = zs.policy.requests
        n = _guess_len(lat)
        lat_a, bad = _floats(lat, n)
        lon_a, bad_lon = _floats(lon, n)
        acc_a, bad_acc = _floats(accuracy_m, n, missing=np.nan)
        now = self._clock()
        at_a, bad_at = _floats(at, n, missing=now)
        bad |= bad_lon | bad_acc | bad_at
        bad |= ~(np.abs(lat_a) <= 90.0) | ~(np.abs(lon_a) <= 180.0) | ~np.isfinite(at_a)
        given_acc = ~_missing_mask(accuracy_m, n)
        bad |= given_acc & ~((acc_a >= 0.0) & np.isfinite(acc_a))
        src, bad_src = _sources(source, n)
        bad |= bad_src
        ids, bad_ids = _device_ids(device_ids, n)
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
        no_id = np.array([i is None for i in ids], dtype=bool) if n else np.zeros(0, bool)
        if rules.no_device_id == "reject":
            bad |= no_id
        imprecise &= ~bad
        reason[bad] = _R[Reason.INVALID_REQUEST]
        reason[imprecise] = _R[Reason.IMPRECISE_LOCATION]

        ok = np.flatnonzero(~bad & ~imprecise)
        if ok.size:
            loc = zs.index.locate(
                lon_a[ok],
                lat_a[ok],
                acc[ok],
                at_a[ok],
                presence_center_only=zs.policy.presence.rule == "center_inside",
                need_presence=~no_id[ok],
            )
            hit = loc.kind != KIND_CLEAR
            hz = loc.zone[hit]
            reason[ok[hit]] = np.where(
                loc.kind[hit] == KIND_INSIDE, _R[Reason.INSIDE_ZONE], _R[Reason.NEAR_ZONE]
            )
            zone[ok[hit]] = hz
            category[ok[hit]] = zs.category[hz]
            has_id = ok[~no_id[ok]]
            if has_id.size:
                self._history(
                    zs,
                    ids,
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

        allowed = reason == _R[Reason.ALLOWED]
        return BatchDecision(allowed, reason, zone, category, until, zs.version, zs.ids)

    def _history(
        self,
        zs: ZoneSet,
        ids: list[str | None],
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
        """Apply and update the presence memory for requests that carry a device id."""
        # Each distinct device is hashed once (a batch often holds a device many times).
        id_list = [ids[i] or "" for i in has_id.tolist()]
        distinct = list(dict.fromkeys(id_list))
        key_by_id = dict(zip(distinct, self._hasher.keys(distinct), strict=True))
        keys = [key_by_id[d] for d in id_list]
        distinct_keys = [key_by_id[d] for d in distinct]
        key_of = dict(zip(has_id.tolist(), keys, strict=True))
        # Presence seen in this batch: (request, category, time, end of its lookback).
        pres_req = ok[present_point]
        with_id = ~no_id[pres_req]
        pres_req, pres_zone = pres_req[with_id], present_zone[with_id]
        pres_cat = zs.category[pres_zone]
        pres_t = at[pres_req]
        pres_end = pres_t + zs.lookback_s[pres_cat]
        try:
            self._flush_pending()
            history = self._store.latest_many(distinct_keys)
        except PresenceUnavailable:
            self._warn(f"presence store unavailable: failing closed for {len(has_id)} requests")
            undecided = has_id[reason[has_id] == _R[Reason.ALLOWED]]
            reason[undecided] = _R[Reason.STATE_UNAVAILABLE]
            history = None
        if history is not None:
            # Only devices with a history, or with presence in this batch, can be blocked.
            by_key = {k: h for k, h in zip(distinct_keys, history, strict=True) if h}
            # Presence recorded in this batch counts for the same device's requests at or after it.
            batch_events: dict[bytes, list[tuple[float, float, int]]] = {}
            for r, c, t, e in zip(
                pres_req.tolist(),
                pres_cat.tolist(),
                pres_t.tolist(),
                pres_end.tolist(),
                strict=True,
            ):
                batch_events.setdefault(key_of[r], []).append((t, e, c))
            lookback = zs.lookback_s
            at_of = at.tolist()
            for i, key in zip(has_id.tolist(), keys, strict=True):
                if key not in by_key and key not in batch_events:
                    continue
                best_end, best_cat = _block_end(by_key.get(key, {}), lookback)
                for t, end, c in batch_events.get(key, ()):
                    if t <= at_of[i] and end > best_end:
                        best_end, best_cat = end, c
                if at_of[i] < best_end and reason[i] == _R[Reason.ALLOWED]:
                    reason[i] = _R[Reason.RECENTLY_INSIDE]
                    category[i] = best_cat
                    until[i] = best_end
        if record and len(pres_req):
            self._write_presence(
                [key_of[r] for r in pres_req.tolist()],
                pres_cat.astype(np.uint8),
                pres_t.astype(np.float64),
                # Kept until the longest lookback of any category ends, so a policy that
                # lengthens one category's lookback still finds the record.
                pres_t + zs.policy.max_lookback_s,
            )


_NUMBER = (float, int, np.float64)
_PLAIN_SOURCES = (None, "gps", "user", "unknown")
_ALLOWED: dict[str, Decision] = {}


def _allowed(version: str) -> Decision:
    """The (immutable) allowed decision of a zone-set version, made once."""
    decision = Decision(True, Reason.ALLOWED, version)
    if len(_ALLOWED) > 64:
        _ALLOWED.clear()
    _ALLOWED[version] = decision
    return decision


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
    if type(device_id) is str and device_id.strip() and len(device_id) <= 256:
        return hasher.key(device_id) if _encodable(device_id) else None
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
    if values is None:
        return np.ones(n, dtype=bool)
    if isinstance(values, list | tuple) and len(values) == n:
        return np.array([v is None for v in values], dtype=bool)
    return np.zeros(n, dtype=bool)


def _floats(values: Any, n: int, missing: float = np.nan) -> tuple[F64, npt.NDArray[np.bool_]]:
    """Coerce to a float array of length n, flagging wrong types, shapes and bools."""
    bad = np.zeros(n, dtype=bool)
    if values is None:
        return np.full(n, missing, dtype=np.float64), bad
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
        if v is None:
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
    if source is None or isinstance(source, str):
        values: Any = [source] * n
    elif isinstance(source, np.ndarray | list | tuple) and len(source) == n:
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


def _device_ids(device_ids: Any, n: int) -> tuple[list[str | None], npt.NDArray[np.bool_]]:
    bad = np.zeros(n, dtype=bool)
    if device_ids is None:
        return [None] * n, bad
    if isinstance(device_ids, str):
        device_ids = [device_ids] * n if n == 1 else None
    if not isinstance(device_ids, np.ndarray | list | tuple) or len(device_ids) != n:
        return [None] * n, np.ones(n, dtype=bool)
    out: list[str | None] = []
    for i, d in enumerate(device_ids):
        if d is None or (isinstance(d, str) and not d.strip()):
            out.append(None)
        elif isinstance(d, str) and len(d) <= 256 and _encodable(d):
            out.append(d)
        else:
            out.append(None)
            bad[i] = True
    return out, bad


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

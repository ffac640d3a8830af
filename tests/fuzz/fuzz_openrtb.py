"""Coverage-guided fuzzing of the engine with atheris (libFuzzer), for the extended profile.

Each input is either raw bytes handed to `check_openrtb` (as bytes, text or parsed JSON), or a
script of values decoded with FuzzedDataProvider and handed to `check_location`, `check_many` and
`check_beacon`. The oracle is the contract: nothing raises, every answer is a decision, and a
malformed request (not JSON, not an object, a bad coordinate, a time more than the allowed clock
skew in the future or older than the policy's longest lookback, a `lastfix` older than that
lookback) is never allowed.

    .venv/bin/pip install -e '.[dev,fuzz]'    # atheris is the `fuzz` extra
    .venv/bin/python tests/fuzz/fuzz_openrtb.py -atheris_runs=1000000 [corpus_dir]

It prints the number of cases run and the reasons seen when it ends; a failure stops it with the
crashing input written to crash-<sha1> (replay: `.venv/bin/python tests/fuzz/fuzz_openrtb.py
crash-...`).
"""

from __future__ import annotations

import atexit
import inspect
import json
import logging
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import atheris
import numpy as np

import geofence.beacons
import geofence.decision
import geofence.engine
import geofence.openrtb
from geofence import Engine, Reason
from geofence.decision import BatchDecision, Decision
from geofence.engine import MAX_CLOCK_SKEW_S


def _instrument(*modules: Any) -> int:
    """Coverage feedback from the modules that parse and coerce input.

    Functions are instrumented in place after import (`instrument_imports` would come too late:
    importing geofence imports them all, and numba's kernels must keep their bytecode).
    """
    count = 0
    for module in modules:
        for value in vars(module).values():
            targets = [value]
            if isinstance(value, type) and value.__module__ == module.__name__:
                targets = list(vars(value).values())
            for target in targets:
                f = getattr(target, "__func__", target)
                if inspect.isfunction(f) and f.__module__ == module.__name__:
                    atheris.instrument_func(f)
                    count += 1
    return count


INSTRUMENTED = _instrument(geofence.engine, geofence.openrtb, geofence.beacons, geofence.decision)

REPO = Path(__file__).resolve().parents[2]
logging.disable(logging.CRITICAL)  # internal_error is logged; the oracle checks it instead
ENGINE = Engine.from_paths(REPO / "zones")
MAX_LOOKBACK_S = ENGINE.zone_set.policy.max_lookback_s
SEEN: Counter[str] = Counter()
CASES = Counter[str]()

ST_PAULS = (51.5138028, -0.0983361)


def _check(d: Any) -> Decision:
    if not isinstance(d, Decision) or not isinstance(d.reason, Reason):
        raise AssertionError(f"not a decision: {d!r}")
    SEEN[d.reason.value] += 1
    return d


def _value(fdp: atheris.FuzzedDataProvider) -> Any:
    """One arbitrary scalar-ish value: numbers of every kind, strings, containers, None."""
    kind = fdp.ConsumeIntInRange(0, 11)
    if kind == 0:
        return fdp.ConsumeFloat()  # includes NaN, infinities, huge
    if kind == 1:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 200))  # up to huge ints
    if kind == 2:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 16))
    if kind == 3:
        return None
    if kind == 4:
        return fdp.ConsumeBool()
    if kind == 5:
        return fdp.ConsumeFloatInRange(-90.0, 90.0)
    if kind == 6:
        return ST_PAULS[fdp.ConsumeIntInRange(0, 1)] + fdp.ConsumeFloatInRange(-0.01, 0.01)
    if kind == 7:
        return [fdp.ConsumeFloat() for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 8:
        return np.float32(fdp.ConsumeFloat())
    if kind == 9:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
    if kind == 10:
        d: dict[str, Any] = {}
        d["self"] = d
        return d
    return complex(fdp.ConsumeFloat(), fdp.ConsumeFloat())


def _array(fdp: atheris.FuzzedDataProvider, n: int) -> Any:
    kind = fdp.ConsumeIntInRange(0, 7)
    m = n if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 8)
    values = [fdp.ConsumeFloat() for _ in range(m)]
    if kind == 0:
        return np.array(values, dtype=np.float64)
    if kind == 1:
        return np.array(values, dtype=np.float32)
    if kind == 2:
        return np.array(values, dtype=object)
    if kind == 3:
        return np.array([v > 0 for v in values], dtype=bool)
    if kind == 4:
        return np.array(values, dtype=complex)
    if kind == 5:
        return np.zeros((m, 2))
    if kind == 6:
        return [_value(fdp) for _ in range(m)]
    return _value(fdp)


def _too_late(at: Any) -> bool:
    """A number after the clock plus the allowed skew (read after the engine read its clock, so
    a time the engine may accept is never called too late)."""
    return _number_ok(at, math.inf) and float(at) > time.time() + MAX_CLOCK_SKEW_S


def _too_early(at: Any, before: float) -> bool:
    """A number older than the clock minus the longest lookback (`before` is read before the
    engine reads its clock, so a time the engine may accept is never called too early)."""
    return _number_ok(at, math.inf) and float(at) < before - MAX_LOOKBACK_S


def _number_ok(v: Any, limit: float) -> bool:
    """A real number (Python or NumPy, not a bool), finite, at most `limit` in size."""
    if isinstance(v, bool | np.bool_ | np.timedelta64):
        return False
    if not isinstance(v, int | float | np.integer | np.floating):
        return False
    try:
        return math.isfinite(float(v)) and abs(float(v)) <= limit
    except (OverflowError, TypeError):
        return False


@atheris.instrument_func
def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 4)
    if target == 0:  # raw bytes as a bid request, in each transport
        raw = fdp.ConsumeBytes(len(data))
        CASES["check_openrtb"] += 1
        d = _check(ENGINE.check_openrtb(raw))
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):
            parsed = None
            if d.allowed:
                raise AssertionError(f"non-JSON bid request allowed: {raw[:200]!r}") from None
        if not isinstance(parsed, dict) and d.allowed:
            raise AssertionError(f"non-object bid request allowed: {raw[:200]!r}")
        if parsed is not None:
            CASES["check_openrtb"] += 1
            again = _check(ENGINE.check_openrtb(parsed))
            if again.allowed and not d.allowed and d.reason is not Reason.INVALID_REQUEST:
                raise AssertionError("dict and bytes forms disagree")
    elif target == 1:  # a structured bid request with arbitrary values where numbers belong
        geo = {"lat": _value(fdp), "lon": _value(fdp), "accuracy": _value(fdp)}
        if fdp.ConsumeBool():
            geo["lastfix"] = _value(fdp)
        req = {"id": "x", "device": {"geo": geo, "ifa": _value(fdp), "lmt": _value(fdp)}}
        CASES["check_openrtb"] += 1
        d = _check(ENGINE.check_openrtb(req))
        if d.allowed and not (_number_ok(geo["lat"], 90) and _number_ok(geo["lon"], 180)):
            raise AssertionError(f"malformed location allowed: {req!r}")
        # (a second over the lookback: the engine's now - lastfix rounds)
        lastfix = geo.get("lastfix")
        if d.allowed and _number_ok(lastfix, math.inf) and float(lastfix) > MAX_LOOKBACK_S + 1:
            raise AssertionError(f"a fix older than the longest lookback allowed: {req!r}")
    elif target == 2:
        lat, lon, acc, at = (_value(fdp) for _ in range(4))
        device = _value(fdp) if fdp.ConsumeBool() else None
        CASES["check_location"] += 1
        before = time.time()
        d = _check(ENGINE.check_location(lat=lat, lon=lon, accuracy_m=acc, device_id=device, at=at))
        if d.allowed and not (_number_ok(lat, 90) and _number_ok(lon, 180)):
            raise AssertionError(f"malformed location allowed: {lat!r}, {lon!r}")
        if d.allowed and acc is not None and not (_number_ok(acc, 1e300) and acc >= 0):
            raise AssertionError(f"malformed accuracy allowed: {acc!r}")
        if d.allowed and _too_late(at):
            raise AssertionError(f"a time from the future allowed: {at!r}")
        if d.allowed and _too_early(at, before):
            raise AssertionError(f"a time older than the longest lookback allowed: {at!r}")
    elif target == 3:
        n = fdp.ConsumeIntInRange(0, 8)
        lat, lon, acc = _array(fdp, n), _array(fdp, n), _array(fdp, n)
        CASES["check_many"] += 1
        b = ENGINE.check_many(lat, lon, acc)
        if not isinstance(b, BatchDecision):
            raise AssertionError("not a batch decision")
        for i in np.flatnonzero(b.allowed):
            la = lat[i] if isinstance(lat, np.ndarray | list) and len(lat) > i else lat
            lo = lon[i] if isinstance(lon, np.ndarray | list) and len(lon) > i else lon
            if not _number_ok(la, 90):
                raise AssertionError(f"malformed batch element allowed: {la!r}")
            if not _number_ok(lo, 180):
                raise AssertionError(f"malformed batch element allowed: {lo!r}")
    else:
        beacon = (
            fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 48)) if fdp.ConsumeBool() else _value(fdp)
        )
        CASES["check_beacon"] += 1
        device, at = _value(fdp), _value(fdp)  # drawn in the order they always were
        before = time.time()
        d = _check(ENGINE.check_beacon(beacon, device_id=device, at=at, rssi=_value(fdp)))
        if d.allowed and not isinstance(beacon, str):
            raise AssertionError(f"non-string beacon id allowed: {beacon!r}")
        if d.allowed and _too_late(at):
            raise AssertionError(f"a beacon sighting from the future allowed: {at!r}")
        if d.allowed and _too_early(at, before):
            raise AssertionError(f"a beacon sighting before the lookback allowed: {at!r}")


def _report() -> None:
    total = sum(CASES.values())
    print(f"\natheris: {total} cases {dict(CASES)}; reasons {dict(SEEN)}", file=sys.stderr)


if __name__ == "__main__":
    atexit.register(_report)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()

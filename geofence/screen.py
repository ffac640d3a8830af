"""The compiled passes of a batch around the index: its requests' checks before, its answers after.

Why: as NumPy, the checks (coordinates, accuracy, time, the policy's accuracy rules) and the
answers (reason, zone, category) were some thirty passes over the batch, 30-40 ns a point: a
sixth of a batch's time at 50,000 zones, a quarter at 1,000. Here each is one pass. They serve
the usual batch (numeric arrays or numbers, an accuracy for every request, one source, no ids or
only valid ones: `Engine._batch` says when); `Engine._batch`'s NumPy code serves every other and
stays the reference the tests compare these with.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from geofence.decision import NO_CATEGORY
from geofence.index import KIND_CLEAR, KIND_INSIDE
from geofence.reasons import Reason

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]
U8 = npt.NDArray[np.uint8]
IP = npt.NDArray[np.intp]

_ALLOWED = np.uint8(Reason.ALLOWED.code)
_INVALID = np.uint8(Reason.INVALID_REQUEST.code)
_IMPRECISE = np.uint8(Reason.IMPRECISE_LOCATION.code)
_INSIDE = np.uint8(Reason.INSIDE_ZONE.code)
_NEAR = np.uint8(Reason.NEAR_ZONE.code)
_NO_CATEGORY = np.uint8(NO_CATEGORY)


@numba.njit(cache=True, nogil=True)
def screen(
    lat: F64, lon: F64, acc: F64, at: F64, earliest: float, latest: float, all_invalid: bool,
    max_accuracy_m: float, ip: bool, ip_reject: bool, ip_accuracy_m: float,
    reason: U8, acc_out: F64, zone: I32, category: U8, until: F64,
) -> int:  # fmt: skip
    """Check each request, as `Engine._batch` does; returns how many may go to the index.

    reason gets allowed, invalid_request (a coordinate out of range or not finite, an accuracy
    negative or not finite, a time outside [earliest, latest] or not finite; every request if
    all_invalid) or imprecise_location (an accuracy over max_accuracy_m, or an IP fix the
    policy rejects). acc_out gets the accuracy to judge, an IP fix's widened to ip_accuracy_m.
    zone, category and until get their "nothing" values, for the answers to overwrite.
    """
    n_ok = 0
    for i in range(len(lat)):
        zone[i] = -1
        category[i] = _NO_CATEGORY
        until[i] = np.nan
        a = acc[i]
        t = at[i]
        acc_out[i] = a
        if (
            all_invalid
            or not abs(lat[i]) <= 90.0
            or not abs(lon[i]) <= 180.0
            or not (t >= earliest and t <= latest and np.isfinite(t))
            or not (a >= 0.0 and np.isfinite(a))
        ):
            reason[i] = _INVALID
        elif a > max_accuracy_m or (ip and ip_reject):
            reason[i] = _IMPRECISE
        else:
            reason[i] = _ALLOWED
            if ip:
                acc_out[i] = max(a, ip_accuracy_m)
            n_ok += 1
    return n_ok


@numba.njit(cache=True, nogil=True)
def answer(
    ok: IP, every: bool, kind: I8, located_zone: I32, zone_category: U8, reason: U8,
    zone: I32, category: U8,
) -> None:  # fmt: skip
    """Write the index's answers: request ok[j] (j itself if every) was located as kind[j] in
    located_zone[j]; a clear one keeps its reason."""
    for j in range(len(kind)):
        k = kind[j]
        if k == KIND_CLEAR:
            continue
        i = j if every else ok[j]
        z = located_zone[j]
        reason[i] = _INSIDE if k == KIND_INSIDE else _NEAR
        zone[i] = z
        category[i] = zone_category[z]

"""Why a decision came out the way it did."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """The reason code carried by every decision; every reason but ALLOWED rejects."""

    ALLOWED = "allowed"
    INSIDE_ZONE = "inside_zone"
    NEAR_ZONE = "near_zone"
    RECENTLY_INSIDE = "recently_inside"
    BEACON_IN_ZONE = "beacon_in_zone"
    UNKNOWN_BEACON = "unknown_beacon"
    IMPRECISE_LOCATION = "imprecise_location"
    INVALID_REQUEST = "invalid_request"
    STATE_UNAVAILABLE = "state_unavailable"
    INTERNAL_ERROR = "internal_error"
    # Neither a usable location nor a beacon: not location-triggered. Allowed or rejected as the
    # policy says (`[requests] no_location`); the Decision's `allowed` field tells which.
    NO_LOCATION = "no_location"

    @property
    def code(self) -> int:
        """A small stable integer, as used in the arrays of a BatchDecision."""
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Reason:
        return _BY_CODE[int(code)]


_CODES = {r: i for i, r in enumerate(Reason)}
_BY_CODE = dict(enumerate(Reason))

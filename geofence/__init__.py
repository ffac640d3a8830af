"""geofence: the guard an ad server calls before it serves a location- or beacon-triggered ad.

It answers "may this person be targeted here and now?" and says no whenever the person is inside
or near a protected place, or was inside one recently. Every decision carries its reason, the zone
and category behind it, and the version of the zone set that made it.
"""

from geofence.categories import Category
from geofence.decision import BatchDecision, Decision
from geofence.engine import Engine
from geofence.errors import (
    BeaconRegistryError,
    CompiledFileError,
    GeofenceError,
    PolicyError,
    PresenceConfigError,
    PresenceUnavailable,
    Problem,
    ZoneFileError,
)
from geofence.policy import Policy
from geofence.reasons import Reason
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

__version__ = "0.1.0"

__all__ = [
    "BatchDecision",
    "BeaconRegistryError",
    "Category",
    "CompiledFileError",
    "Decision",
    "Engine",
    "GeofenceError",
    "Policy",
    "PolicyError",
    "PresenceConfigError",
    "PresenceUnavailable",
    "Problem",
    "Reason",
    "Zone",
    "ZoneFileError",
    "ZoneSet",
]

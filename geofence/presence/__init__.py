"""Presence memory: "device D was inside a zone of category C at time T", kept privately.

Stores never see a raw device id: the engine hands them a keyed hash (see `DeviceHasher`). They
keep, per hashed device, the latest presence time per category, and expire it when the longest
lookback ends. Backends are chosen by URL: memory:// (default), sqlite:///path, redis://host:port/db.
"""

from __future__ import annotations

from geofence.presence.base import PresenceStore
from geofence.presence.keyhash import DeviceHasher
from geofence.presence.memory import MemoryStore
from geofence.presence.sqlite import SQLiteStore
from geofence.presence.url import open_store

__all__ = ["DeviceHasher", "MemoryStore", "PresenceStore", "SQLiteStore", "open_store"]

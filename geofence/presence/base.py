"""The contract every presence backend keeps, and the keyed hash of device ids."""

from __future__ import annotations

import hashlib
import hmac
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


class DeviceHasher:
    """HMAC-SHA256 of a device id under a secret: the only form in which a device is stored.

    The secret makes the hash useless to anyone who reads a store without it (a plain SHA-256 of
    an advertising id is reversible by enumerating ids).
    """

    __slots__ = ("_mac",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("presence secret must be at least 16 bytes")
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)

    def key(self, device_id: str) -> bytes:
        """The 32-byte keyed hash of one device id."""
        m = self._mac.copy()
        m.update(device_id.encode("utf-8"))
        return m.digest()

    def keys(self, device_ids: Sequence[str]) -> list[bytes]:
        copy = self._mac.copy
        out = []
        for d in device_ids:
            m = copy()
            m.update(d.encode("utf-8"))
            out.append(m.digest())
        return out


def record_lists(
    keys: Sequence[bytes],
    categories: npt.NDArray[np.uint8],
    times: npt.NDArray[np.float64],
    expires_at: npt.NDArray[np.float64],
) -> tuple[list[int], list[float], list[float]]:
    """`record_many`'s arrays as Python lists (much faster per item than NumPy scalars).

    Raises ValueError when the four inputs differ in length.
    """
    cats = np.asarray(categories).tolist()
    ts = np.asarray(times, dtype=np.float64).tolist()
    exps = np.asarray(expires_at, dtype=np.float64).tolist()
    if not (len(keys) == len(cats) == len(ts) == len(exps)):
        raise ValueError("record_many: keys, categories, times and expires_at differ in length")
    return cats, ts, exps


class PresenceStore(ABC):
    """Where presence records live. Every method may raise `PresenceUnavailable`.

    A record is (key, category code, time T, expires_at). A store keeps only the latest T per
    (key, category) and may drop a record once `expires_at` has passed.
    """

    url: str = ""

    @abstractmethod
    def record_many(
        self,
        keys: Sequence[bytes],
        categories: npt.NDArray[np.uint8],
        times: npt.NDArray[np.float64],
        expires_at: npt.NDArray[np.float64],
    ) -> None:
        """Record presence; arrays are parallel to `keys`. One round trip for remote stores."""

    @abstractmethod
    def latest_many(self, keys: Sequence[bytes]) -> list[dict[int, float]]:
        """For each key, {category code: latest presence time}; {} when nothing is recorded."""

    @abstractmethod
    def forget(self, key: bytes) -> None:
        """Erase everything recorded for one hashed device (a consumer's deletion request)."""

    def record(self, key: bytes, category: int, time: float, expires_at: float) -> None:
        self.record_many(
            [key],
            np.array([category], dtype=np.uint8),
            np.array([time], dtype=np.float64),
            np.array([expires_at], dtype=np.float64),
        )

    def latest(self, key: bytes) -> dict[int, float]:
        return self.latest_many([key])[0]

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing to release
        """Release connections and files."""

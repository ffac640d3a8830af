"""A presence store in Redis: shared by a fleet of ad servers, one round trip per batch.

Layout: one hash per hashed device, `gf:p:<hex key>`, field = category code, value = latest
presence time (Unix seconds, as a decimal string). The hash expires when the longest-lived of its
records does. Every Redis failure becomes `PresenceUnavailable` (decisions that need presence then
fail closed) and the client reconnects by itself once the server answers again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from geofence.errors import PresenceUnavailable
from geofence.presence.base import PresenceStore, record_lists
from geofence.presence.url import redact

logger = logging.getLogger("geofence.presence")

T = TypeVar("T")

DEFAULT_PREFIX = "gf:p:"
DEFAULT_CONNECT_TIMEOUT = 0.2  # seconds
DEFAULT_TIMEOUT = 0.5  # seconds, per operation

# Keeps the maximum time per field, and moves the hash's expiry later but never earlier (a record
# from a short-lookback rule must not cut short the block a long-lookback one started).
# PTTL + TIME rather than EXPIREAT ... GT: GT treats a key without expiry as never expiring, so it
# would never set the first expiry, and it needs Redis 7; this works from Redis 5.
# KEYS[1] = the device hash; ARGV[1] = expiry in Unix milliseconds; ARGV[2..] = category, time.
_RECORD_LUA = """
local k = KEYS[1]
for i = 2, #ARGV, 2 do
  local cur = redis.call('HGET', k, ARGV[i])
  if (not cur) or tonumber(cur) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', k, ARGV[i], ARGV[i + 1])
  end
end
local exp_ms = tonumber(ARGV[1])
local pttl = redis.call('PTTL', k)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if pttl < 0 or now_ms + pttl < exp_ms then
  redis.call('PEXPIREAT', k, exp_ms)
end
return 0
"""


class RedisStore(PresenceStore):
    """Presence in Redis (redis:// or rediss:// URL), with short timeouts and self-recovery.

    `connect_timeout` and `timeout` (seconds) bound how long a call can wait for a dead or hung
    server: presence sits on the ad-request path, so failing closed quickly beats waiting.

    A category's time stays readable until the whole device hash expires (the expiry of the
    device's longest-lived record): the store keeps no per-category expiry, and the engine
    compares times with each rule's lookback anyway.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        """Configure the client; nothing is contacted until the first call."""
        self.url = redact(url)
        self.prefix = prefix.encode("utf-8")
        # One immediate retry, on connection errors only: it turns the first call after a server
        # restart (a pooled socket that is now dead) into a fresh connection, and costs one
        # refused connect when the server is down. The client's default (10 retries with backoff)
        # would hold a request for seconds. Timeouts are not retried: that would double the wait.
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            health_check_interval=0,
        )
        self._script = self._client.register_script(_RECORD_LUA)
        self._state_lock = threading.Lock()
        self._failed = False

    def _key(self, key: bytes) -> bytes:
        return self.prefix + key.hex().encode("ascii")

    # -- the contract --------------------------------------------------------------------------

    def record_many(
        self,
        keys: Sequence[bytes],
        categories: npt.NDArray[np.uint8],
        times: npt.NDArray[np.float64],
        expires_at: npt.NDArray[np.float64],
    ) -> None:
        """Record the batch in one pipelined round trip (one script call per device)."""
        cats, ts, exps = record_lists(keys, categories, times, expires_at)
        now = time.time()
        # Reduce the batch to {device: {category: (max time, max expiry)}} first, so each device
        # is one script call whatever the batch holds.
        devices: dict[bytes, dict[int, tuple[float, float]]] = {}
        for key, cat, t, e in zip(keys, cats, ts, exps, strict=True):
            if e <= now:
                continue  # already expired: writing it would only add a dead field
            records = devices.setdefault(bytes(key), {})
            old = records.get(cat)
            records[cat] = (t, e) if old is None else (max(t, old[0]), max(e, old[1]))
        if not devices:
            return
        calls: list[tuple[bytes, list[Any]]] = []
        for key, records in devices.items():
            exp_ms = math.ceil(max(e for _, e in records.values()) * 1000)
            args: list[Any] = [exp_ms]
            for cat, (t, _) in records.items():
                args += [cat, repr(t)]  # repr: the shortest string that reads back exactly
            calls.append((self._key(key), args))

        def run() -> None:
            pipe = self._client.pipeline(transaction=False)
            for hkey, args in calls:
                pipe.evalsha(self._script.sha, 1, hkey, *args)
            results = pipe.execute(raise_on_error=False)
            if any(isinstance(r, NoScriptError) for r in results):
                # The server lost its script cache (a restart, SCRIPT FLUSH): load it and redo
                # the batch, which is safe since the script only ever keeps maxima.
                self._client.script_load(_RECORD_LUA)
                pipe = self._client.pipeline(transaction=False)
                for hkey, args in calls:
                    pipe.evalsha(self._script.sha, 1, hkey, *args)
                results = pipe.execute(raise_on_error=False)
            for r in results:
                if isinstance(r, Exception):
                    raise r

        self._call(run)

    def latest_many(self, keys: Sequence[bytes]) -> list[dict[int, float]]:
        """For each key, {category code: latest time}, read in one pipelined round trip."""
        if not keys:
            return []

        def run() -> list[dict[int, float]]:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(self._key(bytes(key)))
            return [{int(c): float(t) for c, t in fields.items()} for fields in pipe.execute()]

        return self._call(run)

    def forget(self, key: bytes) -> None:
        """Delete the device's hash."""
        self._call(lambda: self._client.delete(self._key(bytes(key))))

    def close(self) -> None:
        """Close the client's connections; a later call opens new ones."""
        self._client.close()

    # -- failure handling ----------------------------------------------------------------------

    def _call(self, op: Callable[[], T]) -> T:
        """Run `op`; turn any Redis failure into PresenceUnavailable, logging the transitions."""
        try:
            result = op()
        except (RedisError, OSError, ValueError) as exc:
            # ValueError: a field or value that is not ours (int/float parsing); fail closed.
            with self._state_lock:
                first = not self._failed
                self._failed = True
            if first:
                logger.warning("presence store %s unavailable: %s", self.url, exc)
            raise PresenceUnavailable(f"presence store {self.url} unavailable: {exc}") from exc
        if self._failed:
            with self._state_lock:
                recovered, self._failed = self._failed, False
            if recovered:
                logger.info("presence store recovered: %s", self.url)
        return result

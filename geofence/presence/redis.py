"""A presence store in Redis: shared by a fleet of ad servers, one round trip per batch.

Layout: one hash per hashed device, `gf:p:<hex key>`, field = category code, value = latest
presence time (Unix seconds, as a decimal string). The hash expires when the longest-lived of its
records does. Reads and writes each go through a Lua script, one call per chunk of CHUNK devices,
every chunk of a batch pipelined in one round trip. Every Redis failure becomes
`PresenceUnavailable` (decisions that need presence then fail closed) and the client reconnects
by itself once the server answers again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from hashlib import sha1
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

# Keys per script call. A script runs alone on the server, so a chunk bounds how long one call
# holds up other clients (about 1 ms per 1,000 keys); the chunks of a batch still travel in one
# pipelined round trip.
CHUNK = 1000
# The latest expiry a record may ask for, in Unix milliseconds (about the year 287,000): larger
# values are not exact in Lua's doubles. A finite expiry beyond it (an absurd time) is clamped,
# which still keeps the record for longer than any lookback.
MAX_EXPIRY_MS = 2**53

# Reads a chunk of device hashes in one call. redis-py spends about 10 us of Python per HGETALL
# reply; one flat array for the chunk, listing only the devices that exist, costs about 1 us a
# key. KEYS = device hashes. Returns, per device found: position (1-based), field count, then
# field, value, field, value...
_READ_LUA = """
local out = {}
local n = 0
for i = 1, #KEYS do
  local fields = redis.call('HGETALL', KEYS[i])
  if #fields > 0 then
    out[n + 1] = i
    out[n + 2] = #fields / 2
    n = n + 2
    for j = 1, #fields do
      out[n + j] = fields[j]
    end
    n = n + #fields
  end
end
return out
"""

# Writes a chunk of device hashes in one call. Per field, keeps the maximum time; per hash, moves
# the expiry later but never earlier (a record from a short-lookback rule must not cut short the
# block a long-lookback one started).
# PTTL + TIME rather than EXPIREAT ... GT: GT treats a key without expiry as never expiring, so it
# would never set the first expiry, and it needs Redis 7; this works from Redis 5.
# KEYS = device hashes; ARGV, per key in order: expiry (Unix ms, an integer string, passed on to
# PEXPIREAT as it is), the number of records n, then n pairs (category, time).
_WRITE_LUA = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local a = 1
for i = 1, #KEYS do
  local k = KEYS[i]
  local exp_ms = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for j = 1, n do
    local cur = redis.call('HGET', k, ARGV[a])
    if (not cur) or tonumber(cur) < tonumber(ARGV[a + 1]) then
      redis.call('HSET', k, ARGV[a], ARGV[a + 1])
    end
    a = a + 2
  end
  local pttl = redis.call('PTTL', k)
  if pttl < 0 or now_ms + pttl < tonumber(exp_ms) then
    redis.call('PEXPIREAT', k, exp_ms)
  end
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
        # Script hashes, computed here; the scripts are loaded on first use, and again whenever
        # the server has lost them (NOSCRIPT after a restart or SCRIPT FLUSH).
        self._read_sha = sha1(_READ_LUA.encode(), usedforsecurity=False).hexdigest()
        self._write_sha = sha1(_WRITE_LUA.encode(), usedforsecurity=False).hexdigest()
        self._state_lock = threading.Lock()
        self._failed = False

    def _names(self, keys: Sequence[bytes]) -> list[bytes]:
        """The Redis key of each hashed device: prefix + hex (the layout existing stores use)."""
        prefix = self.prefix
        return [prefix + bytes(k).hex().encode("ascii") for k in keys]

    # -- the contract --------------------------------------------------------------------------

    def record_many(
        self,
        keys: Sequence[bytes],
        categories: npt.NDArray[np.uint8],
        times: npt.NDArray[np.float64],
        expires_at: npt.NDArray[np.float64],
    ) -> None:
        """Record the batch in one pipelined round trip (one script call per chunk of devices).

        Raises ValueError, writing nothing, for a time or expiry that is not a finite number
        (see `record_lists`); a finite expiry past MAX_EXPIRY_MS is clamped to it.
        """
        cats, ts, exps = record_lists(keys, categories, times, expires_at)
        now = time.time()
        # Reduce the batch to {device: {category: (max time, max expiry)}} first, so each device
        # is written once whatever the batch holds.
        devices: dict[bytes, dict[int, tuple[float, float]]] = {}
        for key, cat, t, e in zip(keys, cats, ts, exps, strict=True):
            if e <= now:
                continue  # already expired: writing it would only add a dead field
            records = devices.setdefault(bytes(key), {})
            old = records.get(cat)
            records[cat] = (t, e) if old is None else (max(t, old[0]), max(e, old[1]))
        if not devices:
            return
        names = self._names(list(devices))
        groups = list(devices.values())
        calls: list[list[Any]] = []
        for lo in range(0, len(names), CHUNK):
            args: list[Any] = []
            for records in groups[lo : lo + CHUNK]:
                exp_ms = min(math.ceil(max(e for _, e in records.values()) * 1000), MAX_EXPIRY_MS)
                args += [exp_ms, len(records)]
                for cat, (t, _) in records.items():
                    args += [cat, repr(t)]  # repr: the shortest string that reads back exactly
            part = names[lo : lo + CHUNK]
            calls.append([len(part), *part, *args])
        self._call(lambda: self._scripts(self._write_sha, calls))

    def latest_many(self, keys: Sequence[bytes]) -> list[dict[int, float]]:
        """For each key, {category code: latest time}, read in one pipelined round trip."""
        found = self.latest_found(keys)
        return [found.get(i, {}) for i in range(len(keys))]

    def latest_found(self, keys: Sequence[bytes]) -> dict[int, dict[int, float]]:
        """{position: {category code: latest time}} for the keys that exist; one round trip."""
        if not keys:
            return {}
        names = self._names(keys)
        calls = [[len(part), *part] for part in _chunks(names)]

        def run() -> dict[int, dict[int, float]]:
            out: dict[int, dict[int, float]] = {}
            replies = self._scripts(self._read_sha, calls)
            for base, flat in zip(range(0, len(names), CHUNK), replies, strict=True):
                pos, end = 0, len(flat)
                while pos < end:
                    i, n = flat[pos], flat[pos + 1]
                    pos += 2
                    # int()/float() raise ValueError on a field or value that is not ours:
                    # _call turns that into PresenceUnavailable (fail closed).
                    out[base + i - 1] = {
                        int(flat[p]): float(flat[p + 1]) for p in range(pos, pos + 2 * n, 2)
                    }
                    pos += 2 * n
            return out

        return self._call(run)

    def forget(self, key: bytes) -> None:
        """Delete the device's hash."""
        self._call(lambda: self._client.delete(self._key(bytes(key))))

    def close(self) -> None:
        """Close the client's connections; a later call opens new ones."""
        self._client.close()

    def _key(self, key: bytes) -> bytes:
        return self.prefix + key.hex().encode("ascii")

    def _scripts(self, sha: str, calls: list[list[Any]]) -> list[Any]:
        """EVALSHA `sha` once per argument list, all pipelined in one round trip; the replies.

        After NOSCRIPT (the server lost its script cache: a restart, SCRIPT FLUSH, or the first
        call), both scripts are loaded and the calls made again. That is safe: reads change
        nothing, and writes only ever keep maxima.
        """
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for args in calls:
                pipe.execute_command("EVALSHA", sha, *args)
            results = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                load = self._client.pipeline(transaction=False)
                load.script_load(_READ_LUA)
                load.script_load(_WRITE_LUA)
                load.execute()
                continue
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return results
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

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


def _chunks(items: list[bytes]) -> list[list[bytes]]:
    """`items` in runs of CHUNK: one script call each, so no call holds the server for long."""
    return [items[lo : lo + CHUNK] for lo in range(0, len(items), CHUNK)]

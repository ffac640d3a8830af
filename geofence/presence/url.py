"""Choose and open a presence store from a URL, with the secret that hashes device ids."""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from geofence.errors import PresenceConfigError
from geofence.presence.base import PresenceStore
from geofence.presence.keyhash import DeviceHasher
from geofence.presence.memory import DEFAULT_MAX_DEVICES, MemoryStore
from geofence.presence.sqlite import SQLiteStore, path_from_url

URL_ENV = "GEOFENCE_PRESENCE_URL"
SECRET_ENV = "GEOFENCE_PRESENCE_SECRET"
DEFAULT_URL = "memory://"
MIN_SECRET_BYTES = 16

SCHEMES = ("memory", "sqlite", "redis", "rediss")
_VALID = (
    "memory://, sqlite:////absolute/path.db (or sqlite:///relative.db), "
    "redis://host:port/db (rediss:// for TLS)"
)


def open_store(
    url: str | None = None, secret: bytes | str | None = None
) -> tuple[PresenceStore, DeviceHasher]:
    """Open the presence store named by `url` and the hasher for its secret.

    url: the argument, else $GEOFENCE_PRESENCE_URL, else memory://. Options go in the query
    string: memory://?max_devices=N, sqlite:///x.db?timeout=S,
    redis://h:p/db?connect_timeout=S&timeout=S.

    secret: the argument, else $GEOFENCE_PRESENCE_SECRET (a str is UTF-8 encoded; at least 16
    bytes). Only memory:// may go without one, and then gets a random per-process secret: its
    records die with the process anyway. A durable or shared store needs the same secret after a
    restart and across a fleet, or every device would be a stranger; so it must be given.
    """
    url = url or os.environ.get(URL_ENV) or DEFAULT_URL
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise PresenceConfigError(
            f"unknown presence store URL {redact(url)!r}: valid forms are {_VALID}"
        )
    key = secret_bytes(secret, scheme)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    store = _OPENERS[scheme](url, options)
    return store, DeviceHasher(key)


def secret_bytes(secret: bytes | str | None, scheme: str) -> bytes:
    """The hashing secret: given, else from the environment; random only for memory://."""
    if secret is None:
        secret = os.environ.get(SECRET_ENV) or None
    if secret is None:
        if scheme == "memory":
            return os.urandom(32)
        raise PresenceConfigError(
            f"a {scheme}:// presence store needs a secret: pass one or set ${SECRET_ENV} "
            f"(at least {MIN_SECRET_BYTES} bytes). Every process that shares the store, and the "
            "same process after a restart, must use the same secret, or recorded devices would "
            "no longer be recognised."
        )
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise PresenceConfigError(
            f"the presence secret is {len(key)} bytes; it must be at least {MIN_SECRET_BYTES} "
            "(use e.g. 32 random bytes, hex- or base64-encoded)"
        )
    return key


def redact(url: str) -> str:
    """The URL without its password, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _number(options: dict[str, str], name: str, kind: Callable[[str], float], url: str) -> float:
    try:
        value = kind(options[name])
    except ValueError:
        raise PresenceConfigError(
            f"presence store URL {redact(url)!r}: option {name}={options[name]!r} is not a number"
        ) from None
    if value <= 0:
        raise PresenceConfigError(
            f"presence store URL {redact(url)!r}: option {name} must be positive"
        )
    return value


def _check_options(options: dict[str, str], allowed: tuple[str, ...], url: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise PresenceConfigError(
            f"presence store URL {redact(url)!r}: unknown option(s) {', '.join(unknown)} "
            f"(valid: {valid})"
        )


def _open_memory(url: str, options: dict[str, str]) -> PresenceStore:
    _check_options(options, ("max_devices",), url)
    if urlsplit(url).netloc or urlsplit(url).path not in ("", "/"):
        raise PresenceConfigError(
            f"memory presence URL {url!r} takes no host or path (e.g. memory://?max_devices=N)"
        )
    max_devices = DEFAULT_MAX_DEVICES
    if "max_devices" in options:
        max_devices = int(_number(options, "max_devices", int, url))
    return MemoryStore(max_devices=max_devices)


def _open_sqlite(url: str, options: dict[str, str]) -> PresenceStore:
    _check_options(options, ("timeout",), url)
    path = path_from_url(url)
    if "timeout" in options:
        return SQLiteStore(path, timeout=_number(options, "timeout", float, url))
    return SQLiteStore(path)


def _open_redis(url: str, options: dict[str, str]) -> PresenceStore:
    # Imported here so that memory:// and sqlite:// users do not pay for importing redis-py
    # (about 0.1 s), and because geofence.presence.redis imports `redact` from this module.
    from geofence.presence import redis as r  # noqa: PLC0415

    _check_options(options, ("connect_timeout", "timeout", "prefix"), url)

    def seconds(name: str, default: float) -> float:
        return _number(options, name, float, url) if name in options else default

    return r.RedisStore(
        urlunsplit(urlsplit(url)._replace(query="")),
        connect_timeout=seconds("connect_timeout", r.DEFAULT_CONNECT_TIMEOUT),
        timeout=seconds("timeout", r.DEFAULT_TIMEOUT),
        prefix=options.get("prefix", r.DEFAULT_PREFIX),
    )


_OPENERS: dict[str, Callable[[str, dict[str, str]], PresenceStore]] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
    "redis": _open_redis,
    "rediss": _open_redis,
}

"""Tests for geofence.presence.url: choosing the store and the secret."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from geofence.errors import PresenceConfigError
from geofence.presence import DeviceHasher, MemoryStore, SQLiteStore, open_store
from geofence.presence.redis import RedisStore
from geofence.presence.url import SECRET_ENV, URL_ENV, redact

SECRET = "0123456789abcdef-test-secret"


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without the environment variables, whatever the machine has set."""
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv(SECRET_ENV, raising=False)


def test_default_is_memory_with_a_random_secret() -> None:
    store1, hasher1 = open_store()
    store2, hasher2 = open_store(None, None)
    assert isinstance(store1, MemoryStore) and isinstance(store2, MemoryStore)
    assert store1 is not store2
    assert hasher1.key("ifa-1") != hasher2.key("ifa-1")  # a fresh secret per call/process


def test_url_and_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(URL_ENV, f"sqlite:///{tmp_path}/env.db")
    monkeypatch.setenv(SECRET_ENV, SECRET)
    store, hasher = open_store()
    assert isinstance(store, SQLiteStore) and store.path == f"{tmp_path}/env.db"
    assert hasher.key("ifa-1") == DeviceHasher(SECRET.encode()).key("ifa-1")
    store.close()
    # Arguments win over the environment.
    store, hasher = open_store("memory://", b"another-secret-of-16+bytes")
    assert isinstance(store, MemoryStore)
    assert hasher.key("ifa-1") == DeviceHasher(b"another-secret-of-16+bytes").key("ifa-1")


def test_str_secret_is_utf8() -> None:
    _, from_str = open_store("memory://", "sécret-ünïcode-16+")
    _, from_bytes = open_store("memory://", "sécret-ünïcode-16+".encode())
    assert from_str.key("ifa-1") == from_bytes.key("ifa-1")


@pytest.mark.parametrize("url", ["sqlite:///x.db", "redis://127.0.0.1:1/0"])
def test_durable_stores_require_a_secret(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PresenceConfigError, match=SECRET_ENV) as info:
        open_store(url)
    assert "restart" in str(info.value)
    assert not (tmp_path / "x.db").exists()


def test_short_secret_is_refused() -> None:
    with pytest.raises(PresenceConfigError, match="at least 16"):
        open_store("memory://", "too-short")


def test_unknown_scheme_names_the_valid_ones() -> None:
    with pytest.raises(PresenceConfigError) as info:
        open_store("postgres://db/presence", SECRET)
    for scheme in ("memory://", "sqlite://", "redis://"):
        assert scheme in str(info.value)


def test_memory_options() -> None:
    store, _ = open_store("memory://?max_devices=1000")
    assert isinstance(store, MemoryStore) and store.max_devices == 1000
    for bad in ("memory://?max_devices=lots", "memory://?max_devices=0", "memory://?size=3"):
        with pytest.raises(PresenceConfigError):
            open_store(bad)
    with pytest.raises(PresenceConfigError, match="no host"):
        open_store("memory://somewhere")


def test_sqlite_absolute_and_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, hasher = open_store(f"sqlite:///{tmp_path}/abs.db?timeout=2", SECRET)
    assert isinstance(store, SQLiteStore) and store.timeout == 2.0
    now = time.time()
    store.record(hasher.key("ifa-1"), 1, now, now + 60)
    store.close()
    assert (tmp_path / "abs.db").is_file()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    store, _ = open_store("sqlite:///sub/rel.db", SECRET)
    store.close()
    assert (tmp_path / "sub" / "rel.db").is_file()
    with pytest.raises(PresenceConfigError, match="unknown option"):
        open_store("sqlite:///x.db?journal=off", SECRET)


def test_redis_options_and_no_connection_at_open() -> None:
    url = "redis://127.0.0.1:1/3?connect_timeout=0.1&timeout=0.25&prefix=test:"
    store, _ = open_store(url, SECRET)  # nothing listens on port 1: opening must not connect
    assert isinstance(store, RedisStore)
    kwargs = store._client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == 0.1
    assert kwargs["socket_timeout"] == 0.25
    assert kwargs["db"] == 3
    assert store.prefix == b"test:"
    with pytest.raises(PresenceConfigError, match="unknown option"):
        open_store("redis://127.0.0.1:1/0?socket_keepalive=1", SECRET)


def test_passwords_stay_out_of_messages() -> None:
    assert redact("redis://user:hunter2@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"
    store, _ = open_store("redis://:hunter2@127.0.0.1:1/0", SECRET)
    assert "hunter2" not in store.url
    with pytest.raises(PresenceConfigError) as info:
        open_store("redis://:hunter2@127.0.0.1:1/0?bogus=1", SECRET)
    assert "hunter2" not in str(info.value)

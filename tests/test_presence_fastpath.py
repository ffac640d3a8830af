"""The engine's fast presence paths decide exactly as one request at a time would.

Why: `Engine._history` settles a batch with array work and loops only over devices that have a
history or presence in the batch, and the single path skips the block computation for devices
with no history. These tests compare both against the plainest oracle there is: the same
requests, in time order, one `check_location` each, on a second engine.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence import engine as engine_module
from geofence.engine import Engine
from geofence.presence import MemoryStore
from geofence.presence.blocks import latest_per_pair
from geofence.reasons import Reason
from geofence.zoneset import ZoneSet

SECRET = "0123456789abcdef-fastpath"
DAY = 86_400.0
ZONES = Path(__file__).resolve().parent.parent / "zones"
M_PER_DEG = 111_320.0


@pytest.fixture(scope="module")
def bundled() -> ZoneSet:
    return ZoneSet.from_paths(ZONES)


def requests(zs: ZoneSet, n: int, devices: int, seed: int) -> dict[str, Any]:
    """Pings within 400 m of random zones (inside, near and clear), distinct times, few devices.

    Times are distinct so that "at or after" has one meaning in both orders, and lie within
    the last 20 days, so no record expires by the wall clock while the test runs (the shortest
    lookback is 30 days).
    """
    rng = np.random.default_rng(seed)
    centre = np.array([z.geometry.centroid.coords[0] for z in zs.zones])
    pick = rng.integers(0, len(centre), n)
    lat = centre[pick, 1] + rng.uniform(-400, 400, n) / M_PER_DEG
    lon = centre[pick, 0] + rng.uniform(-400, 400, n) / (M_PER_DEG * np.cos(np.radians(lat)))
    now = time.time()
    at = now - 20 * DAY + np.sort(rng.choice(20 * 86_400_000, n, replace=False)) / 1000.0
    order = rng.permutation(n)  # the batch holds them shuffled: its answer must not care
    ids = np.array([f"ifa-fast-{d}" for d in rng.integers(0, devices, n)], dtype=object)
    acc = rng.choice([5.0, 20.0, 150.0], n)
    return {"lat": lat[order], "lon": lon[order], "acc": acc[order], "ids": ids[order],
            "at": at[order]}  # fmt: skip


def decided(d: Any) -> tuple[Any, ...]:
    return (d.allowed, d.reason, d.zone_id, d.category, d.until)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_decides_as_requests_one_at_a_time_in_time_order(
    bundled: ZoneSet, seed: int, packed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """History from an earlier batch, presence within the batch, several visits per device.

    Both ways of finding a batch's devices: packed ASCII ids (the compiled table), and the
    general path (pandas) that every other batch takes.
    """
    if not packed:
        monkeypatch.setattr(engine_module, "pack_ids", lambda seq, max_len: None)
    batch_engine = Engine(bundled, presence=MemoryStore(), presence_secret=SECRET)
    single_engine = Engine(bundled, presence=MemoryStore(), presence_secret=SECRET)
    earlier = requests(bundled, 300, 40, seed + 100)
    earlier["at"] -= 2 * DAY  # stored history, before every request below
    for e in (batch_engine, single_engine):
        e.observe_many(earlier["ids"], earlier["lat"], earlier["lon"], earlier["acc"],
                       earlier["at"])  # fmt: skip
    r = requests(bundled, 600, 60, seed)
    batch = batch_engine.check_many(r["lat"], r["lon"], r["acc"], r["ids"], r["at"])
    one_by_one: dict[int, Any] = {}
    for i in np.argsort(r["at"]).tolist():
        one_by_one[i] = single_engine.check_location(
            float(r["lat"][i]), float(r["lon"][i]), float(r["acc"][i]), r["ids"][i],
            float(r["at"][i]),
        )  # fmt: skip
    reasons = set()
    for i in range(len(r["at"])):
        assert decided(batch.decision(i)) == decided(one_by_one[i]), f"request {i}"
        reasons.add(one_by_one[i].reason)
    # The comparison means something only if the mix has every kind of answer in it.
    assert {Reason.ALLOWED, Reason.RECENTLY_INSIDE, Reason.INSIDE_ZONE} <= reasons
    store_a, store_b = batch_engine._store, single_engine._store
    assert isinstance(store_a, MemoryStore) and isinstance(store_b, MemoryStore)
    assert store_a.dump() == store_b.dump()  # and both recorded the same presence


def test_devices_without_history_are_never_blocked_and_the_store_is_read_once(
    bundled: ZoneSet,
) -> None:
    """A batch with no history and no presence: one read, no write, every request allowed."""
    calls: list[str] = []

    class Counting(MemoryStore):
        def latest_many(self, keys: Any) -> Any:
            calls.append("read")
            return super().latest_many(keys)

        def record_many(self, *a: Any, **k: Any) -> None:
            calls.append("write")
            super().record_many(*a, **k)

    e = Engine(bundled, presence=Counting(), presence_secret=SECRET)
    n = 50
    b = e.check_many(np.full(n, 10.0), np.full(n, -30.0), 5.0, [f"d{i % 7}" for i in range(n)])
    assert b.reasons() == [Reason.ALLOWED] * n
    assert calls == ["read"]


def test_records_the_store_refuses_are_dropped_not_held(
    bundled: ZoneSet, caplog: pytest.LogCaptureFixture
) -> None:
    """A store's ValueError is not an outage: the records are logged and dropped, the engine
    goes on (holding them would retry, and fail, before every later request)."""

    class Refusing(MemoryStore):
        refuse = True

        def record_many(self, *a: Any, **k: Any) -> None:
            if self.refuse:
                raise ValueError("refused")
            super().record_many(*a, **k)

    store = Refusing()
    e = Engine(bundled, presence=store, presence_secret=SECRET)
    lon, lat = bundled.zones[0].geometry.representative_point().coords[0]
    with caplog.at_level(logging.ERROR, logger="geofence"):
        inside = e.check_location(lat=lat, lon=lon, accuracy_m=5.0, device_id="ifa-r")
    assert inside.reason is Reason.INSIDE_ZONE
    assert any("refused" in rec.getMessage() for rec in caplog.records)
    assert len(e._pending) == 0
    store.refuse = False
    far = e.check_location(lat=10.0, lon=-30.0, accuracy_m=5.0, device_id="ifa-r")
    assert far.reason is Reason.ALLOWED and len(store) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 3), st.sampled_from([0.0, 1.0, 2.5, 7.0])),
        max_size=40,
    )
)
def test_latest_per_pair_keeps_the_last_latest_record_of_each_pair(
    rows: list[tuple[int, int, float]],
) -> None:
    """One index per (device, category): its latest time, the last of equal times, the pairs
    in order of first appearance."""
    dev = np.array([d for d, _, _ in rows], dtype=np.intp)
    cat = np.array([c for _, c, _ in rows], dtype=np.uint8)
    t = np.array([x for _, _, x in rows], dtype=np.float64)
    assert latest_per_pair(dev, cat, t).tolist() == _latest_by_dict(rows)


def _latest_by_dict(rows: list[tuple[int, int, float]]) -> list[int]:
    expected: dict[tuple[int, int], int] = {}
    for i, (d, c, x) in enumerate(rows):
        if (d, c) not in expected or x >= rows[expected[(d, c)]][2]:
            expected[(d, c)] = i
    return list(expected.values())


def test_latest_per_pair_at_a_batch_s_size() -> None:
    """Tens of thousands of presences, most pairs repeated, at a few times: the table probes
    past collisions and grows with the batch, as the dict does."""
    rng = np.random.default_rng(4)
    n = 30_000
    dev = rng.integers(0, 9_000, n).astype(np.intp)
    cat = rng.choice(np.array([0, 3, 16, 255], dtype=np.uint8), n)
    t = rng.choice([5.0, 6.0, 7.0], n)
    rows = list(zip(dev.tolist(), cat.tolist(), t.tolist(), strict=True))
    got = latest_per_pair(dev, cat, t)
    assert got.tolist() == _latest_by_dict(rows)
    assert 10_000 < len(got) < n


def test_a_batch_writes_one_record_per_device_and_category(bundled: ZoneSet) -> None:
    """Repeated visits in one batch reach the store as one record each, the latest."""
    written: list[tuple[bytes, int, float, float]] = []

    class Spying(MemoryStore):
        def record_many(self, keys: Any, cats: Any, times: Any, expires: Any) -> None:
            written.extend(zip(keys, cats.tolist(), times.tolist(), expires.tolist(), strict=True))
            super().record_many(keys, cats, times, expires)

    e = Engine(bundled, presence=Spying(), presence_secret=SECRET)
    r = requests(bundled, 600, 20, 5)
    e.check_many(r["lat"], r["lon"], r["acc"], r["ids"], r["at"])
    pairs = {(k, c) for k, c, _, _ in written}
    assert len(pairs) == len(written) > 10  # and 20 devices made many more presences
    store = e._store
    assert isinstance(store, Spying)
    for key, cat, t, _ in written:
        assert store.dump()[key][cat][0] == t  # the latest time of the pair

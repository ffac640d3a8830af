"""The compiled checks and answers of a batch (screen.py) against the engine's NumPy reference.

`Engine._batch` sends the usual batch (numeric arrays) through `screen`/`answer` and any other
through NumPy; the same values as Python lists take the reference path, so each example
decides one batch both ways, on twin engines (same zones, clock and presence secret).
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import pytest
import shapely
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

import geofence.engine as engine_module
from geofence import BatchDecision, Category, Engine, Reason
from geofence.policy import load_policy_text
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

NOW = 1_800_000_000.0
POLICIES = {
    "default": "",
    "strict": '[requests]\nmax_accuracy_m = 300\nno_device_id = "reject"\n',
    "ip circle": '[requests]\nip_location = "circle"\nip_accuracy_m = 800\n',
}
SECRET = b"s" * 32


def _zone_set(policy: str) -> ZoneSet:
    zones = [
        Zone("clinic", "", Category.REPRODUCTIVE_HEALTH, shapely.Point(-122.33, 47.61), 30.0),
        Zone("church", "", Category.PLACE_OF_WORSHIP, shapely.box(-122.4, 47.6, -122.399, 47.601)),
        Zone(
            "rally", "", Category.ASSEMBLY, shapely.box(-122.50, 47.60, -122.499, 47.601),
            valid_from=NOW - 3600, valid_until=NOW + 3600,
        ),
    ]  # fmt: skip
    return ZoneSet.compile(zones, load_policy_text(policy, "<test>"), "v-screen")


ZONE_SETS = {name: _zone_set(text) for name, text in POLICIES.items()}


def _twins(name: str) -> tuple[Engine, Engine]:
    zs = ZONE_SETS[name]
    clock = FakeClock(NOW)
    make = lambda: Engine(zs, presence="memory://", presence_secret=SECRET, clock=clock)  # noqa: E731
    return make(), make()


def assert_same(a: BatchDecision, b: BatchDecision) -> None:
    np.testing.assert_array_equal(a.reason, b.reason)
    np.testing.assert_array_equal(a.allowed, b.allowed)
    np.testing.assert_array_equal(a.zone_index, b.zone_index)
    np.testing.assert_array_equal(a.category, b.category)
    np.testing.assert_array_equal(a.until, b.until)  # NaN where not blocked, in both
    assert a.zone_set_version == b.zone_set_version


SPECIAL = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e300, -1e300]
lats = st.one_of(
    st.floats(47.59, 47.62),
    st.sampled_from([*SPECIAL, 90.0, -90.0, 90.000001, -90.5]),
    st.floats(allow_nan=True, allow_infinity=True),
)
lons = st.one_of(
    st.floats(-122.51, -122.32),
    st.sampled_from([*SPECIAL, 180.0, -180.0, 180.000001, -181.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
accuracies = st.one_of(
    st.floats(0, 1000),
    st.sampled_from([*SPECIAL, -1.0, -1e-9, 300.0, 300.0000001, 10_000.0, 10_001.0]),
)
# Inside the church, the clinic and the rally (temporary), and near each.
PLACES = [(47.6005, -122.3995), (47.61, -122.33), (47.6005, -122.4995), (47.6055, -122.3995)]
places = st.one_of(st.tuples(lats, lons), st.sampled_from(PLACES))
times = st.one_of(
    st.floats(NOW - 40 * 86_400, NOW + 1200),
    st.sampled_from([NOW, NOW + 600, NOW + 600.5, float("nan"), float("inf"), 0.0]),
)


@st.composite
def batches(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 25))
    rows = draw(st.lists(st.tuples(places, accuracies, times), min_size=n, max_size=n))
    lat, lon, acc, at = (
        np.array(col, dtype=np.float64)
        for col in zip(*[(*where, a, t) for where, a, t in rows], strict=True)
    )
    ids = draw(
        st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
    )
    return {
        "lat": lat,
        "lon": lon,
        "accuracy_m": draw(st.one_of(st.just(acc), accuracies, st.integers(-5, 20_000))),
        "at": draw(st.one_of(st.none(), st.just(at))),
        "source": draw(st.sampled_from([None, "gps", "ip", "user", "unknown", "wifi"])),
        "device_ids": ids,
    }


def _as_lists(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in batch.items()}


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(POLICIES)), batch=batches(), again=st.booleans())
def test_the_compiled_checks_decide_as_the_numpy_reference(
    name: str, batch: dict[str, Any], again: bool
) -> None:
    fast, reference = _twins(name)
    with (
        mock.patch.object(
            engine_module, "_checked_compiled", wraps=engine_module._checked_compiled
        ) as compiled,
        mock.patch.object(
            engine_module, "_checked_numpy", wraps=engine_module._checked_numpy
        ) as numpy_path,
    ):
        for _ in range(2 if again else 1):  # again: presence the first batch recorded applies
            assert_same(fast.check_many(**batch), reference.check_many(**_as_lists(batch)))
    # Each twin took its own path: arrays the compiled one, the lists the reference.
    assert compiled.call_count == numpy_path.call_count == (2 if again else 1)


def test_every_check_rejects_in_both_paths() -> None:
    """One request per check, so a check the compiled pass lost would show as an allow."""
    lat = np.array([47.5, 91.0, 47.5, 47.5, 47.5, 47.5, np.nan])
    lon = np.array([-122.0, -122.0, 181.0, -122.0, -122.0, -122.0, -122.0])
    acc = np.array([20.0, 20.0, 20.0, -1.0, np.inf, 400.0, 20.0])
    at = np.array([NOW, NOW, NOW, NOW, NOW, NOW, NOW])
    for name, last in (("strict", Reason.IMPRECISE_LOCATION), ("default", Reason.ALLOWED)):
        fast, reference = _twins(name)
        ids = ["x"] * len(lat)
        a = fast.check_many(lat, lon, acc, device_ids=ids, at=at)
        assert_same(
            a, reference.check_many(lat.tolist(), lon.tolist(), acc.tolist(), ids, at.tolist())
        )
        invalid = Reason.INVALID_REQUEST
        assert a.reasons() == [Reason.ALLOWED, invalid, invalid, invalid, invalid, last, invalid]
    late = _twins("default")[0].check_many(lat[:1], lon[:1], acc[:1], at=np.array([NOW + 601.0]))
    assert late.reasons() == [Reason.INVALID_REQUEST]


@pytest.mark.parametrize("source", ["ip", "gps"])
def test_the_callers_accuracy_array_is_left_as_it_was(source: str) -> None:
    """An IP fix is judged widened to ip_accuracy_m; the caller's array stays as given."""
    fast, _ = _twins("ip circle")
    acc = np.array([5.0, 20.0])
    d = fast.check_many(
        np.array([47.6075, 47.0]), np.array([-122.3995, -122.0]), acc, source=source
    )
    np.testing.assert_array_equal(acc, [5.0, 20.0])
    # 47.6075 lies ~720 m north of the church: beyond its reach at 5 m, within it at 800 m.
    assert d.reasons()[0] is (Reason.NEAR_ZONE if source == "ip" else Reason.ALLOWED)


@pytest.mark.parametrize(
    "values, numeric",
    [
        (np.zeros(3), True),
        (np.zeros(3, dtype=np.int32), True),
        (20.0, True),
        (20, True),
        (np.float64(3.5), True),
        (True, False),
        (np.zeros(2), False),
        (np.zeros((3, 1)), False),
        (np.ma.masked_array(np.zeros(3)), False),
        (np.array(["1", "2", "3"]), False),
        ([1.0, 2.0, 3.0], False),
        (None, False),
        (2**1001, False),
    ],
)
def test_which_values_the_compiled_checks_take(values: Any, numeric: bool) -> None:
    assert engine_module._numeric(values, 3) is numeric

"""Tests for geofence.openrtb: bid-request parsing, strict validation, and real requests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.errors import GeofenceError
from geofence.openrtb import (
    MAX_BEACONS,
    MAX_BYTES,
    BeaconSighting,
    BidLocation,
    InvalidBidRequest,
    parse_bid_request,
    parse_many,
)


def request(geo: Any = None, **device: Any) -> dict[str, Any]:
    """A minimal request with `device.geo = geo` (omitted when None) and other device fields."""
    dev = dict(device)
    if geo is not None:
        dev["geo"] = geo
    return {"id": "req-1", "imp": [{"id": "1"}], "device": dev}


def rejects(req: Any, message: str) -> None:
    with pytest.raises(InvalidBidRequest) as info:
        parse_bid_request(req)
    assert str(info.value) == message


# --- the happy path ----------------------------------------------------------------------------


def test_full_request_reads_every_field() -> None:
    req = request(
        {"lat": 51.5, "lon": -0.12, "accuracy": 8, "type": 1, "lastfix": 30},
        ifa="6d92078a-8246-4ba4-ae5b-76104861e7dc",
        lmt=0,
        ext={"beacons": [{"id": "f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:42", "rssi": -67}]},
    )
    loc = parse_bid_request(req)
    assert loc == BidLocation(
        lat=51.5,
        lon=-0.12,
        accuracy_m=8.0,
        source="gps",
        fix_age_s=30.0,
        device_id="6d92078a-8246-4ba4-ae5b-76104861e7dc",
        lmt=False,
        beacons=(BeaconSighting("f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:42", -67.0),),
        request_id="req-1",
    )
    assert isinstance(loc.lat, float) and isinstance(loc.accuracy_m, float)


def test_bytes_str_and_dict_give_the_same_result() -> None:
    req = request({"lat": 1, "lon": 2, "type": 2})
    text = json.dumps(req)
    assert parse_bid_request(req) == parse_bid_request(text) == parse_bid_request(text.encode())
    assert parse_bid_request(bytearray(text.encode())) == parse_bid_request(req)


@pytest.mark.parametrize(
    ("kind", "source"),
    [(1, "gps"), (2, "ip"), (3, "user"), (4, "unknown"), (0, "unknown"), (None, "unknown")],
)
def test_location_type_maps_to_source(kind: int | None, source: str) -> None:
    geo: dict[str, Any] = {"lat": 1.0, "lon": 2.0}
    if kind is not None:
        geo["type"] = kind
    assert parse_bid_request(request(geo)).source == source


def test_defaults_when_optional_fields_are_absent() -> None:
    loc = parse_bid_request(request({"lat": 10.0, "lon": 20.0}))
    assert loc.accuracy_m is None
    assert loc.fix_age_s == 0.0
    assert loc.source == "unknown"
    assert loc.device_id is None
    assert loc.lmt is False
    assert loc.beacons == ()


def test_no_device_or_no_geo_or_no_coordinates_gives_no_location() -> None:
    for req in (
        {"id": "a"},
        {"id": "a", "device": {}},
        request({}),
        request({"country": "USA", "accuracy": 5}),
        {"id": "a", "device": None},
        request({"lat": None, "lon": None}),
    ):
        loc = parse_bid_request(req)
        assert (loc.lat, loc.lon) == (None, None), req


def test_user_geo_is_never_used() -> None:
    req = {"id": "a", "device": {"ip": "1.2.3.4"}, "user": {"geo": {"lat": 47.6, "lon": -122.3}}}
    loc = parse_bid_request(req)
    assert (loc.lat, loc.lon) == (None, None)


def test_user_geo_is_not_validated_either() -> None:
    # Not read, so a broken user.geo cannot reject an otherwise good request.
    req = request({"lat": 1.0, "lon": 1.0})
    req["user"] = {"geo": {"lat": "north", "lon": 999}}
    assert parse_bid_request(req).lat == 1.0


def test_boundary_coordinates_are_valid() -> None:
    for lat, lon in ((90, 180), (-90, -180), (0, 0), (-90.0, 180.0)):
        loc = parse_bid_request(request({"lat": lat, "lon": lon}))
        assert (loc.lat, loc.lon) == (float(lat), float(lon))


def test_zero_accuracy_and_lastfix_are_valid() -> None:
    loc = parse_bid_request(request({"lat": 1, "lon": 1, "accuracy": 0, "lastfix": 0}))
    assert (loc.accuracy_m, loc.fix_age_s) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("ifa", "device_id"),
    [
        ("00000000-0000-0000-0000-000000000000", None),
        ("00000000000000000000000000000000", None),
        ("", None),
        ("AA000DFE74168477C70D291f574D344790E0BB11", "AA000DFE74168477C70D291f574D344790E0BB11"),
        ("00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000001"),
    ],
)
def test_device_id_from_ifa(ifa: str, device_id: str | None) -> None:
    assert parse_bid_request(request(ifa=ifa)).device_id == device_id


def test_lmt() -> None:
    assert parse_bid_request(request(lmt=1)).lmt is True
    assert parse_bid_request(request(lmt=0)).lmt is False
    assert parse_bid_request(request()).lmt is False


def test_beacons_without_rssi_and_extra_fields() -> None:
    beacons = [{"id": "edd1ebeac04e5defa017:0123456789ab"}, {"id": "x", "rssi": -80.5, "tx": 1}]
    loc = parse_bid_request(request(ext={"beacons": beacons, "other": "ignored"}))
    assert loc.beacons == (
        BeaconSighting("edd1ebeac04e5defa017:0123456789ab", None),
        BeaconSighting("x", -80.5),
    )


def test_exactly_max_beacons_is_accepted() -> None:
    beacons = [{"id": f"b{i}"} for i in range(MAX_BEACONS)]
    assert len(parse_bid_request(request(ext={"beacons": beacons})).beacons) == MAX_BEACONS


def test_beacons_without_geo() -> None:
    loc = parse_bid_request(request(ext={"beacons": [{"id": "b", "rssi": -50}]}))
    assert (loc.lat, loc.lon) == (None, None)
    assert loc.beacons == (BeaconSighting("b", -50.0),)


def test_beacons_as_a_tuple_in_a_decoded_dict() -> None:
    """A caller passing a dict may build arrays as tuples (as for the top level); JSON never does.

    Before the fix the tuple was refused with "device.ext.beacons is an array, not an array".
    """
    loc = parse_bid_request(request(ext={"beacons": ({"id": "b", "rssi": -50},)}))
    assert loc.beacons == (BeaconSighting("b", -50.0),)
    as_list = parse_bid_request(request(ext={"beacons": [{"id": "b", "rssi": -50}]}))
    assert loc == as_list


def test_duplicate_key_outside_what_is_read_is_ignored() -> None:
    text = '{"id": "a", "imp": [{"id": "1", "id": "2"}], "device": {"geo": {"lat": 1, "lon": 2}}}'
    assert parse_bid_request(text).lat == 1.0


def test_invalid_bid_request_is_a_value_error_and_a_geofence_error() -> None:
    assert issubclass(InvalidBidRequest, ValueError)
    assert issubclass(InvalidBidRequest, GeofenceError)


# --- rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "message"),
    [
        # top level and decoding
        ([], "top level is an array, not an object"),
        ("[1, 2]", "top level is an array, not an object"),
        ("null", "top level is null, not an object"),
        ('"text"', "top level is a string, not an object"),
        ("3", "top level is a number, not an object"),
        ("", "not JSON: Expecting value: line 1 column 1 (char 0)"),
        ('{"device": {"geo": {"lat": NaN, "lon": 0}}}', "not JSON: non-standard constant NaN"),
        (
            '{"device": {"geo": {"lat": Infinity, "lon": 0}}}',
            "not JSON: non-standard constant Infinity",
        ),
        (
            b"\xff\xfe\xfd",
            "not JSON: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        ),
        (
            '{"id": "a"}'.encode("utf-16"),
            "not JSON: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        ),
        ("[" * 100_000 + "]" * 100_000, "not JSON: nested too deeply"),
        (None, "top level is null, not an object"),
        (42, "top level is a number, not an object"),
        ({1, 2}, "request must be JSON bytes, text or a dict, got set"),
        # id
        ({"id": 7}, "id is a number, not a string"),
        # device
        ({"id": "a", "device": []}, "device is an array, not an object"),
        ({"id": "a", "device": "phone"}, "device is a string, not an object"),
        (request("here"), "device.geo is a string, not an object"),
        (request([1.0, 2.0]), "device.geo is an array, not an object"),
        # lat / lon types
        (request({"lat": "51.5", "lon": 0.1}), "device.geo.lat is a string"),
        (request({"lat": 51.5, "lon": "0.1"}), "device.geo.lon is a string"),
        (request({"lat": True, "lon": 0.1}), "device.geo.lat is a boolean"),
        (request({"lat": [51.5], "lon": 0.1}), "device.geo.lat is an array"),
        (request({"lat": {}, "lon": 0.1}), "device.geo.lat is an object"),
        (request({"lat": math.nan, "lon": 0.1}), "device.geo.lat is not a finite number"),
        (request({"lat": 0.1, "lon": math.inf}), "device.geo.lon is not a finite number"),
        ('{"device": {"geo": {"lat": 1e999, "lon": 0}}}', "device.geo.lat is not a finite number"),
        # lat / lon ranges
        (request({"lat": 91.0, "lon": 0.0}), "device.geo.lat 91.0 out of range [-90, 90]"),
        (request({"lat": -90.5, "lon": 0.0}), "device.geo.lat -90.5 out of range [-90, 90]"),
        (request({"lat": 0.0, "lon": 180.01}), "device.geo.lon 180.01 out of range [-180, 180]"),
        (request({"lat": 0.0, "lon": -181}), "device.geo.lon -181.0 out of range [-180, 180]"),
        (
            request({"lat": 10**400, "lon": 0}),
            "device.geo.lat 100000000000000000000000...(401 digits) out of range [-90, 90]",
        ),
        # lat and lon come together
        (request({"lat": 51.5}), "device.geo.lat is given without device.geo.lon"),
        (request({"lon": 0.1}), "device.geo.lon is given without device.geo.lat"),
        (request({"lat": None, "lon": 0.1}), "device.geo.lon is given without device.geo.lat"),
        # accuracy, lastfix, type
        (request({"lat": 1, "lon": 1, "accuracy": -1}), "device.geo.accuracy -1.0 is negative"),
        (request({"lat": 1, "lon": 1, "accuracy": "5"}), "device.geo.accuracy is a string"),
        (
            request({"lat": 1, "lon": 1, "accuracy": math.inf}),
            "device.geo.accuracy is not a finite number",
        ),
        (request({"lat": 1, "lon": 1, "accuracy": 10**400}), "device.geo.accuracy is too large"),
        (request({"accuracy": False}), "device.geo.accuracy is a boolean"),
        (request({"lat": 1, "lon": 1, "lastfix": -5}), "device.geo.lastfix -5.0 is negative"),
        (request({"lat": 1, "lon": 1, "lastfix": "old"}), "device.geo.lastfix is a string"),
        (
            request({"lat": 1, "lon": 1, "lastfix": math.nan}),
            "device.geo.lastfix is not a finite number",
        ),
        (request({"lat": 1, "lon": 1, "type": "1"}), "device.geo.type is a string, not an integer"),
        (request({"lat": 1, "lon": 1, "type": 1.0}), "device.geo.type is a number, not an integer"),
        (
            request({"lat": 1, "lon": 1, "type": True}),
            "device.geo.type is a boolean, not an integer",
        ),
        # ifa, lmt
        (request(ifa=123), "device.ifa is a number, not a string"),
        ('{"device": {"ifa": "ab\\ud800"}}', "device.ifa contains a lone surrogate (\\u escape)"),
        (
            '{"device": {"ext": {"beacons": [{"id": "\\udfff"}]}}}',
            "device.ext.beacons[0].id contains a lone surrogate (\\u escape)",
        ),
        (request(ifa=["a"]), "device.ifa is an array, not a string"),
        (request(lmt=2), "device.lmt is 2, not 0 or 1"),
        (request(lmt="1"), "device.lmt is a string, not an integer"),
        (request(lmt=True), "device.lmt is a boolean, not an integer"),
        # beacons
        (request(ext="beacons"), "device.ext is a string, not an object"),
        (request(ext={"beacons": {"id": "a"}}), "device.ext.beacons is an object, not an array"),
        (request(ext={"beacons": "a,b"}), "device.ext.beacons is a string, not an array"),
        (request(ext={"beacons": ["a"]}), "device.ext.beacons[0] is a string, not an object"),
        (request(ext={"beacons": [{"id": "a"}, {}]}), "device.ext.beacons[1].id is missing"),
        (
            request(ext={"beacons": [{"id": 5}]}),
            "device.ext.beacons[0].id is a number, not a string",
        ),
        (request(ext={"beacons": [{"id": "  "}]}), "device.ext.beacons[0].id is empty"),
        (
            request(ext={"beacons": [{"id": "a", "rssi": "-60"}]}),
            "device.ext.beacons[0].rssi is a string",
        ),
        (
            request(ext={"beacons": [{"id": "a", "rssi": True}]}),
            "device.ext.beacons[0].rssi is a boolean",
        ),
        (
            request(ext={"beacons": [{"id": "a", "rssi": math.nan}]}),
            "device.ext.beacons[0].rssi is not a finite number",
        ),
        (
            request(ext={"beacons": [{"id": f"b{i}"} for i in range(MAX_BEACONS + 1)]}),
            f"device.ext.beacons has {MAX_BEACONS + 1} entries, over the limit of {MAX_BEACONS}",
        ),
        # duplicate keys where parsers disagree on which one wins
        (
            '{"device": {"geo": {"lat": 1, "lat": 95, "lon": 0}}}',
            "device.geo.lat is given more than once",
        ),
        (
            '{"device": {"geo": {"lat": 1, "lon": 0}, "geo": {}}}',
            "device.geo is given more than once",
        ),
        ('{"id": "a", "id": "b"}', "id is given more than once"),
        (
            '{"device": {"ext": {"beacons": [{"id": "a", "id": "b"}]}}}',
            "device.ext.beacons[0].id is given more than once",
        ),
    ],
)
def test_rejections(req: Any, message: str) -> None:
    rejects(req, message)


@pytest.mark.parametrize("text", ['{"id": "a",}', "{", "{\"id\": 'a'}", "{} {}", '{"id": "a"'])
def test_syntax_errors_say_not_json(text: str) -> None:
    # The rest of the message is the json module's, which varies between Python versions.
    with pytest.raises(InvalidBidRequest, match=r"^not JSON: "):
        parse_bid_request(text)


def test_invalid_lat_rejects_even_with_valid_everything_else() -> None:
    rejects(
        request({"lat": 91.0, "lon": 0.0, "type": 1}, ifa="x"),
        "device.geo.lat 91.0 out of range [-90, 90]",
    )


def test_payload_size_limit() -> None:
    filler = "x" * (MAX_BYTES - 200)
    ok = json.dumps({"id": "a", "pad": filler, "device": {"geo": {"lat": 1, "lon": 2}}})
    assert len(ok.encode()) <= MAX_BYTES
    assert parse_bid_request(ok).lat == 1.0
    assert parse_bid_request(ok.encode()).lat == 1.0

    big = json.dumps({"id": "a", "pad": "x" * MAX_BYTES})
    rejects(big.encode(), f"request is {len(big)} bytes, over the {MAX_BYTES} limit")
    rejects(big, f"request is over the {MAX_BYTES}-byte limit")


def test_size_limit_counts_utf8_bytes_not_characters() -> None:
    # 3 bytes per character: under the limit in characters, over it in bytes.
    text = json.dumps({"id": "a", "pad": "€" * (MAX_BYTES // 2)}, ensure_ascii=False)
    assert len(text) < MAX_BYTES < len(text.encode())
    rejects(text, f"request is over the {MAX_BYTES}-byte limit")


def test_deep_nesting_in_an_ignored_field_is_rejected() -> None:
    text = '{"id": "a", "imp": ' + "[" * 50_000 + "]" * 50_000 + "}"
    rejects(text, "not JSON: nested too deeply")


def test_non_ascii_strings_are_kept() -> None:
    loc = parse_bid_request('{"id": "r\u00e9q", "device": {"ifa": "\u00e9t\u00e9"}}')
    assert (loc.request_id, loc.device_id) == ("réq", "été")


def test_exception_chain_is_not_leaked_for_json_errors() -> None:
    with pytest.raises(InvalidBidRequest) as info:
        parse_bid_request("{")
    assert info.value.__cause__ is None


# --- parse_many --------------------------------------------------------------------------------


def test_parse_many_keeps_order_and_never_raises() -> None:
    good = request({"lat": 1, "lon": 2})
    results = parse_many(
        [good, "{", None, json.dumps(good).encode(), request({"lat": 99, "lon": 0})]
    )
    assert [type(r) for r in results] == [
        BidLocation,
        InvalidBidRequest,
        InvalidBidRequest,
        BidLocation,
        InvalidBidRequest,
    ]
    assert str(results[4]) == "device.geo.lat 99.0 out of range [-90, 90]"


def test_parse_many_survives_a_failing_iterator() -> None:
    def requests() -> Any:
        yield {"id": "a"}
        raise OSError("stream closed")

    results = parse_many(requests())
    assert isinstance(results[0], BidLocation)
    assert isinstance(results[1], InvalidBidRequest)
    assert str(results[1]) == "could not iterate requests: OSError: stream closed"


def test_parse_many_empty() -> None:
    assert parse_many([]) == []


# --- property: nothing but InvalidBidRequest escapes -------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
_json_like = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
_keys = st.sampled_from(
    [
        "id",
        "device",
        "geo",
        "lat",
        "lon",
        "accuracy",
        "lastfix",
        "type",
        "ifa",
        "lmt",
        "ext",
        "beacons",
        "rssi",
        "user",
    ]
)
# Shaped like requests so that generated values reach the deep validation paths, not only the
# top-level type check.
_request_like = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=6),
    max_leaves=40,
)


def _outcome(value: Any) -> BidLocation | str:
    """The parse result, or the rejection message; checks the invariants of either."""
    try:
        loc = parse_bid_request(value)
    except InvalidBidRequest as exc:
        assert not str(exc).startswith("internal error"), exc
        return str(exc)
    assert isinstance(loc, BidLocation)
    if loc.lat is not None:
        assert loc.lon is not None
        assert -90 <= loc.lat <= 90 and -180 <= loc.lon <= 180
    else:
        assert loc.lon is None
    assert math.isfinite(loc.fix_age_s) and loc.fix_age_s >= 0
    assert loc.accuracy_m is None or (math.isfinite(loc.accuracy_m) and loc.accuracy_m >= 0)
    assert loc.source in {"gps", "ip", "user", "unknown"}
    assert len(loc.beacons) <= MAX_BEACONS
    return loc


@settings(max_examples=300, deadline=None)
@given(_json_like)
def test_property_arbitrary_values_only_raise_invalid_bid_request(value: Any) -> None:
    _outcome(value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _request_like, max_size=6))
def test_property_request_shaped_values_only_raise_invalid_bid_request(
    value: dict[str, Any],
) -> None:
    from_dict = _outcome(value)
    # The same value as JSON text gives the same verdict. Only for values JSON can carry: it has
    # no NaN or Infinity (rejected as text, "not a finite number" as a dict).
    try:
        text = json.dumps(value, allow_nan=False)
    except (ValueError, TypeError):
        return
    assert _outcome(text) == from_dict
    assert _outcome(text.encode()) == from_dict


_maybe = st.none() | _scalars | _json_like  # a field that is absent/null, odd, or anything


def _mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` four times in five, otherwise anything (one_of alone would pick `valid` rarely)."""
    return st.integers(0, 4).flatmap(lambda i: valid if i else _maybe)


_geo = st.fixed_dictionaries(
    {},
    optional={
        "lat": _mostly(st.floats(-90, 90) | st.integers(-90, 90)),
        "lon": _mostly(st.floats(-180, 180) | st.integers(-180, 180)),
        "accuracy": _mostly(st.floats(0, 1e6)),
        "lastfix": _mostly(st.floats(0, 1e6) | st.integers(0, 10**6)),
        "type": _mostly(st.integers(0, 5)),
    },
)
_beacon = st.fixed_dictionaries(
    {"id": _mostly(st.text(min_size=1, max_size=8))}, optional={"rssi": _mostly(st.floats())}
)
_device = st.fixed_dictionaries(
    {},
    optional={
        "geo": _mostly(_geo),
        "ifa": _mostly(st.sampled_from(["", "00000000-0000-0000-0000-000000000000", "abc"])),
        "lmt": _mostly(st.sampled_from([0, 1])),
        "ext": _mostly(
            st.fixed_dictionaries(
                {}, optional={"beacons": _mostly(st.lists(_mostly(_beacon), max_size=3))}
            )
        ),
    },
)
_structured = st.fixed_dictionaries(
    {}, optional={"id": _mostly(st.text(max_size=5)), "device": _mostly(_device)}
)


@settings(max_examples=500, deadline=None)
@given(_structured)
def test_property_structured_requests_agree_as_dict_and_text(value: dict[str, Any]) -> None:
    """Requests built field by field, mostly valid, so the accepting paths are exercised too."""
    from_dict = _outcome(value)
    try:
        text = json.dumps(value, allow_nan=False)
    except (ValueError, TypeError):
        return
    assert _outcome(text.encode()) == from_dict


# --- real requests (../shared/data/openrtb) -----------------------------------------------------

# The expected outcome of every file, written after reading each one. A BidLocation-like dict
# lists the fields that matter; a string is the exact InvalidBidRequest message.
_NO_LOCATION = {"lat": None, "lon": None}
_PREBID_DEVICE_SUA = (
    "prebid-server/endpoints_openrtb2_sample-requests_valid-whole_exemplary_device-sua.json"
)
EXPECTED: dict[str, dict[str, Any] | str] = {
    # Prebid Server adapter fixtures (request under "mockBidRequest")
    "prebid-server/adapters_bidmyadz_bidmyadztest_exemplary_banner.json": {
        "lat": 47.6275,
        "lon": -122.3462,
        "source": "unknown",
        "accuracy_m": None,
        "request_id": "12345",
        "device_id": None,
    },
    # GPS-grade accuracy 5 m, but no geo.type: the source stays "unknown".
    "prebid-server/adapters_e_volution_evolutiontest_exemplary_video.json": {
        "lat": 20.6668,
        "lon": -103.3918,
        "accuracy_m": 5.0,
        "source": "unknown",
        "lmt": False,
    },
    "prebid-server/adapters_infytv_infytvtest_exemplary_app.json": {
        "lat": 20.6668,
        "lon": -103.3918,
        "accuracy_m": 5.0,
        "source": "unknown",
        "lmt": False,
    },
    # Only user.geo (home base) carries coordinates: no device location.
    "prebid-server/adapters_rubicon_rubicontest_exemplary_simple-banner.json": {
        **_NO_LOCATION,
        "device_id": "zxcjbzxmc-zxcbmz-zxbcz-zxczx",
        "request_id": "test-request-id",
    },
    # IP-derived (type 2, ipservice 3).
    "prebid-server/adapters_smartx_smartxtest_exemplary_03-device.json": {
        "lat": 48.1663,
        "lon": 11.5683,
        "source": "ip",
        "accuracy_m": None,
    },
    "prebid-server/adapters_stroeerCore_stroeercoretest_exemplary_mobile-banner-single.json": {
        "lat": 48.860757,
        "lon": 2.337562,
        "source": "unknown",
        "device_id": "e785543f-0be8-48f1-2c53-b4ae46a942d3",
    },
    # Prebid accepts lat 123.456 / lon 678.9 as valid; we do not.
    _PREBID_DEVICE_SUA: "device.geo.lat 123.456 out of range [-90, 90]",
    # IAB specification examples
    # The only one with device.geo; its lat/lon (Mojave desert) disagree with its city (Los
    # Angeles). The coordinates are what we use: city/region are not read.
    "iab-spec-examples-mxmCherry/2.5_mobile.json": {
        "lat": 35.012345,
        "lon": -115.12345,
        "source": "unknown",
        "device_id": "AA000DFE74168477C70D291f574D344790E0BB11",
        "request_id": "IxexyLDIIk",
    },
    "iab-spec-examples-mxmCherry/2.5_simple-banner.json": {**_NO_LOCATION, "device_id": None},
    "iab-spec-examples-mxmCherry/2.5_video.json": {**_NO_LOCATION, "request_id": "1234567893"},
    "iab-spec-examples-mxmCherry/2.6_mobile.json": {
        **_NO_LOCATION,
        "device_id": "AA000DFE74168477C70D291f574D344790E0BB11",
    },
    "iab-spec-examples-mxmCherry/2.6_video.json": {**_NO_LOCATION, "request_id": "1234567893"},
    # bsm/openrtb samples
    "bsm-openrtb/breq.banner.json": {**_NO_LOCATION, "request_id": "1234534625254"},
    "bsm-openrtb/breq.video.json": {
        **_NO_LOCATION,
        "request_id": "0123456789ABCDEF0123456789ABCDEF",
    },
    # A bare Device object, wrapped as {"id": "x", "device": obj}; dpidsha1 is not an ifa.
    "bsm-openrtb/device.json": {
        "lat": 35.012345,
        "lon": -115.12345,
        "source": "unknown",
        "device_id": None,
        "request_id": "x",
    },
    # JSON Schemas, not requests: a JSON object with no top-level "device", so parsing one as a
    # request finds no location (the schema's own "device" is under "properties").
    "iab-json-schemas/openrtb-schema_bid-request_v2-3.json": {**_NO_LOCATION, "request_id": None},
    "iab-json-schemas/openrtb-schema_bid-request_v2-4.json": {**_NO_LOCATION, "request_id": None},
}


def _load_request(path: Path) -> bytes:
    """The request bytes a file holds, unwrapped or wrapped as the file's source needs."""
    raw = path.read_bytes()
    if path.parent.name == "prebid-server":
        return json.dumps(json.loads(raw)["mockBidRequest"]).encode()
    if path.name == "device.json":
        return json.dumps({"id": "x", "device": json.loads(raw)}).encode()
    return raw


@pytest.mark.shared
def test_every_shared_openrtb_file_has_an_expectation(shared_data: Path) -> None:
    folder = shared_data / "openrtb"
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*.json")}
    assert files == set(EXPECTED)


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_openrtb_file(shared_data: Path, name: str) -> None:
    expected = EXPECTED[name]
    raw = _load_request(shared_data / "openrtb" / name)
    if isinstance(expected, str):
        rejects(raw, expected)
        return
    loc = parse_bid_request(raw)
    for field, value in expected.items():
        assert getattr(loc, field) == value, field
    assert loc.beacons == ()
    assert loc.fix_age_s == 0.0  # no shared request carries lastfix


@pytest.mark.shared
def test_shared_requests_in_one_batch(shared_data: Path) -> None:
    names = sorted(EXPECTED)
    results = parse_many([_load_request(shared_data / "openrtb" / name) for name in names])
    by_name = dict(zip(names, results, strict=True))
    invalid = [n for n, r in by_name.items() if isinstance(r, InvalidBidRequest)]
    located = [n for n, r in by_name.items() if isinstance(r, BidLocation) and r.lat is not None]
    assert invalid == [n for n in names if isinstance(EXPECTED[n], str)]
    assert len(located) == 7

"""Hostile zone files and compiled files: size, vertex and zone limits, and payloads that lie.

Limits are module constants (geofence.zones.MAX_FILE_BYTES, MAX_VERTICES_PER_ZONE, MAX_ZONES;
geofence.compiled.MAX_FILE_BYTES, MAX_PAYLOAD_BYTES, MAX_MANIFEST_BYTES). Most tests lower one
with monkeypatch, so a small file can cross it; one crosses the real vertex limit.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from geofence import Category, CompiledFileError, Engine, ZoneFileError, compiled, zones
from geofence.policy import load_policy_text
from geofence.zones import Zone, read_zones
from geofence.zoneset import ZoneSet

# --- zone files -----------------------------------------------------------------------------------


def square(lon: float, lat: float, d: float = 0.001) -> list[list[list[float]]]:
    return [[[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]]


def feature(zid: str, coords: Any, kind: str = "Polygon") -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"id": zid, "category": "clinic"},
        "geometry": {"type": kind, "coordinates": coords},
    }


def geojson(path: Path, features: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def ring(n: int, lon: float = 10.0, lat: float = 50.0, r: float = 0.01) -> list[list[float]]:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.column_stack([lon + r * np.cos(a), lat + r * np.sin(a)]).round(9).tolist()
    return [*pts, pts[0]]


def test_a_file_over_the_size_limit_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = geojson(tmp_path / "big.geojson", [feature(f"z{i}", square(i, 0)) for i in range(20)])
    good = geojson(tmp_path / "small.geojson", [feature("ok", square(50, 0))])
    monkeypatch.setattr(zones, "MAX_FILE_BYTES", path.stat().st_size - 1)
    assert good.stat().st_size < path.stat().st_size - 1
    found, problems = read_zones([tmp_path])
    assert [z.id for z in found] == ["ok"]
    assert len(problems) == 1
    p = problems[0]
    assert p.file == "big.geojson" and p.feature is None and p.severity == "error"
    assert f"file is {path.stat().st_size} bytes" in p.message
    assert "MAX_FILE_BYTES" in p.message
    with pytest.raises(ZoneFileError, match="over the limit"):
        Engine.from_paths(tmp_path)


def test_a_shapefile_counts_its_sidecars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geopandas as gpd  # noqa: PLC0415

    frame = gpd.GeoDataFrame(
        {"id": ["a"], "category": ["clinic"], "name": ["x" * 200]},
        geometry=[shapely.box(10, 50, 10.001, 50.001)],
        crs="EPSG:4326",
    )
    shp = tmp_path / "z.shp"
    frame.to_file(shp)
    total = sum(f.stat().st_size for f in tmp_path.iterdir() if f.stem == "z")
    monkeypatch.setattr(zones, "MAX_FILE_BYTES", total - 1)
    assert shp.stat().st_size < total - 1  # the .shp alone fits; with its .dbf it does not
    _, problems = read_zones([shp])
    assert len(problems) == 1 and "over the limit" in problems[0].message


def test_a_zone_over_the_vertex_limit_is_a_problem_with_its_feature(tmp_path: Path) -> None:
    """The real limit: a ring of MAX_VERTICES_PER_ZONE + 1 positions (closing one included)."""
    n = zones.MAX_VERTICES_PER_ZONE
    path = geojson(
        tmp_path / "z.geojson",
        [
            feature("fine", square(0, 0)),
            feature("huge", [ring(n)]),  # n distinct corners plus the closing one
            feature("fine-too", square(1, 0)),
        ],
    )
    found, problems = read_zones([path])
    assert [z.id for z in found] == ["fine", "fine-too"]
    assert len(problems) == 1
    p = problems[0]
    assert (p.file, p.feature, p.zone_id) == ("z.geojson", 1, "huge")
    assert f"{n + 1} vertices, over the limit of {n}" in p.message
    assert "MAX_VERTICES_PER_ZONE" in p.message and p.hint and "simplify" in p.hint


def test_multipolygon_vertices_count_every_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zones, "MAX_VERTICES_PER_ZONE", 12)
    parts = [square(0, 0), square(1, 0), square(2, 0)]  # 3 x 5 = 15 positions
    path = geojson(
        tmp_path / "m.geojson",
        [feature("multi", parts, "MultiPolygon"), feature("one", square(5, 0))],
    )
    found, problems = read_zones([path])
    assert [z.id for z in found] == ["one"]
    assert [(p.feature, p.zone_id) for p in problems] == [(0, "multi")]
    assert "15 vertices" in problems[0].message


def test_zone_count_limits_per_file_and_per_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zones, "MAX_ZONES", 10)
    many = geojson(tmp_path / "a.geojson", [feature(f"g{i}", square(i, 0)) for i in range(11)])
    found, problems = read_zones([many])
    assert found == [] and len(problems) == 1
    assert "11 features, over the limit of 10" in problems[0].message
    assert problems[0].file == "a.geojson"

    rows = "id,category,lat,lon,radius_m\n" + "".join(
        f"c{i},clinic,1.0,{i}.0,10\n" for i in range(11)
    )
    (tmp_path / "b.csv").write_text(rows)
    found, problems = read_zones([tmp_path / "b.csv"])
    assert found == [] and "11 features" in problems[0].message

    (tmp_path / "a.geojson").unlink()
    (tmp_path / "b.csv").unlink()
    geojson(tmp_path / "c.geojson", [feature(f"c{i}", square(i, 1)) for i in range(6)])
    geojson(tmp_path / "d.geojson", [feature(f"d{i}", square(i, 2)) for i in range(6)])
    _, problems = read_zones([tmp_path])
    assert len(problems) == 1 and "more than 10 zones" in problems[0].message
    with pytest.raises(ZoneFileError, match="MAX_ZONES"):
        ZoneSet.from_paths(tmp_path)


# --- compiled files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    zs = ZoneSet.compile(
        [
            Zone("clinic", "", Category.CLINIC, shapely.Point(-122.33, 47.61), 30.0),
            Zone(
                "church", "", Category.PLACE_OF_WORSHIP, shapely.box(-122.4, 47.6, -122.399, 47.601)
            ),
        ],
        load_policy_text('pack = "us-strictest"\n', "<test>"),
        "v-hostile",
    )
    path = compiled.save(zs, tmp_path_factory.mktemp("gfz") / "good.gfz")
    with zipfile.ZipFile(path) as zf:
        data = json.loads(zf.read("zoneset.json"))
    return path, data


def write_gfz(
    path: Path,
    payload: bytes,
    manifest: dict[str, Any] | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """A compiled file with a correct checksum for whatever payload it is given."""
    m = {
        "format": compiled.FORMAT,
        "format_version": compiled.FORMAT_VERSION,
        "zone_set_version": "v",
        "zones": 2,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_bytes": len(payload),
    }
    m.update(manifest or {})
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("manifest.json", json.dumps(m))
        zf.writestr("zoneset.json", payload)
    return path


def load_data(tmp_path: Path, data: Any) -> ZoneSet:
    raw = json.dumps(data).encode()
    return compiled.load(write_gfz(tmp_path / "x.gfz", raw))


def test_the_base_file_loads(tmp_path: Path, base: tuple[Path, dict[str, Any]]) -> None:
    zs = load_data(tmp_path, base[1])  # rewritten by write_gfz: the helper itself is sound
    assert zs.ids == ("clinic", "church") and zs.version == "v-hostile"


def _patch_central_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size the central directory declares for one member."""
    raw = bytearray(path.read_bytes())
    name = member.encode()
    at = raw.rfind(b"PK\x01\x02" + b"", 0)
    while at >= 0:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46 : at + 46 + name_len] == name:
            struct.pack_into("<I", raw, at + 24, size)
            path.write_bytes(bytes(raw))
            return
        at = raw.rfind(b"PK\x01\x02", 0, at)
    raise AssertionError(f"{member} not in the central directory")


def test_a_huge_declared_payload_is_refused_before_it_is_inflated(
    tmp_path: Path, base: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bomb.gfz"
    path.write_bytes(base[0].read_bytes())
    _patch_central_size(path, "zoneset.json", 0xFFFFFFF0)  # "4 GB once inflated"
    reads: list[str] = []
    real_read = zipfile.ZipFile.read

    def spy(self: zipfile.ZipFile, name: Any, pwd: Any = None) -> bytes:
        reads.append(getattr(name, "filename", name))
        return real_read(self, name, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "read", spy)
    with pytest.raises(CompiledFileError, match="payload of 4294967280 bytes is over the limit"):
        compiled.load(path)
    assert "zoneset.json" not in reads


def test_a_real_zip_bomb_manifest_is_refused(tmp_path: Path) -> None:
    """10 MB of spaces deflate to about 10 kB: the manifest's declared size gives it away."""
    path = tmp_path / "bomb.gfz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", b"{" + b" " * 10_000_000 + b"}")
        zf.writestr("zoneset.json", b"{}")
    assert path.stat().st_size < 100_000
    with pytest.raises(CompiledFileError, match="manifest of 10000002 bytes is over the limit"):
        compiled.load(path)


def test_a_member_that_inflates_past_its_declared_size_is_refused(
    tmp_path: Path, base: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bomb that lies low: zipfile stops at the declared size and the CRC fails."""
    path = tmp_path / "liar.gfz"
    payload = json.dumps(base[1]).encode() + b" " * 5_000_000
    write_gfz(path, payload)
    _patch_central_size(path, "zoneset.json", 1000)
    with pytest.raises(CompiledFileError, match="not a readable"):
        compiled.load(path)
    monkeypatch.setattr(compiled, "MAX_PAYLOAD_BYTES", 4_000_000)
    write_gfz(path, payload)
    with pytest.raises(CompiledFileError, match="over the limit of 4000000"):
        compiled.load(path)


def test_file_size_member_count_and_zone_count_limits(
    tmp_path: Path, base: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled, "MAX_FILE_BYTES", base[0].stat().st_size - 1)
    with pytest.raises(CompiledFileError, match="over the limit"):
        compiled.load(base[0])
    monkeypatch.undo()

    crowded = tmp_path / "crowded.gfz"
    crowded.write_bytes(base[0].read_bytes())
    with zipfile.ZipFile(crowded, "a") as zf:
        for i in range(compiled.MAX_MEMBERS):
            zf.writestr(f"junk{i}", b"")
    with pytest.raises(CompiledFileError, match="archive members"):
        compiled.load(crowded)

    raw = json.dumps(base[1]).encode()
    with pytest.raises(CompiledFileError, match="zones, over the limit"):
        compiled.load(write_gfz(tmp_path / "m.gfz", raw, {"zones": zones.MAX_ZONES + 1}))
    monkeypatch.setattr(compiled, "MAX_ZONES", 1)  # the manifest may lie: the payload is counted
    with pytest.raises(CompiledFileError, match="holds 2 zones, over the limit of 1"):
        compiled.load(write_gfz(tmp_path / "n.gfz", raw, {"zones": 1}))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x04K\x01.",  # a pickle
        b"not json at all",
        b'{"version": NaN}',
        b"[" * 100_000 + b"]" * 100_000,  # nested past the recursion limit
        b"\xff\xfe{\x00}\x00",  # UTF-16
    ],
    ids=["pickle", "text", "nan", "deep", "utf16"],
)
def test_non_json_payloads_are_refused(tmp_path: Path, payload: bytes) -> None:
    with pytest.raises(CompiledFileError):
        compiled.load(write_gfz(tmp_path / "x.gfz", payload))


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_with_a_valid_checksum_is_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(str(marker)))
    calls: list[str] = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append("loads"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append("load"))
    for where in ("zoneset.json", "manifest.json"):
        path = tmp_path / f"{where}.gfz"
        if where == "zoneset.json":
            write_gfz(path, payload)
        else:
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr("manifest.json", payload)
                zf.writestr("zoneset.json", b"{}")
        with pytest.raises(CompiledFileError):
            compiled.load(path)
    assert not marker.exists() and calls == []


def _mutated(data: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


_DELETE = object()
_HUGE_COUNT_WKB = (struct.pack("<BII", 1, 2, 0x7FFFFFFF) + b"\x00" * 32).hex()  # "2^31 points"
_BOWTIE = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])

WRONG = [
    (None, [], "top level is list"),
    (["zones"], {"a": 1}, "zones is not an array"),
    (["zones", 0], "clinic", "zones\\[0\\] is str"),
    (["zones", 0, "radius_m"], "30", "radius_m is str"),
    (["zones", 0, "radius_m"], -1, "radius_m must be finite"),
    (["zones", 0, "radius_m"], math.inf, "non-standard JSON constant Infinity"),
    (["zones", 0, "radius_m"], "__1e999__", "radius_m must be finite"),  # 1e999 reads as inf
    (["zones", 0, "radius_m"], 10**400, "radius_m is too large"),
    (["zones", 0, "radius_m"], True, "radius_m is bool"),
    (["zones", 0, "buffer_m"], -5.0, "buffer_m must be finite"),
    (["zones", 0, "valid_from"], "2026-01-01", "valid_from is str"),
    (["zones", 0, "id"], 17, "id is int"),
    (["zones", 0, "category"], "hospitl", "category is not a category"),
    (["zones", 0, "jurisdiction"], ["WA"], "jurisdiction is list"),
    (["zones", 0, "extra"], 1, "wrong keys"),
    (["zones", 0, "wkb"], _DELETE, "wrong keys"),
    (["policy", "rules"], [], "policy.rules is list"),
    (["policy", "rules", "clinic"], _DELETE, "does not cover"),
    (["policy", "rules", "clinic", "buffer_m"], -609.6, "buffer_m must be finite"),
    (["policy", "rules", "clinic", "lookback_days"], "60", "lookback_days is str"),
    (["policy", "requests", "max_accuracy_m"], None, "max_accuracy_m is NoneType"),
    (["policy", "requests", "ip_location"], "allow", "ip_location must be one of"),
    (["policy", "beacons", "unknown"], 1, "unknown must be one of"),
    (["policy", "presence", "rule"], "circle_inside", "rule must be one of"),
    (["beacons"], {"x": 1}, "beacons is not an array"),
    (["beacons"], [{"beacon_id": "x"}], "wrong keys"),
    (["version"], 3, "version is int"),
]


@pytest.mark.parametrize(("where", "value", "message"), WRONG, ids=lambda v: str(v)[:40])
def test_wrong_types_and_values_in_the_payload(
    tmp_path: Path,
    base: tuple[Path, dict[str, Any]],
    where: list[Any] | None,
    value: Any,
    message: str,
) -> None:
    data = value if where is None else _mutated(base[1], where, value)
    raw = json.dumps(data, allow_nan=True).replace('"__1e999__"', "1e999").encode()
    with pytest.raises(CompiledFileError, match=f"malformed payload.*{message}"):
        compiled.load(write_gfz(tmp_path / "x.gfz", raw))


ABSURD_WKB = [
    (shapely.LineString([(0, 0), (1, 1)]).wkb_hex, "is a LineString"),
    (shapely.GeometryCollection([shapely.Point(0, 0)]).wkb_hex, "is a GeometryCollection"),
    (shapely.Polygon().wkb_hex, "is empty"),
    (shapely.Point(200.0, 0).wkb_hex, "outside longitude/latitude"),
    (shapely.Point(math.nan, 0).wkb_hex, "outside longitude/latitude"),
    (_BOWTIE.wkb_hex, "is not valid"),
    (_HUGE_COUNT_WKB, ""),  # GEOS refuses the count: "malformed payload (GEOSException ...)"
    (shapely.Point(1, 2).wkb_hex[:-6], ""),  # truncated
    ("zz" * 21, ""),  # not hex
    ("", ""),
]


@pytest.mark.parametrize(("wkb", "message"), ABSURD_WKB, ids=lambda v: str(v)[:24])
def test_absurd_wkb_is_refused(
    tmp_path: Path, base: tuple[Path, dict[str, Any]], wkb: str, message: str
) -> None:
    data = _mutated(base[1], ["zones", 1, "wkb"], wkb)
    with pytest.raises(CompiledFileError, match=f"malformed payload.*{message}"):
        load_data(tmp_path, data)


def test_a_point_zone_needs_a_radius(tmp_path: Path, base: tuple[Path, dict[str, Any]]) -> None:
    data = _mutated(base[1], ["zones", 0, "radius_m"], 0.0)
    with pytest.raises(CompiledFileError, match="radius_m must be > 0"):
        load_data(tmp_path, data)


def test_compiled_vertex_limit(
    tmp_path: Path, base: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    big = shapely.Polygon(ring(100)).wkb_hex
    data = _mutated(base[1], ["zones", 1, "wkb"], big)
    assert load_data(tmp_path, data).ids == ("clinic", "church")
    monkeypatch.setattr(compiled, "MAX_VERTICES_PER_ZONE", 50)
    with pytest.raises(CompiledFileError, match="101 vertices, over the limit of 50"):
        load_data(tmp_path, data)
    # A hex string too long to hold 50 vertices is refused before GEOS parses it.
    data = _mutated(base[1], ["zones", 1, "wkb"], "00" * (64 * 50 + 100))
    with pytest.raises(CompiledFileError, match="over 50 vertices"):
        load_data(tmp_path, data)


def test_reload_of_a_hostile_compiled_file_keeps_the_serving_set(
    tmp_path: Path, base: tuple[Path, dict[str, Any]]
) -> None:
    e = Engine.load(base[0])
    before = e.version
    bad = _mutated(base[1], ["zones", 0, "radius_m"], -1)
    path = write_gfz(tmp_path / "bad.gfz", json.dumps(bad).encode())
    with pytest.raises(CompiledFileError):
        e.reload(path)
    assert e.version == before
    assert e.check_location(lat=47.61, lon=-122.33, accuracy_m=5.0).zone_id == "clinic"
    assert os.path.exists(base[0])

"""Hostile zone files and compiled files: size, vertex and zone limits, and payloads that lie.

Limits are module constants (geofence.zones.MAX_FILE_BYTES, MAX_VERTICES_PER_ZONE, MAX_ZONES;
geofence.compiled.MAX_FILE_BYTES, MAX_PAYLOAD_BYTES, MAX_MANIFEST_BYTES). Most tests lower one
with monkeypatch, so a small file can cross it; one crosses the real vertex limit.
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
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
#
# A compiled file is zoneset.json plus .npy arrays, each listed with its SHA-256 in manifest.json.
# write_gfz rewrites the manifest for whatever members it is given, as an attacker could: every
# refusal below comes from checking the data itself, not from a checksum.

Members = dict[str, bytes]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Members]:
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
        members = {n: zf.read(n) for n in zf.namelist() if n != compiled.MANIFEST}
    return path, members


def write_gfz(
    path: Path,
    members: Members,
    manifest: dict[str, Any] | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """A compiled file with a correct checksum for whatever members it is given."""
    m = {
        "format": compiled.FORMAT,
        "format_version": compiled.FORMAT_VERSION,
        "zone_set_version": "v",
        "zones": 2,
        "members": {
            n: {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
            for n, raw in members.items()
        },
    }
    m.update(manifest or {})
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr(compiled.MANIFEST, json.dumps(m))
        for n, raw in members.items():
            zf.writestr(n, raw)
    return path


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def array(members: Members, name: str) -> np.ndarray:
    return np.load(io.BytesIO(members[f"{name}.npy"]), allow_pickle=False)


def meta(members: Members) -> dict[str, Any]:
    return json.loads(members["zoneset.json"])


def replaced(members: Members, **changes: Any) -> Members:
    """`members` with some replaced: name=array (dots as __) or meta=dict."""
    out = dict(members)
    for key, value in changes.items():
        if key == "meta":
            out["zoneset.json"] = json.dumps(value, allow_nan=True).encode()
        else:
            out[key.replace("__", ".") + ".npy"] = value if isinstance(value, bytes) else npy(value)
    return out


def load_members(tmp_path: Path, members: Members) -> ZoneSet:
    return compiled.load(write_gfz(tmp_path / "x.gfz", members))


def test_the_base_file_loads(tmp_path: Path, base: tuple[Path, Members]) -> None:
    zs = load_members(tmp_path, base[1])  # rewritten by write_gfz: the helper itself is sound
    assert zs.ids == ("clinic", "church") and zs.version == "v-hostile"
    assert zs.zones[0].radius_m == 30.0 and zs.zones[1].geometry.geom_type == "Polygon"


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
    tmp_path: Path, base: tuple[Path, Members], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bomb.gfz"
    path.write_bytes(base[0].read_bytes())
    _patch_central_size(path, "zoneset.json", 0xFFFFFFF0)  # "4 GB once inflated"
    monkeypatch.setattr(compiled, "MAX_PAYLOAD_BYTES", 1 << 31)
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: Any, *a: Any, **k: Any) -> Any:
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    with pytest.raises(CompiledFileError, match=r"payload of [0-9]+ bytes is over the limit"):
        compiled.load(path)
    assert "zoneset.json" not in opened and not any(n.endswith(".npy") for n in opened)


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
    tmp_path: Path, base: tuple[Path, Members]
) -> None:
    """A bomb that lies low: zipfile stops at the declared size and the CRC fails."""
    path = tmp_path / "liar.gfz"
    members = dict(base[1])
    members["zoneset.json"] += b" " * 5_000_000
    write_gfz(path, members, compression=zipfile.ZIP_DEFLATED)
    listed = {
        n: {"sha256": hashlib.sha256(r).hexdigest(), "bytes": len(r)} for n, r in members.items()
    }
    listed["zoneset.json"]["bytes"] = 1000
    write_gfz(path, members, {"members": listed}, compression=zipfile.ZIP_DEFLATED)
    _patch_central_size(path, "zoneset.json", 1000)
    with pytest.raises(CompiledFileError, match="not a readable"):
        compiled.load(path)


def test_file_size_member_count_and_zone_count_limits(
    tmp_path: Path, base: tuple[Path, Members], monkeypatch: pytest.MonkeyPatch
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

    extra = write_gfz(tmp_path / "extra.gfz", {**base[1], "junk.npy": npy(np.zeros(1))})
    with pytest.raises(CompiledFileError, match="does not list this format's members"):
        compiled.load(extra)
    missing = dict(base[1])
    del missing["sub.ints.npy"]
    with pytest.raises(CompiledFileError, match="does not list this format's members"):
        compiled.load(write_gfz(tmp_path / "missing.gfz", missing))

    with pytest.raises(CompiledFileError, match="zones, over the limit"):
        compiled.load(write_gfz(tmp_path / "m.gfz", base[1], {"zones": zones.MAX_ZONES + 1}))
    monkeypatch.setattr(compiled, "MAX_ZONES", 1)  # the manifest may lie: the columns are counted
    with pytest.raises(CompiledFileError, match="holds 2 zones, over the limit of 1"):
        compiled.load(write_gfz(tmp_path / "n.gfz", base[1], {"zones": 1}))


def test_a_member_altered_after_the_manifest_is_refused(
    tmp_path: Path, base: tuple[Path, Members]
) -> None:
    path = write_gfz(tmp_path / "x.gfz", base[1])
    members = replaced(base[1], zone__radius_m=np.array([31.0, 0.0]))
    with zipfile.ZipFile(path) as zf:
        manifest = zf.read(compiled.MANIFEST)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(compiled.MANIFEST, manifest)  # the old checksums, the new radius
        for n, raw in members.items():
            zf.writestr(n, raw)
    with pytest.raises(CompiledFileError, match=r"checksum mismatch in zone.radius_m.npy"):
        compiled.load(path)


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
def test_non_json_meta_is_refused(
    tmp_path: Path, base: tuple[Path, Members], payload: bytes
) -> None:
    with pytest.raises(CompiledFileError):
        load_members(tmp_path, {**base[1], "zoneset.json": payload})


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_with_a_valid_checksum_is_never_unpickled(
    tmp_path: Path, base: tuple[Path, Members], monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(str(marker)))
    trap_array = np.empty(2, dtype=object)
    trap_array[:] = [_Trap(str(marker)), _Trap(str(marker))]
    pickled_npy = npy(trap_array, allow_pickle=True)  # an object array: pickles inside .npy
    calls: list[str] = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append("loads"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append("load"))
    cases = {
        "meta": {**base[1], "zoneset.json": payload},
        "npy": replaced(base[1], zone__radius_m=pickled_npy),
        "raw": replaced(base[1], zone__radius_m=payload),
    }
    for where, members in cases.items():
        with pytest.raises(CompiledFileError):
            compiled.load(write_gfz(tmp_path / f"{where}.gfz", members))
    path = tmp_path / "manifest.gfz"
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
_HUGE_COUNT_WKB = struct.pack("<BII", 1, 2, 0x7FFFFFFF) + b"\x00" * 32  # "2^31 points"
_BOWTIE = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])

WRONG = [
    (None, [], "top level is list"),
    (["zones"], [], "zones is list"),
    (["zones", "id"], {"a": 1}, "zones.id is not an array"),
    (["zones", "id", 0], 17, "zones.id\\[0\\] is int"),
    (["zones", "name"], ["x"], "holds 1 zones, not 2"),
    (["zones", "jurisdiction", 0], ["WA"], "jurisdiction\\[0\\] is list"),
    (["zones", "extra"], [], "wrong keys"),
    (["zones", "source"], _DELETE, "wrong keys"),
    (["policy", "rules"], [], "policy.rules is list"),
    (["policy", "rules", "clinic"], _DELETE, "does not cover"),
    (["policy", "rules", "clinic", "buffer_m"], -609.6, "buffer_m must be finite"),
    (["policy", "rules", "clinic", "buffer_m"], "__1e999__", "buffer_m must be finite"),
    (["policy", "rules", "clinic", "buffer_m"], 10**400, "buffer_m is too large"),
    (["policy", "rules", "clinic", "buffer_m"], True, "buffer_m is bool"),
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
def test_wrong_types_and_values_in_meta(
    tmp_path: Path,
    base: tuple[Path, Members],
    where: list[Any] | None,
    value: Any,
    message: str,
) -> None:
    data = value if where is None else _mutated(meta(base[1]), where, value)
    raw = json.dumps(data, allow_nan=True).replace('"__1e999__"', "1e999").encode()
    with pytest.raises(CompiledFileError, match=f"malformed payload.*{message}"):
        load_members(tmp_path, {**base[1], "zoneset.json": raw})


def _header_lies(name: str, shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    """A .npy member whose header claims `shape` but which holds only `data`."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, dtype=dtype))
    header["shape"] = shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _with_column(members: Members, name: str, column: int, row: int, value: Any) -> np.ndarray:
    a = array(members, name).copy()
    a[row, column] = value
    return a


def _array_cases(members: Members) -> list[tuple[str, dict[str, Any], str]]:
    """(case, replaced members, message): one crafted array each, checksums all correct."""
    fine_ints = array(members, "fine.ints")
    coord_start = array(members, "flat.coord_start")
    n_parts = len(array(members, "part.zone"))
    swapped = coord_start.copy()
    if len(swapped) > 2:
        swapped[1], swapped[2] = swapped[2], swapped[1]
    else:
        swapped[0] = 1
    radius = array(members, "zone.radius_m")
    return [
        ("wrong dtype", {"zone__radius_m": radius.astype(np.float32)}, "dtype <f4, not <f8"),
        ("big-endian", {"zone__radius_m": radius.astype(">f8")}, "dtype >f8, not <f8"),
        ("wrong shape", {"fine__ints": fine_ints[:, :4].copy()}, "has shape"),
        ("fortran", {"fine__ints": np.asfortranarray(fine_ints)}, "has shape"),
        ("truncated", {"fine__ints": npy(fine_ints)[:-8]}, "bytes of data, not the"),
        (
            "header claims a huge shape",
            {"fine__ints": _header_lies("fine.ints", (10**12, 5), "i4", b"\0" * 20)},
            "bytes of data, not the",
        ),
        ("not npy", {"fine__ints": b"\x93NUMPY\x09\x00junk"}, "not a .npy array|npy version"),
        (
            "zone count",
            {"zone__radius_m": np.array([30.0, 0.0, 5.0])},
            "has 3 rows, not one per zone \\(2\\)",
        ),
        ("cell count", {"fine__floats": array(members, "fine.floats")[:-1]}, "per fine cell"),
        ("part out of range", {"part__zone": np.array([0, 2], dtype=np.int64)}, "out of range"),
        (
            "entry part out of range",
            {"fine__entries": _with_column(members, "fine.entries", 0, 0, n_parts)},
            "piece index is out of range",
        ),
        (
            "entry frame out of range",
            {"fine__entries": _with_column(members, "fine.entries", 1, 0, -1)},
            "frame index is out of range",
        ),
        (
            "zone out of range",
            {"fine__ints": _with_column(members, "fine.ints", 1, 0, 2)},
            "zone index out of range",
        ),
        (
            "state out of range",
            {"fine__ints": _with_column(members, "fine.ints", 0, 0, 9)},
            "state that is not a state",
        ),
        (
            "list past the entries",
            {"fine__ints": _with_column(members, "fine.ints", 4, -1, 10**9)},
            "lists that are not offsets",
        ),
        ("non-monotone offsets", {"flat__coord_start": swapped}, "is not offsets"),
        (
            "wkb offsets past the blob",
            {"zone__wkb_start": array(members, "zone.wkb_start") + 1},
            "is not offsets",
        ),
        (
            "a split cell without subcells",
            {"fine__ints": _with_column(members, "fine.ints", 0, 0, 4)},
            "per sub cell",
        ),
        (
            "keys out of order",
            {"fine__keys": array(members, "fine.keys")[::-1].copy()},
            "strictly increasing",
        ),
        (
            # Beyond what a packed hash table holds (2**34): the loader's worker thread that
            # builds the tables raises on it, and the file must still be refused, not crash.
            "key past the grid",
            {"fine__keys": np.append(array(members, "fine.keys")[:-1], np.int64(1 << 40))},
            "outside",
        ),
        (
            "sub frames present",
            {"sub__combos": np.zeros((1, 7), dtype=np.float32)},
            "the sub level uses the fine level's",
        ),
        (
            "sub entry frame past the fine level's",
            {
                "sub__entries": _with_column(
                    members, "sub.entries", 1, 0, len(array(members, "fine.combos"))
                )
            },
            "frame index is out of range",
        ),
        (
            "nan frame",
            {"fine__combos": _with_column(members, "fine.combos", 2, 0, np.nan)},
            "not finite",
        ),
        ("negative radius", {"zone__radius_m": np.array([-1.0, 0.0])}, "negative radii"),
        ("infinite buffer", {"zone__buffer_m": np.array([np.inf, np.nan])}, "not finite"),
        ("category", {"zone__category": np.array([200, 0], dtype=np.uint8)}, "out of range"),
        ("tile", {"part__tile": np.array([-7, 0], dtype=np.int64)}, "not tiles"),
    ]


_CASE_NAMES = [
    "wrong dtype", "big-endian", "wrong shape", "fortran", "truncated",
    "header claims a huge shape", "not npy", "zone count", "cell count", "part out of range",
    "entry part out of range", "entry frame out of range", "zone out of range",
    "state out of range", "list past the entries", "non-monotone offsets",
    "wkb offsets past the blob", "a split cell without subcells", "keys out of order",
    "key past the grid", "sub frames present", "sub entry frame past the fine level's", "nan frame",
    "negative radius", "infinite buffer", "category", "tile",
]  # fmt: skip


@pytest.mark.parametrize("case", _CASE_NAMES)
def test_crafted_arrays_are_refused(tmp_path: Path, base: tuple[Path, Members], case: str) -> None:
    """Each crafted array, with a manifest that matches it, is refused before any kernel runs."""
    cases = {name: (changes, message) for name, changes, message in _array_cases(base[1])}
    assert set(cases) == set(_CASE_NAMES)
    changes, message = cases[case]
    with pytest.raises(CompiledFileError, match=message):
        load_members(tmp_path, replaced(base[1], **changes))


def _with_wkb(members: Members, i: int, wkb: bytes) -> Members:
    """`members` with zone i's geometry replaced by raw WKB bytes."""
    blob, start = array(members, "zone.wkb").tobytes(), array(members, "zone.wkb_start")
    parts = [blob[a:b] for a, b in itertools.pairwise(start.tolist())]
    parts[i] = wkb
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    return replaced(
        members,
        zone__wkb=np.frombuffer(b"".join(parts), dtype=np.uint8),
        zone__wkb_start=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
    )


ABSURD_WKB = [
    (shapely.LineString([(0, 0), (1, 1)]).wkb, "is a LineString"),
    (shapely.GeometryCollection([shapely.Point(0, 0)]).wkb, "is a GeometryCollection"),
    (shapely.Polygon().wkb, "is empty"),
    (shapely.Point(200.0, 0).wkb, "outside longitude/latitude"),
    (shapely.Point(math.nan, 0).wkb, "outside longitude/latitude"),
    (_BOWTIE.wkb, "is not valid"),
    (_HUGE_COUNT_WKB, ""),  # GEOS refuses the count: "malformed payload (GEOSException ...)"
    (shapely.Point(1, 2).wkb[:-3], ""),  # truncated
    (b"zz" * 21, ""),  # not WKB
    (b"", ""),
]


@pytest.mark.parametrize(("wkb", "message"), ABSURD_WKB, ids=lambda v: str(v)[:24])
def test_absurd_wkb_is_refused(
    tmp_path: Path, base: tuple[Path, Members], wkb: bytes, message: str
) -> None:
    with pytest.raises(CompiledFileError, match=f"malformed payload.*{message}"):
        load_members(tmp_path, _with_wkb(base[1], 1, wkb))


def test_a_point_zone_needs_a_radius(tmp_path: Path, base: tuple[Path, Members]) -> None:
    members = replaced(base[1], zone__radius_m=np.array([0.0, 0.0]))
    with pytest.raises(CompiledFileError, match="radius_m must be > 0"):
        load_members(tmp_path, members)


def test_compiled_vertex_limit(
    tmp_path: Path, base: tuple[Path, Members], monkeypatch: pytest.MonkeyPatch
) -> None:
    members = _with_wkb(base[1], 1, shapely.Polygon(ring(100)).wkb)
    assert load_members(tmp_path, members).ids == ("clinic", "church")
    monkeypatch.setattr(compiled, "MAX_VERTICES_PER_ZONE", 50)
    with pytest.raises(CompiledFileError, match="101 vertices, over the limit of 50"):
        load_members(tmp_path, members)
    # WKB too long to hold 50 vertices is refused before GEOS parses it.
    members = _with_wkb(base[1], 1, b"\0" * (32 * 50 + 100))
    with pytest.raises(CompiledFileError, match="over 50 vertices"):
        load_members(tmp_path, members)


def test_reload_of_a_hostile_compiled_file_keeps_the_serving_set(
    tmp_path: Path, base: tuple[Path, Members]
) -> None:
    e = Engine.load(base[0])
    before = e.version
    bad = replaced(base[1], fine__entries=_with_column(base[1], "fine.entries", 0, 0, 10**9))
    path = write_gfz(tmp_path / "bad.gfz", bad)
    with pytest.raises(CompiledFileError):
        e.reload(path)
    assert e.version == before
    assert e.check_location(lat=47.61, lon=-122.33, accuracy_m=5.0).zone_id == "clinic"
    assert os.path.exists(base[0])

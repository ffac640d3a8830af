"""Compiled files (`.gfz`) carry the built index: a loaded zone set decides exactly as compiled.

The file stores the grid's tables and the exact index's pieces, so load rebuilds only hash
tables and a box tree. These tests compare a loaded set with the set it was saved from, array
by array and decision by decision. Hostile files are in test_hostile_files.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import BUNDLED_ZONES

from geofence import Category, CompiledFileError, Engine, compiled
from geofence.grid import GridIndex
from geofence.policy import load_policy_text
from geofence.zones import Zone
from geofence.zoneset import ZoneSet

M_PER_DEG = 111_320.0  # only for placing test points, never for a decision


@pytest.fixture(scope="module")
def bundled() -> ZoneSet:
    return ZoneSet.from_paths(BUNDLED_ZONES)


@pytest.fixture(scope="module")
def saved(bundled: ZoneSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compiled.save(bundled, tmp_path_factory.mktemp("gfz") / "zones.gfz")


def edge_points(
    zs: ZoneSet, rng: np.random.Generator, per_zone: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points near each zone's outline, buffer edge and buffer + accuracy edge (+/- 1 m).

    Each point starts on the zone's boundary and moves outward (or inward) by one of those
    distances, in a random direction: the cells there are the mixed ones whose lists decide.
    """
    geoms = np.array([z.geometry for z in zs.zones], dtype=object)
    boundary = shapely.boundary(shapely.buffer(geoms, 0.0))  # a Point zone's boundary is empty
    boundary = np.where(shapely.is_empty(boundary), geoms, boundary)
    zone = np.repeat(np.arange(len(geoms)), per_zone)
    start = shapely.line_interpolate_point(
        shapely.boundary(shapely.buffer(boundary[zone], 1e-9)),
        rng.random(len(zone)),
        normalized=True,
    )
    x, y = shapely.get_x(start), shapely.get_y(start)
    acc = rng.choice(np.array([0.0, 5.0, 20.0, 50.0, 150.0, 1000.0]), len(zone))
    radius = np.array([z.radius_m for z in zs.zones])[zone]
    buffer = zs.buffer_m[zone]
    dist = np.choose(
        rng.integers(0, 3, len(zone)), [radius, radius + buffer, radius + buffer + acc]
    ) + rng.uniform(-1.0, 1.0, len(zone))
    angle = rng.uniform(0, 2 * np.pi, len(zone))
    lat = y + dist * np.sin(angle) / M_PER_DEG
    lon = x + dist * np.cos(angle) / (M_PER_DEG * np.cos(np.radians(y)))
    return lon, lat, acc


def uniform_points(
    zs: ZoneSet, rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points spread over the zones' bounding boxes (plus 0.02 degrees), with mixed accuracies."""
    b = shapely.bounds(np.array([z.geometry for z in zs.zones], dtype=object))
    pick = rng.integers(0, len(b), n)
    lon = rng.uniform(b[pick, 0] - 0.02, b[pick, 2] + 0.02)
    lat = rng.uniform(b[pick, 1] - 0.02, b[pick, 3] + 0.02)
    acc = rng.choice(np.array([0.0, 5.0, 20.0, 100.0, 1000.0, 5000.0]), n)
    return lon, lat, acc


def assert_same_decisions(
    a: ZoneSet, b: ZoneSet, lon: np.ndarray, lat: np.ndarray, acc: np.ndarray
) -> None:
    da = Engine(a).check_many(lat, lon, acc)
    db = Engine(b).check_many(lat, lon, acc)
    assert np.array_equal(da.reason, db.reason)
    assert np.array_equal(da.zone_index, db.zone_index)
    assert np.array_equal(da.category, db.category)
    # Not a vacuous comparison: both paths saw rejections and allowances.
    assert 0 < int(np.count_nonzero(da.allowed)) < len(lon)


def assert_same_tables(a: ZoneSet, b: ZoneSet) -> None:
    """Every array the grid kernel reads, and the exact index's, are identical."""
    ga, gb = a.index, b.index
    assert isinstance(ga, GridIndex) and isinstance(gb, GridIndex)
    for x, y in zip(ga._packed, gb._packed, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y, equal_nan=True)
    ea, eb = a.exact, b.exact
    for name in ("radius_m", "buffer_m", "valid_from", "valid_until", "part_zone", "part_tile",
                 "part_bounds", "tree_part"):  # fmt: skip
        assert np.array_equal(getattr(ea, name), getattr(eb, name)), name
    for name in ("is_point", "ring_start", "coord_start", "xy"):
        assert np.array_equal(getattr(ea.flat, name), getattr(eb.flat, name)), name
    assert ga.stats() == gb.stats()


def test_bundled_zones_load_with_identical_tables_and_decisions(
    bundled: ZoneSet, saved: Path
) -> None:
    """~100k points near edges plus uniform ones: reason, zone and category all equal."""
    loaded = compiled.load(saved)
    assert loaded.version == bundled.version
    assert loaded.ids == bundled.ids and loaded.zones == bundled.zones
    assert loaded.warnings == bundled.warnings
    assert loaded.policy.rules == bundled.policy.rules
    assert np.array_equal(loaded.buffer_m, bundled.buffer_m)
    assert np.array_equal(loaded.category, bundled.category)
    assert_same_tables(bundled, loaded)
    rng = np.random.default_rng(20260101)
    lon1, lat1, acc1 = edge_points(bundled, rng, per_zone=110)
    lon2, lat2, acc2 = uniform_points(bundled, rng, 30_000)
    lon, lat, acc = (np.concatenate(p) for p in ((lon1, lon2), (lat1, lat2), (acc1, acc2)))
    assert len(lon) >= 100_000
    assert_same_decisions(bundled, loaded, lon, lat, acc)


def test_engine_load_and_reload_from_a_gfz(bundled: ZoneSet, saved: Path, tmp_path: Path) -> None:
    engine = Engine.load(saved)
    assert engine.version == bundled.version
    inside = engine.check_location(lat=51.5138028, lon=-0.0983361, accuracy_m=5.0)
    assert not inside.allowed and inside.zone_set_version == bundled.version
    other = ZoneSet.compile(
        [Zone("one", "", Category.CLINIC, shapely.box(10.0, 50.0, 10.001, 50.001))],
        load_policy_text('pack = "us-strictest"\n', "<test>"),
        "v-other",
    )
    path = Engine(other).save(tmp_path / "other.gfz")
    assert engine.reload(path) == "v-other" and engine.version == "v-other"
    assert engine.check_location(lat=51.5138028, lon=-0.0983361, accuracy_m=5.0).allowed
    assert engine.check_location(lat=50.0005, lon=10.0005, accuracy_m=5.0).zone_id == "one"


def test_awkward_zones_round_trip(tmp_path: Path) -> None:
    """Zones that take the other paths: a zone wider than a tile (exact only, interior piece),
    a temporary zone, a point zone, a multipolygon, a zone at the antimeridian, and a zone whose
    own buffer is below the policy's (a warning)."""
    big = shapely.box(20.1, 40.1, 21.4, 41.3)
    zones = [
        Zone("big", "Big", Category.MILITARY, big),
        Zone("temp", "", Category.ASSEMBLY, shapely.box(5.0, 45.0, 5.002, 45.002),
             valid_from=1_700_000_000.0, valid_until=1_800_000_000.0),
        Zone("pt", "", Category.CLINIC, shapely.Point(-73.98, 40.75), radius_m=25.0),
        Zone("multi", "", Category.HOSPITAL, shapely.MultiPolygon(
            [shapely.box(2.0, 48.0, 2.001, 48.001), shapely.box(2.003, 48.0, 2.004, 48.001)])),
        Zone("am", "", Category.COURT, shapely.box(179.9995, -17.0, 180.0, -16.999)),
        Zone("low", "", Category.SHELTER, shapely.box(-0.1, 51.5, -0.099, 51.501), buffer_m=1.0,
             jurisdiction="GB", source="x.geojson"),
    ]  # fmt: skip
    policy = load_policy_text('pack = "us-strictest"\n', "<test>")
    zs = ZoneSet.compile(zones, policy, "v-awkward")
    loaded = compiled.load(compiled.save(zs, tmp_path / "a.gfz"))
    assert loaded.zones == zs.zones and loaded.warnings == zs.warnings
    assert any("buffer_m 1 is below" in w.message for w in loaded.warnings)
    assert_same_tables(zs, loaded)
    assert isinstance(loaded.index, GridIndex) and len(loaded.index.forced) >= 1
    rng = np.random.default_rng(5)
    lon, lat, acc = edge_points(zs, rng, per_zone=2000)
    for at in (1_600_000_000.0, 1_750_000_000.0):
        a = Engine(zs).check_many(lat, lon, acc, at=np.full(len(lon), at))
        b = Engine(loaded).check_many(lat, lon, acc, at=np.full(len(lon), at))
        assert np.array_equal(a.reason, b.reason) and np.array_equal(a.zone_index, b.zone_index)
    assert_same_decisions(zs, loaded, lon, lat, acc)


# 3: int64 integers; 4: frames with centres; 5: float64 level floats and frames; 6: the pieces'
# WKB
@pytest.mark.parametrize("version", [1, 3, 4, 5, 6])
def test_an_old_format_file_asks_to_be_recompiled(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.gfz"
    with zipfile.ZipFile(path, "w") as zf:
        manifest = {"format": compiled.FORMAT, "format_version": version}
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("zoneset.json", b"{}")
    with pytest.raises(CompiledFileError, match=rf"format version {version};.*recompile"):
        compiled.load(path)


def test_the_file_is_arrays_and_json_only(bundled: ZoneSet, saved: Path) -> None:
    """Members are zoneset.json, .npy arrays and the manifest, stored (not deflated), in the
    order loading needs them: what its slow steps read first, the levels last, and the
    manifest, which lists the others' checksums, after them (see save)."""
    with zipfile.ZipFile(saved) as zf:
        names = [i.filename for i in zf.infolist()]
        assert names == [compiled.META, *(f"{n}.npy" for n in compiled.ARRAYS), compiled.MANIFEST]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        manifest = json.loads(zf.read(compiled.MANIFEST))
    assert manifest["format_version"] == compiled.FORMAT_VERSION == 7
    assert set(manifest["members"]) == compiled.MEMBERS
    early = {n for needs, _, _ in compiled._JOBS.values() for n in needs} - {compiled.META}
    assert set(compiled.ARRAYS) & early == set(list(compiled.ARRAYS)[: len(early)])
    grid = bundled.index
    assert isinstance(grid, GridIndex)
    assert grid.fine.ints.dtype == grid.sub.entries.dtype == np.int32  # format 4


def test_streamed_members_are_what_np_save_writes(
    bundled: ZoneSet, saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save streams each member into the file: every array is byte for byte np.save's, with
    the size and SHA-256 the manifest lists, and zoneset.json json.dumps', whatever the size of
    the chunks they are written in; and a zone set saves to the same bytes every time."""
    monkeypatch.setattr(compiled, "_WKB_CHUNK", 7)  # the bundled zones in many chunks
    monkeypatch.setattr(compiled, "_JSON_CHUNK", 5)
    monkeypatch.setattr(zipfile.time, "time", lambda: 1e9)  # saved "in 2001"
    again = compiled.save(bundled, tmp_path / "chunked.gfz")
    arrays = compiled._arrays(bundled)
    geoms = np.empty(len(bundled.zones), dtype=object)
    geoms[:] = [z.geometry for z in bundled.zones]
    wkb = shapely.to_wkb(geoms)
    expected = {
        **{name: arrays[name]() for name in compiled.ARRAYS if name != "zone.wkb"},
        "zone.wkb": np.frombuffer(b"".join(wkb), dtype=np.uint8),
    }
    assert np.array_equal(
        expected["zone.wkb_start"], np.cumsum([0, *map(len, wkb)], dtype=np.int64)
    )
    meta = json.dumps(compiled._meta(bundled), separators=(",", ":")).encode()
    for path in (saved, again):
        with zipfile.ZipFile(path) as zf:
            listed = json.loads(zf.read(compiled.MANIFEST))["members"]
            assert zf.read(compiled.META) == meta  # written in pieces, read whole
            for name, (dtype, _) in compiled.ARRAYS.items():
                raw = zf.read(f"{name}.npy")
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(expected[name], dtype=dtype))
                assert raw == buf.getvalue(), name
                assert listed[f"{name}.npy"] == {
                    "sha256": hashlib.sha256(raw).hexdigest(),
                    "bytes": len(raw),
                }
    assert compiled.load(again).version == bundled.version
    # Saved at another time, in other chunks: the same bytes (every member dated alike).
    assert again.read_bytes() == saved.read_bytes()
    # And compiled again from the files: still the same bytes, as docs/operations.md says.
    recompiled = compiled.save(ZoneSet.from_paths(BUNDLED_ZONES), tmp_path / "again.gfz")
    assert recompiled.read_bytes() == saved.read_bytes()


# --- reading: members straight from the file, hashed block by block on another thread ---------


def _span(path: Path, member: str) -> tuple[int, int]:
    """Where a stored member's local header is, and where its data starts."""
    with zipfile.ZipFile(path) as zf:
        at = zf.getinfo(member).header_offset
    head = path.read_bytes()[at : at + 30]
    name_len, extra_len = struct.unpack_from("<HH", head, 26)
    return at, at + 30 + name_len + extra_len


def _patched(saved: Path, tmp_path: Path, at: int, new: bytes) -> Path:
    raw = bytearray(saved.read_bytes())
    raw[at : at + len(new)] = new
    out = tmp_path / "patched.gfz"
    out.write_bytes(bytes(raw))
    return out


def test_a_file_read_in_many_small_blocks_loads_the_same(
    bundled: ZoneSet, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every block is hashed after it is read, on another thread: the blocks must reach the
    hash in order, or a sound file would fail its checksums."""
    monkeypatch.setattr(compiled._Member, "BLOCK", 4096)
    with zipfile.ZipFile(saved) as zf:
        assert zf.getinfo("sub.ints.npy").file_size > 50 * 4096
    loaded = compiled.load(saved)
    assert loaded.zones == bundled.zones
    assert_same_tables(bundled, loaded)


@pytest.mark.parametrize("where", ["first block", "middle", "last byte"])
def test_a_flipped_byte_in_a_large_member_is_a_checksum_mismatch(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setattr(compiled._Member, "BLOCK", 4096)
    _, start = _span(saved, "sub.ints.npy")
    with zipfile.ZipFile(saved) as zf:
        size = zf.getinfo("sub.ints.npy").file_size
    at = {"first block": start + 200, "middle": start + size // 2, "last byte": start + size - 1}
    raw = saved.read_bytes()
    bad = _patched(saved, tmp_path, at[where], bytes([raw[at[where]] ^ 0x01]))
    with pytest.raises(CompiledFileError, match=r"checksum mismatch in sub\.ints\.npy"):
        compiled.load(bad)


def test_a_compressed_member_is_refused(saved: Path, tmp_path: Path) -> None:
    """Only stored members are read (as they lie in the file); save never compresses."""
    out = tmp_path / "deflated.gfz"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            packed = zipfile.ZIP_DEFLATED if info.filename == "zone.wkb.npy" else None
            dst.writestr(info.filename, src.read(info), compress_type=packed)
    with pytest.raises(CompiledFileError, match=r"not a readable.*zone\.wkb\.npy is compressed"):
        compiled.load(out)


def test_local_headers_must_agree_with_the_directory(saved: Path, tmp_path: Path) -> None:
    """The data of a member is found from its local header: one naming another member, or
    whose extra field pushes its data over the next member, is refused."""
    at, _ = _span(saved, "zone.wkb.npy")
    renamed = _patched(saved, tmp_path, at + 30, b"zone.wkX.npy")
    with pytest.raises(CompiledFileError, match=r"not a readable.*local and central names differ"):
        compiled.load(renamed)
    at, _ = _span(saved, compiled.META)
    longer = _patched(saved, tmp_path, at + 28, struct.pack("<H", 100))
    with pytest.raises(CompiledFileError, match=r"not a readable.*overlap"):
        compiled.load(longer)
    damaged = _patched(saved, tmp_path, at, b"PK\x09\x09")
    with pytest.raises(CompiledFileError, match=r"not a readable.*bad local file header"):
        compiled.load(damaged)


def test_zone_columns_of_different_lengths_are_refused() -> None:
    """Loading's zones job raises, rather than building fewer zones, when one of its per-zone
    columns is shorter than the others (a malformed file the later checks would also refuse)."""
    policy = load_policy_text("", "<empty>")
    meta = {"zones": {"id": ["a", "b"], "name": ["A", "B"], "source": ["s", "s"],
                      "jurisdiction": [None, None]}}  # fmt: skip
    geoms = np.array([shapely.Point(0, 0), shapely.Point(1, 1)], dtype=object)
    two, one = np.array([5.0, 5.0]), np.array([np.nan])
    code = np.zeros(2, dtype=np.uint8)
    zones, _, _ = compiled._zones(code, two, two, two, two, (meta, policy), geoms)
    assert [z.id for z in zones] == ["a", "b"]
    for short in range(4):  # radius, own buffer, valid from, valid until
        cols = [two, np.full(2, np.nan), np.full(2, np.nan), np.full(2, np.nan)]
        cols[short] = one
        with pytest.raises(ValueError, match="different lengths"):
            compiled._zones(code, *cols, (meta, policy), geoms)

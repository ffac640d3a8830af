"""Compiled zone-set files (`.gfz`): one checksummed file that `Engine.load` opens quickly.

The file is a ZIP archive (members stored, not deflated, so reading is a copy). `manifest.json`
names the format and its version and gives the SHA-256 and size of every other member.
`zoneset.json` holds what is text: the zone set's version, the resolved policy, the beacon
registry, and the zones' ids, names, sources and jurisdictions as columns. Everything else is a
NumPy `.npy` member: the zones' numbers and geometry (WKB in one byte array plus offsets), and
the built index: `ExactIndex`'s pieces (flat rings in their tile frames, tiles, bounds) and
`GridIndex`'s tables (forced boxes, the coarse table's keys, and both cell levels in the
kernel's own layout). Loading builds nothing expensive: hash tables are refilled from their
keys (the subcells' keys derived from the split fine cells), the box tree from the pieces'
stored bounds, and the `Zone` objects from the columns. Decisions are the compiled set's, array
for array.

Loading checks the magic, the format version and the size limits before it reads a member, and
each member's checksum before anything is built from it. It parses only data: JSON, and `.npy`
headers (dtype and shape, checked before the array is allocated; the data is read into the
array as bytes). Nothing is unpickled or executed. Arrays are copied from the file, never
mapped: a file overwritten in place cannot change arrays once checked. Because whoever crafts a
file can also write a matching manifest, every array is then checked as data: dtype and shape,
finiteness, and every index and offset within range of what it indexes, so a hostile file is
refused with a CompiledFileError and can never steer a compiled kernel outside its arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import itertools
import json
import math
import os
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import shapely

from geofence.beacons import Beacon, BeaconRegistry
from geofence.categories import CATEGORIES, Category
from geofence.errors import CompiledFileError, Problem
from geofence.geodesy import N_COLS, N_ROWS
from geofence.grid import (
    COARSE_COLS,
    COARSE_ROWS,
    FINE_COLS,
    FINE_ROWS,
    STATE_INSIDE,
    STATE_NEAR,
    STATE_SUB,
    SUB,
    GridIndex,
    Level,
    release_freed_memory,
)
from geofence.index import INTERIOR, ExactIndex
from geofence.kernels import FlatParts, HashTable, level_fault
from geofence.policy import _CHOICES as POLICY_CHOICES
from geofence.policy import BeaconRules, CategoryRule, Policy, PresenceRules, RequestRules
from geofence.zones import MAX_VERTICES_PER_ZONE, MAX_ZONES, Zone
from geofence.zoneset import ZoneSet

FORMAT = "geofence-zoneset"
# 1: JSON zones, index rebuilt on load. 2: the built index stored as .npy arrays. 3: the sub
# level's list entries name the fine level's frames (it stores none). 4: the levels' integers
# (cells and list entries) are int32; members are in the order loading needs them. 5: frames
# without the cell centre (the kernels compute it from the cell), 7 columns instead of 9.
# 6: the levels' floats and frames are float32. 7: the pieces are only their flat coordinates
# (the exact index measures those), no WKB.
FORMAT_VERSION = 7
# Refused before anything is read or parsed. The sizes are the ones the ZIP declares: a member
# is read as the stored span its directory entry gives (compressed members are refused).
MAX_FILE_BYTES = 8 << 30  # the .gfz file itself (a 1M-zone set is a few GB of tables)
MAX_PAYLOAD_BYTES = 8 << 30  # every member but the manifest, uncompressed, together
MAX_MANIFEST_BYTES = 64 * 1024  # manifest.json, uncompressed
MAX_MEMBERS = 64  # entries in the archive (a real file has 2 + len(ARRAYS))
META = "zoneset.json"  # the name format 1 gave its one JSON payload
MANIFEST = "manifest.json"
# Zone count and vertices per zone: the limits of geofence.zones (checked after parsing too).

# A level's arrays, in the kernel's layout (see grid.Level); its hash table is rebuilt from keys.
_LEVEL_FIELDS: dict[str, tuple[str, tuple[int, ...]]] = {
    "ints": ("i4", (5,)),
    "floats": ("f4", (3,)),
    "entries": ("i4", (2,)),
    "combos": ("f4", (7,)),
}

# Every array member: name -> (dtype, shape after the first axis). Lengths are checked against
# each other once all are read. Saved in this order, after zoneset.json: what loading's slow
# steps read (_JOBS) first, in the order they are queued (so that the two that need the zones'
# geometry come last, and no thread waits for another), and the levels last.
ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "fine.keys": ("i8", ()),  # in slot order: strictly increasing (sub keys are derived)
    "coarse.keys": ("i8", ()),  # in slot order: strictly increasing
    "zone.category": ("u1", ()),
    "zone.radius_m": ("f8", ()),
    "zone.buffer_m": ("f8", ()),  # the zone's own buffer_m; NaN: none
    "zone.valid_from": ("f8", ()),  # NaN: none
    "zone.valid_until": ("f8", ()),  # NaN: none
    "zone.wkb": ("u1", ()),  # every zone's WKB, end to end
    "zone.wkb_start": ("i8", ()),  # zone i is wkb[start[i]:start[i + 1]]
    "part.zone": ("i8", ()),
    "part.tile": ("i8", ()),
    "part.bounds": ("f8", (4,)),
    "flat.is_point": ("b1", ()),
    "flat.ring_start": ("i8", ()),
    "flat.coord_start": ("i8", ()),
    "flat.xs": ("f8", ()),
    "flat.ys": ("f8", ()),
    "grid.forced": ("f8", (4,)),
    "coarse.clearance": ("f8", ()),
    **{f"fine.{k}": v for k, v in _LEVEL_FIELDS.items()},
    **{f"sub.{k}": v for k, v in _LEVEL_FIELDS.items()},
}
MEMBERS = frozenset({META, *(f"{name}.npy" for name in ARRAYS)})


# --- writing -----------------------------------------------------------------------------------


def save(zone_set: ZoneSet, path: str | Path) -> Path:
    """Write `zone_set`, its built index included, to `path` as a compiled file; return it.

    Each member is streamed into the file and hashed on its way, and the manifest of their
    sizes and SHA-256 written last. Why: holding every member's bytes until the manifest was
    written took about as much memory again as the file (1M zones: ~2.4 GB over the set's 3.6).
    """
    out = Path(path)
    # Written beside the target and renamed over it: a reader never sees half a file, and a
    # failed save leaves the old one.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        # Stored, not deflated: the tables are most of the file, and inflating them would cost
        # more start-up time than reading them.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            listed = {META: _write_member(zf, META, None, _write_meta(zone_set))}
            release_freed_memory()  # the objects _meta made (1M zones: ~0.1 GB)
            for name, make in _arrays(zone_set).items():  # ARRAYS' order is the file's
                made = make()
                if isinstance(made, _Streamed):
                    assert ARRAYS[name] == ("u1", ())  # a bug here, not a user error
                    payload, write = made.length, functools.partial(_write_streamed, s=made)
                else:
                    dtype, tail = ARRAYS[name]
                    a = np.ascontiguousarray(made, dtype=np.dtype(dtype))
                    assert a.shape[1:] == tail, (name, a.shape)  # a bug here, not a user error
                    payload, write = a.nbytes, functools.partial(_write_npy, a=a)
                    del a
                listed[f"{name}.npy"] = _write_member(zf, f"{name}.npy", payload, write)
                del made, write  # one derived array alive at a time
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "zone_set_version": zone_set.version,
                "zones": len(zone_set),
                "members": listed,
            }
            # Every member dated as zipfile dates a streamed one (1980-01-01): the same zone
            # set always saves to the same bytes.
            zf.writestr(zipfile.ZipInfo(MANIFEST), json.dumps(manifest, indent=1))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


class _HashingSink:
    """A writable that passes its bytes on to `out`, counting and hashing them."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes | memoryview) -> int:
        self.out.write(data)
        self.sha256.update(data)
        self.bytes += len(data)
        return len(data)


# Members whose payload may come near 2 GiB are written with ZIP64 sizes (zipfile cannot widen a
# streamed member's header afterwards); a .npy header is well under this margin.
_ZIP64_MARGIN = 1 << 20


def _write_member(
    zf: zipfile.ZipFile, name: str, payload: int | None, write: Callable[[_HashingSink], object]
) -> dict[str, Any]:
    """Stream one member into `zf` through `write`; its manifest entry (bytes, SHA-256).

    `payload`: the member's size, about (None: not known, so ZIP64 sizes in case).
    """
    big = payload is None or payload + _ZIP64_MARGIN > zipfile.ZIP64_LIMIT
    with zf.open(name, "w", force_zip64=big) as member:
        sink = _HashingSink(member)
        write(sink)
    return {"sha256": sink.sha256.hexdigest(), "bytes": sink.bytes}


def _write_meta(zs: ZoneSet) -> Callable[[_HashingSink], None]:
    """What writes zoneset.json: json.dumps(_meta(zs), separators=(",", ":")), byte for byte,
    each zone column encoded on its own.

    Why in pieces: whole, it was 0.2 GB more at once at 1M zones (see below).
    """

    def write(sink: _HashingSink) -> None:
        meta = _meta(zs)
        zones, beacons = meta.pop("zones"), meta.pop("beacons")  # the last two keys
        dump = functools.partial(json.dumps, separators=(",", ":"))
        sink.write(dump(meta)[:-1].encode("utf-8"))  # '{"version":...,"policy":{...}'
        opening = b',"zones":{'
        for name, column in zones.items():
            sink.write(opening + dump(name).encode("utf-8") + b":[")
            # A slice of the column at a time: json.dumps of a whole list makes a string per
            # item and separator before joining them (1M zones: ~0.1 GB a column).
            for start in range(0, len(column), _JSON_CHUNK):
                text = dump(column[start : start + _JSON_CHUNK])[1:-1]  # the items, no brackets
                sink.write((b"," if start else b"") + text.encode("utf-8"))
            sink.write(b"]")
            opening = b","
        sink.write(b'},"beacons":' + dump(beacons).encode("utf-8") + b"}")

    return write


def _write_npy(sink: _HashingSink, a: npt.NDArray[Any]) -> None:
    """`a` in .npy format (as np.save writes it), in slices, never copied whole."""
    np.lib.format.write_array(sink, a, allow_pickle=False)


def _write_streamed(sink: _HashingSink, s: _Streamed) -> None:
    """A streamed uint8 member in .npy format: the bytes np.save writes for the joined array."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (s.length,)}
    np.lib.format.write_array_header_1_0(sink, header)
    written = 0
    for piece in s.pieces:
        written += sink.write(piece)
    if written != s.length:
        raise AssertionError(f"{written} bytes streamed where {s.length} were announced")


def _meta(zs: ZoneSet) -> dict[str, Any]:
    p = zs.policy
    return {
        "version": zs.version,
        "policy": {
            "pack": p.pack,
            "fingerprint": p.fingerprint,
            "rules": {c.value: dataclasses.asdict(r) for c, r in p.rules.items()},
            "requests": dataclasses.asdict(p.requests),
            "beacons": dataclasses.asdict(p.beacons),
            "presence": dataclasses.asdict(p.presence),
        },
        "zones": {
            "id": [z.id for z in zs.zones],
            "name": [z.name for z in zs.zones],
            "source": [z.source for z in zs.zones],
            "jurisdiction": [z.jurisdiction for z in zs.zones],
        },
        "beacons": (
            [dataclasses.asdict(b) for b in zs.beacons.beacons] if zs.beacons is not None else None
        ),
    }


@dataclasses.dataclass(frozen=True, slots=True)
class _Streamed:
    """A uint8 member written piece by piece: its length, then its pieces in order."""

    length: int
    pieces: Iterator[bytes]


_WKB_CHUNK = 1 << 16  # zones whose WKB is joined at a time while it is written
_JSON_CHUNK = 1 << 16  # zones whose ids (names, ...) are encoded at a time in zoneset.json


def _wkb(zones: Sequence[Zone]) -> tuple[_Streamed, npt.NDArray[np.int64]]:
    """Every zone's WKB, end to end, to be streamed; and where each one starts (plus the end).

    Made twice, a chunk of zones at a time: once for the sizes, once to be written. Why: made
    once and kept, the WKB of 1M zones was 0.38 GB more at once while saving (0.2 GB as bytes
    objects, and their join); a second pass costs about a second.
    """
    geoms = np.empty(len(zones), dtype=object)
    geoms[:] = [z.geometry for z in zones]
    chunks = [geoms[i : i + _WKB_CHUNK] for i in range(0, len(geoms), _WKB_CHUNK)]
    sizes = [np.fromiter(map(len, shapely.to_wkb(c)), dtype=np.int64, count=len(c)) for c in chunks]
    start = np.cumsum(np.concatenate([np.zeros(1, dtype=np.int64), *sizes]), dtype=np.int64)
    pieces = (b"".join(shapely.to_wkb(c)) for c in chunks)
    return _Streamed(int(start[-1]), pieces), start


def _none_nan(values: list[float | None]) -> npt.NDArray[np.float64]:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _arrays(zs: ZoneSet) -> dict[str, Callable[[], npt.ArrayLike | _Streamed]]:
    """How to make each member array of `zs`, in the file's order.

    Why functions: `save` makes, writes and drops one at a time, so the derived arrays (the
    zones' WKB and columns, the tables' keys: 0.4 GB at 1M zones) are never all alive at once.
    """
    ex, grid = zs.exact, zs.index
    if not isinstance(grid, GridIndex):
        raise TypeError(f"only a GridIndex can be saved, not {type(grid).__name__}")
    zones = zs.zones

    @functools.cache
    def wkb() -> tuple[_Streamed, npt.NDArray[np.int64]]:
        return _wkb(zones)

    def wkb_start() -> npt.NDArray[np.int64]:
        start = wkb()[1]
        wkb.cache_clear()  # the WKB was written just before
        return start

    out: dict[str, Callable[[], npt.ArrayLike | _Streamed]] = {
        "zone.category": lambda: zs.category,
        "zone.radius_m": lambda: np.array([z.radius_m for z in zones], dtype=np.float64),
        "zone.buffer_m": lambda: _none_nan([z.buffer_m for z in zones]),
        "zone.valid_from": lambda: _none_nan([z.valid_from for z in zones]),
        "zone.valid_until": lambda: _none_nan([z.valid_until for z in zones]),
        "zone.wkb": lambda: wkb()[0],
        "zone.wkb_start": wkb_start,
        "part.zone": lambda: ex.part_zone,
        "part.tile": lambda: ex.part_tile,
        "part.bounds": lambda: np.asarray(ex.part_bounds, dtype=np.float64).reshape(-1, 4),
        # The pieces in their tile frames (lon/lat for INTERIOR pieces), as the kernels read them.
        "flat.is_point": lambda: ex.flat.is_point,
        "flat.ring_start": lambda: ex.flat.ring_start,
        "flat.coord_start": lambda: ex.flat.coord_start,
        "flat.xs": lambda: ex.flat.xs,
        "flat.ys": lambda: ex.flat.ys,
        "grid.forced": lambda: grid.forced.reshape(-1, 4),
        "coarse.keys": grid.coarse.slot_keys,
        "coarse.clearance": lambda: grid.coarse_clearance,
        "fine.keys": grid.fine.table.slot_keys,
    }
    for prefix, level in (("fine", grid.fine), ("sub", grid.sub)):
        for field in _LEVEL_FIELDS:  # ints, floats, entries, combos
            out[f"{prefix}.{field}"] = functools.partial(getattr, level, field)
    return {name: out[name] for name in ARRAYS}


# --- reading -----------------------------------------------------------------------------------


def load(path: str | Path) -> ZoneSet:
    """Read and verify a compiled file; raise CompiledFileError on anything amiss.

    Checked in order, each before the work it guards: the file's size; the archive's members and
    their declared sizes; the manifest (format, version, zone count, one entry per member); each
    member's SHA-256; then zoneset.json is parsed and every value checked for type and range, the
    arrays are parsed (`.npy`, no pickles) and checked for dtype, shape, finiteness and indexes
    in range, and the zones' geometry for type, vertex count, coordinates and validity. Only then
    is a zone set assembled from them.
    """
    p = Path(path)
    with ThreadPoolExecutor(_WORKERS, "gfz-load") as work:
        return _load(p, work)


# Threads for the slow steps (see _JOBS). With the hash thread, two keep both cores of a small
# machine busy while the main thread reads, and let a step run while another waits for one.
_WORKERS = 2


def _load(p: Path, work: ThreadPoolExecutor) -> ZoneSet:
    jobs: dict[str, Future[Any]] = {}
    try:
        arrays = _read_members(p, work, jobs)
    except CompiledFileError:
        raise
    except (
        OSError,
        KeyError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,  # a compression method zipfile does not implement
        ValueError,
        EOFError,
        RecursionError,
        MemoryError,
    ) as exc:
        raise CompiledFileError(f"{p}: not a readable compiled zone set ({exc})") from None
    try:
        return _assemble(arrays, jobs)
    except CompiledFileError as exc:
        raise CompiledFileError(f"{p}: {exc}") from None
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        RecursionError,
        MemoryError,
        shapely.errors.GEOSException,
    ) as exc:
        raise CompiledFileError(f"{p}: malformed payload ({type(exc).__name__}: {exc})") from None


def _read_members(
    p: Path, work: ThreadPoolExecutor, jobs: dict[str, Future[Any]]
) -> dict[str, Any]:
    """Every member's content (zoneset.json's bytes, the arrays), each checked against the manifest.

    Members are read straight from the file into the memory that keeps them (see _Member), and
    none is returned unless every member's SHA-256 matches the manifest. As soon as the members
    a slow step needs have been read, the step is queued on `work` (see _JOBS): it waits there
    for their checksums, runs while the rest is read and hashed, and its result is only used
    after every array has been checked.
    """
    # One open file for the directory and the data: what is read is what the directory describes.
    with open(p, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise CompiledFileError(
                f"{p}: file of {size} bytes is over the limit of {MAX_FILE_BYTES}"
            )
        with zipfile.ZipFile(f) as zf, ThreadPoolExecutor(1, "gfz-sha256") as pool:
            members = zf.infolist()
            listed = _manifest(p, zf, members)
            data = _spans(f, size, [m for m in members if m.filename != MANIFEST])
            content: dict[str, Any] = {}
            digests: dict[str, Future[str]] = {}
            for m, start in data:
                member = _Member(f, start, m.file_size, pool)
                try:
                    if m.filename == META:
                        content[META] = member.read(m.file_size)
                    else:
                        name = m.filename.removesuffix(".npy")
                        content[name] = _npy(member, m.file_size, name)
                except CompiledFileError as exc:
                    _verify(p, digests, listed)  # an altered earlier member is reported as such
                    raise CompiledFileError(f"{p}: {exc}") from None
                digests[m.filename] = member.hexdigest()
                _start_jobs(work, jobs, content, digests, listed)
            _verify(p, digests, listed)
    # Checked after the members that are there, so that an altered one is reported as such.
    missing = sorted(MEMBERS - {m.filename for m, _ in data})
    if missing:
        raise CompiledFileError(f"{p}: archive members missing: {missing}")
    return content


def _manifest(
    p: Path, zf: zipfile.ZipFile, members: list[zipfile.ZipInfo]
) -> dict[str, dict[str, Any]]:
    """The manifest's entry per member, once the archive's directory agrees with it."""
    if len(members) > MAX_MEMBERS:
        raise CompiledFileError(
            f"{p}: {len(members)} archive members; a compiled file has {len(MEMBERS) + 1}"
        )
    info = zf.getinfo(MANIFEST)
    if info.file_size > MAX_MANIFEST_BYTES:
        raise CompiledFileError(
            f"{p}: manifest of {info.file_size} bytes is over the limit of {MAX_MANIFEST_BYTES}"
        )
    manifest = json.loads(zf.read(info), parse_constant=_no_constant)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CompiledFileError(f"{p}: not a geofence compiled zone set")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CompiledFileError(
            f"{p}: format version {manifest.get('format_version')!r}; this geofence "
            f"reads version {FORMAT_VERSION}: recompile it from the zone files with "
            "`geofence compile ZONES -o FILE.gfz`"
        )
    zones = manifest.get("zones")
    if isinstance(zones, int) and not isinstance(zones, bool) and zones > MAX_ZONES:
        raise CompiledFileError(
            f"{p}: {zones} zones, over the limit of {MAX_ZONES} (geofence.zones.MAX_ZONES)"
        )
    listed = manifest.get("members")
    names = [m.filename for m in members if m.filename != MANIFEST]
    if not isinstance(listed, dict) or set(listed) != MEMBERS:
        raise CompiledFileError(f"{p}: the manifest does not list this format's members")
    if len(names) != len(set(names)) or not set(names) <= MEMBERS:
        extra = sorted(set(names) - MEMBERS)
        raise CompiledFileError(
            f"{p}: archive members differ from the format's (unknown or repeated: "
            f"{extra or 'names'})"
        )
    total = sum(m.file_size for m in members if m.filename != MANIFEST)
    if total > MAX_PAYLOAD_BYTES:
        raise CompiledFileError(
            f"{p}: payload of {total} bytes is over the limit of {MAX_PAYLOAD_BYTES}"
        )
    for m in members:
        if m.filename == MANIFEST:
            continue
        entry = listed[m.filename]
        if not isinstance(entry, dict) or entry.get("bytes") != m.file_size:
            # The size is half of the member's integrity record, checked before reading.
            raise CompiledFileError(
                f"{p}: checksum mismatch in {m.filename}: {m.file_size} bytes where the "
                "manifest lists another size: the file is corrupt or was altered"
            )
    return listed


# A ZIP local file header: signature, 22 bytes _spans does not need, name and extra lengths.
_LOCAL_HEADER = struct.Struct("<4s22xHH")


def _spans(
    f: io.FileIO, size: int, members: list[zipfile.ZipInfo]
) -> list[tuple[zipfile.ZipInfo, int]]:
    """Each member with where its data starts, in file order, once its local header agrees.

    Why not zipfile's reader: it hands out new bytes objects block by block (to be copied into
    the arrays) and computes a CRC-32 the SHA-256 makes redundant; reading a stored member's
    span directly fills each array in place. Only stored, unencrypted members are read, each
    within the file and none overlapping another.
    """
    out = []
    for m in members:
        if m.compress_type != zipfile.ZIP_STORED or m.compress_size != m.file_size:
            raise zipfile.BadZipFile(f"{m.filename} is compressed; compiled files store members")
        if m.flag_bits & 0x1:
            raise zipfile.BadZipFile(f"{m.filename} is encrypted")
        f.seek(m.header_offset)
        head = f.read(_LOCAL_HEADER.size)
        if len(head) != _LOCAL_HEADER.size:
            raise zipfile.BadZipFile(f"{m.filename}: truncated local file header")
        magic, name_len, extra_len = _LOCAL_HEADER.unpack(head)
        if magic != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"{m.filename}: bad local file header")
        if f.read(name_len) != m.filename.encode("ascii"):  # names are MEMBERS: ASCII
            raise zipfile.BadZipFile(f"{m.filename}: local and central names differ")
        start = m.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if start + m.file_size > size:
            raise zipfile.BadZipFile(f"{m.filename} runs past the end of the file")
        out.append((m, start))
    out.sort(key=lambda ms: ms[1])
    for (a, start_a), (b, start_b) in itertools.pairwise(out):
        if start_a + a.file_size > start_b:
            raise zipfile.BadZipFile(f"{a.filename} and {b.filename} overlap")
    return out


def _verify(
    p: Path, digests: Mapping[str, Future[str]], listed: Mapping[str, dict[str, Any]]
) -> None:
    """Every member read so far matches the SHA-256 its manifest entry gives, in file order."""
    for name, digest in digests.items():
        if digest.result() != listed[name].get("sha256"):
            raise CompiledFileError(
                f"{p}: checksum mismatch in {name}: the file is corrupt or was altered"
            )


class _Member:
    """A stored member's bytes, read from the file straight into the memory that keeps them.

    Every block read is then hashed on `pool`'s one thread (hashlib releases the GIL, so the
    SHA-256 runs on a second core while the next block is read) from that same memory: no block
    is copied or buffered twice. The thread runs its queue in order, so each member's updates
    stay in order without anyone waiting for them; `hexdigest` is queued last.
    """

    BLOCK = 4 << 20

    def __init__(self, f: io.FileIO, start: int, size: int, pool: ThreadPoolExecutor) -> None:
        self._f = f
        self._left = size
        self._pool = pool
        self._sha = hashlib.sha256()
        f.seek(start)

    def readinto(self, view: memoryview) -> None:
        """Fill `view` (bytes) with the member's next len(view) bytes; EOFError if it has fewer."""
        if len(view) > self._left:
            raise EOFError("a member ends before its data")
        at = 0
        while at < len(view):
            got = self._f.readinto(view[at : at + self.BLOCK])
            if not got:
                raise EOFError("the file ends before a member's data")
            self._pool.submit(self._sha.update, view[at : at + got])
            at += got
        self._left -= len(view)

    @property
    def left(self) -> int:
        """Bytes of the member not read yet."""
        return self._left

    def read(self, n: int = -1, /) -> bytes:
        """Up to n bytes, or all that is left (np.lib.format reads headers this way)."""
        buf = bytearray(self._left if n < 0 else min(n, self._left))
        self.readinto(memoryview(buf))
        return bytes(buf)

    def hexdigest(self) -> Future[str]:
        """The member's SHA-256, once every byte of it has been read."""
        if self._left:
            raise EOFError("a member was not read to its end")
        return self._pool.submit(self._sha.hexdigest)


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _npy(fp: _Member, size: int, name: str) -> npt.NDArray[Any]:
    """One `.npy` member as an array of exactly the dtype and trailing shape `name` needs.

    The header is read first, and the array's size checked against the member's, so a header
    that claims a huge shape is refused before anything is allocated for it. Only the header
    is parsed (np.lib.format: no pickles); the data is read into the array as raw bytes.
    """
    dtype, tail = ARRAYS[name]
    where = f"{name}.npy"
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, got = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, got = np.lib.format.read_array_header_2_0(fp)
        else:
            raise _bad(where, f"is .npy version {version}, not 1.0 or 2.0")
    except ValueError as exc:
        raise _bad(where, f"is not a .npy array ({exc})") from None
    if got != np.dtype(dtype):
        raise _bad(where, f"has dtype {got.str}, not {np.dtype(dtype).str}")
    if fortran or len(shape) != 1 + len(tail) or tuple(shape[1:]) != tail:
        raise _bad(where, f"has shape {shape}, not (n, {', '.join(map(str, tail))})")
    count = math.prod(shape)
    header = size - fp.left
    if header + count * got.itemsize != size:
        raise _bad(where, f"holds {size - header} bytes of data, not the {count} "
                   f"values of shape {shape}")  # fmt: skip
    array = np.empty(shape, dtype=np.dtype(dtype))
    fp.readinto(array.reshape(-1).view(np.uint8).data)
    return array


# --- checking zoneset.json: types and ranges, before anything is built from it ---------------


def _bad(where: str, what: str) -> CompiledFileError:
    return CompiledFileError(f"malformed payload: {where} {what}")


def _obj(value: Any, where: str, keys: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, f"is {type(value).__name__}, not an object")
    if keys is not None and set(value) != keys:
        missing, extra = sorted(keys - set(value)), sorted(set(value) - keys)
        raise _bad(where, f"has the wrong keys (missing {missing}, unknown {extra})")
    return value


def _text(value: Any, where: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise _bad(where, f"is {type(value).__name__}, not a string")


def _num(value: Any, where: str, optional: bool = False, non_negative: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(where, f"is {type(value).__name__}, not a number")
    try:
        f = float(value)
    except OverflowError:
        raise _bad(where, "is too large") from None
    if not math.isfinite(f) or (non_negative and f < 0):
        raise _bad(where, f"must be finite{' and >= 0' if non_negative else ''}, not {value!r}")


def _rules(value: Any, where: str, cls: type) -> None:
    fields = dataclasses.fields(cls)
    table = _obj(value, where, {f.name for f in fields})
    for f in fields:
        v = table[f.name]
        if f.name in POLICY_CHOICES:
            if v not in POLICY_CHOICES[f.name]:
                raise _bad(f"{where}.{f.name}", f"must be one of {POLICY_CHOICES[f.name]}")
        elif f.name == "set_by":
            _text(v, f"{where}.{f.name}")
        else:
            _num(v, f"{where}.{f.name}", optional=f.name == "missing_accuracy_m")


def _checked(data: Any) -> dict[str, Any]:
    """`data` itself once every value in zoneset.json has the type and range a zone set needs."""
    top = _obj(data, "top level", {"version", "policy", "zones", "beacons"})
    _text(top["version"], "version")
    pd = _obj(
        top["policy"], "policy", {"pack", "fingerprint", "rules", "requests", "beacons", "presence"}
    )
    _text(pd["pack"], "policy.pack")
    _text(pd["fingerprint"], "policy.fingerprint")
    rules = _obj(pd["rules"], "policy.rules")
    if set(rules) != {c.value for c in Category}:
        raise _bad("policy.rules", "does not cover exactly the categories")
    for name, rule in rules.items():
        _rules(rule, f"policy.rules.{name}", CategoryRule)
    _rules(pd["requests"], "policy.requests", RequestRules)
    _rules(pd["beacons"], "policy.beacons", BeaconRules)
    _rules(pd["presence"], "policy.presence", PresenceRules)
    columns = _obj(top["zones"], "zones", {"id", "name", "source", "jurisdiction"})
    n = None
    for key, column in columns.items():
        where = f"zones.{key}"
        if not isinstance(column, list):
            raise _bad(where, "is not an array")
        if len(column) > MAX_ZONES:
            raise _bad(where, f"holds {len(column)} zones, over the limit of {MAX_ZONES}")
        if n is not None and len(column) != n:
            raise _bad(where, f"holds {len(column)} zones, not {n} like the other columns")
        n = len(column)
        allowed = (str, type(None)) if key == "jurisdiction" else (str,)
        for i, v in enumerate(column):
            if type(v) not in allowed:
                raise _bad(f"{where}[{i}]", f"is {type(v).__name__}, not a string")
    beacons = top["beacons"]
    if beacons is not None:
        if not isinstance(beacons, list):
            raise _bad("beacons", "is not an array")
        names = {f.name for f in dataclasses.fields(Beacon)}
        for i, b in enumerate(beacons):
            where = f"beacons[{i}]"
            _obj(b, where, names)
            for k in ("beacon_id", "type", "status"):
                _text(b[k], f"{where}.{k}")
            for k in ("zone_id", "floor", "name"):
                _text(b[k], f"{where}.{k}", optional=True)
            _num(b["lat"], f"{where}.lat", optional=True, non_negative=False)
            _num(b["lon"], f"{where}.lon", optional=True, non_negative=False)
            _num(b["range_m"], f"{where}.range_m")
            if not isinstance(b["row"], int) or isinstance(b["row"], bool):
                raise _bad(f"{where}.row", "is not an integer")
    return top


# --- checking arrays: vectorised, before anything is built from them ---------------------------

A = npt.NDArray[Any]


def _length(arrays: Mapping[str, A], names: tuple[str, ...], n: int, what: str) -> None:
    for name in names:
        if len(arrays[name]) != n:
            raise _bad(f"{name}.npy", f"has {len(arrays[name])} rows, not one per {what} ({n})")


def _in_range(a: A, name: str, low: int, high: int) -> None:
    """Every value in [low, high): an index the kernels may use unchecked."""
    if a.size and (int(a.min()) < low or int(a.max()) >= high):
        raise _bad(f"{name}.npy", f"has values outside [{low}, {high}): an index out of range")


def _offsets(a: A, name: str, total: int) -> None:
    """CSR offsets: start at 0, never decrease, end at `total`."""
    if len(a) == 0 or a[0] != 0 or a[-1] != total or bool(np.any(a[1:] < a[:-1])):
        raise _bad(f"{name}.npy", f"is not offsets from 0 rising to {total}")


def _finite(a: A, name: str, nan_ok: bool = False, inf_ok: bool = False) -> None:
    if nan_ok and inf_ok:
        return
    bad = ~np.isfinite(a)
    if nan_ok:
        bad &= ~np.isnan(a)
    if inf_ok:
        bad &= ~np.isinf(a)
    if bool(bad.any()):
        raise _bad(f"{name}.npy", "holds values that are not finite")


def _ascending(a: A, name: str, high: int) -> None:
    """Strictly increasing cell keys in [0, high): a hash table's keys, each once."""
    _in_range(a, name, 0, high)
    if bool(np.any(a[1:] <= a[:-1])):
        raise _bad(f"{name}.npy", "is not strictly increasing")


_LEVEL_FAULTS = {
    1: "has a state that is not a state",
    2: "has a zone index out of range",
    3: "has a near-zone index out of range",
    4: "has a near or inside cell without a zone",
    5: "has a cell that can be near no zone",
    6: "has lists that are not offsets from 0 rising to the number of entries",
    7: "has a list entry whose piece index is out of range",
    8: "has a list entry whose frame index is out of range",
    9: "holds values that are not finite",
}


def _check_level(arrays: Mapping[str, A], prefix: str, n_cells: int, n_zones: int,
                 n_parts: int, max_state: int, n_combos: int) -> None:  # fmt: skip
    """A level's cells, lists and frames: lengths agree and every index is in range.

    n_combos: how many frames the level's entries may name (the sub level names the fine
    level's).
    """
    ints, floats = arrays[f"{prefix}.ints"], arrays[f"{prefix}.floats"]
    entries, combos = arrays[f"{prefix}.entries"], arrays[f"{prefix}.combos"]
    _length(arrays, (f"{prefix}.ints", f"{prefix}.floats"), n_cells, f"{prefix} cell")
    fault = level_fault(ints, floats, entries, n_combos, n_zones, n_parts, max_state,
                        STATE_NEAR, STATE_INSIDE)  # fmt: skip
    if fault:
        raise _bad(f"{prefix}.ints.npy, .floats.npy or .entries.npy", _LEVEL_FAULTS[fault])
    _finite(combos, f"{prefix}.combos")


def _check_arrays(arrays: Mapping[str, A], n_zones: int) -> None:
    """Every array's length against what it describes, and every index against its target."""
    zone_cols = ("zone.category", "zone.radius_m", "zone.buffer_m", "zone.valid_from",
                 "zone.valid_until")  # fmt: skip
    _length(arrays, zone_cols, n_zones, "zone")
    _length(arrays, ("zone.wkb_start",), n_zones + 1, "zone, plus one")
    _in_range(arrays["zone.category"], "zone.category", 0, len(CATEGORIES))
    _finite(arrays["zone.radius_m"], "zone.radius_m")
    if bool(np.any(arrays["zone.radius_m"] < 0)):
        raise _bad("zone.radius_m.npy", "holds negative radii")
    buffer_m = arrays["zone.buffer_m"]
    _finite(buffer_m, "zone.buffer_m", nan_ok=True)
    if bool(np.any(buffer_m < 0)):
        raise _bad("zone.buffer_m.npy", "holds negative buffers")
    for k in ("zone.valid_from", "zone.valid_until"):
        _finite(arrays[k], k, nan_ok=True)
    _offsets(arrays["zone.wkb_start"], "zone.wkb_start", len(arrays["zone.wkb"]))

    n_parts = len(arrays["part.zone"])
    _length(arrays, ("part.tile", "part.bounds", "flat.is_point"), n_parts, "zone piece")
    _length(arrays, ("flat.ring_start",), n_parts + 1, "zone piece, plus one")
    _in_range(arrays["part.zone"], "part.zone", 0, n_zones)
    tile = arrays["part.tile"]
    if tile.size and not bool(
        np.all((tile == INTERIOR) | ((tile >= 0) & (tile < N_ROWS * N_COLS)))
    ):
        raise _bad("part.tile.npy", "holds values that are not tiles")
    _finite(arrays["part.bounds"], "part.bounds")

    ring_start, coord_start = arrays["flat.ring_start"], arrays["flat.coord_start"]
    n_rings, n_coords = len(coord_start) - 1, len(arrays["flat.xs"])
    _length(arrays, ("flat.ys",), n_coords, "coordinate")
    _offsets(ring_start, "flat.ring_start", n_rings)
    _offsets(coord_start, "flat.coord_start", n_coords)
    for k in ("flat.xs", "flat.ys"):
        _finite(arrays[k], k)
    # A point piece is read at its first ring's first coordinate: both must exist.
    point = np.flatnonzero(arrays["flat.is_point"])
    first = ring_start[point]
    if bool(np.any(ring_start[point + 1] <= first)) or bool(
        np.any(coord_start[first + 1] <= coord_start[first])
    ):
        raise _bad("flat.ring_start.npy", "has a point piece without a coordinate")

    _finite(arrays["grid.forced"], "grid.forced")
    _ascending(arrays["coarse.keys"], "coarse.keys", COARSE_ROWS * COARSE_COLS)
    _length(arrays, ("coarse.clearance",), len(arrays["coarse.keys"]), "coarse cell")
    _finite(arrays["coarse.clearance"], "coarse.clearance")

    fine_keys = arrays["fine.keys"]
    _ascending(fine_keys, "fine.keys", FINE_ROWS * FINE_COLS)
    n_frames = len(arrays["fine.combos"])
    _check_level(arrays, "fine", len(fine_keys), n_zones, n_parts, STATE_SUB, n_frames)
    n_split = int(np.count_nonzero(arrays["fine.ints"][:, 0] == STATE_SUB))
    # Every split fine cell has all SUB x SUB subcells (the kernel finds them unchecked).
    _check_level(arrays, "sub", n_split * SUB * SUB, n_zones, n_parts, STATE_INSIDE, n_frames)
    if len(arrays["sub.combos"]):
        raise _bad("sub.combos.npy", "holds frames: the sub level uses the fine level's")


def _geometries(wkb: A, start: A, radius_m: A) -> npt.NDArray[np.object_]:
    """Zone geometries from WKB, refused unless each is one a zone file could hold."""
    n = len(radius_m)
    _offsets(start, "zone.wkb_start", len(wkb))
    if len(start) != n + 1:
        raise _bad("zone.wkb_start.npy", f"has {len(start)} rows, not one per zone plus one")
    blob = wkb.tobytes()
    sizes = np.diff(start)
    # 16 bytes a 2-D vertex: a longer one cannot be within the vertex limit, so it is refused
    # before GEOS allocates anything.
    over = np.flatnonzero(sizes > 32 + 16 * MAX_VERTICES_PER_ZONE * 2)
    if over.size:
        raise _bad(f"zones[{over[0]}].wkb", f"is over {MAX_VERTICES_PER_ZONE} vertices")
    geoms = _from_blob(blob, start)
    kind = shapely.get_type_id(geoms)  # -1 for None
    wrong = np.flatnonzero(~np.isin(kind, (0, 3, 6)))  # Point, Polygon, MultiPolygon
    if wrong.size:
        g = geoms[wrong[0]]
        name = None if g is None else g.geom_type
        raise _bad(f"zones[{wrong[0]}].wkb", f"is a {name}, not a Polygon, MultiPolygon or Point")
    empty = np.flatnonzero(shapely.is_empty(geoms))
    if empty.size:
        raise _bad(f"zones[{empty[0]}].wkb", "is empty")
    vertices = shapely.get_num_coordinates(geoms)
    many = np.flatnonzero(vertices > MAX_VERTICES_PER_ZONE)
    if many.size:
        i = many[0]
        raise _bad(
            f"zones[{i}].wkb",
            f"has {vertices[i]} vertices, over the limit of {MAX_VERTICES_PER_ZONE}",
        )
    has_z = shapely.has_z(geoms)
    if has_z.any():
        geoms[has_z] = shapely.force_2d(geoms[has_z])
    b = shapely.bounds(geoms).reshape(n, 4)
    with np.errstate(invalid="ignore"):
        inside = (
            np.isfinite(b).all(axis=1)
            & (b[:, 0] >= -180) & (b[:, 0] <= b[:, 2]) & (b[:, 2] <= 180)
            & (b[:, 1] >= -90) & (b[:, 1] <= b[:, 3]) & (b[:, 3] <= 90)
        )  # fmt: skip
    outside = np.flatnonzero(~inside)
    if outside.size:
        raise _bad(f"zones[{outside[0]}].wkb", "has coordinates outside longitude/latitude ranges")
    invalid = np.flatnonzero(~shapely.is_valid(geoms))
    if invalid.size:
        i = invalid[0]
        raise _bad(f"zones[{i}].wkb", f"is not valid ({shapely.is_valid_reason(geoms[i])})")
    no_radius = np.flatnonzero((kind == 0) & ~(radius_m > 0))
    if no_radius.size:
        raise _bad(f"zones[{no_radius[0]}].radius_m", "must be > 0 for a Point zone")
    return geoms


def _from_blob(blob: bytes, start: A) -> npt.NDArray[np.object_]:
    """Geometries from WKB laid end to end (offsets already checked), parsed in one call."""
    wkb = np.empty(len(start) - 1, dtype=object)  # an array: from_wkb takes a list 50% longer
    wkb[:] = [blob[a:b] for a, b in itertools.pairwise(start.tolist())]
    return np.asarray(shapely.from_wkb(wkb), dtype=object).reshape(len(wkb))


def _tables(fine_keys: A, coarse_keys: A) -> tuple[HashTable, HashTable, HashTable]:
    """The fine and coarse hash tables from their stored keys; the sub level has none (its
    cells are found by position under their parent, see grid._sub_base).

    This may run before the keys are checked: keys a table cannot hold raise, and the loader
    asks for the tables only after the checks passed (which such keys fail first).
    """
    return HashTable(fine_keys), HashTable(np.empty(0, dtype=np.int64)), HashTable(coarse_keys)


def _meta_policy(raw: bytes) -> tuple[dict[str, Any], Policy]:
    """zoneset.json, checked, and the policy it holds."""
    meta = _checked(json.loads(raw, parse_constant=_no_constant))
    pd = meta["policy"]
    policy = Policy(
        pack=str(pd["pack"]),
        rules={Category(c): CategoryRule(**r) for c, r in pd["rules"].items()},
        requests=RequestRules(**pd["requests"]),
        beacons=BeaconRules(**pd["beacons"]),
        presence=PresenceRules(**pd["presence"]),
        fingerprint=str(pd["fingerprint"]),
    )
    return meta, policy


def _zones(
    code: A, radius: A, own_buffer: A, valid_from: A, valid_until: A,
    meta_policy: tuple[dict[str, Any], Policy], geoms: npt.NDArray[np.object_],
) -> tuple[tuple[Zone, ...], npt.NDArray[np.float64], list[Problem]]:  # fmt: skip
    """The `Zone` objects, the effective buffers and the warnings ZoneSet.compile would give.

    Why a job: 50k objects are a tenth of a second of Python, which runs while the arrays are
    read and hashed (that mostly releases the GIL). Its inputs are checked by _assemble before
    the result is used; unchecked, they can only make this raise.
    """
    meta, policy = meta_policy
    columns = meta["zones"]
    # The effective buffer, as ZoneSet.compile resolves it (the policy's, widened per zone).
    rule = np.array([policy.rule(c).buffer_m for c in CATEGORIES], dtype=np.float64)[code]
    buffer = np.maximum(rule, np.nan_to_num(own_buffer, nan=0.0))

    # map() stops at its shortest input, where zip(strict=True) raised.
    per_zone = (*columns.values(), code, geoms, radius, own_buffer, valid_from, valid_until)
    if len({len(c) for c in per_zone}) != 1:
        raise ValueError("zone columns of different lengths")
    # Positional, not keyword arguments: half the time of building 50k zones (0.23 -> 0.11 s of
    # Python, holding the GIL while the arrays are read). The order is Zone's fields'.
    zones = tuple(
        map(
            Zone, columns["id"], columns["name"], [CATEGORIES[c] for c in code.tolist()], geoms,
            radius.tolist(), _or_none(own_buffer), _or_none(valid_from), _or_none(valid_until),
            columns["jurisdiction"], columns["source"],
        )
    )  # fmt: skip
    warnings = []
    for i in np.flatnonzero(own_buffer < rule).tolist():  # NaN (no own buffer) compares False
        z = zones[i]
        warnings.append(
            Problem(
                z.source,
                f"buffer_m {z.buffer_m:g} is below the policy's {rule[i]:g} m for "
                f"{z.category.value}; the policy's buffer applies",
                zone_id=z.id,
                severity="warning",
            )
        )
    return zones, buffer, warnings


def _or_none(values: A) -> list[float | None]:
    """A column of optional numbers as Python values: None where it holds NaN (no value)."""
    out = values.astype(object)
    out[np.isnan(values)] = None
    return out.tolist()


# Slow steps of loading: name -> (members they read, jobs whose results they take, function).
# Each is queued as soon as its members have been read (see _read_members) and the jobs it takes
# from are queued (so it only ever waits for a job queued before it), and runs once their
# checksums match. "tables" goes first: its first numba call loads numba's registries (0.15 s).
_JOBS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Any]] = {
    "meta": ((META,), (), _meta_policy),
    "tables": (("fine.keys", "coarse.keys"), (), _tables),
    "geometries": (("zone.wkb", "zone.wkb_start", "zone.radius_m"), (), _geometries),
    "zones": (
        ("zone.category", "zone.radius_m", "zone.buffer_m", "zone.valid_from", "zone.valid_until"),
        ("meta", "geometries"),
        _zones,
    ),
}


def _start_jobs(
    work: ThreadPoolExecutor,
    jobs: dict[str, Future[Any]],
    content: Mapping[str, Any],
    digests: Mapping[str, Future[str]],
    listed: Mapping[str, dict[str, Any]],
) -> None:
    """Queue every job whose members have all been read (and whose earlier jobs are queued)."""
    for job, (needs, after, fn) in _JOBS.items():
        files = [n if n == META else f"{n}.npy" for n in needs]
        if job in jobs or not all(f in digests for f in files) or not all(a in jobs for a in after):
            continue
        checks = [(digests[f], listed[f].get("sha256")) for f in files]
        args = [content[n] for n in needs]
        jobs[job] = work.submit(_once_verified, checks, [jobs[a] for a in after], fn, args)


def _once_verified(
    checks: list[tuple[Future[str], Any]], after: list[Future[Any]], fn: Any, args: list[Any]
) -> Any:
    """fn(*args, *the results of `after`), once every member in `args` matches its checksum."""
    for digest, expected in checks:
        if digest.result() != expected:
            # Never seen: _read_members reports the member before any job result is taken.
            raise CompiledFileError("checksum mismatch")
    return fn(*args, *(job.result() for job in after))


def _drop(arrays: dict[str, Any], *names: str) -> None:
    """Forget members whose content has been made into something else."""
    for name in names:
        arrays.pop(name, None)


def _level(arrays: Mapping[str, A], prefix: str, table: HashTable) -> Level:
    return Level(table, *(arrays[f"{prefix}.{k}"] for k in _LEVEL_FIELDS))


def _assemble(arrays: dict[str, Any], jobs: dict[str, Future[Any]]) -> ZoneSet:
    """The zone set described by checked zoneset.json and arrays (and the jobs started on them).

    Members are dropped from `arrays` once what is made from them exists (WKB, hash table keys,
    the raw JSON, the separate coordinate columns): they stayed until the end, on top of the
    zone set, and were the load's peak (1M zones: 6.37 GB against 5.6 GB after it).
    """
    meta, policy = jobs["meta"].result()
    _drop(arrays, META)
    columns = meta["zones"]
    n = len(columns["id"])
    _check_arrays(arrays, n)
    zones, buffer, warnings = jobs["zones"].result()
    _drop(arrays, "zone.wkb", "zone.wkb_start")
    radius = arrays["zone.radius_m"]
    valid_from, valid_until = arrays["zone.valid_from"], arrays["zone.valid_until"]
    code = arrays["zone.category"]
    exact = ExactIndex.from_arrays(
        radius_m=radius,
        buffer_m=buffer,
        valid_from=np.where(np.isnan(valid_from), -np.inf, valid_from),
        valid_until=np.where(np.isnan(valid_until), np.inf, valid_until),
        part_zone=arrays["part.zone"],
        part_tile=arrays["part.tile"],
        flat=FlatParts(
            arrays["flat.is_point"],
            arrays["flat.ring_start"],
            arrays["flat.coord_start"],
            np.stack([arrays.pop("flat.xs"), arrays.pop("flat.ys")]),
        ),
        part_bounds=arrays["part.bounds"],
    )
    fine_table, sub_table, coarse_table = jobs["tables"].result()
    _drop(arrays, "fine.keys", "coarse.keys")
    grid = GridIndex.from_tables(
        exact,
        forced=arrays["grid.forced"],
        fine=_level(arrays, "fine", fine_table),
        sub=_level(arrays, "sub", sub_table),
        coarse=coarse_table,
        coarse_clearance=arrays["coarse.clearance"],
        max_accuracy_m=policy.requests.max_accuracy_m,
    )
    beacons = (
        BeaconRegistry(tuple(Beacon(**b) for b in meta["beacons"]))
        if meta["beacons"] is not None
        else None
    )
    return ZoneSet(
        version=str(meta["version"]),
        policy=policy,
        zones=zones,
        ids=tuple(columns["id"]),
        category=code.astype(np.uint8),
        buffer_m=buffer,
        lookback_s=np.array([policy.rule(c).lookback_s for c in Category], dtype=np.float64),
        index=grid,
        exact=exact,
        warnings=tuple(warnings) + (beacons.warnings if beacons else ()),
        beacons=beacons,
        positions={z: i for i, z in enumerate(columns["id"])},
    )

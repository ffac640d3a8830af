"""Replay of real iBeacon sightings through the engine, against a reference computed here.

Data: ../shared/data/beacons/indoor_location_competition_20/ (Microsoft's Indoor Location
Competition 2.0, two Hangzhou malls, 2019): 90,584 real sightings (`path_id`, `unix_ms`, `uuid`,
`major`, `minor`, ...) and the shop polygons of one floor (site1 F1) in lon/lat. The data has no
beacon positions (a sighting says which beacon a phone heard, not where the beacon is), so the
registry here is built deterministically from it:

* Zones: the F1 shop polygons sorted by their feature id; every third one becomes a zone,
  alternately `clinic` and `place_of_worship` (synthetic: they are shops). The floor outline is
  not a shop and is left out. Policy: pack "none", buffer 5 m, lookback 30 days for every
  category, so that the decision depends on which shop a beacon is in (the statutory 609.6 m
  would cover the whole mall).
* Beacons: every distinct advertised id in the sightings (171), sorted by normalised id; the
  i-th goes by i % 5 to: 0 the representative point of a zone shop; 1 that of a non-zone shop;
  2 no position, linked by `zone_id` to a zone shop; 3 a point 1 km east of the mall; 4 not
  registered (unknown). Positioned beacons get a 3 m range. Ids with major = 0 and minor = 0 are
  registered like any other, and the loader must warn about each.
* Devices: `path_id` (one phone walking one survey path). Sightings are replayed per device in
  time order, shifted so that the last one is an hour ago (the presence store expires records by
  the wall clock). An SDK reports a beacon once per ad request, not once per BLE advertisement,
  so each (device, beacon, 5-second window) is replayed once, at its first sighting.

The reference decides each sighting from shapely distances in a local azimuthal equidistant frame
centred on the mall (not the engine's tile frames) and keeps its own per-device presence.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import shapely
from shapely.geometry import shape

from geofence import Engine, Reason, ZoneSet
from geofence.beacons import FACTORY_DEFAULT_UUIDS, normalize_beacon_id
from geofence.presence.memory import MemoryStore

BUFFER_M = 5.0
RANGE_M = 3.0
LOOKBACK_S = 30 * 86_400.0
WINDOW_MS = 5_000
MARGIN_M = 0.05  # no reference distance may lie this close to a threshold
ZERO_WARNING = "major 0 and minor 0 are an unconfigured default"


@dataclass(frozen=True)
class Sighting:
    device: str
    at: float
    beacon_id: str  # as the phone reported it: upper-case UUID, decimal major/minor
    site: str
    mac: str


@dataclass
class World:
    folder: Path
    zones: dict[str, tuple[str, Any]]  # zone id -> (category, projected polygon)
    beacons: dict[str, dict[str, Any]]  # normalised id -> registry row
    unknown: set[str]  # normalised ids left out of the registry
    sightings: list[Sighting]
    raw: list[dict[str, str]]  # every observation row


def _data(shared_data: Path) -> Path:
    return shared_data / "beacons" / "indoor_location_competition_20"


@pytest.fixture(scope="module")
def world(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    data = _data(shared_data)
    with gzip.open(data / "ibeacon_observations.csv.gz", "rt", encoding="utf-8", newline="") as f:
        raw = list(csv.DictReader(f))
    shops_fc = json.loads((data / "site1_F1_geojson_map.json").read_text(encoding="utf-8"))
    shops = sorted(
        (f for f in shops_fc["features"] if f["properties"]["name"] != "F1"),
        key=lambda f: f["properties"]["id"],
    )
    geoms = [shape(f["geometry"]) for f in shops]
    assert all(g.is_valid and not g.is_empty for g in geoms)
    centre = shapely.union_all(geoms).centroid
    to_local = pyproj.Transformer.from_crs(
        "EPSG:4326",
        f"+proj=aeqd +lat_0={centre.y} +lon_0={centre.x} +ellps=WGS84 +units=m",
        always_xy=True,
    )

    def local(g: Any) -> Any:
        return shapely.transform(g, lambda xy: np.column_stack(to_local.transform(*xy.T)))

    zone_features: list[dict[str, Any]] = []
    zones: dict[str, tuple[str, Any]] = {}
    plain: list[Any] = []
    for i, (f, g) in enumerate(zip(shops, geoms, strict=True)):
        if i % 3:
            plain.append(g)
            continue
        zid = f"ilc20:site1-F1/{f['properties']['id']}"
        category = "clinic" if len(zones) % 2 == 0 else "place_of_worship"
        zones[zid] = (category, local(g))
        zone_features.append(
            {
                "type": "Feature",
                # Type and coordinates only: the source's geometries carry a "crs" link, which
                # GDAL would try to download.
                "geometry": {k: f["geometry"][k] for k in ("type", "coordinates")},
                "properties": {
                    "id": zid,
                    "name": f["properties"]["name"],
                    "category": category,
                    "source": "indoor-location-competition-20 site1 F1 shop (synthetic category)",
                },
            }
        )
    zone_ids = list(zones)
    zone_points = [g.representative_point() for f, g in zip(shops, geoms, strict=True)][::3]
    plain_points = [g.representative_point() for g in plain]
    far_lon, far_lat, _ = pyproj.Geod(ellps="WGS84").fwd(centre.x, centre.y, 90.0, 1000.0)

    ids = sorted({normalize_beacon_id(f"{r['uuid']}:{r['major']}:{r['minor']}") for r in raw})
    zone_polys = [local(g) for g in geoms[::3]]

    def clean(p: shapely.Point) -> bool:
        # No decision may sit on a knife edge: every distance to a zone is MARGIN_M away from
        # the presence threshold (range) and the reach threshold (range + buffer).
        xy = local(shapely.Point(round(p.x, 9), round(p.y, 9)))
        return all(
            abs(z.distance(xy) - limit) >= MARGIN_M
            for z in zone_polys
            for limit in (RANGE_M, RANGE_M + BUFFER_M)
        )

    def pick(points: list[shapely.Point], j: int) -> shapely.Point:
        return next(
            points[(j + n) % len(points)]
            for n in range(len(points))
            if clean(points[(j + n) % len(points)])
        )

    beacons: dict[str, dict[str, Any]] = {}
    unknown: set[str] = set()
    for i, bid in enumerate(ids):
        k, j = i % 5, i // 5
        row: dict[str, Any] = {"beacon_id": bid, "lat": "", "lon": "", "range_m": RANGE_M}
        if k == 0:
            p = pick(zone_points, j)
            row.update(lat=p.y, lon=p.x)
        elif k == 1:
            p = pick(plain_points, j)
            row.update(lat=p.y, lon=p.x)
        elif k == 2:
            row.update(zone_id=zone_ids[(j + 7) % len(zone_ids)], range_m="")
        elif k == 3:
            row.update(lat=far_lat + j * 1e-5, lon=far_lon)
        else:
            unknown.add(bid)
            continue
        beacons[bid] = row

    folder = tmp_path_factory.mktemp("ilc20")
    (folder / "shops.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": zone_features}), encoding="utf-8"
    )
    (folder / "policy.toml").write_text(
        f'pack = "none"\n[defaults]\nbuffer_m = {BUFFER_M}\nlookback_days = 30.0\n',
        encoding="utf-8",
    )
    with open(folder / "beacons.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["beacon_id", "type", "lat", "lon", "range_m", "status", "zone_id", "name"])
        for bid, row in beacons.items():
            w.writerow(
                [
                    # The registry as staff would type it: the UUID upper-case, as advertised.
                    bid.upper(),
                    "ibeacon",
                    f"{row['lat']:.9f}" if row["lat"] != "" else "",
                    f"{row['lon']:.9f}" if row["lon"] != "" else "",
                    row["range_m"],
                    "active",
                    row.get("zone_id", ""),
                    "synthetic placement",
                ]
            )
    # Keep the projected positions for the reference.
    for row in beacons.values():
        if row["lat"] != "":
            lat, lon = float(f"{row['lat']:.9f}"), float(f"{row['lon']:.9f}")
            row["xy"] = shapely.Point(*to_local.transform(lon, lat))

    # One sighting per (device, beacon, 5 s window), at its first sighting; times shifted.
    last = max(int(r["unix_ms"]) for r in raw)
    shift = (time.time() - 3600.0) - last / 1000.0
    seen: set[tuple[str, str, int]] = set()
    sightings = []
    for r in sorted(raw, key=lambda r: (r["path_id"], int(r["unix_ms"]))):
        bid = f"{r['uuid']}:{r['major']}:{r['minor']}"
        key = (r["path_id"], bid.lower(), int(r["unix_ms"]) // WINDOW_MS)
        if key in seen:
            continue
        seen.add(key)
        sightings.append(
            Sighting(r["path_id"], int(r["unix_ms"]) / 1000.0 + shift, bid, r["site"], r["mac"])
        )
    sightings.sort(key=lambda s: (s.at, s.device))
    return World(folder, zones, beacons, unknown, sightings, raw)


class Reference:
    """The expected decisions, computed without the engine."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.reach: dict[str, set[str]] = {}
        self.present: dict[str, set[str]] = {}
        close_calls = []
        for bid, row in world.beacons.items():
            if "zone_id" in row:
                self.reach[bid] = self.present[bid] = {row["zone_id"]}
                continue
            reach, present = set(), set()
            for zid, (_, poly) in world.zones.items():
                d = poly.distance(row["xy"])
                for limit in (RANGE_M, RANGE_M + BUFFER_M):
                    if abs(d - limit) < MARGIN_M:
                        close_calls.append((bid, zid, d))
                if d <= RANGE_M + BUFFER_M:
                    reach.add(zid)
                if d <= RANGE_M:
                    present.add(zid)
            self.reach[bid], self.present[bid] = reach, present
        # The construction must not put a decision on a knife edge.
        assert close_calls == []
        self.last_presence: dict[str, float] = {}

    def decide(self, device: str | None, beacon_id: str, at: float) -> tuple[Reason, set[str]]:
        """The reason, and the zones the engine may name; updates presence like the engine."""
        bid = normalize_beacon_id(beacon_id)
        if bid not in self.world.beacons:
            return Reason.UNKNOWN_BEACON, set()
        if device is not None and self.present[bid]:
            self.last_presence[device] = max(self.last_presence.get(device, -math.inf), at)
        if self.reach[bid]:
            return Reason.BEACON_IN_ZONE, self.reach[bid]
        t = self.last_presence.get(device, -math.inf) if device is not None else -math.inf
        if t <= at < t + LOOKBACK_S:
            return Reason.RECENTLY_INSIDE, set()
        return Reason.ALLOWED, set()


def _engine(world: World) -> Engine:
    return Engine.from_paths(world.folder, presence=MemoryStore())


def test_registry_built_from_the_data_loads_with_the_zero_id_warnings(world: World) -> None:
    zs = ZoneSet.from_paths(world.folder)
    assert len(zs) == len(world.zones) == 58
    reg = zs.beacons
    assert reg is not None and len(reg) == len(world.beacons)
    assert len(world.beacons) + len(world.unknown) == 171
    # Reference, from the raw sightings: which ids are major 0 / minor 0, and how many
    # transmitters (MACs) advertise each, i.e. why a sighting of one cannot be pinned down.
    macs: dict[str, set[str]] = defaultdict(set)
    for r in world.raw:
        macs[normalize_beacon_id(f"{r['uuid']}:{r['major']}:{r['minor']}")].add(r["mac"])
    zero = {b for b in world.beacons if b.endswith(":0:0")}
    assert zero  # some zero ids are registered (the rest fell in the unknown bucket)
    assert max(len(macs[b]) for b in macs if b.endswith(":0:0")) > 300
    warned = {
        reg.beacons[w.feature].beacon_id
        for w in zs.warnings
        if w.message.startswith(ZERO_WARNING) and isinstance(w.feature, int)
    }
    assert warned == zero
    factory = {b.split(":")[0] for b in world.beacons} & set(FACTORY_DEFAULT_UUIDS)
    factory_warned = {w.message.split()[1] for w in zs.warnings if "factory default" in w.message}
    assert factory_warned == factory and factory  # the WeChat default UUID is in the data


def test_replay_check_beacon_against_the_reference(world: World) -> None:
    e = _engine(world)
    ref = Reference(world)
    counts: Counter[Reason] = Counter()
    for s in world.sightings:
        want, zones = ref.decide(s.device, s.beacon_id, s.at)
        d = e.check_beacon(s.beacon_id, device_id=s.device, at=s.at, rssi=-80)
        assert d.reason is want, s
        assert d.allowed is (want is Reason.ALLOWED)
        if zones:
            assert d.zone_id in zones, s
        else:
            assert d.zone_id is None
        counts[want] += 1
    assert len(world.sightings) == sum(counts.values()) > 9000
    # Every outcome occurs, so the replay tests each path (and would catch one that never fires).
    assert counts[Reason.BEACON_IN_ZONE] > 1000 and counts[Reason.UNKNOWN_BEACON] > 100
    assert counts[Reason.ALLOWED] > 100 and counts[Reason.RECENTLY_INSIDE] > 100
    # Some beacons are near a zone without being inside one: rejected, but no presence.
    near_only = [b for b in world.beacons if ref.reach[b] and not ref.present[b]]
    assert near_only


def _check(ref: Reference, items: list[Sighting], out: list[Any]) -> None:
    assert len(out) == len(items)
    for s, d in zip(items, out, strict=True):
        want, zones = ref.decide(s.device, s.beacon_id, s.at)
        assert d.reason is want, s
        assert d.zone_id in zones if zones else d.zone_id is None, s


def test_replay_check_beacons_many_per_device(world: World) -> None:
    by_device: dict[str, list[Sighting]] = defaultdict(list)
    for s in world.sightings:
        by_device[s.device].append(s)
    e, ref = _engine(world), Reference(world)
    for device, items in by_device.items():
        out = e.check_beacons_many(
            [s.beacon_id for s in items], [device] * len(items), [s.at for s in items]
        )
        _check(ref, items, out)


def test_replay_check_beacons_many_in_one_interleaved_batch(world: World) -> None:
    items = world.sightings[::3]  # as they happened, devices interleaved
    out = _engine(world).check_beacons_many(
        [s.beacon_id for s in items],
        [s.device for s in items],
        np.array([s.at for s in items]),
    )
    _check(Reference(world), items, out)


def test_replay_without_device_ids_never_taints(world: World) -> None:
    store = MemoryStore()
    e = Engine.from_paths(world.folder, presence=store)
    ref = Reference(world)
    sample = world.sightings[::7]
    out = e.check_beacons_many([s.beacon_id for s in sample], None, [s.at for s in sample])
    for s, d in zip(sample, out, strict=True):
        assert d.reason is ref.decide(None, s.beacon_id, s.at)[0]
    assert len(store) == 0
    assert Reason.RECENTLY_INSIDE not in {d.reason for d in out}


def test_replay_as_openrtb_requests(world: World) -> None:
    """Each (device, 5 s window) becomes one bid request carrying what the phone heard."""
    groups: dict[tuple[str, int], list[Sighting]] = defaultdict(list)
    for s in world.sightings:
        groups[(s.device, int(s.at * 1000) // WINDOW_MS)].append(s)
    requests: list[bytes] = []
    expected: list[Reason] = []
    ref = Reference(world)
    for (device, _), items in list(groups.items())[::2]:  # every other window: a second sample
        requests.append(
            json.dumps(
                {
                    "id": f"{device}-{len(requests)}",
                    "device": {
                        "ifa": device,
                        "ext": {"beacons": [{"id": s.beacon_id, "rssi": -75} for s in items]},
                    },
                }
            ).encode()
        )
        # check_openrtb judges every sighting at the time of the request (no lastfix): now.
        reasons = [ref.decide(device, s.beacon_id, 0.0)[0] for s in items]
        rejected = [r for r in reasons if r is not Reason.ALLOWED]
        expected.append(rejected[0] if rejected else Reason.ALLOWED)
    out = _engine(world).check_openrtb_many(requests)
    assert [d.reason for d in out] == expected
    assert len(set(expected)) == 4

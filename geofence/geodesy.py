"""True metres on the WGS84 ellipsoid: tile frames, and conservative metre-to-degree bounds.

The Earth is cut into TILE_DEG tiles. Each tile has a local azimuthal equidistant (AEQD) frame
centred on it, built by pyproj. Geometry in or near a tile is measured in that tile's frame. An
AEQD frame keeps distances from its centre exact; between other points it stretches lengths by at
most (rho/R)^2/6 where rho is the distance from the centre: within 80 km of the centre that is
under 2.7e-5, which `FRAME_STRETCH` covers, so comparing frame distances against
limit * FRAME_STRETCH + FRAME_SLACK_M never misses a point that is truly within the limit.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import numpy.typing as npt
import pyproj

TILE_DEG = 0.5
N_COLS = round(360 / TILE_DEG)
N_ROWS = round(180 / TILE_DEG)

# Relative and absolute allowances for frame distortion and floating point: the exact test accepts
# a point when frame_distance <= limit * FRAME_STRETCH + FRAME_SLACK_M. Over-conservative by at
# most 3e-5 * limit + 1 cm (27 cm at a 10 km limit), far inside the 1 m the contract allows.
FRAME_STRETCH = 1.0 + 3e-5
FRAME_SLACK_M = 0.01

# Metres per degree, as lower bounds (so metres / these is an upper bound in degrees).
# Latitude: the meridian degree is shortest at the equator (110,574.3 m).
# Longitude: (pi/180) * a * cos(lat) / sqrt(1 - e^2 sin^2 lat) >= (pi/180) * a * cos(lat).
M_PER_DEG_LAT_MIN = 110_574.0
M_PER_DEG_LON_EQ = math.pi / 180 * 6_378_137.0
# Widening factor on degree bounds: covers geodesics bulging poleward between the endpoints.
DEG_SAFETY = 1.01
POLAR_LAT = 85.0  # beyond this, a box spans every longitude


def tile_key(lon: npt.ArrayLike, lat: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The tile holding each (lon, lat); lon is wrapped into [-180, 180)."""
    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    col = np.floor((np.mod(lon_a + 180.0, 360.0)) / TILE_DEG).astype(np.int64) % N_COLS
    row = np.clip(np.floor((lat_a + 90.0) / TILE_DEG).astype(np.int64), 0, N_ROWS - 1)
    return row * N_COLS + col


def tile_bounds(key: int) -> tuple[float, float, float, float]:
    """(min lon, min lat, max lon, max lat) of a tile."""
    row, col = divmod(int(key), N_COLS)
    lon0 = -180.0 + col * TILE_DEG
    lat0 = -90.0 + row * TILE_DEG
    return lon0, lat0, lon0 + TILE_DEG, lat0 + TILE_DEG


def tile_center(key: int) -> tuple[float, float]:
    lon0, lat0, lon1, lat1 = tile_bounds(key)
    return (lon0 + lon1) / 2, (lat0 + lat1) / 2


class Frames:
    """Per-tile AEQD transformers, created on first use and shared by every thread.

    At most `max_cached` are kept: when one more is needed, the cache starts afresh. Why: a
    transformer holds ~13 KB, and a country's zones touch ~10,000 tiles (0.13 GB, kept for the
    life of a zone set); making one takes ~40 us, and callers work tile by tile.
    """

    def __init__(self, max_cached: int = 1024) -> None:
        self._fwd: dict[int, pyproj.Transformer] = {}
        self._lock = threading.Lock()
        self.max_cached = max_cached

    def transformer(self, key: int) -> pyproj.Transformer:
        t = self._fwd.get(key)
        if t is None:
            lon0, lat0 = tile_center(key)
            t = pyproj.Transformer.from_pipeline(
                "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad "
                f"+step +proj=aeqd +lat_0={lat0!r} +lon_0={lon0!r} +ellps=WGS84"
            )
            with self._lock:
                if len(self._fwd) >= self.max_cached:
                    # Replaced, not cleared: a reader's `get` sees one dict or the other.
                    self._fwd = {}
                t = self._fwd.setdefault(key, t)
        return t

    def forward(
        self, key: int, lon: npt.ArrayLike, lat: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Lon/lat degrees to metres in the tile's frame."""
        x, y = self.transformer(key).transform(lon, lat)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def inverse(
        self, key: int, x: npt.ArrayLike, y: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        lon, lat = self.transformer(key).transform(x, y, direction="INVERSE")
        return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def degree_margins(
    metres: npt.ArrayLike, max_abs_lat: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Upper bounds, in degrees of (lon, lat), of `metres` around places up to `max_abs_lat`.

    Longitude margins are 360 (every longitude) near the poles.
    """
    m = np.asarray(metres, dtype=np.float64)
    dlat = m / M_PER_DEG_LAT_MIN * DEG_SAFETY + 1e-9
    worst_lat = np.minimum(np.abs(np.asarray(max_abs_lat, dtype=np.float64)) + dlat, 90.0)
    cos = np.cos(np.radians(worst_lat))
    with np.errstate(divide="ignore"):
        dlon = np.where(
            worst_lat >= POLAR_LAT, 360.0, m / (M_PER_DEG_LON_EQ * np.maximum(cos, 1e-12))
        )
    dlon = np.where(dlon >= 360.0, 360.0, dlon * DEG_SAFETY + 1e-9)
    return dlon, dlat

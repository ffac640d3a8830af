"""Tile frames: the bounded transformer cache gives the same projections as an unbounded one."""

from __future__ import annotations

import numpy as np

from geofence.geodesy import Frames, tile_center, tile_key


def test_bounded_cache_projects_alike_and_stays_bounded() -> None:
    rng = np.random.default_rng(7)
    lon = rng.uniform(-10.0, 10.0, 400)
    lat = rng.uniform(40.0, 60.0, 400)
    keys = np.unique(tile_key(lon, lat))
    assert len(keys) > 20
    bounded, unbounded = Frames(max_cached=3), Frames(max_cached=10**6)
    for key in [*keys, *keys[::-1]]:  # every tile made, dropped and made again
        lo, la = tile_center(int(key))
        pts_lon, pts_lat = lo + rng.uniform(-0.3, 0.3, 50), la + rng.uniform(-0.3, 0.3, 50)
        bx, by = bounded.forward(int(key), pts_lon, pts_lat)
        ux, uy = unbounded.forward(int(key), pts_lon, pts_lat)
        np.testing.assert_array_equal(bx, ux)
        np.testing.assert_array_equal(by, uy)
        assert len(bounded._fwd) <= 3
    assert len(unbounded._fwd) == len(keys)
    # The frame is centred on the tile: its centre projects to the origin.
    x, y = bounded.forward(int(keys[0]), *map(np.atleast_1d, tile_center(int(keys[0]))))
    assert abs(x[0]) < 1e-6 and abs(y[0]) < 1e-6

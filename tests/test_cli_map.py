"""`geofence map`: a self-contained HTML map, checked as text and in a real headless Chromium.

The browser test needs Debian's `chromium` (`.ci/run` installs it). It skips with a message when
the browser is absent, and fails under CI=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import shapely
from conftest import BUNDLED_ZONES

from geofence import mapview
from geofence.cli import main
from geofence.zoneset import ZoneSet

POLICY = 'pack = "us-strictest"\n'
BEACONS = (
    "beacon_id,type,lat,lon,range_m,status,zone_id,floor,name\n"
    "a1b2c3d4-0000-4000-8000-00000000abcd:1:1,ibeacon,47.6055,-122.3355,25,active,,0,lobby\n"
    "a1b2c3d4-0000-4000-8000-00000000abcd:1:2,ibeacon,,,,active,pt-1,,at the point zone\n"
)


def small_folder(root: Path) -> Path:
    folder = root / "zones"
    folder.mkdir()
    feats = [
        {
            "type": "Feature",
            "properties": {"id": "poly-1", "name": "Clinic <b>&</b>", "category": "clinic"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[-122.34, 47.60], [-122.33, 47.60], [-122.33, 47.61], [-122.34, 47.60]]
                ],
            },
        },
        {
            "type": "Feature",
            "properties": {"id": "court-1", "name": "Court", "category": "court", "buffer_m": 400},
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [
                    [[[-122.30, 47.60], [-122.299, 47.60], [-122.299, 47.601], [-122.30, 47.60]]],
                    [[[-122.29, 47.60], [-122.289, 47.60], [-122.289, 47.601], [-122.29, 47.60]]],
                ],
            },
        },
        {
            "type": "Feature",
            "properties": {"id": "pt-1", "name": "Chapel", "category": "place_of_worship",
                           "radius_m": 50},
            "geometry": {"type": "Point", "coordinates": [-122.32, 47.62]},
        },
    ]  # fmt: skip
    (folder / "zones.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": feats})
    )
    (folder / "policy.toml").write_text(POLICY)
    (folder / "beacons.csv").write_text(BEACONS)
    return folder


def page_data(html: str) -> dict[str, Any]:
    m = re.search(r"const DATA = (\{.*?\});\n", html)
    assert m, "the page embeds its data"
    data: dict[str, Any] = json.loads(m.group(1).replace("<\\/", "</"))
    return data


@pytest.fixture
def small_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    out = tmp_path / "map.html"
    assert main(["map", str(small_folder(tmp_path)), "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: 3 zones, 2 beacons")
    return out, out.read_text(encoding="utf-8")


def test_html_is_self_contained(small_map: tuple[Path, str]) -> None:
    _, html = small_map
    leaflet = (Path(mapview.__file__).parent / "static" / "leaflet" / "leaflet.js").read_text()
    assert leaflet in html  # inlined, whole
    assert "Leaflet 1.9.4" in html and "BSD 2-Clause License" in html
    assert ".leaflet-container" in html  # the CSS, inlined
    assert "url(images/" not in html  # its icons as data URIs
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert not re.search(r"<link\b", html)
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.S)  # outside the scripts:
    assert not re.search(r"""\b(src|href)\s*=\s*["']?https?:""", markup)  # nothing remote
    assert "url(http" not in markup
    for zid in ("poly-1", "court-1", "pt-1"):
        assert f'"id":"{zid}"' in html
    assert "<b>&</b>" not in html.split("const DATA")[0]  # names are data, not markup


def test_buffers_are_drawn_in_true_metres(small_map: tuple[Path, str]) -> None:
    """Each buffer outline vertex lies buffer (+ radius) metres from the zone: pyproj oracle."""
    data = page_data(small_map[1])
    zones = {z["id"]: z for z in data["zones"]}
    geod = pyproj.Geod(ellps="WGS84")
    pt = zones["pt-1"]
    assert pt["buffer_m"] == 150.0 and pt["radius_m"] == 50.0
    ring = np.asarray(shapely.geometry.shape(pt["buffer"]).exterior.coords)
    _, _, dist = geod.inv(
        np.full(len(ring), -122.32), np.full(len(ring), 47.62), ring[:, 0], ring[:, 1]
    )
    assert np.all(np.abs(dist - 200.0) < 1.5)  # display simplification is 1 m
    court = zones["court-1"]
    assert court["buffer_m"] == 400.0 and court["set_by"] == "the zone's own buffer_m"
    poly = zones["poly-1"]
    assert poly["buffer_m"] == pytest.approx(609.6)
    outline = shapely.geometry.shape(poly["buffer"])
    zone = shapely.geometry.shape(poly["geometry"])
    aeqd = pyproj.Transformer.from_crs(
        "EPSG:4326", "+proj=aeqd +lat_0=47.605 +lon_0=-122.335 +ellps=WGS84", always_xy=True
    )

    def to_m(g: Any) -> Any:
        return shapely.transform(g, lambda xy: np.column_stack(aeqd.transform(xy[:, 0], xy[:, 1])))

    zm = to_m(zone)
    gaps = [zm.exterior.distance(shapely.Point(p)) for p in to_m(outline).exterior.coords]
    assert min(gaps) > 607 and max(gaps) < 611
    assert data["beacons"][1]["center"] == [47.62, -122.32]  # placed at its zone
    assert data["canvas"] is False


def test_every_bundled_zone_is_on_the_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundled.html"
    assert main(["map", str(BUNDLED_ZONES), "-o", str(out)]) == 0
    capsys.readouterr()
    html = out.read_text(encoding="utf-8")
    zs = ZoneSet.from_paths(BUNDLED_ZONES)
    data = page_data(html)
    assert [z["id"] for z in data["zones"]] == list(zs.ids)
    assert data["counts"] == {c.value: n for c, n in zs.counts_by_category().items()}


def test_large_sets_use_canvas(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    zs = ZoneSet.from_paths(small_folder(tmp_path))
    monkeypatch.setattr(mapview, "CANVAS_ABOVE", 2)
    data = mapview.map_data(zs)
    assert data["canvas"] is True and data["simplify_m"] == 5.0
    html = mapview.render_html(zs, renderer="svg", tiles="https://tiles.example/{z}/{x}/{y}.png")
    assert page_data(html)["canvas"] is False
    assert page_data(html)["tiles"] == "https://tiles.example/{z}/{x}/{y}.png"


# --- in a real browser ---------------------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "chromium is not installed (apt-get install chromium); .ci/run installs it"
    if os.environ.get("CI") == "1":
        pytest.fail(message)
    pytest.skip(message)


def browse(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--no-first-run",
            "--no-proxy-server",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: networking off
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--window-size=1200,800",
            "--hide-scrollbars",
            *extra,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_map_renders_in_headless_chromium(small_map: tuple[Path, str], tmp_path: Path) -> None:
    page, _ = small_map
    url = page.resolve().as_uri() + "#selftest"
    proc = browse(page, tmp_path / "profile", "--dump-dom", url)
    dom = proc.stdout
    assert "leaflet-container" in dom, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', body.group(1)))
    # Every zone, buffer and beacon was drawn, as SVG paths; a click opened the first popup.
    assert attrs == {
        "zones": "3",
        "buffers": "3",
        "beacons": "2",
        "renderer": "svg",
        "popup": "poly-1",
    }
    paths = dom.count("<path")
    assert paths >= 3 + 3 + 2 * 2, paths  # zones, buffers, beacon ranges and markers
    popup = re.search(r'class="leaflet-popup-content"[^>]*>(.*?)</table>', dom, re.S)
    assert (
        popup and "poly-1" in popup.group(1) and "Clinic &lt;b&gt;&amp;&lt;/b&gt;" in popup.group(1)
    )
    assert "clinic (1)" in dom and "place_of_worship (1)" in dom  # the legend
    assert 'id="gf-search"' in dom
    # And a screenshot, kept beside the page for a person to look at.
    shot = tmp_path / "map.png"
    proc = browse(page, tmp_path / "profile2", f"--screenshot={shot}", page.resolve().as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


def test_console_script_map(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("geofence")
    if not exe.exists():
        pytest.fail(f"console script {exe} missing: install with pip install -e .")
    out = tmp_path / "m.html"
    proc = subprocess.run(
        [str(exe), "map", str(small_folder(tmp_path)), "-o", str(out), "--renderer", "canvas"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert page_data(out.read_text(encoding="utf-8"))["canvas"] is True
    bad = subprocess.run(
        [str(exe), "map", str(tmp_path / "nowhere")], check=False, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "-o/--output" in bad.stderr

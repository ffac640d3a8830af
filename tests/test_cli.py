"""The command line, in-process through main(argv) and through the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLED_ZONES

from geofence.cli import main


def test_check_prints_one_json_decision(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "check",
            str(BUNDLED_ZONES),
            "--lat",
            "51.5138028",
            "--lon",
            "-0.0983361",
            "--accuracy",
            "5",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert out["reason"] == "inside_zone" and out["zone_id"] == "osm:pofw_a/369161987"
    assert out["allowed"] is False and len(out["zone_set_version"]) == 16
    rc = main(
        ["check", str(BUNDLED_ZONES), "--lat", "51.445", "--lon", "-0.275", "--accuracy", "20"]
    )
    assert rc == 0 and json.loads(capsys.readouterr().out)["reason"] == "allowed"


def test_validate_clean_and_defective(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["validate", str(BUNDLED_ZONES)]) == 0
    capsys.readouterr()
    bad = tmp_path / "zones"
    bad.mkdir()
    (bad / "z.csv").write_text(
        "id,name,category,lat,lon,radius_m\na,,hospitl,47.6,-122.3,50\na,,clinic,47.6,-122.3,50\n"
    )
    assert main(["validate", str(bad)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("z.csv: feature 0 (id 'a'): error: unknown category 'hospitl'")
    assert "did you mean 'hospital'" in lines[0]
    assert lines[1].startswith("z.csv: feature 1 (id 'a'): error: duplicate id 'a'")


def test_compile_summary_names_packs_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(BUNDLED_ZONES), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["zones"] == 675 and summary["pack"] == "us-strictest"
    assert summary["categories"]["hospital"]["buffer_m"] == 609.6
    assert "RCW 19.373" in summary["categories"]["hospital"]["set_by"]


def test_broken_zones_exit_2_with_the_problems(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "z"
    shutil.copytree(BUNDLED_ZONES, folder)
    (folder / "policy.toml").write_text('pack = "oregon"\n')
    assert main(["check", str(folder), "--lat", "1", "--lon", "1"]) == 2
    assert "unknown pack 'oregon'" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("geofence")
    if not exe.exists():
        pytest.fail(f"console script {exe} missing: install with pip install -e .")
    proc = subprocess.run(
        [
            str(exe),
            "check",
            str(BUNDLED_ZONES),
            "--lat",
            "60.1695572",
            "--lon",
            "24.9435041",
            "--accuracy",
            "5",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["category"] == "clinic"
    helptext = subprocess.run(
        [str(exe), "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert "examples:" in helptext.stdout

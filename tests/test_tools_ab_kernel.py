"""tools/ab_kernel.py: two grid kernels alternated on the same points, their answers compared."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools import ab_kernel  # noqa: E402

GRID = REPO / "geofence" / "grid.py"
# A NEAR cell answered as INSIDE: the kind changes, the zone and the deferrals do not.
NEAR_STATE = "KIND_INSIDE if state == STATE_INSIDE else KIND_NEAR"
BROKEN = "KIND_INSIDE if state == STATE_INSIDE else KIND_INSIDE"


def test_source_of_a_file_and_a_revision() -> None:
    assert ab_kernel.source_of(str(GRID)) == GRID.read_text()
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no revisions to read grid.py from")
    head = ab_kernel.source_of("HEAD")
    assert "def _grid_kernel(" in head
    with pytest.raises(SystemExit, match="neither a file nor a git revision"):
        ab_kernel.source_of("no-such-revision-or-file")


def test_changed_answers_are_counted_kind_by_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = GRID.read_text()
    assert source.count(NEAR_STATE) == 2  # the fine and the sub level
    broken = tmp_path / "broken_grid.py"
    broken.write_text(source.replace(NEAR_STATE, BROKEN))
    assert ab_kernel.main([str(GRID), str(broken), "--reps", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_kind = {line.split()[0]: line for line in lines}
    assert set(by_kind) == {"all", "uniform", "near_edges"}
    assert "answers differing: kind 0," not in by_kind["all"]
    assert by_kind["all"].endswith("zone 0, todo 0")
    # Uniform points seldom land in a NEAR cell, near-edge points often: both kinds counted.
    differ = {k: int(v.split("kind ")[1].split(",")[0]) for k, v in by_kind.items()}
    assert differ["all"] == differ["uniform"] + differ["near_edges"] > 0
    # The versions were imported from copies: none was compiled (and cached) beside its file.
    assert not (tmp_path / "__pycache__").exists()

"""keyplane demo never overwrites an output folder silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyplane.cli import app

runner = CliRunner()


def test_demo_refuses_a_non_empty_output_folder_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text('{"earlier": true}')
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--no-live"])
    assert res.exit_code == 2
    said = " ".join(res.stderr.split())  # the console wraps long lines
    assert "is not empty" in said and "--force" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    a_file = tmp_path / "summary.json"
    res = runner.invoke(app, ["demo", "--out", str(a_file), "--no-live"])
    assert res.exit_code == 2 and "is not a folder" in " ".join(res.stderr.split())


@pytest.mark.slow
def test_demo_with_force_replaces_its_outputs_and_keeps_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "summary.json").write_text('{"earlier": true}')
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--no-live", "--force",
                              "--protocol", "analytic", "--keys", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "notes.txt").read_text() == "mine"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "earlier" not in summary and len(summary["sessions"]) == 3

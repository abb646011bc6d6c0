"""keyplane sweep: measured rates of both modes against the GLLP and PLOB curves."""

from __future__ import annotations

import csv
from pathlib import Path

from typer.testing import CliRunner

from keyplane.cli import app
from keyplane.config import load_topology
from keyplane.sweep import SweepSettings, run_sweep

runner = CliRunner()


async def test_rates_fall_with_distance_under_their_bounds_and_stop_past_the_cutoff() -> None:
    link = load_topology("paper_poc").links[0]
    points = await run_sweep(link, SweepSettings(distances_km=(10.0, 60.0, 300.0), blocks=3,
                                                 seed=7))
    near, mid, far = points
    for p in (near, mid):
        assert p.emulated_blocks == 3 and p.emulated_skr_bps > 0
        # the analytic mode runs the GLLP rate: measured on the clock, it matches the curve
        assert abs(p.analytic_skr_bps - p.gllp_bps) <= 0.02 * p.gllp_bps
        # finite blocks and real error correction cost key: the emulation stays below
        assert p.emulated_skr_bps < p.gllp_bps < p.plob_bps
        assert p.emulated_qber is not None and 0.005 < p.emulated_qber < 0.05
    assert near.emulated_skr_bps > mid.emulated_skr_bps > 0
    assert far.emulated_skr_bps == 0.0 and far.analytic_skr_bps == 0.0 and far.gllp_bps == 0.0
    assert far.plob_bps > 0  # the bound never reaches zero


def test_cli_writes_csv_and_png_and_keeps_earlier_results(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    args = ["sweep", "-o", str(out), "--from-km", "20", "--to-km", "40", "--step-km", "20",
            "--blocks", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [float(r["distance_km"]) for r in rows] == [20.0, 40.0]
    assert all(float(r["emulated_skr_bps"]) > 0 for r in rows)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in " ".join(again.stderr.split())
    bad = runner.invoke(app, ["sweep", "-o", str(tmp_path / "x"), "--link", "nope"])
    assert bad.exit_code == 2 and not (tmp_path / "x").exists()

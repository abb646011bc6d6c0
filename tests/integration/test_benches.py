"""Every benchmark runs as documented (``python bench/<name>.py``), from the repository root,
with tiny parameters: the figures it prints are not checked, only that it runs to the end,
prints its table, and never needs tests/ on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

CASES = {
    "keymanager": (["--hops", "1", "2", "--keys", "64"], "fetched by slave"),
    "api": (["--seconds", "0.3", "--blocks", "4", "--bulk", "4"], "pairs/s per server core"),
    "at_rest": (["--keys", "64", "--rounds", "1"], "sealing costs"),
    "hybrid": (["--seconds", "0.2", "--samples", "5"], "qkd-and-pqc"),
    "control": (["--sessions", "2", "--pairs", "5"], "path computation"),
    # 64 keys, not the bench's 2,000 (issue #14's volume, which tests/integration/
    # test_fault_matrix.py runs): only that the bench runs to its table is checked here.
    "faults": (["--faults", "nats", "--nats-s", "2", "--keys", "64", "--pairs", "1",
                "--batch", "8"], "keys handed out twice"),
    "measured_links": (["--blocks", "1"], "stack bit/s"),
    "entanglement": (["--topology", "examples/quantum_network.yaml", "--seconds", "2",
                      "--rates", "1"], "through EntanglementService"),
    "contention": (["--seconds", "1"], "ratio sa/sc"),
    "etsi015": (["--live", "10", "--repeat", "2"], "validation work per POST+DELETE"),
    "imports": (["--runs", "1"], "keyplane --help"),
    "physical": (["--quick", "--only", "pa", "--sequence-sim-s", "0"],
                 "privacy amplification"),
    "poc": (["--runs", "1", "--distributed-runs", "0"], "identical at both ends"),
    "scale": (["--nodes", "25", "--live", "10", "--samples", "3", "--keys", "8"],
              "relayed 2-hop enc_keys"),
    # --demo-runs 0: the demo has tests of its own; --busy 0: no busy loops in the suite
    "southbound": (["--seconds", "1", "--warmup", "0.5", "--idle-seconds", "1",
                    "--demo-runs", "0", "--busy", "0"], "pairs/s"),
    "distributed": (["--nodes", "4", "--seconds", "1", "--idle-seconds", "1",
                     "--settle-seconds", "1"], "pairs/s"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bench_runs_from_the_repository_root_without_tests_on_the_path(
        name: str, tmp_path: Path) -> None:
    args, expected = CASES[name]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, f"bench/{name}.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert expected in proc.stdout
    assert "No module named 'tests'" not in proc.stderr


def test_every_bench_has_a_case() -> None:
    """A new bench joins CASES, so it keeps running as documented."""
    benches = {p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_")}
    assert benches == set(CASES)

"""Time to the first key of each session in the paper's proof of concept.

    python bench/poc.py [--runs 3] [--distributed-runs 1] [--protocol bb84-decoy]

Runs `keyplane demo` (embedded, then distributed) on examples/paper_poc.yaml and prints, per
session, the time from the applications' OPEN_CONNECT to the first key both ends hold
(p50 and max over runs). The issue's targets: the first relayed key (sae2-sae3, through KM0)
in < 2 s embedded and < 5 s multi-process, with bb84-decoy links.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from keyplane.config import load_topology
from keyplane.demo.distributed import DistributedOptions, run_distributed_demo
from keyplane.demo.run import DemoOptions, apply_overrides, run_embedded_demo

ROOT = Path(__file__).resolve().parents[1]


def _report(label: str, runs: list[dict[str, Any]]) -> None:
    """Per pair: first-key p50/max over the runs that delivered, and what was delivered."""
    pairs = [s["pair"] for s in runs[0]["sessions"]]
    for pair in pairs:
        mine = [next(s for s in r["sessions"] if s["pair"] == pair) for r in runs]
        firsts = [s["time_to_first_key_s"] for s in mine if s["time_to_first_key_s"] is not None]
        delivered = sum(int(s["keys_delivered"]) for s in mine)
        matched = sum(int(s["keys_matched"]) for s in mine)
        failed = [s["error"] or s["status"] for s in mine if not s["keys_delivered"]]
        timing = (f"first key p50 {statistics.median(firsts):6.3f} s max {max(firsts):6.3f} s "
                  f"over {len(firsts)} of {len(mine)} runs" if firsts
                  else f"NO KEY in any of {len(mine)} runs")
        print(f"{label:12s} {pair:10s} {timing}; keys delivered {delivered}, identical at both "
              f"ends {matched}" + (f"; runs without a key: {failed}" if failed else ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--distributed-runs", type=int, default=1)
    ap.add_argument("--protocol", default="bb84-decoy")
    args = ap.parse_args()
    print(f"command: python bench/poc.py --runs {args.runs} --distributed-runs "
          f"{args.distributed_runs} --protocol {args.protocol}")
    print(f"machine: {platform.machine()} python {sys.version.split()[0]}")
    topo = apply_overrides(load_topology(ROOT / "examples" / "paper_poc.yaml"),
                           protocol=args.protocol)
    quiet = Console(quiet=True)
    embedded = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            embedded.append(asyncio.run(run_embedded_demo(
                DemoOptions(topology=topo, out=Path(d), keys=4, live=False, seed=i + 1), quiet)))
    _report("embedded", embedded)
    dist = []
    for i in range(args.distributed_runs):
        with tempfile.TemporaryDirectory() as d:
            dist.append(asyncio.run(run_distributed_demo(
                DemoOptions(topology=topo, out=Path(d), keys=4, live=False, seed=i + 1),
                DistributedOptions(), quiet)))
    if dist:
        _report("distributed", dist)


if __name__ == "__main__":
    main()

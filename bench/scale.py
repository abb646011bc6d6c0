"""Startup at scale: time until ``keyplane run`` serves a generated network, and its memory.

For each size it writes a grid topology of N nodes (analytic links, 10 km; two SAEs at
opposite corners), starts ``python -m keyplane run`` on it as a child process with a fresh
state directory, and measures:

* ``ready_s``   — from process start until it prints "keyplane running" (endpoints.json
  written: every KM, API server and ETSI 015 agent serving, every node registered);
* ``rss_mb``    — resident memory of the ``keyplane run`` process then, and ``peak_mb``
  (VmHWM); ``workers_mb`` the link worker processes' total, ``total_mb`` both;
* ``stop_s``    — from SIGTERM until the process exited, and its exit code.

    python bench/scale.py [--nodes 25,100,250,1000] [--timeout 600]

Prints figures (and the machine); never asserts. Issue 15's target: 1,000 nodes ready
within 60 s with at most 2 GB.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def grid_topology(n: int) -> str:
    """A near-square grid of ``n`` nodes as topology YAML (analytic links)."""
    side = math.ceil(math.sqrt(n))
    lines = ["version: 1", f"name: grid-{n}", "nodes:"]
    lines += [f"  - {{id: n{i}}}" for i in range(n)]
    lines.append("links:")
    for i in range(n):
        c = i % side
        for j in ((i + 1) if c + 1 < side else None, i + side):
            if j is not None and j < n:
                lines.append(f"  - {{endpoints: [n{i}, n{j}], length_km: 10, "
                             "protocol: analytic}")
    lines += ["users:", "  - {id: alice, certificate_subject: 'CN=alice,O=scale'}",
              "  - {id: bob, certificate_subject: 'CN=bob,O=scale'}",
              "applications:", "  - {sae_id: sae0, owner: alice, node: n0}",
              f"  - {{sae_id: sae1, owner: bob, node: n{n - 1}}}"]
    return "\n".join(lines) + "\n"


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def run_one(n: int, timeout_s: float) -> dict[str, float | int | str]:
    with tempfile.TemporaryDirectory(prefix=f"keyplane-scale-{n}-") as tmp:
        topo = Path(tmp) / "topo.yaml"
        topo.write_text(grid_topology(n))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "keyplane", "run", "-t", str(topo),
                                 "-s", str(Path(tmp) / "state")], stdout=subprocess.PIPE,
                                stderr=open(Path(tmp) / "run.log", "w"), text=True, env=env)
        ready = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "keyplane running" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        ok = ready.wait(timeout_s)
        ready_s = time.monotonic() - t0
        out: dict[str, float | int | str] = {"nodes": n, "ready_s": ready_s if ok else -1.0}
        if ok:
            workers = _children(proc.pid)
            out["rss_mb"] = _status_kb(proc.pid, "VmRSS") / 1024
            out["peak_mb"] = _status_kb(proc.pid, "VmHWM") / 1024
            out["workers"] = len(workers)
            out["workers_mb"] = sum(_status_kb(p, "VmRSS") for p in workers) / 1024
            out["total_mb"] = float(out["rss_mb"]) + float(out["workers_mb"])
        else:
            tail = (Path(tmp) / "run.log").read_text().splitlines()[-5:]
            out["error"] = " | ".join(tail) or f"exit {proc.poll()}"
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            out["exit"] = proc.wait(max(60.0, timeout_s / 4))
        except subprocess.TimeoutExpired:
            proc.kill()
            out["exit"] = f"killed ({proc.wait()})"
        out["stop_s"] = time.monotonic() - t1
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="25,100,250,1000")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    print(f"# python bench/scale.py --nodes {args.nodes} --timeout {args.timeout:g}")
    print(f"# {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}"
          f", load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    cols = ("nodes", "links", "ready_s", "rss_mb", "peak_mb", "workers", "workers_mb",
            "total_mb", "stop_s", "exit")
    print(" ".join(f"{c:>10}" for c in cols))
    for n in (int(x) for x in args.nodes.split(",")):
        r = run_one(n, args.timeout)
        r["links"] = grid_topology(n).count("endpoints:")
        print(" ".join(f"{r.get(c, '-'):>10.1f}" if isinstance(r.get(c), float)
                       else f"{r.get(c, '-')!s:>10}" for c in cols), flush=True)
        if "error" in r:
            print(f"#   {n} nodes not ready: {r['error']}", flush=True)


if __name__ == "__main__":
    main()

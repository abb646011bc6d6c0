"""Distributed at scale (issue 15.4): a controller and N ``keyplane node`` processes here.

Writes a grid topology of ``--nodes`` nodes (analytic links, 10 km; SAEs sa at n0, sb at n1
(adjacent) and sc at the last node), starts a secured ``nats-server`` (TLS, per-element
certificates and permissions, signed messages, as ``keyplane nats-config`` configures it),
one database (PostgreSQL when its server binaries are installed, else a shared SQLite
file), ``keyplane controller`` and one ``keyplane node --id`` process per node (or, with
``--per-process K``, one ``keyplane node --id n0,n1,...`` process per K nodes: several nodes
per process, keyplane.nodegroup), and measures:

* ``ready``: from the first node's spawn until every node printed "ready" and is in
  endpoints.json; the CPU time every process spent until then;
* memory: RSS of each process (and the link workers they started), total and per node;
* idle CPU: all processes together over ``--idle-seconds`` with no application calling;
* relayed ETSI 014 pairs/s (enc_keys(number=1) by the master, dec_keys by the slave over
  HTTPS with mutual TLS, ``--concurrency`` loops, ``--seconds``) for the adjacent pair and
  the pair at opposite corners, with the CPU per pair of all node processes together.

    python bench/distributed.py [--nodes 20] [--per-process 1] [--seconds 10] [--concurrency 4]

Prints figures (command, machine, load); never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
sys.path.insert(0, str(ROOT / "src"))

from keyplane.api.client import AsyncEtsi014Client, ServiceUnavailableError  # noqa: E402
from keyplane.certs import ensure_network_certs  # noqa: E402
from keyplane.config import parse_topology  # noqa: E402
from keyplane.services import NatsServer, PostgresServer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
_SLA = "{max_sessions: 100, max_bps: 100000000, priority: 3, idle_timeout_s: 600}"


def grid(n: int) -> str:
    """A near-square grid of ``n`` nodes (analytic links) with three SAEs, as YAML."""
    side = math.ceil(math.sqrt(n))
    links = [f"  - {{endpoints: [n{i}, n{j}], length_km: 10, protocol: analytic}}"
             for i in range(n) for j in (i + 1, i + side)
             if j < n and (j == i + side or (i + 1) % side)]
    return "\n".join([
        "version: 1", f"name: distributed-{n}", "nodes:",
        *(f"  - {{id: n{i}}}" for i in range(n)), "links:", *links, "users:",
        f"  - {{id: a, certificate_subject: 'CN=a,O=scale', sla: {_SLA}}}",
        f"  - {{id: b, certificate_subject: 'CN=b,O=scale', sla: {_SLA}}}",
        "applications:", "  - {sae_id: sa, owner: a, node: n0}",
        "  - {sae_id: sb, owner: b, node: n1}",
        f"  - {{sae_id: sc, owner: b, node: n{n - 1}}}"]) + "\n"


def _stat(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS kB) of ``pid`` (0, 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = next(int(line.split()[1]) for line in
                   Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0.0, 0
    return (int(fields[11]) + int(fields[12])) / TICK, rss


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a node's link workers)."""
    out = [pid]
    try:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        kids = []
    for k in kids:
        out += _tree(k)
    return out


class Proc:
    """A keyplane process whose stdout is watched for its ready line."""

    def __init__(self, args: list[str], log: Path, ready: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, "-m", "keyplane", *args],
                                     stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
                                     env=env, cwd=ROOT)
        self.ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the ready line came within ``timeout_s`` (False at once if it exits)."""
        end = time.monotonic() + timeout_s
        while not self.ready.wait(min(1.0, max(0.0, end - time.monotonic()))):
            if self.proc.poll() is not None or time.monotonic() >= end:
                return self.ready.is_set()
        return True

    def _pump(self, ready: str) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if ready in line:
                self.ready.set()

    def usage(self) -> tuple[float, int]:
        """CPU seconds and RSS kB of the process and its children."""
        cpu, rss = 0.0, 0
        for p in _tree(self.proc.pid):
            c, r = _stat(p)
            cpu, rss = cpu + c, rss + r
        return cpu, rss

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _pairs(state: Path, master: str, slave: str, seconds: float, concurrency: int,
                 nodes: list[Proc], idle: float) -> str:
    """One pair's figures; ``idle``: the node processes' idle CPU (cores), subtracted."""
    m = AsyncEtsi014Client.from_state(state, master, timeout_s=60.0)
    s = AsyncEtsi014Client.from_state(state, slave, timeout_s=60.0)
    async with m, s:
        deadline = time.monotonic() + 300
        while True:  # the first key opens the implicit session (Admission, routing): untimed
            try:
                k = await m.enc_keys(slave, number=1)
                await s.dec_keys(master, [k[0].key_id])
                break
            except ServiceUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        done = busy = 0
        end = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done, busy
            while time.monotonic() < end:
                try:
                    k = await m.enc_keys(slave, number=1)
                    await s.dec_keys(master, [k[0].key_id])
                    done += 1
                except ServiceUnavailableError:
                    busy += 1
                    await asyncio.sleep(0.01)

        c0 = sum(p.usage()[0] for p in nodes)
        t0, own0 = time.monotonic(), time.process_time()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        wall = time.monotonic() - t0
        cpu = sum(p.usage()[0] for p in nodes) - c0
        own = time.process_time() - own0
    work = cpu - idle * wall  # what the pairs cost above the idle background
    # a window too short (or an idle figure too noisy) to see the pairs above the background
    # gives no per-core figure rather than a division by almost nothing
    above = (f"{1e3 * work / max(done, 1):.2f} ms above idle (1 core: {done / work:.0f} pairs/s)"
             if work > 0 and done else "not measurable above idle (window too short)")
    return (f"{master} -> {slave}: {done / wall:.1f} pairs/s ({done} in {wall:.1f} s, {busy} "
            f"answers 503); node processes CPU {1e3 * cpu / max(done, 1):.2f} ms per pair, "
            f"{above}; client CPU {1e3 * own / max(done, 1):.2f} ms per pair")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--per-process", type=int, default=1,
                    help="nodes per keyplane node process (1: a process per node)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--settle-seconds", type=float, default=0.0,
                    help="wait this long after ready before the idle window (the links "
                         "fill the key stores first)")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    if args.per_process < 1:
        raise SystemExit("--per-process must be at least 1")
    print(f"command: python bench/distributed.py --nodes {args.nodes} --per-process "
          f"{args.per_process} --seconds "
          f"{args.seconds:g} --concurrency {args.concurrency} --idle-seconds "
          f"{args.idle_seconds:g} --settle-seconds {args.settle_seconds:g}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="keyplane-dist-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir(mode=0o700)
        topo_file = Path(tmp) / "topology.yaml"
        topo_file.write_text(grid(args.nodes))
        topo = parse_topology(topo_file.read_text())
        ensure_network_certs(topo, state / "certs")
        nats = NatsServer.start_secured(topo, state / "certs", config_path=state / "nats.conf")
        pg: PostgresServer | None = None
        try:
            pg = PostgresServer.start()
            db_url = pg.create_database("keyplane")
        except (FileNotFoundError, subprocess.SubprocessError) as exc:
            print(f"# PostgreSQL unavailable ({exc}); a shared SQLite file")
            db_url = f"sqlite:///{state / 'keyplane.db'}"
        print(f"# database: {db_url.split('://')[0]}; bus: secured nats-server", flush=True)
        common = ["-t", str(topo_file), "--bus", nats.url, "--db", db_url, "-s", str(state)]
        procs: list[Proc] = []
        try:
            ctl = Proc(["controller", *common], Path(tmp) / "controller.log",
                       "controller ready")
            procs.append(ctl)
            if not ctl.ready.wait(args.timeout):
                raise SystemExit("the controller did not start")
            t0 = time.monotonic()
            ids = [n.id for n in topo.nodes]
            groups = [",".join(ids[i:i + args.per_process])
                      for i in range(0, len(ids), args.per_process)]
            nodes = [Proc(["node", "--id", g, *common], Path(tmp) / f"node-{g}.log",
                          f"node {g} ready") for g in groups]
            procs += nodes
            for p in nodes:
                if not p.wait_ready(max(1.0, args.timeout - (time.monotonic() - t0))):
                    failed = [p for p in nodes if p.proc.poll() is not None]
                    raise SystemExit(
                        f"not every node process was ready after {time.monotonic() - t0:.0f} "
                        f"s: {len(failed)} of {len(nodes)} exited (see their logs, e.g. "
                        f"'did not start within'); load average "
                        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
            ready_s = time.monotonic() - t0
            kms = json.loads((state / "endpoints.json").read_text())["kms"]
            usage = [p.usage() for p in nodes]
            ccpu, crss = ctl.usage()
            cpu, rss = sum(c for c, _ in usage), sum(r for _, r in usage) / 1024
            print(f"ready: {len(ids)} nodes in {len(nodes)} node processes in {ready_s:.1f} s "
                  f"({len(kms)} in endpoints.json); CPU until ready {cpu:.1f} s "
                  f"({cpu / len(ids):.2f} s per node), controller {ccpu:.1f} s")
            print(f"memory: nodes {rss:.0f} MB together ({rss / len(ids):.0f} MB per node, "
                  f"{rss / len(nodes):.0f} MB per node process with its link workers), "
                  f"controller {crss / 1024:.0f} MB", flush=True)
            time.sleep(args.settle_seconds)  # the key stores fill after ready
            c0, n0 = sum(p.usage()[0] for p in procs), sum(p.usage()[0] for p in nodes)
            time.sleep(args.idle_seconds)  # the idle window being measured
            idle = (sum(p.usage()[0] for p in procs) - c0) / args.idle_seconds
            node_idle = (sum(p.usage()[0] for p in nodes) - n0) / args.idle_seconds
            print(f"idle: all {len(procs)} processes {100 * idle:.1f} % of a core together "
                  f"({100 * node_idle / len(ids):.1f} % per node, node processes with their "
                  f"link workers)", flush=True)
            for master, slave in (("sa", "sb"), ("sa", "sc")):
                print(asyncio.run(_pairs(state, master, slave, args.seconds,
                                         args.concurrency, nodes, node_idle)), flush=True)
        finally:
            for p in reversed(procs):
                p.stop()
            nats.stop()
            if pg is not None:
                pg.stop()


if __name__ == "__main__":
    main()

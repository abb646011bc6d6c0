"""Control-plane benchmarks: session setup latency and path computation time.

Run from the repository root::

    PYTHONPATH=src /work/venv/bin/python bench/control.py [--sessions 200] [--pairs 500] [--seed 7]

XX, on a
   1-hop and a 3-hop path; embedded (MemoryBus, one process) and over a real nats-server
   (control plane and KMs on separate NATS connections). The KMs are the test-support
   responders of tests/support/fake_kms.py (they apply and acknowledge at once), so the
   figure is the control plane's own cost: the user database lookups, routing, the pushes
   and their acknowledgements. Targets: p50 < 10 ms embedded, < 30 ms over NATS.
2. **Path computation** — :meth:`RoutingCore.compute_path` with a capacity requirement on
   random connected topologies (Watts–Strogatz, mean degree 4, SKR-derived weights and
   capacities) of 100 and 1,000 nodes. Target: <= 5 ms at 1,000 nodes.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import networkx as nx
from _support import CALLER_A, CALLER_B, line_topology

from keyplane.bus import Bus, MemoryBus
from keyplane.clock import RealClock
from keyplane.control import ControlPlane, ControlSettings, RoutingCore
from keyplane.events import EventStream, MemorySink
from keyplane.keymanager import KeyManager
from keyplane.messages import Qos
from keyplane.services import NatsServer
from keyplane.store import Database, sqlite_url
from keyplane.store.topology import LinkMetrics


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _fmt_ms(xs: list[float]) -> str:
    ms = [x * 1e3 for x in xs]
    return (f"p50 {statistics.median(ms):7.3f} ms   p95 {_pct(ms, 0.95):7.3f} ms   "
            f"p99 {_pct(ms, 0.99):7.3f} ms   mean {statistics.fmean(ms):7.3f} ms")


async def _setup_latency(control_bus: Bus, km_bus: Bus, hops: int, sessions: int,
                         db_path: Path) -> list[float]:
    topology = line_topology(hops + 1)
    clock = RealClock()
    events = EventStream(clock, [MemorySink(maxlen=1_000)])
    db = await Database.open(sqlite_url(db_path))
    plane = ControlPlane(topology, control_bus, db, clock, events, ControlSettings(),
                         elements=["sdn", "routing", "access", "admission"])
    await plane.start()
    kms: list[KeyManager] = []
    samples: list[float] = []
    try:
        for node in topology.nodes:
            km = KeyManager(node.id, topology, km_bus, db, clock, events)
            await km.start()
            kms.append(km)
        src, dst = kms[0], kms[-1]
        for i in range(sessions + 10):  # the first 10 warm up
            sid = str(uuid.uuid4())
            t0 = time.perf_counter()
            a, b = await asyncio.gather(
                src.open_connect(CALLER_A, "sa", "sb", Qos(), sid),
                dst.open_connect(CALLER_B, "sb", "sa", Qos(), sid))
            dt = time.perf_counter() - t0
            if not (a.peer_connected and b.peer_connected):
                raise RuntimeError(f"session {sid} not configured at both ends")
            if i >= 10:
                samples.append(dt)
            await src.close(CALLER_A, sid)
            await dst.close(CALLER_B, sid)
    finally:
        for km in kms:
            await km.close()
        await plane.close()
        await db.close()
    return samples


def _random_core(n: int, seed: int) -> tuple[RoutingCore, list[str]]:
    rng = random.Random(seed)
    g = nx.connected_watts_strogatz_graph(n, 4, 0.2, seed=seed)
    core = RoutingCore()
    for v in g.nodes:
        core.add_node(f"n{v}")
    metrics = {}
    for u, v in g.edges:
        lid = f"n{u}-n{v}"
        core.add_link(lid, f"n{u}", f"n{v}")
        metrics[lid] = LinkMetrics(lid, t=1.0, skr_bps=rng.uniform(200, 20_000),
                                   qber=rng.uniform(0.01, 0.06), sessions=rng.randint(0, 3),
                                   buffer_bits=rng.randint(0, 10**6))
    core.set_metrics(metrics)
    return core, [f"n{v}" for v in g.nodes]


def _path_times(n: int, pairs: int, seed: int) -> tuple[list[float], float]:
    core, nodes = _random_core(n, seed)
    rng = random.Random(seed + 1)
    times: list[float] = []
    hops: list[int] = []
    for _ in range(pairs):
        a, b = rng.sample(nodes, 2)
        t0 = time.perf_counter()
        route = core.compute_path(a, b, min_bps=150.0)
        times.append(time.perf_counter() - t0)
        hops.append(len(route.links))
    return times, statistics.fmean(hops)


async def _run_setup(label: str, nats_url: str | None, sessions: int, tmp: Path) -> None:
    from keyplane.bus import BusSecurity
    from keyplane.bus.nats import NatsBus

    for hops in (1, 3):
        if nats_url is None:
            bus = MemoryBus()
            control_bus, km_bus = bus, bus
        else:
            # a plain server: this bench measures the control plane, not bus security
            # (bench/keymanager.py --nats compares plain and secured)
            plain = BusSecurity(tls=None)
            control_bus = await NatsBus.connect(nats_url, name="bench-control", security=plain)
            km_bus = await NatsBus.connect(nats_url, name="bench-kms", security=plain)
        try:
            xs = await _setup_latency(control_bus, km_bus, hops, sessions,
                                      tmp / f"{label}-{hops}.db")
        finally:
            await control_bus.close()
            if km_bus is not control_bus:
                await km_bus.close()
        print(f"  {label:<9} {hops}-hop  n={len(xs):<5} {_fmt_ms(xs)}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"parameters: sessions={args.sessions} pairs={args.pairs} seed={args.seed}")
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} CPUs | Python {platform.python_version()} | "
          f"networkx {nx.__version__}")
    print("\nsession setup latency (both OPEN_CONNECTs sent -> both returned configured):")
    with tempfile.TemporaryDirectory() as tmp:
        await _run_setup("embedded", None, args.sessions, Path(tmp))
        srv = NatsServer.start()
        try:
            await _run_setup("nats", srv.url, args.sessions, Path(tmp))
        finally:
            srv.stop()
    print("\npath computation (bidirectional Dijkstra, metric weights, min_bps filter):")
    for n in (100, 1000):
        xs, mean_hops = _path_times(n, args.pairs, args.seed)
        print(f"  {n:>5} nodes  {2 * n} links  pairs={len(xs)}  mean hops {mean_hops:4.1f}  "
              f"{_fmt_ms(xs)}")


if __name__ == "__main__":
    asyncio.run(main())

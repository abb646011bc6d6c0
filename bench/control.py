"""Control-plane benchmarks: session setup latency and path computation time.

Run from the repository root::

    PYTHONPATH=src /work/venv/bin/python bench/control.py [--sessions 200] [--pairs 500] [--seed 7]

1. **Session setup latency** — from both endpoint KMs sending their open requests to
   Admission Control having every ConfigAck of the path (both endpoints operative), on a
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
from pathlib import Path

import networkx as nx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from tests.support.fake_kms import FakeKms

from keyplane.bus import Bus, MemoryBus, topics
from keyplane.clock import RealClock
from keyplane.config import parse_topology
from keyplane.control import ControlPlane, ControlSettings, RoutingCore
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import Qos, SessionClose, SessionOpenRequest
from keyplane.services import NatsServer
from keyplane.store import Database, sqlite_url
from keyplane.store.topology import LinkMetrics

LINE_TOPOLOGY = """
version: 1
name: bench-line
nodes: [{id: n0}, {id: n1}, {id: n2}, {id: n3}]
links:
  - {endpoints: [n0, n1], length_km: 10}
  - {endpoints: [n1, n2], length_km: 10}
  - {endpoints: [n2, n3], length_km: 10}
users:
  - {id: u0, certificate_subject: "CN=u0", sla: {max_sessions: 100000, max_bps: 100000,
                                                  priority: 3}}
  - {id: u1, certificate_subject: "CN=u1", sla: {max_sessions: 100000, max_bps: 100000,
                                                  priority: 3}}
applications:
  - {sae_id: sae0, owner: u0, node: n0}
  - {sae_id: sae1, owner: u1, node: n1}
  - {sae_id: sae3, owner: u1, node: n3}
"""


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _fmt_ms(xs: list[float]) -> str:
    ms = [x * 1e3 for x in xs]
    return (f"p50 {statistics.median(ms):7.3f} ms   p95 {_pct(ms, 0.95):7.3f} ms   "
            f"p99 {_pct(ms, 0.99):7.3f} ms   mean {statistics.fmean(ms):7.3f} ms")


async def _setup_latency(control_bus: Bus, km_bus: Bus, hops: int, sessions: int,
                         db_path: Path) -> list[float]:
    topology = parse_topology(LINE_TOPOLOGY)
    clock = RealClock()
    sink = MemorySink(maxlen=1_000)
    events = EventStream(clock, [sink])
    peer_sae, peer_node = ("sae1", "n1") if hops == 1 else ("sae3", "n3")
    db = await Database.open(sqlite_url(db_path))
    samples: list[float] = []
    try:
        async with FakeKms(km_bus, ["n0", "n1", "n2", "n3"]) as kms, \
                ControlPlane(topology, control_bus, db, clock, events, ControlSettings(),
                             elements=["sdn", "routing", "admission"]):
            for i in range(sessions + 10):  # the first 10 warm up
                sid = f"bench-{hops}-{i}"
                opened = [
                    SessionOpenRequest(session_id=sid, node="n0", user_id="u0",
                                       source_sae="sae0", destination_sae=peer_sae, qos=Qos()),
                    SessionOpenRequest(session_id=sid, node=peer_node, user_id="u1",
                                       source_sae=peer_sae, destination_sae="sae0", qos=Qos()),
                ]
                operative = asyncio.ensure_future(sink.wait_for(
                    lambda e, sid=sid: e.type is EventType.session_operative
                    and e.session == sid))
                t0 = time.perf_counter()
                await asyncio.gather(*(km_bus.request(topics.ADMISSION, r, timeout_s=5.0)
                                       for r in opened))
                async with asyncio.timeout(10):
                    await operative
                dt = time.perf_counter() - t0
                if i >= 10:
                    samples.append(dt)
                assert len(kms.holders(sid)) == hops + 1
                deleted = asyncio.ensure_future(sink.wait_for(
                    lambda e, sid=sid: e.type is EventType.session_deleted and e.session == sid))
                await km_bus.publish(topics.ADMISSION, SessionClose(session_id=sid, node="n0"))
                async with asyncio.timeout(10):
                    await deleted
    finally:
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
    from keyplane.bus.nats import NatsBus

    for hops in (1, 3):
        if nats_url is None:
            bus = MemoryBus()
            control_bus, km_bus = bus, bus
        else:
            control_bus = await NatsBus.connect(nats_url, name="bench-control")
            km_bus = await NatsBus.connect(nats_url, name="bench-kms")
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
    print("\nsession setup latency (both opens sent -> every ConfigAck received):")
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

"""Control-plane benchmarks: session setup latency and path computation time.

Run from the repository root (after ``pip install -e .``)::

    python bench/control.py [--sessions 200] [--pairs 2000] [--live 10000] [--seed 7]
                            [--skip-setup]

1. **Session setup latency** — from both applications' OPEN_CONNECTs to both returning
   configured, through real key managers (bench/_support.py's line topology, link stores
   not needed) and the real control plane (SDN, Routing, Access, Admission), on a 1-hop and
   a 3-hop path; embedded (MemoryBus, one process) and over a real nats-server (control
   plane and KMs on separate NATS connections). Targets: p50 < 10 ms embedded, < 30 ms
   over NATS.
2. **Routing at 1,000 nodes** (issue #15: p99 <= 5 ms) on random connected topologies
   (Watts–Strogatz, mean degree 4, SKR-derived weights and capacities):
   a. :meth:`RoutingCore.compute_path` with a capacity requirement on an empty network
      (100 and 1,000 nodes);
   b. :meth:`RoutingCore.route_and_reserve` with ``--live`` sessions holding capacity, each
      new session released again after a random one (steady churn), and every 100 requests
      a Monitoring report re-weighing 10 % of the links (:meth:`RoutingCore.update_metrics`)
      — the Routing Element's real work under load.
   Each request is timed in wall time and in thread CPU time: on a busy machine the wall
   tail is the scheduler's (another process ran), the CPU tail is ours. Garbage
   collections during timed requests are counted.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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
            await src.close_stream(CALLER_A, sid)
            await dst.close_stream(CALLER_B, sid)
    finally:
        for km in kms:
            await km.close()
        await plane.close()
        await db.close()
    return samples


def _random_core(n: int, seed: int) -> tuple[RoutingCore, list[str], dict[str, LinkMetrics]]:
    rng = random.Random(seed)
    g = nx.connected_watts_strogatz_graph(n, 4, 0.2, seed=seed)
    core = RoutingCore()
    for v in g.nodes:
        core.add_node(f"n{v}")
    metrics = {}
    for u, v in g.edges:
        lid = f"n{u}-n{v}"
        core.add_link(lid, f"n{u}", f"n{v}")
        metrics[lid] = LinkMetrics(lid, t=1.0, skr_bps=rng.uniform(200_000, 2_000_000),
                                   qber=rng.uniform(0.01, 0.06), sessions=rng.randint(0, 3),
                                   buffer_bits=rng.randint(0, 10**6))
    core.set_metrics(metrics)
    return core, [f"n{v}" for v in g.nodes], metrics


class _Timer:
    """Wall and thread-CPU time of each timed call, and the GC passes during them."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.gc_hits = 0
        self._gc = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc += 1

    def __enter__(self) -> _Timer:
        self._g0, self._c0, self._w0 = self._gc, time.thread_time(), time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall.append(time.perf_counter() - self._w0)
        self.cpu.append(time.thread_time() - self._c0)
        self.gc_hits += self._gc > self._g0

    def close(self) -> None:
        gc.callbacks.remove(self._on_gc)


def _path_times(n: int, pairs: int, seed: int) -> tuple[_Timer, float]:
    core, nodes, _ = _random_core(n, seed)
    rng = random.Random(seed + 1)
    timer = _Timer()
    hops: list[int] = []
    for _ in range(pairs):
        a, b = rng.sample(nodes, 2)
        with timer:
            route = core.compute_path(a, b, min_bps=150.0)
        hops.append(len(route.links))
    timer.close()
    return timer, statistics.fmean(hops)


def _loaded_times(n: int, live: int, pairs: int, seed: int) -> tuple[_Timer, float, int]:
    """route_and_reserve under ``live`` sessions with churn and monitoring reports."""
    core, nodes, metrics = _random_core(n, seed)
    rng = random.Random(seed + 2)
    links = list(metrics)
    held: list[str] = []
    for i in range(live):  # fill, untimed
        a, b = rng.sample(nodes, 2)
        core.route_and_reserve(f"w{i}", 0, a, b, 150.0)
        held.append(f"w{i}")
    timer = _Timer()
    hops: list[int] = []
    for i in range(pairs):
        if i % 100 == 0:  # a Monitoring report: 10 % of the links changed
            changed = {lid: LinkMetrics(lid, t=2.0 + i, skr_bps=rng.uniform(200_000, 2e6),
                                        qber=rng.uniform(0.01, 0.06))
                       for lid in rng.sample(links, len(links) // 10)}
            with timer:
                core.update_metrics(changed)
            timer.wall.pop(), timer.cpu.pop()  # reports are not route requests
        a, b = rng.sample(nodes, 2)
        with timer:
            res = core.route_and_reserve(f"s{i}", 0, a, b, 150.0)
        hops.append(len(res.route.links))
        core.release(held.pop(rng.randrange(len(held))))
        held.append(f"s{i}")
    timer.close()
    return timer, statistics.fmean(hops), len(core.reservations())


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
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--live", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip-setup", action="store_true", help="routing figures only")
    args = ap.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"parameters: sessions={args.sessions} pairs={args.pairs} live={args.live} "
          f"seed={args.seed}")
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} CPUs | Python {platform.python_version()} | "
          f"networkx {nx.__version__}")
    if not args.skip_setup:
        print("\nsession setup latency (both OPEN_CONNECTs sent -> both returned configured):")
        with tempfile.TemporaryDirectory() as tmp:
            await _run_setup("embedded", None, args.sessions, Path(tmp))
            srv = NatsServer.start()
            try:
                await _run_setup("nats", srv.url, args.sessions, Path(tmp))
            finally:
                srv.stop()
    print("\npath computation, empty network (bidirectional Dijkstra, metric weights, "
          "min_bps filter):")
    for n in (100, 1000):
        t, mean_hops = _path_times(n, args.pairs, args.seed)
        print(f"  {n:>5} nodes  {2 * n} links  pairs={len(t.wall)}  mean hops {mean_hops:4.1f}")
        print(f"        wall {_fmt_ms(t.wall)}")
        print(f"        cpu  {_fmt_ms(t.cpu)}   gc during {t.gc_hits} requests")
    print(f"\nroute_and_reserve at 1,000 nodes, {args.live} live sessions, churn, a monitoring "
          "report per 100 requests:")
    t, mean_hops, held = _loaded_times(1000, args.live, args.pairs, args.seed)
    print(f"  pairs={len(t.wall)}  mean hops {mean_hops:4.1f}  reservations held {held}")
    print(f"        wall {_fmt_ms(t.wall)}")
    print(f"        cpu  {_fmt_ms(t.cpu)}   gc during {t.gc_hits} requests")


if __name__ == "__main__":
    asyncio.run(main())

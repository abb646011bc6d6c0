"""Control-plane benchmarks: session setup latency and path computation time.

Run from the repository root (after ``pip install -e .``)::

    python bench/control.py [--sessions 200] [--pairs 2000] [--live 10000] [--seed 7]
                            [--skip-setup]

1. **Session setup latency** — from both endpoint KMs sending their open requests to
   Admission Control having every ConfigAck of the path (both endpoints operative), on a
   1-hop and a 3-hop path; embedded (MemoryBus, one process) and over a real nats-server
   (control plane and KMs on separate NATS connections). The KMs are minimal responders
   (:class:`AckingKms`, below: they apply and acknowledge at once), so the figure is the
   control plane's own cost: the user database lookups, routing, the pushes and their
   acknowledgements. Targets: p50 < 10 ms embedded, < 30 ms over NATS.
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
from pathlib import Path
from types import TracebackType
from typing import Any

import networkx as nx

from keyplane.bus import Bus, MemoryBus, Message, Subscription, topics
from keyplane.clock import RealClock
from keyplane.config import parse_topology
from keyplane.control import ControlPlane, ControlSettings, RoutingCore
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import (
    ConfigAck,
    DeleteConfirm,
    Qos,
    SessionClose,
    SessionConfig,
    SessionDelete,
    SessionOpenRequest,
)
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


class AckingKms:
    """Minimal KM configuration responders: apply and acknowledge at once (the bench
    measures the control plane, not the KMs)."""

    def __init__(self, bus: Bus, nodes: list[str]) -> None:
        self.bus = bus
        self.nodes = nodes
        self.table: dict[str, set[str]] = {n: set() for n in nodes}
        self._subs: list[Subscription] = []

    async def __aenter__(self) -> AckingKms:
        for node in self.nodes:
            self._subs.append(await self.bus.subscribe(topics.km_config(node),
                                                       self._handler(node)))
        return self

    def _handler(self, node: str) -> Any:
        async def handle(_topic: str, msg: Message) -> Message | None:
            if isinstance(msg, SessionConfig):
                self.table[node].add(msg.session_id)
                return ConfigAck(session_id=msg.session_id, node=node, epoch=msg.epoch, ok=True)
            if isinstance(msg, SessionDelete):
                self.table[node].discard(msg.session_id)
                return DeleteConfirm(session_id=msg.session_id, node=node)
            return None

        return handle

    def holders(self, session_id: str) -> list[str]:
        return [n for n in self.nodes if session_id in self.table[n]]

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        for sub in self._subs:
            await sub.unsubscribe()


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
        async with AckingKms(km_bus, ["n0", "n1", "n2", "n3"]) as kms, \
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
        print("\nsession setup latency (both opens sent -> every ConfigAck received):")
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

"""Contention benchmark: who gets scarce key on one 70 km link (issue #17.1).

Two ETSI 004 sessions share one 70 km link between km0 and km1; four workers per session call
GET_KEY at the source (each naming the stream's next free index) as fast as keys come. The
link is a real :class:`~keyplane.physical.runner.LinkRunner` in analytic mode, paced on the real
clock (it makes the decoy-state key rate of a 70 km fibre, about 51 kb/s, in blocks of one
frame), feeding both KMs' link key stores; the KMs run under the real control plane
(bench/_support.py). Two runs: priority 7 against priority 0, then 3 against 3 (each
application asks for the priority in its OPEN_CONNECT; the SLA allows up to 7). A third run,
``opposite``: the same two priorities, but the priority-0 session (sa -> sb) makes its keys
at km0 and the priority-7 one (sd -> sc) at km1, so each sends its key frames over one
direction of the link and its confirmations (32 bytes of link key per key) back over the
other, where the other session sends its frames: who gets each direction's key when one
session's frames meet the other's confirmations (docs/keymanager.md, "Scarce link key").

    python bench/contention.py [--seconds 30] [--workers 4] [--chunk 32] [--timeout-ms 5000]
        [--runs unequal equal opposite]

Prints, per session: keys, status-2 answers (insufficient key / KM busy), status-6 answers
(timeouts: the request waited for key until its QoS Timeout), GET_KEY wait p50/p99 in ms; per
run: the key ratio against the target (7 vs 0: at least 3x; equal priorities: within 20 %),
the link's key, process CPU and wall time. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import statistics
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from _support import CALLER_A, CALLER_B, machine_line, start_net

from keyplane.api.errors import map_exception
from keyplane.bus import MemoryBus
from keyplane.clock import RealClock
from keyplane.config import Topology, parse_topology
from keyplane.events import Event, EventStream, EventType, MemorySink
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.keymanager.interface import Caller
from keyplane.messages import Qos
from keyplane.physical.runner import LinkRunner
from keyplane.store import Database, sqlite_url

SEED = 17


def topology(length_km: float) -> Topology:
    """km0 - km1 over one analytic link; users a (sa, sc at km0) and b (sb, sd at km1)."""
    sla = "{max_sessions: 100, max_bps: 1000000000000, priority: 7, idle_timeout_s: 3600}"
    return parse_topology(f"""
version: 1
name: bench-contention
nodes: [{{id: km0}}, {{id: km1}}]
links: [{{endpoints: [km0, km1], length_km: {length_km}, protocol: analytic}}]
users:
  - {{id: a, certificate_subject: "CN=a", sla: {sla}}}
  - {{id: b, certificate_subject: "CN=b", sla: {sla}}}
applications:
  - {{sae_id: sa, owner: a, node: km0}}
  - {{sae_id: sc, owner: a, node: km0}}
  - {{sae_id: sb, owner: b, node: km1}}
  - {{sae_id: sd, owner: b, node: km1}}
""")


def admission_requested(sid: str, e: Event) -> bool:
    """The KM asked Admission Control for session ``sid``."""
    return e.type == EventType.admission_requested and e.session == sid


@dataclass
class SessionFigures:
    """What one session's workers saw."""

    priority: int
    keys: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    waits_s: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        """The ``q`` quantile of the successful calls' waits, in ms (nan if none)."""
        if not self.waits_s:
            return float("nan")
        if len(self.waits_s) == 1:
            return 1000 * self.waits_s[0]
        return 1000 * statistics.quantiles(self.waits_s, n=100, method="inclusive")[
            min(98, max(0, round(q * 100) - 1))]


async def run(priorities: tuple[int, int], args: argparse.Namespace, tmp: Path,
              opposite: bool = False) -> tuple[dict[str, SessionFigures], int, float, float]:
    """One run: ``(figures by SAE, link key bits made, CPU s, wall s)``; ``opposite``: the
    second session (sd -> sc) makes its keys at km1."""
    topo = topology(args.length_km)
    bus = MemoryBus()
    clock = RealClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    db = await Database.open(sqlite_url(
        tmp / f"contention-{priorities[0]}-{priorities[1]}-{int(opposite)}.db"))
    net = await start_net(topo, bus, db, clock, events, blocks=0,
                          km_settings=KmSettings(link_reserve_bytes=4096))
    link = topo.links[0]
    km0, km1 = net.km(0), net.km(1)
    runner = LinkRunner(link, clock=clock, seed=SEED, alice_sink=km0.link_key_sink(link.link_id),
                        bob_sink=km1.link_key_sink(link.link_id), bus=bus, events=events)
    figures: dict[str, SessionFigures] = {}
    workers: list[asyncio.Task[None]] = []
    try:
        sids: dict[str, str] = {}
        at: dict[str, tuple[KeyManager, Caller]] = {}  # where a session's workers ask
        pairs = (("sa", "sb"), ("sd", "sc") if opposite else ("sc", "sd"))
        for (src, dst), prio in zip(pairs, priorities, strict=True):
            qos = Qos(key_chunk_size=args.chunk, priority=prio, timeout_ms=args.timeout_ms)
            sid = str(uuid.uuid4())
            (skm, scaller), (dkm, dcaller) = ((km1, CALLER_B), (km0, CALLER_A)) \
                if src == "sd" else ((km0, CALLER_A), (km1, CALLER_B))
            at[src] = (skm, scaller)
            opener = asyncio.create_task(skm.open_connect(scaller, src, dst, qos, sid))
            # the source asks Admission Control first: it makes the keys on request
            await sink.wait_for(functools.partial(admission_requested, sid))
            joined = await dkm.open_connect(dcaller, dst, src, qos, sid)
            await opener  # V2.1.1: pending (status 1) at once; the peer's open pairs it
            if not joined.peer_connected:
                raise RuntimeError(f"session {src}->{dst} not connected")
            sids[src] = sid
            figures[src] = SessionFigures(prio)
        stop = asyncio.Event()

        async def worker(src: str, indexes: itertools.count[int]) -> None:
            fig = figures[src]
            km, caller = at[src]
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    await km.get_key(caller, sids[src], next(indexes))
                except Exception as exc:
                    mapping = map_exception(exc)
                    status = mapping.etsi004 if mapping is not None else None
                    fig.statuses[str(int(status)) if status is not None else type(exc).__name__] += 1
                    continue
                fig.keys += 1
                fig.waits_s.append(time.perf_counter() - t0)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await runner.start()
        counters = {src: itertools.count() for src in sids}  # one stream, distinct indexes
        workers = [asyncio.create_task(worker(src, counters[src])) for src in sids
                   for _ in range(args.workers)]
        await asyncio.sleep(args.seconds)  # the measurement window (a bench, not a test)
        stop.set()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        bits = runner.stats.delivered_bits
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await runner.close()
        await net.close()
        await db.close()
        await bus.close()
    return figures, bits, cpu, wall


def report(name: str, priorities: tuple[int, int], result: tuple[
        dict[str, SessionFigures], int, float, float], args: argparse.Namespace) -> None:
    figures, bits, cpu, wall = result
    print(f"\n== {name}: priority {priorities[0]} vs {priorities[1]}, {args.workers} workers "
          f"each, {args.chunk}-byte keys, QoS Timeout {args.timeout_ms} ms")
    print(f"{'session':>8} {'prio':>4} {'keys':>6} {'status 2':>8} {'status 6':>8} "
          f"{'other':>6} {'wait p50 ms':>11} {'wait p99 ms':>11}")
    for src, f in figures.items():
        other = sum(n for k, n in f.statuses.items() if k not in ("2", "6"))
        print(f"{src:>8} {f.priority:>4} {f.keys:>6} {f.statuses['2']:>8} {f.statuses['6']:>8} "
              f"{other:>6} {f.pct(0.5):>11.1f} {f.pct(0.99):>11.1f}")
    first, second = list(figures)
    a, c = figures[first].keys, figures[second].keys
    if name == "opposite":  # each sends over its own direction: no ratio target
        print(f"keys {a + c} in all; ratio sd/sa {c / a if a else float('inf'):.2f} (no "
              "target: each session's frames have a direction to themselves, less the other's "
              "confirmations)")
    elif priorities[0] != priorities[1]:
        ratio = a / c if c else float("inf")
        print(f"ratio sa/sc {ratio:.2f} (target >= 3)")
    else:
        spread = abs(a - c) / max(a, c, 1)
        print(f"difference {100 * spread:.1f} % of the larger (target <= 20 %)")
    used = 8 * sum(f.keys for f in figures.values()) * (args.chunk + 32)
    print(f"link made {bits / wall / 1000:.1f} kb/s over {wall:.1f} s; the keys used "
          f"{used / wall / 1000:.1f} kb/s of it (each key {args.chunk} + 32 bytes MAC key); "
          f"CPU {cpu:.1f} s, wall {wall:.1f} s")


async def main(args: argparse.Namespace) -> None:
    print(machine_line())
    print(f"parameters: link {args.length_km} km analytic, seconds {args.seconds}, workers "
          f"{args.workers}, chunk {args.chunk} bytes, timeout {args.timeout_ms} ms, seed {SEED}")
    runs = {"unequal": (7, 0), "equal": (3, 3), "opposite": (0, 7)}
    with tempfile.TemporaryDirectory() as d:
        for name in args.runs:
            prios = runs[name]
            report(name, prios, await run(prios, args, Path(d), opposite=name == "opposite"),
                   args)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0, help="measurement window per run")
    p.add_argument("--workers", type=int, default=4, help="GET_KEY callers per session")
    p.add_argument("--chunk", type=int, default=32, help="key_chunk_size in bytes")
    p.add_argument("--timeout-ms", type=int, default=5000, help="the OPEN_CONNECT's Timeout")
    p.add_argument("--length-km", type=float, default=70.0, help="the link's length")
    p.add_argument("--runs", nargs="+", choices=("unequal", "equal", "opposite"),
                   default=["unequal", "equal", "opposite"])
    asyncio.run(main(p.parse_args()))

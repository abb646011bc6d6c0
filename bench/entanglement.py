"""Entanglement service: demands served against offered load, with and without admission.

A 4 x 4 grid of repeater nodes (20 km links, 4 memories each, 1 s coherence time) receives
demands for packets of entanglement as a Poisson process; each demand joins two random
nodes and asks for 5-40 packets of 1-2 pairs, fidelity 0.7-0.9, within 1-5 s. The engine
(scheduler + emulated repeater chains; keyplane.control.entanglement) runs on virtual
time, slot by slot. For each offered load it prints how many demands were admitted, how
many of those were served in time, the fidelity check, the pairs delivered per second, and
the same load with the deadline check off (every feasible demand admitted, best effort).

    python bench/entanglement.py [--seconds 20] [--seed 1]

With ``--topology FILE`` (e.g. examples/quantum_network.yaml) the demands go instead to the
control plane's entanglement service (keyplane.control.entanglement.service, the element
beside Admission Control) built from that topology's ``entanglement`` section, between its
trusted end nodes, on a virtual clock: the served share against the offered load of the
network that also carries key streams.

Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import time

from _support import machine_line

from keyplane.bus import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.config import Topology, load_topology
from keyplane.control.entanglement import (
    DemandState,
    EntanglementDemand,
    EntanglementLink,
    EntanglementNetwork,
    EntanglementScheduler,
    SchedulerSettings,
)
from keyplane.control.entanglement.executor import EngineReport, EntanglementEngine
from keyplane.control.entanglement.service import EntanglementService
from keyplane.events import EventStream
from keyplane.physical.repeater import ElementaryLink

SLOT_S = 0.005


def grid(n: int) -> EntanglementNetwork:
    net = EntanglementNetwork(coherence_time_s=1.0)
    for i, j in itertools.product(range(n), repeat=2):
        net.memories[f"r{i}_{j}"] = 4
        for di, dj in ((0, 1), (1, 0)):
            if i + di < n and j + dj < n:
                a, b = f"r{i}_{j}", f"r{i + di}_{j + dj}"
                net.links[f"{a}-{b}"] = EntanglementLink(f"{a}-{b}", a, b, ElementaryLink(20.0))
    return net


def arrivals(rate_hz: float, seconds: float, rng: random.Random,
             nodes: list[str] | None = None) -> list[tuple[float, EntanglementDemand]]:
    nodes = nodes or [f"r{i}_{j}" for i in range(4) for j in range(4)]
    out, t = [], 0.0
    for k in itertools.count():
        t += rng.expovariate(rate_hz)
        if t >= seconds:
            return out
        a, b = rng.sample(nodes, 2)
        out.append((t, EntanglementDemand(
            demand_id=f"d{k}", node_a=a, node_b=b, packets=rng.randint(50, 400),
            packet_size=rng.randint(1, 2), min_fidelity=rng.uniform(0.7, 0.9),
            deadline_s=rng.uniform(1.0, 5.0), priority=rng.randint(0, 7))))
    raise AssertionError("unreachable")


def run(rate_hz: float, seconds: float, seed: int, check: bool) -> str:
    demands = arrivals(rate_hz, seconds, random.Random(seed))
    engine = EntanglementEngine(EntanglementScheduler(
        grid(4), SchedulerSettings(slot_s=SLOT_S, check_deadlines=check)), seed=seed)
    cpu0 = time.process_time()
    pending, t = list(demands), 0.0
    end = seconds + 6.0  # let the last deadlines pass
    while t < end:
        while pending and pending[0][0] <= t:
            engine.submit(pending.pop(0)[1], t)
        engine.step(t)
        t += SLOT_S
    cpu = time.process_time() - cpu0
    return _row(rate_hz, len(demands), engine.report, end, cpu)


def _row(rate_hz: float, offered: int, rep: EngineReport, end: float, cpu: float) -> str:
    admitted = len(rep.admitted)
    served = sum(1 for o in rep.outcomes.values() if o.state is DemandState.served
                 and rep.finished_t[o.demand_id] <= rep.admitted[o.demand_id].deadline_t + 1e-9)
    pairs = [p for ps in rep.pairs.values() for p in ps]
    fid_ok = all(p.fidelity >= rep.admitted[p.demand_id].demand.min_fidelity for p in pairs)
    return (f"{rate_hz:>6.1f} {offered:>8} {admitted:>9} {served:>7} "
            f"{served / max(1, offered):>8.0%} {served / max(1, admitted):>9.0%} "
            f"{len(pairs) / end:>9.0f} {'yes' if fid_ok else 'NO':>6} {cpu:>7.2f}")


async def run_service(topology: Topology, rate_hz: float, seconds: float, seed: int) -> str:
    """The same load through the control plane's entanglement service (virtual clock)."""
    assert topology.entanglement is not None
    trusted = {n.id for n in topology.nodes}
    ends = sorted(n for n in topology.entanglement.memories if n in trusted)
    demands = arrivals(rate_hz, seconds, random.Random(seed), ends)
    clock = VirtualClock()
    cpu0 = time.process_time()
    end = seconds + 6.0
    async with MemoryBus() as bus, \
            EntanglementService(topology, bus, clock, EventStream(clock, []), seed=seed) as svc:
        for at, demand in demands:
            await clock.advance(at - clock.now())
            svc.request(demand)
        await clock.advance(end - clock.now())
        report = svc.engine.report
    return _row(rate_hz, len(demands), report, end, time.process_time() - cpu0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="arrival window (virtual s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rates", type=float, nargs="+", default=[2, 5, 10, 20, 40])
    ap.add_argument("--topology", help="run through the entanglement service of this "
                                       "topology file instead of the 4x4 grid")
    args = ap.parse_args()
    print(machine_line())
    head = (f"{'rate/s':>6} {'offered':>8} {'admitted':>9} {'served':>7} {'of offer':>8} "
            f"{'of admit':>9} {'pairs/s':>9} {'fid ok':>6} {'CPU s':>7}")
    if args.topology:
        topo = load_topology(args.topology)
        print(f"parameters: {args.topology} through EntanglementService, "
              f"seconds={args.seconds} seed={args.seed}\n{head}")
        for rate in args.rates:
            print(asyncio.run(run_service(topo, rate, args.seconds, args.seed)), flush=True)
        return
    print(f"parameters: grid 4x4, 20 km links, slot {SLOT_S * 1e3:g} ms, "
          f"seconds={args.seconds} seed={args.seed}")
    for check, label in ((True, "with admission (deadline check)"),
                         (False, "without admission (every feasible demand, best effort)")):
        print(f"\n== {label}\n{head}")
        for rate in args.rates:
            print(run(rate, args.seconds, args.seed, check), flush=True)


if __name__ == "__main__":
    main()

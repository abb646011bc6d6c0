"""The entanglement scheduler: admits demands and computes periodic network schedules.

Pure core (events and ``now`` in, effects out, no I/O), in the style of Admission Control,
after the QIA prototype's central controller (Beauchamp, Jirovská, Gauthier, Wehner,
arXiv:2503.12582): end nodes submit **demands**; the controller decides at submission
whether it can meet them; every period it computes a **schedule** that grants network
resources to demands slot by slot. The schedule says who may use which resource when; what
happens on the links (attempts, swaps, purification) is the physical layer's business, and
entanglement is generated only in granted slots (generate-when-requested).

Decisions:

* **Path.** Among the ``k`` shortest simple paths (hops) over links in service whose nodes
  have the memories the demand needs, the one with the shortest expected packet time whose
  packet fidelity reaches the demand's minimum (with the fewest end-to-end purification
  rounds that reach it, :meth:`~keyplane.physical.repeater.RepeaterChain.best_for`).
  A packet's worst pair waits while the other ``packet_size - 1`` pairs are made; its
  fidelity at completion is what is checked.
* **Resources.** A link serves one demand per slot; a node's memories are shared by count
  (a repeater on the path holds 2, an end node ``packet_size``). A fibre shared with a key
  stream is time-divided: in every period the key streams keep the share their
  reservations need (the trailing slots), entanglement may use only the leading ones
  (:meth:`~keyplane.control.entanglement.model.EntanglementNetwork.fibre_slot`). No
  resource is ever booked beyond its capacity in any slot (tested as a property).
* **Order.** Earliest deadline first (optimal for meeting deadlines on one resource), ties
  broken by priority (higher first), then submission order. A demand is booked in every slot
  whose resources are free until its expected remaining work is covered.
* **Admission.** A demand is refused when no path can reach its fidelity, or when the
  schedule that includes it (the same greedy, run forward) would finish it after its
  deadline; admitted demands are never displaced by a later one's admission check.
* **Progress.** The shell reports delivered packets (:meth:`EntanglementScheduler.delivered`);
  the remaining expected work shrinks accordingly. A demand past its deadline with packets
  missing is ``missed`` and its resources are freed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx

from keyplane.control.entanglement.model import (
    DemandOutcome,
    DemandState,
    EntanglementDemand,
    EntanglementNetwork,
)
from keyplane.physical.repeater import (
    ChainEstimate,
    RepeaterChain,
    decohere,
    fidelity_of,
    werner_of,
)

__all__ = [
    "Admitted",
    "Booking",
    "DemandPlan",
    "Effect",
    "EntanglementScheduler",
    "Finished",
    "Refused",
    "Schedule",
    "SchedulerSettings",
]


@dataclass(frozen=True)
class SchedulerSettings:
    """Scheduler knobs.

    Args:
        slot_s: length of one schedule slot.
        period_slots: slots per computed schedule (one period).
        k_paths: candidate paths considered per demand.
        max_purification_rounds: end-to-end BBPSSW rounds the scheduler may ask for.
        work_margin: booked work per expected work (>= 1: slack for the randomness of the
            links; the physical layer may need longer than the mean).
        horizon_s: how far ahead admission simulates the schedule.
        check_deadlines: refuse demands the schedule would finish late (False: admit every
            demand a path can serve at its fidelity, best effort; for comparisons).
    """

    slot_s: float = 0.01
    period_slots: int = 100
    k_paths: int = 4
    max_purification_rounds: int = 3
    work_margin: float = 1.5
    horizon_s: float = 3600.0
    check_deadlines: bool = True


@dataclass(frozen=True)
class DemandPlan:
    """An admitted demand with its path and the chain's expected performance."""

    demand: EntanglementDemand
    nodes: tuple[str, ...]
    links: tuple[str, ...]
    chain: RepeaterChain
    estimate: ChainEstimate
    packet_time_s: float
    packet_fidelity: float
    submitted_t: float

    @property
    def deadline_t(self) -> float:
        """Absolute deadline."""
        return self.submitted_t + self.demand.deadline_s

    def memories(self) -> dict[str, int]:
        """Memories held at each node of the path while the demand is served."""
        need = {n: 2 for n in self.nodes[1:-1]}
        need[self.nodes[0]] = self.demand.packet_size
        need[self.nodes[-1]] = self.demand.packet_size
        return need


@dataclass(frozen=True)
class Booking:
    """A grant: ``demand_id`` may use ``links`` and ``memories`` during one slot."""

    demand_id: str
    links: tuple[str, ...]
    memories: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Schedule:
    """One period's grants: ``slots[i]`` holds the bookings of [start + i slot, +1 slot)."""

    start_t: float
    slot_s: float
    slots: tuple[tuple[Booking, ...], ...]

    def usage(self) -> Iterable[tuple[int, dict[str, int], dict[str, int]]]:
        """Per slot: (index, link -> bookings, node -> memories booked)."""
        for i, bookings in enumerate(self.slots):
            links: dict[str, int] = {}
            memories: dict[str, int] = {}
            for b in bookings:
                for lid in b.links:
                    links[lid] = links.get(lid, 0) + 1
                for node, n in b.memories:
                    memories[node] = memories.get(node, 0) + n
            yield i, links, memories


@dataclass(frozen=True)
class Admitted:
    """The demand is scheduled; ``expected_finish_t`` from the forward simulation."""

    plan: DemandPlan
    expected_finish_t: float


@dataclass(frozen=True)
class Refused:
    """The demand cannot be met; nothing was reserved."""

    demand_id: str
    reason: str


@dataclass(frozen=True)
class Finished:
    """The demand ended (served or missed)."""

    outcome: DemandOutcome


Effect = Admitted | Refused | Finished


@dataclass
class _Live:
    plan: DemandPlan
    delivered: int = 0

    @property
    def remaining_packets(self) -> int:
        return self.plan.demand.packets - self.delivered


@dataclass
class EntanglementScheduler:
    """Pure scheduling core over one :class:`EntanglementNetwork`."""

    network: EntanglementNetwork
    settings: SchedulerSettings = field(default_factory=SchedulerSettings)
    _live: dict[str, _Live] = field(default_factory=dict)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _seq: dict[str, int] = field(default_factory=dict)

    # -- events -------------------------------------------------------------------------

    def submit(self, demand: EntanglementDemand, now: float) -> list[Effect]:
        """A new demand: admit it (with its plan) or refuse it, reserving nothing."""
        if demand.demand_id in self._live:
            return [Refused(demand.demand_id, "demand_id already in use")]
        for node in (demand.node_a, demand.node_b):
            if node not in self._graph():
                return [Refused(demand.demand_id, f"node {node!r} has no entanglement link")]
        if demand.node_a == demand.node_b:
            return [Refused(demand.demand_id, "both ends are the same node")]
        plan = self._plan_for(demand, now)
        if isinstance(plan, str):
            return [Refused(demand.demand_id, plan)]
        self._seq[demand.demand_id] = next(self._order)
        self._live[demand.demand_id] = _Live(plan)
        if not self.settings.check_deadlines:
            return [Admitted(plan, math.nan)]
        finishes = self._forward_finish(now)
        finish = finishes.get(demand.demand_id, math.inf)
        if finish > plan.deadline_t:
            del self._live[demand.demand_id]
            return [Refused(demand.demand_id, "deadline cannot be met under the current load "
                                              f"(expected finish in {finish - now:.3g} s)")]
        late = sorted(did for did, lv in self._live.items()
                      if finishes.get(did, math.inf) > lv.plan.deadline_t
                      and did != demand.demand_id)
        if late:
            del self._live[demand.demand_id]
            return [Refused(demand.demand_id, "admitting it would make admitted demands miss "
                                              f"their deadlines: {', '.join(late[:5])}")]
        return [Admitted(plan, finish)]

    def delivered(self, demand_id: str, packets: int, now: float) -> list[Effect]:
        """The physical layer completed ``packets`` packets for ``demand_id``."""
        live = self._live.get(demand_id)
        if live is None or packets <= 0:
            return []
        live.delivered = min(live.plan.demand.packets, live.delivered + packets)
        if live.remaining_packets == 0:
            del self._live[demand_id]
            return [Finished(DemandOutcome(demand_id, DemandState.served,
                                           delivered_packets=live.delivered))]
        return []

    def expire(self, now: float) -> list[Effect]:
        """End the demands whose deadline passed with packets missing."""
        out: list[Effect] = []
        for did, live in list(self._live.items()):
            if now >= live.plan.deadline_t:
                del self._live[did]
                out.append(Finished(DemandOutcome(did, DemandState.missed, "deadline passed",
                                                  live.delivered)))
        return out

    def cancel(self, demand_id: str) -> list[Effect]:
        """The application withdrew the demand."""
        live = self._live.pop(demand_id, None)
        if live is None:
            return []
        return [Finished(DemandOutcome(demand_id, DemandState.missed, "cancelled",
                                       live.delivered))]

    def schedule(self, now: float) -> Schedule:
        """The next period's schedule, starting at ``now``."""
        s = self.settings
        slots, _ = self._greedy(now, s.period_slots, stop_when_done=False)
        return Schedule(now, s.slot_s, tuple(tuple(b) for b in slots))

    @property
    def live(self) -> dict[str, DemandPlan]:
        """Admitted demands not yet finished."""
        return {did: live.plan for did, live in self._live.items()}

    def remaining(self, demand_id: str) -> int:
        """Packets still owed to ``demand_id`` (0 if unknown)."""
        live = self._live.get(demand_id)
        return live.remaining_packets if live else 0

    # -- planning -------------------------------------------------------------------------

    def _graph(self) -> nx.Graph[str]:
        g: nx.Graph[str] = nx.Graph()
        for link in self.network.links.values():
            if link.link_id in self.network.down:
                continue
            if self.network.memories.get(link.node_a, 0) and \
                    self.network.memories.get(link.node_b, 0):
                g.add_edge(link.node_a, link.node_b, link_id=link.link_id)
        return g

    def _plan_for(self, demand: EntanglementDemand, now: float) -> DemandPlan | str:
        g = self._graph()
        try:
            paths = list(itertools.islice(
                nx.shortest_simple_paths(g, demand.node_a, demand.node_b),
                self.settings.k_paths))
        except nx.NetworkXNoPath:
            return "no entanglement path between the end nodes"
        best: DemandPlan | None = None
        short_of_memory = False
        for nodes in paths:
            plan = self._evaluate(demand, tuple(nodes), g, now)
            if plan is None:
                continue
            if any(self.network.memories.get(n, 0) < k for n, k in plan.memories().items()):
                short_of_memory = True
                continue
            if best is None or plan.packet_time_s < best.packet_time_s:
                best = plan
        if best is None:
            if short_of_memory:
                return "not enough quantum memories on any path for the packet size"
            return (f"no path reaches fidelity {demand.min_fidelity} for packets of "
                    f"{demand.packet_size}")
        return best

    def _evaluate(self, demand: EntanglementDemand, nodes: tuple[str, ...], g: nx.Graph[str],
                  now: float) -> DemandPlan | None:
        link_ids = tuple(str(g.edges[a, b]["link_id"]) for a, b in itertools.pairwise(nodes))
        net = self.network
        chain = RepeaterChain(tuple(net.links[lid].physics for lid in link_ids),
                              coherence_time_s=net.coherence_time_s,
                              swap_probability=net.swap_probability,
                              swap_gate_werner=net.swap_gate_werner)
        for rounds in range(self.settings.max_purification_rounds + 1):
            est = chain.estimate(rounds)
            k = demand.packet_size
            # the first pair of a packet waits while the other k - 1 are made
            worst = fidelity_of(decohere(werner_of(est.fidelity), (k - 1) * est.pair_time_s,
                                         net.coherence_time_s))
            if worst >= demand.min_fidelity:
                return DemandPlan(demand, nodes, link_ids, chain, est, k * est.pair_time_s,
                                  worst, now)
        return None

    def _order_key(self, live: _Live) -> tuple[float, int, int]:
        p = live.plan
        return (p.deadline_t, -p.demand.priority, self._seq[p.demand.demand_id])

    def _greedy(self, now: float, n_slots: int, *, stop_when_done: bool
                ) -> tuple[list[list[Booking]], dict[str, float]]:
        """Book ``n_slots`` slots from ``now``; returns the slots and each demand's expected
        finish time (only for those the slots cover)."""
        s = self.settings
        order = sorted(self._live.values(), key=self._order_key)
        work = {lv.plan.demand.demand_id: lv.remaining_packets * lv.plan.packet_time_s
                * s.work_margin for lv in order}
        finish: dict[str, float] = {}
        slots: list[list[Booking]] = []
        for i in range(n_slots):
            if stop_when_done and all(w <= 0 for w in work.values()):
                break
            t = now + i * s.slot_s
            used_links: set[str] = set()
            used_mem: dict[str, int] = {}
            booked: list[Booking] = []
            for lv in order:
                did = lv.plan.demand.demand_id
                if work[did] <= 0 or t >= lv.plan.deadline_t:
                    continue
                mem = lv.plan.memories()
                if used_links.intersection(lv.plan.links):
                    continue
                if not all(self.network.fibre_slot(lid, t, s.slot_s, s.period_slots)
                           for lid in lv.plan.links):
                    continue  # a shared fibre's key-stream slot
                if any(used_mem.get(n, 0) + k > self.network.memories.get(n, 0)
                       for n, k in mem.items()):
                    continue
                used_links.update(lv.plan.links)
                for n, k in mem.items():
                    used_mem[n] = used_mem.get(n, 0) + k
                booked.append(Booking(did, lv.plan.links, tuple(sorted(mem.items()))))
                work[did] -= s.slot_s
                if work[did] <= 0:
                    finish[did] = t + s.slot_s
            slots.append(booked)
        return slots, finish

    def _forward_finish(self, now: float) -> dict[str, float]:
        n = max(1, math.ceil(self.settings.horizon_s / self.settings.slot_s))
        latest = max((lv.plan.deadline_t for lv in self._live.values()), default=now)
        n = min(n, max(1, math.ceil((latest - now) / self.settings.slot_s) + 1))
        _, finish = self._greedy(now, n, stop_when_done=True)
        return finish

"""Carrying out a schedule on the emulated chains: grants in, packets with EIDs out.

The scheduler decides who may use which resources when; the executor plays the physical
layer's part for emulated repeater chains: each booked slot lets that demand's chain
(:class:`~keyplane.physical.repeater.PacketSource`) work for one slot, and every completed
packet becomes ``packet_size`` :class:`~keyplane.control.entanglement.model.EntangledPair`
records with fresh EIDs. Pure apart from the seeded random source: the caller advances it
slot by slot, with ``now`` from its clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from keyplane.control.entanglement.model import (
    DemandOutcome,
    EntangledPair,
    EntanglementDemand,
    new_eid,
)
from keyplane.control.entanglement.scheduler import (
    Admitted,
    DemandPlan,
    Effect,
    EntanglementScheduler,
    Finished,
    Refused,
    Schedule,
)
from keyplane.physical.repeater import PacketSource

__all__ = ["Delivery", "EngineReport", "EntanglementEngine", "ScheduleExecutor"]


@dataclass(frozen=True)
class Delivery:
    """Packets completed for one demand in one slot."""

    demand_id: str
    pairs: tuple[EntangledPair, ...]
    packets: int


@dataclass
class ScheduleExecutor:
    """Runs granted slots on one emulated chain per admitted demand."""

    seed: int = 0
    _sources: dict[str, PacketSource] = field(default_factory=dict)
    _packets: dict[str, int] = field(default_factory=dict)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def admit(self, plan: DemandPlan) -> None:
        """Build the demand's emulated chain (its path, its purification rounds)."""
        did = plan.demand.demand_id
        self._sources[did] = PacketSource(plan.chain, plan.estimate.purification_rounds,
                                          plan.demand.packet_size,
                                          random.Random(self._rng.getrandbits(64)))
        self._packets[did] = 0

    def forget(self, demand_id: str) -> None:
        """The demand ended: drop its chain."""
        self._sources.pop(demand_id, None)
        self._packets.pop(demand_id, None)

    def run_slot(self, schedule: Schedule, index: int, plans: dict[str, DemandPlan],
                 now: float) -> list[Delivery]:
        """Let every demand booked in slot ``index`` work for one slot; what it delivered."""
        out: list[Delivery] = []
        for booking in schedule.slots[index]:
            src = self._sources.get(booking.demand_id)
            plan = plans.get(booking.demand_id)
            if src is None or plan is None:
                continue
            done = src.run(schedule.slot_s)
            if not done:
                continue
            d = plan.demand
            first = self._packets[booking.demand_id]
            self._packets[booking.demand_id] = first + done
            pairs = tuple(
                EntangledPair(new_eid(), d.demand_id, first + i, d.node_a, d.node_b,
                              plan.packet_fidelity, now)
                for i in range(done) for _ in range(d.packet_size))
            out.append(Delivery(d.demand_id, pairs, done))
        return out


@dataclass
class EngineReport:
    """What happened to each demand, for tests, benchmarks and the event stream."""

    admitted: dict[str, DemandPlan] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, DemandOutcome] = field(default_factory=dict)
    pairs: dict[str, list[EntangledPair]] = field(default_factory=dict)
    finished_t: dict[str, float] = field(default_factory=dict)
    schedules: list[Schedule] = field(default_factory=list)


class EntanglementEngine:
    """Scheduler and executor together, advanced one slot at a time by the caller's clock.

    The asyncio service and the offline simulation (tests, bench/entanglement.py) both drive
    this object, so they share one code path: :meth:`submit` when a demand arrives,
    :meth:`step` once per slot. A new schedule is computed at the start of each period.

    Args:
        scheduler: the scheduling core.
        seed: the emulated chains' random source.
        keep_schedules: keep every computed schedule in the report (tests).
    """

    def __init__(self, scheduler: EntanglementScheduler, *, seed: int = 0,
                 keep_schedules: bool = False) -> None:
        self.scheduler = scheduler
        self.executor = ScheduleExecutor(seed)
        self.report = EngineReport()
        self._keep = keep_schedules
        self._schedule: Schedule | None = None
        self._slot = 0
        self._windows: dict[str, int] = {}

    def _fibre_windows(self) -> dict[str, int]:
        """Per shared fibre, the leading slots of a period entanglement may use now."""
        net, period = self.scheduler.network, self.scheduler.settings.period_slots
        return {lid: net.entanglement_window(lid, period) for lid in net.shared}

    @property
    def current_schedule(self) -> Schedule | None:
        """The schedule being carried out (None before the first slot or after a re-plan)."""
        return self._schedule

    def submit(self, demand: EntanglementDemand, now: float) -> Admitted | Refused:
        """Admit or refuse ``demand``; an admitted demand joins the next schedule."""
        effect = self.scheduler.submit(demand, now)[0]
        if isinstance(effect, Admitted):
            self.report.admitted[demand.demand_id] = effect.plan
            self.report.pairs[demand.demand_id] = []
            self.executor.admit(effect.plan)
            self._schedule = None  # re-plan from the next slot
        elif isinstance(effect, Refused):
            self.report.refused[demand.demand_id] = effect.reason
        else:  # pragma: no cover - submit returns Admitted or Refused only
            raise AssertionError(effect)
        return effect

    def step(self, now: float) -> list[Delivery | DemandOutcome]:
        """Run the slot starting at ``now``: deliveries, then demands that ended."""
        sched = self.scheduler
        windows = self._fibre_windows()
        if self._schedule is not None and any(
                w < self._windows.get(lid, w) for lid, w in windows.items()):
            # the key streams took a larger share of a fibre mid-period: slots this schedule
            # booked may be theirs now, so re-plan from this slot (as a new demand does)
            self._schedule = None
        if self._schedule is None or self._slot >= len(self._schedule.slots):
            self._schedule = sched.schedule(now)
            self._slot = 0
            self._windows = windows
            if self._keep:
                self.report.schedules.append(self._schedule)
        out: list[Delivery | DemandOutcome] = []
        end = now + self._schedule.slot_s
        for d in self.executor.run_slot(self._schedule, self._slot, sched.live, end):
            owed = sched.remaining(d.demand_id)
            packets = min(d.packets, owed)
            kept = d.pairs[:packets * (len(d.pairs) // d.packets)]
            self.report.pairs[d.demand_id].extend(kept)
            out.append(Delivery(d.demand_id, kept, packets))
            out.extend(self._ended(sched.delivered(d.demand_id, packets, end), end))
        out.extend(self._ended(sched.expire(end), end))
        self._slot += 1
        return out

    def _ended(self, effects: list[Effect], now: float) -> list[DemandOutcome]:
        ended = []
        for e in effects:
            if isinstance(e, Finished):
                self.report.outcomes[e.outcome.demand_id] = e.outcome
                self.report.finished_t[e.outcome.demand_id] = now
                self.executor.forget(e.outcome.demand_id)
                ended.append(e.outcome)
        return ended

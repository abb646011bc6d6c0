"""The entanglement service on the bus: the thin asyncio shell around the engine.

It runs beside Admission Control in the control plane and shares what the key streams use:
the topology file (its ``entanglement`` section: memories and elementary links), the
Monitoring Element's link alarms and the SDN Controller's topology changes (a link in
alarm, cut or removed is out of both services), the bus and the event stream.

Application API (request/reply on :data:`ENTANGLEMENT`): an
:class:`EntanglementRequest` (end nodes, packets of pairs, minimum fidelity, deadline;
control-plane senders only) or a :class:`NodeEntanglementRequest` (a node's key manager
forwarding what one of its applications asked over the node-side API,
:mod:`keyplane.api.entanglement`; signed by that node, which may only ask for demands that
start at itself) is admitted or refused at once (:class:`EntanglementReply`); every delivered packet
goes to both end nodes on :func:`delivery_topic` as an :class:`EntanglementDelivery`,
each pair with its EID and fidelity; the end is announced there too. In process,
:meth:`EntanglementService.request` and :meth:`EntanglementService.outcome` do the same.

The slot loop sleeps on the injected clock, one slot at a time; it runs only while a
demand is live (generate-when-requested), so an idle service costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated

from pydantic import Field

from keyplane.bus import Bus, Message, Subscription, topics, unsubscribe_all
from keyplane.clock import Clock
from keyplane.config import Topology
from keyplane.control.entanglement.executor import Delivery, EntanglementEngine
from keyplane.control.entanglement.model import (
    DemandOutcome,
    DemandState,
    EntanglementDemand,
    EntanglementLink,
    EntanglementNetwork,
)
from keyplane.control.entanglement.scheduler import (
    Admitted,
    EntanglementScheduler,
    Schedule,
    SchedulerSettings,
)
from keyplane.control.wire import FIBRE, FibreShare
from keyplane.errors import BusError
from keyplane.events import EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import LinkAlarm, TopologyChange
from keyplane.physical.repeater import ElementaryLink

__all__ = [
    "ELEMENT",
    "ENTANGLEMENT",
    "EntangledPairRecord",
    "EntanglementDelivery",
    "EntanglementReply",
    "EntanglementRequest",
    "EntanglementService",
    "NodeEntanglementRequest",
    "delivery_topic",
    "network_from_topology",
]

logger = logging.getLogger(__name__)

ELEMENT = "entanglement"
ENTANGLEMENT = "keyplane.control.entanglement"
"""Request/reply topic of the application API."""


def delivery_topic(node: str) -> str:
    """Where an end node's applications receive their packets and demand outcomes."""
    # under keyplane.control.> : the control plane's NATS account may publish there
    return f"keyplane.control.entanglement.delivery.{node}"


class EntanglementRequest(Message):
    """An application asks for packets of entanglement between two end nodes."""

    KIND = "control.entanglement_request"

    demand: EntanglementDemand


class NodeEntanglementRequest(Message):
    """A node asks on behalf of one of its applications (authenticated at the node by its
    mTLS certificate); signed by the node's key manager (``node`` must be the signer,
    :data:`keyplane.bus.auth.POLICY`) and refused unless ``demand.node_a == node``."""

    KIND = "control.node_entanglement_request"

    node: str
    demand: EntanglementDemand


class EntanglementReply(Message):
    """Admitted (scheduled from the next slot) or refused, with why."""

    KIND = "control.entanglement_reply"

    demand_id: str
    admitted: bool
    reason: str = ""
    path: list[str] = Field(default_factory=list)
    expected_fidelity: float | None = None
    purification_rounds: int = 0


class EntangledPairRecord(Message):
    """One delivered pair, as both end nodes' applications see it (ITU-T Y Suppl. 98
    clause 8.3: classical identifiers plus the EID and its quality)."""

    KIND = "control.entangled_pair"

    eid: str
    demand_id: str
    packet: Annotated[int, Field(ge=0)]
    node_a: str
    node_b: str
    fidelity: float
    delivered_t: float


class EntanglementDelivery(Message):
    """Packets delivered in one slot, or (``state`` set) how the demand ended."""

    KIND = "control.entanglement_delivery"

    demand_id: str
    pairs: list[EntangledPairRecord] = Field(default_factory=list)
    packets: int = 0
    state: DemandState | None = None
    delivered_packets: int = 0
    reason: str = ""
    app_a: str | None = None
    """The demand's applications (:class:`EntanglementDemand`), so each end node hands
    the pairs only to its own one."""
    app_b: str | None = None


def network_from_topology(topology: Topology) -> EntanglementNetwork:
    """The scheduler's resources from the topology file's ``entanglement`` section."""
    section = topology.entanglement
    if section is None:
        return EntanglementNetwork()
    links = {
        lk.link_id: EntanglementLink(lk.link_id, lk.endpoints[0], lk.endpoints[1],
                                     ElementaryLink(
                                         length_km=lk.length_km,
                                         attenuation_db_per_km=lk.attenuation_db_per_km,
                                         detector_efficiency=lk.detector_efficiency,
                                         repetition_rate_hz=lk.repetition_rate_hz,
                                         initial_fidelity=lk.initial_fidelity))
        for lk in section.links}
    return EntanglementNetwork(links=links, memories=dict(section.memories),
                               coherence_time_s=section.coherence_time_s,
                               swap_probability=section.swap_probability,
                               shared=frozenset(links) & {lk.link_id for lk in topology.links},
                               key_share_min=section.fibre_key_share_min)


class EntanglementService(Service):
    """The entanglement service element (one per control plane).

    Args:
        topology: the network; its ``entanglement`` section gives the resources.
        bus: where applications, Monitoring and the SDN Controller are reached.
        clock: drives the slots.
        events: the event stream.
        seed: the emulated chains' random source.
    """

    def __init__(self, topology: Topology, bus: Bus, clock: Clock, events: EventStream, *,
                 seed: int = 0) -> None:
        section = topology.entanglement
        self.network = network_from_topology(topology)
        settings = SchedulerSettings() if section is None else SchedulerSettings(
            slot_s=section.slot_s, period_slots=section.period_slots)
        self.engine = EntanglementEngine(EntanglementScheduler(self.network, settings),
                                         seed=seed)
        self.bus = bus
        self.clock = clock
        self.events = events
        self._subs: list[Subscription] = []
        self._loop: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._ended: dict[str, asyncio.Future[DemandOutcome]] = {}
        self._fibre_sent: dict[str, float] = {}
        self._last_schedule: Schedule | None = None
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Subscribe to requests, alarms and topology changes; start the slot loop."""
        if self._started:
            return
        self._started = True
        self._subs.append(await self.bus.subscribe(ENTANGLEMENT, self._on_request))
        self._subs.append(await self.bus.subscribe(topics.alarm("*"), self._on_alarm))
        self._subs.append(await self.bus.subscribe(topics.SDN, self._on_sdn))
        self._subs.append(await self.bus.subscribe(FIBRE, self._on_fibre))
        # tell Routing which fibres are shared (it answers with the key streams' shares)
        await self._publish_fibre_shares(None)
        self._loop = asyncio.get_running_loop().create_task(self._slots())
        self.events.emit(EventType.element_started, ELEMENT,
                         links=len(self.network.links), nodes=len(self.network.memories))

    # ------------------------------------------------------------------ application API

    def request(self, demand: EntanglementDemand) -> EntanglementReply:
        """Admit or refuse ``demand`` now (in process; the bus handler calls this)."""
        if demand.demand_id in self.engine.report.admitted or \
                demand.demand_id in self.engine.report.refused:
            return EntanglementReply(demand_id=demand.demand_id, admitted=False,
                                     reason="demand_id already in use")
        effect = self.engine.submit(demand, self.clock.now())
        if isinstance(effect, Admitted):
            plan = effect.plan
            self._ended[demand.demand_id] = asyncio.get_running_loop().create_future()
            self._wake.set()
            self.events.emit(EventType.entanglement_admitted, ELEMENT, node=demand.node_a,
                             demand=demand.demand_id, path=list(plan.nodes),
                             packets=demand.packets, packet_size=demand.packet_size,
                             min_fidelity=demand.min_fidelity,
                             expected_fidelity=plan.packet_fidelity,
                             deadline_s=demand.deadline_s)
            return EntanglementReply(demand_id=demand.demand_id, admitted=True,
                                     path=list(plan.nodes),
                                     expected_fidelity=plan.packet_fidelity,
                                     purification_rounds=plan.estimate.purification_rounds)
        self.events.emit(EventType.entanglement_refused, ELEMENT, node=demand.node_a,
                         demand=demand.demand_id, reason=effect.reason)
        return EntanglementReply(demand_id=demand.demand_id, admitted=False,
                                 reason=effect.reason)

    async def outcome(self, demand_id: str) -> DemandOutcome:
        """Wait until an admitted demand is served or missed.

        Raises:
            KeyError: ``demand_id`` was not admitted.
        """
        return await asyncio.shield(self._ended[demand_id])

    async def _on_request(self, _topic: str, msg: Message) -> Message | None:
        if isinstance(msg, EntanglementRequest):
            return self.request(msg.demand)
        if isinstance(msg, NodeEntanglementRequest):
            if msg.demand.node_a != msg.node:
                return EntanglementReply(demand_id=msg.demand.demand_id, admitted=False,
                                         reason="a node may only ask for demands that start "
                                                "at itself")
            return self.request(msg.demand)
        return None

    # ------------------------------------------------------------------ shared state

    async def _on_alarm(self, _topic: str, msg: Message) -> None:
        if not isinstance(msg, LinkAlarm) or msg.link_id not in self.network.links:
            return
        if msg.kind == "cleared":
            self.network.down.discard(msg.link_id)
        else:
            self.network.down.add(msg.link_id)

    async def _on_sdn(self, _topic: str, msg: Message) -> None:
        if not isinstance(msg, TopologyChange) or msg.link_id not in self.network.links:
            return
        off = msg.change == "link_removed" or not bool(msg.attributes.get("enable", True)) \
            or msg.attributes.get("status", "ACTIVE") == "OFF"
        (self.network.down.add if off else self.network.down.discard)(msg.link_id)

    async def _on_fibre(self, _topic: str, msg: Message) -> None:
        if isinstance(msg, FibreShare) and msg.by == "keys" and \
                msg.link_id in self.network.shared:
            self.network.key_share[msg.link_id] = msg.share

    def fibre_shares(self, schedule: Schedule | None) -> dict[str, float]:
        """Per shared fibre, the share of ``schedule``'s slots booked for entanglement."""
        out = dict.fromkeys(sorted(self.network.shared), 0.0)
        if schedule is None or not schedule.slots:
            return out
        for _, links, _ in schedule.usage():
            for lid in links:
                if lid in out:
                    out[lid] += 1.0 / len(schedule.slots)
        return {lid: min(1.0, v) for lid, v in out.items()}

    async def _publish_fibre_shares(self, schedule: Schedule | None) -> None:
        for lid, share in self.fibre_shares(schedule).items():
            if self._fibre_sent.get(lid) == share:
                continue
            self._fibre_sent[lid] = share
            try:
                await self.bus.publish(FIBRE, FibreShare(link_id=lid, by="entanglement",
                                                         share=share))
            except BusError:
                logger.warning("fibre share of %s not published", lid, exc_info=True)

    # ------------------------------------------------------------------ slots

    async def _slots(self) -> None:
        slot_s = self.engine.scheduler.settings.slot_s
        while True:
            if not self.engine.scheduler.live:
                await self._publish_fibre_shares(None)  # the fibres are the keys' again
                self._wake.clear()
                await self._wake.wait()
            items = self.engine.step(self.clock.now())
            schedule = self.engine.current_schedule
            if schedule is not self._last_schedule:  # a new period (or a re-plan)
                self._last_schedule = schedule
                await self._publish_fibre_shares(schedule if self.engine.scheduler.live
                                                 else None)
            for item in items:
                await self._publish(item)
            await self.clock.sleep(slot_s)

    async def _publish(self, item: Delivery | DemandOutcome) -> None:
        plan = self.engine.report.admitted.get(item.demand_id)
        app_a, app_b = (None, None) if plan is None else (plan.demand.app_a, plan.demand.app_b)
        if isinstance(item, Delivery):
            if not item.pairs:
                return
            first = item.pairs[0]
            msg = EntanglementDelivery(demand_id=item.demand_id, packets=item.packets,
                                       app_a=app_a, app_b=app_b,
                                       pairs=[
                EntangledPairRecord(eid=p.eid, demand_id=p.demand_id, packet=p.packet,
                                    node_a=p.node_a, node_b=p.node_b, fidelity=p.fidelity,
                                    delivered_t=p.delivered_t) for p in item.pairs])
            self.events.emit(EventType.entanglement_delivered, ELEMENT, node=first.node_a,
                             demand=item.demand_id, packets=item.packets,
                             eids=[p.eid for p in item.pairs],
                             min_pair_fidelity=min(p.fidelity for p in item.pairs))
            nodes: tuple[str, ...] = (first.node_a, first.node_b)
        else:
            msg = EntanglementDelivery(demand_id=item.demand_id, state=item.state,
                                       delivered_packets=item.delivered_packets,
                                       reason=item.reason, app_a=app_a, app_b=app_b)
            self.events.emit(EventType.entanglement_ended, ELEMENT, demand=item.demand_id,
                             state=item.state.value, delivered_packets=item.delivered_packets,
                             reason=item.reason)
            done = self._ended.get(item.demand_id)
            if done is not None and not done.done():
                done.set_result(item)
            nodes = (plan.demand.node_a, plan.demand.node_b) if plan is not None else ()
        for node in dict.fromkeys(nodes):
            try:
                await self.bus.publish(delivery_topic(node), msg)
            except BusError:
                logger.warning("entanglement delivery to %s not published", node,
                               exc_info=True)

    async def close(self) -> None:
        """Unsubscribe and stop the slot loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await unsubscribe_all(self._subs)
        self._subs.clear()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        for fut in self._ended.values():
            if not fut.done():
                fut.cancel()
        if self._started:
            self.events.emit(EventType.element_stopped, ELEMENT)

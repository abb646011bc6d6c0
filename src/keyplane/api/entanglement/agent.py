"""The node side of the entanglement service: an application's demands and its pairs.

An application asks its own node (:mod:`keyplane.api.entanglement.app`, over the node's
mutual-TLS server, identified by its client certificate exactly as for ETSI 014); the
node's agent forwards the demand to the control plane's
:class:`~keyplane.control.entanglement.service.EntanglementService` as a
:class:`~keyplane.control.entanglement.service.NodeEntanglementRequest` (signed by the node
on a NATS bus, so it can only ask for demands that start at itself), and keeps the packets
the service delivers to this node until the application reads them.

Decisions:

* **Who sees what.** A demand belongs to the application that asked (``app_a``, at
  ``node_a``) and to the peer application it named (``app_b``, at ``node_b``); each end
  node hands its pairs only to its own one. Any other caller is told the demand does not
  exist (it cannot probe other applications' demand ids).
* **Deliveries before the reply.** The service may deliver the first packet before the
  admission reply reaches this node (two messages, two subjects), so a record is made by
  whichever arrives first.
* **Bounded memory.** At most ``max_demands_held`` demands are kept; beyond that the
  oldest ended ones are forgotten first (a live demand is never dropped; when every held
  demand is live, new ones are refused with 503 until one ends).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from keyplane.api.errors import ApiRequestError
from keyplane.bus import Bus, Message, Subscription, unsubscribe_all
from keyplane.control.entanglement.model import DemandState, EntanglementDemand
from keyplane.control.entanglement.service import (
    ENTANGLEMENT,
    EntangledPairRecord,
    EntanglementDelivery,
    EntanglementReply,
    NodeEntanglementRequest,
    delivery_topic,
)
from keyplane.errors import BusError
from keyplane.lifecycle import Service

__all__ = ["DemandRecord", "EntanglementApiSettings", "NodeEntanglementAgent"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntanglementApiSettings:
    """Bounds of a node's entanglement API.

    Args:
        request_timeout_s: how long the node waits for the service's admission answer.
        max_demands_held: demands (with their pairs) the node keeps for its applications.
    """

    request_timeout_s: float = 30.0
    max_demands_held: int = 1024


@dataclass
class DemandRecord:
    """One demand as this node's application sees it."""

    demand_id: str
    app: str
    """The local application it belongs to (SAE id)."""
    peer_app: str | None
    role: str
    """``"requester"`` (this node is ``node_a``) or ``"peer"``."""
    state: DemandState = DemandState.admitted
    reason: str = ""
    path: list[str] = field(default_factory=list)
    expected_fidelity: float | None = None
    delivered_packets: int = 0
    pairs: list[EntangledPairRecord] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    """Set once the demand is served or missed."""


class NodeEntanglementAgent(Service):
    """Forwards this node's applications' demands and keeps their delivered pairs.

    Args:
        node_id: this node.
        bus: the node's bus connection (its key manager's identity).
        sae_nodes: every application of the network and its node (SAE id -> node id).
        settings: bounds.
    """

    def __init__(self, node_id: str, bus: Bus, sae_nodes: Mapping[str, str], *,
                 settings: EntanglementApiSettings | None = None) -> None:
        self.node_id = node_id
        self.bus = bus
        self.sae_nodes = dict(sae_nodes)
        self.settings = settings or EntanglementApiSettings()
        self._demands: OrderedDict[str, DemandRecord] = OrderedDict()
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        """Listen for this node's deliveries."""
        if not self._subs:
            self._subs.append(await self.bus.subscribe(delivery_topic(self.node_id),
                                                       self._on_delivery))

    async def close(self) -> None:
        """Stop listening (idempotent); held pairs stay readable in process."""
        await unsubscribe_all(self._subs)
        self._subs.clear()

    # ------------------------------------------------------------------ API

    async def submit(self, app: str, peer_app: str, *, packets: int, packet_size: int,
                     min_fidelity: float, deadline_s: float, priority: int) -> DemandRecord:
        """Ask the service for a demand of ``app`` (authenticated by the caller) with
        ``peer_app``; the admitted demand's record.

        Raises:
            ApiRequestError: 400 the peer is unknown or on this node; 503 the demand was
                refused (``details`` say why), the service did not answer in time, or the
                node holds too many live demands.
        """
        peer_node = self.sae_nodes.get(peer_app)
        if peer_node is None:
            raise ApiRequestError("unknown peer application",
                                  [{"peer_sae_id": "no such SAE in the network"}])
        if peer_node == self.node_id:
            raise ApiRequestError("the peer application is on this node",
                                  [{"peer_sae_id": "entanglement needs two end nodes"}])
        self._make_room()
        demand = EntanglementDemand(
            demand_id=f"{self.node_id}-{uuid.uuid4()}", node_a=self.node_id, node_b=peer_node,
            packets=packets, packet_size=packet_size, min_fidelity=min_fidelity,
            deadline_s=deadline_s, priority=priority, app_a=app, app_b=peer_app)
        try:
            reply = await self.bus.request(
                ENTANGLEMENT, NodeEntanglementRequest(node=self.node_id, demand=demand),
                timeout_s=self.settings.request_timeout_s)
        except (BusError, TimeoutError) as exc:
            raise ApiRequestError("the entanglement service did not answer",
                                  http_status=503) from exc
        if not isinstance(reply, EntanglementReply):
            raise ApiRequestError("the entanglement service did not answer",
                                  http_status=503)
        if not reply.admitted:
            self._demands.pop(demand.demand_id, None)
            raise ApiRequestError("entanglement demand refused: requested QoS cannot be met",
                                  [{"reason": reply.reason}], http_status=503)
        rec = self._record(demand.demand_id, app, peer_app, "requester")
        rec.path = list(reply.path)
        rec.expected_fidelity = reply.expected_fidelity
        return rec

    def view(self, app: str, demand_id: str) -> DemandRecord:
        """The demand ``demand_id`` of ``app``.

        Raises:
            ApiRequestError: 404 no such demand of ``app`` on this node.
        """
        rec = self._demands.get(demand_id)
        if rec is None or rec.app != app:
            raise ApiRequestError("no such entanglement demand for this SAE", http_status=404)
        return rec

    async def wait_ended(self, app: str, demand_id: str, timeout_s: float) -> DemandRecord:
        """Wait until ``app``'s demand is served or missed (in process: the demo).

        Raises:
            ApiRequestError: 404 no such demand of ``app``.
            TimeoutError: it did not end within ``timeout_s``.
        """
        rec = self.view(app, demand_id)
        async with asyncio.timeout(timeout_s):
            await rec.ended.wait()
        return rec

    def demands_of(self, app: str) -> list[DemandRecord]:
        """Every demand ``app`` holds here, oldest first."""
        return [r for r in self._demands.values() if r.app == app]

    # ------------------------------------------------------------------ deliveries

    def _record(self, demand_id: str, app: str, peer_app: str | None, role: str
                ) -> DemandRecord:
        rec = self._demands.get(demand_id)
        if rec is None:
            rec = self._demands[demand_id] = DemandRecord(demand_id, app, peer_app, role)
        return rec

    def _make_room(self) -> None:
        while len(self._demands) >= self.settings.max_demands_held:
            ended = next((d for d, r in self._demands.items()
                          if r.state is not DemandState.admitted), None)
            if ended is None:
                raise ApiRequestError("too many live entanglement demands on this node",
                                      http_status=503)
            del self._demands[ended]

    async def _on_delivery(self, _topic: str, msg: Message) -> None:
        if not isinstance(msg, EntanglementDelivery) or msg.app_a is None:
            return  # a control-plane element's demand: no application of ours asked
        here = [p for p in msg.pairs if self.node_id in (p.node_a, p.node_b)]
        if msg.pairs and not here:
            return
        requester = self.sae_nodes.get(msg.app_a) == self.node_id
        app = msg.app_a if requester else msg.app_b
        if app is None or self.sae_nodes.get(app) != self.node_id:
            return
        if msg.demand_id not in self._demands:
            try:
                self._make_room()
            except ApiRequestError:
                logger.warning("entanglement pairs of %s dropped: no room", msg.demand_id)
                return
        rec = self._record(msg.demand_id, app, msg.app_b if requester else msg.app_a,
                           "requester" if requester else "peer")
        rec.pairs.extend(here)
        rec.delivered_packets += msg.packets
        if msg.state is not None:
            rec.state = msg.state
            rec.reason = msg.reason
            rec.delivered_packets = msg.delivered_packets
            rec.ended.set()

"""SDN Controller: the network's topology as ETSI GS QKD 015 models it (model and logic).

The controller holds the QKD nodes (``qkdn_id``) and the key-association links
(``qkd_link``): PHYS links (a direct quantum channel, one per topology-file link or
registered at run time) and VIRT links (the end-to-end key association a multi-hop session
creates over trusted nodes: ``virt_prev_hop`` / ``virt_next_hop`` per node along its path,
``virt_bandwidth`` = the rate Admission admitted the session at, drawn from the PHYS links
underneath). Admission Control registers one VIRT record per session; for adjacent
endpoints (a two-node path) the PHYS link carries the session's key: the record adds no link
to the topology (no ``virtual_link_added``), and nothing is put on the nodes but the
session's ``qkd_app``, backed by that PHYS link. It distributes the topology:
a :class:`~keyplane.control.wire.TopologySnapshot` on request, and every change as a
:class:`~keyplane.messages.TopologyChange` on ``keyplane.control.sdn``.

Identifiers: ETSI 015 wants UUIDs. ``qkdn_id`` and ``qkdl_id`` are UUIDv5 of the node or
link id in a fixed keyplane namespace, so every process derives the same ids from the
topology file without coordination.

Status (``qkdl_status``): ``ACTIVE`` while the link makes key; a ``link_down`` or
``qber_high`` / ``key_rate_collapse`` alarm makes it ``PASSIVE`` (key generation stopped
or untrusted) and ``cleared`` makes it ``ACTIVE`` again; ``OFF`` is an operator's switch
(``qkdl_enable = false``). The RESTCONF wire protocol lives in ``keyplane.api.etsi015``.

The controller is also the network's node registry: node processes announce themselves
and their interface URLs (:class:`~keyplane.messages.NodeAnnouncement` on
``keyplane.control.sdn.nodes``) and get a :class:`~keyplane.messages.NodeWelcome`. Given an
ETSI 015 driver, the controller then drives each node's SDN agent
(:class:`~keyplane.control.southbound.Etsi015Southbound`: discovery, VIRT links of relayed
sessions and every session's ``qkd_app``) and keeps a northbound
:class:`~keyplane.api.etsi015.NetworkView` of the whole network for an orchestrator.

Restart (docs/control.md, "Controller restart"): the registry (each node's announced URLs)
is kept in the topology database, so a restarted controller drives the nodes at once. VIRT
links of a previous run are dropped at start and come back from Admission Control, which
owns the sessions: asked with :class:`~keyplane.control.wire.LiveSessionsRequest` when the
controller starts, or announced again when Admission itself starts.

:class:`~keyplane.control.sdn_model.SdnModel` (its own module, re-exported here) is the pure
model; :class:`SdnController` the bus and database shell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from keyplane.bus import Bus, Message, Subscription, topics, unsubscribe_all
from keyplane.clock import Clock
from keyplane.config import Topology
from keyplane.control.sdn_model import (
    ELEMENT,
    KEYPLANE_NAMESPACE,
    NodeDiscovery,
    SdnLink,
    SdnModel,
    SdnNode,
    qkd_uuid,
)
from keyplane.control.settings import SdnSettings
from keyplane.control.wire import (
    SDN_REGISTER,
    SDN_SNAPSHOT,
    LiveSession,
    LiveSessions,
    LiveSessionsRequest,
    RegisterLink,
    RegisterLinkReply,
    TopologySnapshotRequest,
    UnregisterLink,
    virtual_link_id,
)
from keyplane.errors import BusError, StoreError
from keyplane.events import EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import LinkAlarm, NodeAnnouncement, NodeWelcome, TopologyChange
from keyplane.store import Database
from keyplane.store.topology import (
    StoredLink,
    delete_link,
    load_node_endpoints,
    load_registered_links,
    load_topology_into,
    save_link,
    save_node_endpoints,
)

if TYPE_CHECKING:  # the ETSI 015 side (and its YANG toolchain) loads only with a driver
    from keyplane.api.etsi015 import Etsi015Driver, NetworkView
    from keyplane.control.southbound import Etsi015Southbound

__all__ = ["KEYPLANE_NAMESPACE", "NodeDiscovery", "RegistryListener", "SdnController",
           "SdnLink", "SdnModel", "SdnNode", "qkd_uuid"]

logger = logging.getLogger(__name__)

RegistryListener = Callable[[str, Mapping[str, str]], None]
"""Called with ``(node, endpoints)`` each time a node (re)announces its interface URLs."""


class SdnController(Service):
    """The SDN Controller on the bus and the topology database (runnable alone).

    Args:
        topology: the topology file (nodes and PHYS links).
        bus: snapshot, registration and node announcements in, topology changes out.
        clock: event time.
        events: receives ``topology_changed`` events (and, with a driver, the ETSI 015
            southbound's ``node_discovered`` / ``virtual_link_*`` / ``sdn_agent_failed``).
        db: the topology database (``None``: the model lives in memory only).
        settings: :class:`~keyplane.control.settings.SdnSettings`.
        driver: the ETSI 015 driver presenting the controller certificate
            (:meth:`keyplane.api.etsi015.Etsi015Driver.from_certs`; tests pass one over an
            in-process transport). ``None``: nodes are registered but not driven, and there
            is no northbound view. The caller closes it.
    """

    def __init__(self, topology: Topology, bus: Bus, clock: Clock, events: EventStream, *,
                 db: Database | None = None, settings: SdnSettings | None = None,
                 driver: Etsi015Driver | None = None) -> None:
        self.topology = topology
        self.settings = settings or SdnSettings()
        self.model = SdnModel.from_topology(topology)
        self.bus = bus
        self.clock = clock
        self.events = events
        self.db = db
        self.southbound: Etsi015Southbound | None = None
        self.view: NetworkView | None = None
        if driver is not None:
            from keyplane.api.etsi015 import NetworkView
            from keyplane.control.southbound import Etsi015Southbound

            self.southbound = Etsi015Southbound(driver, self.model, clock, events)
            self.view = NetworkView(driver, {}, clock, bus=bus)
        self._listeners: list[RegistryListener] = []
        self._subs: list[Subscription] = []
        self._closed = False

    @property
    def endpoints(self) -> dict[str, dict[str, str]]:
        """Interface URLs of every node that announced itself (node → name → URL)."""
        return {n: dict(node.endpoints) for n, node in self.model.nodes.items()
                if node.endpoints}

    def add_registry_listener(self, listener: RegistryListener) -> None:
        """Call ``listener(node, endpoints)`` after each accepted node announcement
        (e.g. the runtime rewriting endpoints.json). A listener that raises is logged."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Load the database, answer snapshot/registration requests and node
        announcements, follow alarms."""
        if self._subs:
            return
        registry: dict[str, dict[str, str]] = {}
        if self.db is not None:
            registry = await self._load_db()
        if self.view is not None:
            await self.view.start()
        self._subs.append(await self.bus.subscribe(SDN_SNAPSHOT, self._on_snapshot))
        self._subs.append(await self.bus.subscribe(SDN_REGISTER, self._on_register))
        self._subs.append(await self.bus.subscribe(topics.SDN_NODES, self._on_announcement))
        self._subs.append(await self.bus.subscribe(topics.alarm("*"), self._on_alarm))
        for node, endpoints in registry.items():
            self._registry_restored(node, endpoints)
        virtual = await self._restore_virtual_links()
        self.events.emit(EventType.element_started, ELEMENT, nodes=len(self.model.nodes),
                         links=len(self.model.links), southbound=self.southbound is not None,
                         registered_nodes=len(registry), virtual_links=virtual)

    def _registry_restored(self, node: str, endpoints: Mapping[str, str]) -> None:
        """Take back a node's URLs from the store as if it had announced them (no event:
        the node did not speak)."""
        self.model.nodes[node].endpoints = dict(endpoints)
        self._drive(node, endpoints)

    def _drive(self, node: str, endpoints: Mapping[str, str]) -> None:
        """Hand a node's URLs to the registry listeners, the northbound view and the
        southbound (which discovers the node's agent)."""
        for listener in self._listeners:
            try:
                listener(node, dict(endpoints))
            except Exception:
                logger.exception("node registry listener failed for %s", node)
        url = endpoints.get("etsi015")
        if self.view is not None:
            self.view.set_node(node, url)
        if self.southbound is not None:
            self.southbound.set_url(node, url)
            self.southbound.discover(node)

    async def _restore_virtual_links(self) -> int:
        """Register the VIRT records of Admission Control's live sessions (none if
        Admission is not up yet: it announces them when it starts)."""
        try:
            live = await self.bus.request(topics.ADMISSION, LiveSessionsRequest(),
                                          timeout_s=self.settings.admission_timeout_s)
        except BusError:
            return 0
        if not isinstance(live, LiveSessions):
            return 0
        current: dict[str, LiveSession] = {}
        for s in live.sessions:  # a session being moved is listed per epoch: keep its current
            if s.session_id not in current or s.epoch < current[s.session_id].epoch:
                current[s.session_id] = s
        done = 0
        for s in current.values():
            try:
                await self.register_link(RegisterLink(
                    link_id=virtual_link_id(s.session_id), type="VIRT",
                    endpoints=(s.path[0], s.path[-1]), path=s.path, bandwidth_bps=s.min_bps,
                    session_id=s.session_id, source_sae=s.source_sae,
                    destination_sae=s.destination_sae, priority=s.priority,
                    max_bps=s.max_bps))
            except (ValueError, StoreError) as exc:
                logger.warning("cannot restore the VIRT link of %s: %s", s.session_id, exc)
                continue
            done += 1
        return done

    async def _load_db(self) -> dict[str, dict[str, str]]:
        """Write the topology file into the database, keeping PHYS links registered earlier.

        VIRT links of a previous run are dropped (Admission Control, which owns the
        sessions, has them registered again).

        Returns:
            The registry: interface URLs each node of the topology last announced.
        """
        assert self.db is not None
        kept = [(r.link_id, r.node_a, r.node_b) for r in await load_registered_links(self.db)]
        registry = {node: urls for node, urls in (await load_node_endpoints(self.db)).items()
                    if node in self.model.nodes}
        if self.settings.load_topology_on_start:
            await load_topology_into(self.db, self.topology)
        for link_id, a, b in kept:
            if link_id in self.model.links:
                continue
            try:
                self.model.register(RegisterLink(link_id=link_id, endpoints=(a, b)))
            except ValueError as exc:
                logger.warning("dropping registered link %s: %s", link_id, exc)
                continue
            await self._store(self.model.links[link_id])
        return registry

    async def _store(self, link: SdnLink) -> None:
        if self.db is None:
            return
        params: dict[str, object] = {"qkdl_id": link.qkdl_id, "registered": link.registered}
        if link.type == "VIRT":
            params.update(path=list(link.path), bandwidth_bps=link.bandwidth_bps,
                          reserved_bps=link.reserved_bps,
                          session_id=link.session_id, source_sae=link.source_sae,
                          destination_sae=link.destination_sae, priority=link.priority,
                          max_bps=link.max_bps)
        await save_link(self.db, StoredLink(link.link_id, link.local, link.remote, link.type,
                                            link.enable, params))

    async def _unstore(self, link_id: str) -> None:
        if self.db is None:
            return
        await delete_link(self.db, link_id)

    async def register_link(self, req: RegisterLink) -> SdnLink:
        """Register a PHYS or VIRT link, persist it and announce it.

        Raises:
            ValueError: see :meth:`SdnModel.register`.
            StoreError: the database failed (the model is left unchanged).
        """
        previous = self.model.record(req.link_id)
        was_link = req.link_id in self.model.links
        link, changes = self.model.register(req)
        try:
            if req.link_id in self.model.links:
                await self._store(link)
            elif was_link:  # a VIRT link became a direct session: it is no link any more
                await self._unstore(req.link_id)
        except StoreError:
            self.model.links.pop(req.link_id, None)
            self.model.direct.pop(req.link_id, None)
            if previous is not None:
                (self.model.links if was_link else self.model.direct)[req.link_id] = previous
            raise
        await self._announce(changes)
        if previous is not None and previous.session_id != link.session_id:
            self._virtual_changed(previous)
        self._virtual_changed(link)
        return link

    async def unregister_link(self, link_id: str) -> None:
        """Remove a link (or a direct session's record), from the database too, and announce
        it."""
        link = self.model.record(link_id)
        changes = self.model.unregister(link_id)
        if changes:
            await self._unstore(link_id)
            await self._announce(changes)
        self._virtual_changed(link)

    def _virtual_changed(self, link: SdnLink | None) -> None:
        """A session's VIRT link appeared, moved or went: bring the nodes in line (in the
        background: the registration answer never waits on an agent)."""
        if (self.southbound is not None and link is not None and link.type == "VIRT"
                and link.session_id is not None):
            self.southbound.reconcile(link.session_id)

    # ------------------------------------------------------------------ node registry

    async def register_node(self, node: str, endpoints: Mapping[str, str]) -> NodeWelcome:
        """A node process announced itself: record its interface URLs; with a driver, read
        its agent (discovery) and put on it the VIRT links of the sessions through it.

        Returns:
            The welcome (``known=False`` for a node that is not in the topology).
        """
        record = self.model.nodes.get(node)
        if record is None:
            return NodeWelcome(node=node, known=False, reason="node not in the topology")
        record.endpoints = dict(endpoints)
        if self.db is not None:
            try:
                await save_node_endpoints(self.db, node, endpoints)
            except StoreError:
                logger.exception("cannot store the endpoints of %s", node)
        self.events.emit(EventType.topology_changed, ELEMENT, node=node,
                         change="node_registered", endpoints=dict(endpoints))
        self._drive(node, endpoints)
        if self.southbound is not None:
            self.southbound.reconcile_through(node)
        return NodeWelcome(node=node, known=True)

    async def _on_announcement(self, _topic: str, msg: Message) -> Message | None:
        if not isinstance(msg, NodeAnnouncement):
            return None
        return await self.register_node(msg.node, msg.endpoints)

    async def set_link_enable(self, link_id: str, enable: bool) -> None:
        """Switch a link on or off (``qkdl_enable``).

        Raises:
            KeyError: unknown link.
        """
        changes = self.model.set_enable(link_id, enable)
        await self._store(self.model.links[link_id])
        await self._announce(changes)

    async def _announce(self, changes: list[TopologyChange]) -> None:
        for change in changes:
            if (self.southbound is not None and change.endpoints is not None
                    and change.change in ("link_added", "link_removed", "link_updated")):
                for node in change.endpoints:  # a PHYS link changed: read both ends again
                    self.southbound.discover(node)
            self.events.emit(EventType.topology_changed, ELEMENT, node=change.node,
                             change=change.change, link=change.link_id,
                             status=change.attributes.get("status"))
            try:
                await self.bus.publish(topics.SDN, change)
            except BusError:
                if not self._closed:  # at shutdown the bus may close first
                    logger.warning("cannot announce %s", change.change)

    async def _on_snapshot(self, _topic: str, msg: Message) -> Message | None:
        return self.model.snapshot() if isinstance(msg, TopologySnapshotRequest) else None

    async def _on_register(self, _topic: str, msg: Message) -> Message | None:
        if isinstance(msg, RegisterLink):
            try:
                link = await self.register_link(msg)
            except (ValueError, StoreError) as exc:
                return RegisterLinkReply(link_id=msg.link_id, ok=False, reason=str(exc))
            return RegisterLinkReply(link_id=msg.link_id, ok=True, qkdl_id=link.qkdl_id)
        if isinstance(msg, UnregisterLink):
            try:
                await self.unregister_link(msg.link_id)
            except StoreError as exc:
                return RegisterLinkReply(link_id=msg.link_id, ok=False, reason=str(exc))
            return RegisterLinkReply(link_id=msg.link_id, ok=True)
        return None

    async def _on_alarm(self, _topic: str, msg: Message) -> None:
        if isinstance(msg, LinkAlarm):
            await self._announce(self.model.apply_alarm(msg))

    async def close(self) -> None:
        """Unsubscribe and cancel pending ETSI 015 work (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await unsubscribe_all(self._subs)
        if self.southbound is not None:
            await self.southbound.close()
        if self.view is not None:
            await self.view.close()
        if self._subs:
            self.events.emit(EventType.element_stopped, ELEMENT)


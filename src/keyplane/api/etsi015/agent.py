"""The SDN agent of one node (ETSI GS QKD 015): the I/O shell around a :class:`NodeDatastore`.

What feeds the datastore:

* the bus — ``keyplane.telemetry.link.<link>`` (:class:`~keyplane.messages.LinkTelemetry`:
  skr, QBER, state) for the node's links, ``keyplane.alarms.>``
  (:class:`~keyplane.messages.LinkAlarm`) to mark link status, and
  ``keyplane.telemetry.km.<node>`` (:class:`~keyplane.messages.KmTelemetry`) for the stored
  key per link (a link that stops generating with key left is PASSIVE, without it OFF);
* the SDN Controller over RESTCONF (:func:`~keyplane.api.etsi015.restconf.create_agent_app`):
  ``qkd_app`` entries (one per session) and VIRT links (one per relayed session's hop);
* in embedded mode the same writes through :meth:`SdnAgent.register_virtual_link` and
  friends;
* the node's KM, through its event stream (:class:`KmEventFeed`, a sink added where the
  agent and the KM share a process): ``key_delivered`` → ``app_statistics`` bits
  (:meth:`SdnAgent.record_consumption`) and the per-hop provenance counters of the
  ``keyplane-qkd-provenance`` augment; the endpoint ``configured`` event → the session's
  hybrid policy; ``key_relayed`` → the last source of the hop this node sends on (VIRT
  link); the session's end → its provenance state is dropped.

What it emits: every ETSI 015 notification a write or a telemetry sample causes, as an
:class:`~keyplane.messages.SdnNotification` on ``keyplane.sdn.<node>.notifications`` and on
the RESTCONF event stream (SSE) of each connected subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keyplane.api.etsi015.datastore import (
    Content,
    NodeDatastore,
    Notification,
    PerfThresholds,
    QkdApplication,
    VirtualLink,
)
from keyplane.api.etsi015.model import ROOT_MEMBER, app_id, date_and_time, qkdl_id
from keyplane.bus import Bus, Message, Subscription, topics, unsubscribe_all
from keyplane.clock import Clock
from keyplane.config import Etsi015Settings, Topology
from keyplane.events import Event, EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import KmTelemetry, LinkAlarm, LinkTelemetry, SdnNotification

__all__ = ["DEFAULT_CONTROLLER_SUBJECT", "AgentSettings", "KmEventFeed", "NotificationFeed",
           "SdnAgent"]

logger = logging.getLogger(__name__)

DEFAULT_CONTROLLER_SUBJECT = "CN=sdn-controller,OU=control,O=keyplane"
"""Subject of the controller certificate that keyplane.certs issues."""


@dataclass(frozen=True)
class AgentSettings:
    """Tunables of an SDN agent.

    Attributes:
        controller_subjects: RFC 4514 subjects of the client certificates allowed to write.
        version: ``qkdn_version``.
        location_id: ``qkdn_location_id``.
        perf_thresholds: when telemetry causes ``sdqkdn_link_perf_update``.
        statistics_period_s: length of an ``app_statistics`` period (clock seconds).
        statistics_periods_kept: closed periods kept per application.
        stream_queue_size: notifications buffered per SSE subscriber (oldest dropped).
        unqualified_top_member: answer GETs with ``{"qkd_node": …}`` instead of the RFC 7951
            ``{"etsi-qkd-sdn-node:qkd_node": …}``: interoperability with TeraFlowSDN's QKD
            driver, which reads ``r.json()['qkd_node']``. Off by default; per deployment in
            the topology file (``etsi015.unqualified_top_member``) or with
            ``keyplane run/node --etsi015-unqualified``.
        keyplane_augment: serve keyplane's ``keyplane-qkd-provenance`` augment (in the data
            and the YANG library). False serves the plain ETSI model (docs/api/etsi015.md).
        danger_allow_unauthenticated_writes: accept writes from clients without a controller
            certificate (plain HTTP, tests). Breaks the interface's security; logs a WARNING.
    """

    controller_subjects: frozenset[str] = frozenset({DEFAULT_CONTROLLER_SUBJECT})
    version: str = "keyplane"
    location_id: str = ""
    perf_thresholds: PerfThresholds = field(default_factory=PerfThresholds)
    statistics_period_s: float = 60.0
    statistics_periods_kept: int = 10
    stream_queue_size: int = 256
    unqualified_top_member: bool = False
    keyplane_augment: bool = True
    danger_allow_unauthenticated_writes: bool = False

    @classmethod
    def from_config(cls, config: Etsi015Settings) -> AgentSettings:
        """The settings a topology file's ``etsi015`` section asks for (defaults otherwise)."""
        return cls(unqualified_top_member=config.unqualified_top_member,
                   keyplane_augment=config.keyplane_augment)


class NotificationFeed:
    """One subscriber's queue of notifications (the RESTCONF event stream reads it)."""

    def __init__(self, agent: SdnAgent, maxsize: int) -> None:
        self._agent = agent
        self._queue: asyncio.Queue[SdnNotification | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, note: SdnNotification | None) -> None:
        """Queue a notification, dropping the oldest when full (a slow reader loses history)."""
        while True:
            try:
                self._queue.put_nowait(note)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.dropped += 1

    async def __aiter__(self) -> AsyncIterator[SdnNotification]:
        while True:
            note = await self._queue.get()
            if note is None:
                return
            yield note

    def close(self) -> None:
        """Detach from the agent and end the iteration."""
        self._agent._feeds.discard(self)
        self.put(None)


def _virtual_link_uuid(session_id: str) -> str:
    """``qkdl_id`` of a session's VIRT link (what :meth:`Etsi015Driver.provision_path` and
    the SDN Controller give it)."""
    return qkdl_id(f"session:{session_id}")


class KmEventFeed:
    """Event sink feeding a node's SDN agent what the node's KM reports.

    Only events of the KM (element ``km``) of ``agent.node_id`` count: in embedded mode
    every node's events go through one stream. See the module docstring for what each
    event type feeds. Sinks must not fail the emitter: a malformed event is logged and
    skipped.
    """

    KM_ELEMENT = "km"

    def __init__(self, agent: SdnAgent) -> None:
        self.agent = agent

    def write(self, event: Event) -> None:
        """Take one event (the :class:`~keyplane.events.EventSink` protocol)."""
        if (event.node != self.agent.node_id or event.session is None
                or event.element != self.KM_ELEMENT):
            return
        try:
            self._apply(event.type, event.session, event.data)
        except (TypeError, ValueError, KeyError):
            logger.warning("SDN agent %s skipped a malformed %s event", self.agent.node_id,
                           event.type, exc_info=True)

    def _apply(self, kind: EventType, session: str, data: Mapping[str, Any]) -> None:
        agent = self.agent
        if kind is EventType.key_delivered:
            agent.record_consumption(session, int(data.get("bits", 0)))
            agent.record_provenance(session, data.get("provenance_counts") or [])
        elif kind is EventType.configured and "hybrid_policy" in data:
            agent.set_hybrid_policy(session, str(data["hybrid_policy"]))
        elif kind is EventType.key_relayed and data.get("hop_source"):
            agent.record_hop_source(session, str(data["hop"]), str(data["hop_source"]))
        elif kind is EventType.session_closed or (
                kind is EventType.session_deleted and data.get("scope") != "epoch"):
            agent.forget_session(session)

    def close(self) -> None:
        """Nothing to release."""


class SdnAgent(Service):
    """ETSI GS QKD 015 SDN agent of node ``node_id`` (see the module docstring).

    Args:
        node_id: the topology node.
        topology: the network; the node's PHYS links and interfaces come from it.
        bus: where telemetry and alarms arrive and notifications go.
        clock: time for statistics periods and stamps.
        events: the Fig. 4 event stream (lifecycle and topology-change events).
        settings: see :class:`AgentSettings`.

    Raises:
        KeyError: ``node_id`` is not in ``topology``.
    """

    ELEMENT = "sdn_agent"

    def __init__(self, node_id: str, topology: Topology, bus: Bus, clock: Clock,
                 events: EventStream, *, settings: AgentSettings | None = None) -> None:
        self.node_id = node_id
        self.topology = topology
        self.bus = bus
        self.clock = clock
        self.events = events
        self.settings = settings or AgentSettings()
        self.datastore = NodeDatastore(
            node_id, topology, version=self.settings.version,
            location_id=self.settings.location_id,
            perf_thresholds=self.settings.perf_thresholds,
            statistics_periods_kept=self.settings.statistics_periods_kept)
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._feeds: set[NotificationFeed] = set()
        self._state = "new"

    # ------------------------------------------------------------------ lifecycle

    @property
    def qkdn_id(self) -> str:
        """This node's ``qkdn_id`` (UUIDv5 of the node id)."""
        return self.datastore.qkdn_id

    async def start(self) -> None:
        """Subscribe to the node's telemetry and the alarms, mark the node OPERATING.

        Raises:
            RuntimeError: the agent was closed.
        """
        if self._state == "running":
            return
        if self._state == "closed":
            raise RuntimeError("SdnAgent is closed")
        if self.settings.danger_allow_unauthenticated_writes:
            logger.warning("SDN agent %s accepts RESTCONF writes without a controller "
                           "certificate (danger_allow_unauthenticated_writes)", self.node_id)
        for link_id in self.datastore.topology_link_ids:
            self._subs.append(await self.bus.subscribe(topics.link_telemetry(link_id),
                                                       self._on_telemetry))
        self._subs.append(await self.bus.subscribe("keyplane.alarms.>", self._on_alarm))
        self._subs.append(await self.bus.subscribe(topics.km_telemetry(self.node_id),
                                                   self._on_km_telemetry))
        self.datastore.set_status("OPERATING")
        self._state = "running"
        task = asyncio.get_running_loop().create_task(self._statistics_loop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.events.emit(EventType.element_started, self.ELEMENT, node=self.node_id,
                         qkdn_id=self.qkdn_id)

    async def close(self) -> None:
        """Unsubscribe, stop the statistics timer, end event streams; idempotent."""
        if self._state == "closed":
            return
        was_running = self._state == "running"
        self._state = "closed"
        await unsubscribe_all(self._subs)
        self._subs.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for feed in list(self._feeds):
            feed.close()
        self.datastore.set_status("OUT")
        if was_running:
            self.events.emit(EventType.element_stopped, self.ELEMENT, node=self.node_id)


    # ------------------------------------------------------------------ RESTCONF operations

    def may_write(self, subject: str | None) -> bool:
        """Whether a client with certificate ``subject`` may change the datastore."""
        if subject is not None and subject in self.settings.controller_subjects:
            return True
        return self.settings.danger_allow_unauthenticated_writes

    def get(self, path: str, *, content: Content = "all", depth: int | None = None,
            fields: str | None = None) -> dict[str, Any]:
        """RESTCONF GET (see :meth:`NodeDatastore.get`)."""
        return self.datastore.get(path, self.clock.wall(), content=content, depth=depth,
                                  fields=fields)

    async def create(self, path: str, body: Any) -> str:
        """RESTCONF POST; returns the created resource's path (see :meth:`NodeDatastore.create`)."""
        location, notes = self.datastore.create(path, body, self.clock.wall())
        await self._written("create", path, notes)
        return location

    async def replace(self, path: str, body: Any) -> bool:
        """RESTCONF PUT; True if it created the resource."""
        created, notes = self.datastore.replace(path, body, self.clock.wall())
        await self._written("replace", path, notes)
        return created

    async def merge(self, path: str, body: Any) -> None:
        """RESTCONF plain PATCH."""
        notes = self.datastore.merge(path, body, self.clock.wall())
        await self._written("merge", path, notes)

    async def delete(self, path: str) -> None:
        """RESTCONF DELETE."""
        notes = self.datastore.delete(path, self.clock.wall())
        await self._written("delete", path, notes)

    # ------------------------------------------------------------------ Python API (embedded)

    async def register_virtual_link(self, link: VirtualLink) -> None:
        """Add a VIRT link (embedded mode; the controller POSTs the same entry).

        Raises:
            RestconfError: 409 it exists, 400 the model forbids a value.
        """
        notes = self.datastore.add_virtual_link(link, self.clock.wall())
        await self._written("create", f"{ROOT_MEMBER}/qkd_links/qkd_link={link.qkdl_id}",
                            notes)

    async def remove_virtual_link(self, qkdl_uuid: str) -> None:
        """Remove a VIRT link.

        Raises:
            RestconfError: 404 unknown, 405 a topology PHYS link.
        """
        notes = self.datastore.remove_virtual_link(qkdl_uuid, self.clock.wall())
        await self._written("delete", f"{ROOT_MEMBER}/qkd_links/qkd_link={qkdl_uuid}", notes)

    async def register_application(self, app: QkdApplication) -> None:
        """Add a ``qkd_app`` (``sdqkdn_application_new`` follows).

        Raises:
            RestconfError: 409 it exists, 400 the model forbids a value.
        """
        notes = self.datastore.add_application(app, self.clock.wall())
        await self._written("create", f"{ROOT_MEMBER}/qkd_applications/qkd_app={app.app_id}",
                            notes)

    async def remove_application(self, app_uuid: str) -> None:
        """Remove a ``qkd_app`` (``sdqkdn_application_disconnected`` follows).

        Raises:
            RestconfError: 404 unknown application.
        """
        notes = self.datastore.remove_application(app_uuid, self.clock.wall())
        await self._written("delete", f"{ROOT_MEMBER}/qkd_applications/qkd_app={app_uuid}",
                            notes)

    def record_consumption(self, session_id: str, bits: int) -> None:
        """Count key bits delivered to a session's application (``app_statistics``)."""
        self.datastore.record_consumption(app_id(session_id), bits)

    def record_provenance(self, session_id: str, hops: Iterable[Mapping[str, Any]]) -> None:
        """Count a delivered batch's per-hop provenance for the session's ``qkd_app``
        (``hops``: a ``key_delivered`` event's ``provenance_counts``)."""
        self.datastore.record_provenance(app_id(session_id), hops)

    def set_hybrid_policy(self, session_id: str, policy: str) -> None:
        """Record the hybrid policy the KM enforces for a session.

        Raises:
            ValueError: not a policy name.
        """
        self.datastore.set_hybrid_policy(app_id(session_id), policy)

    def record_hop_source(self, session_id: str, hop: str, source: str) -> None:
        """Record the source of the last key batch this node sent over ``hop`` for the
        session (shown in the session's VIRT ``qkd_link``)."""
        self.datastore.record_hop_source(_virtual_link_uuid(session_id), hop, source)

    def forget_session(self, session_id: str) -> None:
        """Drop the provenance state of a session the KM ended."""
        self.datastore.forget_provenance(app_id(session_id), _virtual_link_uuid(session_id))

    def subscribe(self) -> NotificationFeed:
        """A feed of every notification from now on (close it when done).

        Raises:
            RuntimeError: the agent is closed.
        """
        if self._state == "closed":
            raise RuntimeError("SdnAgent is closed")
        feed = NotificationFeed(self, self.settings.stream_queue_size)
        self._feeds.add(feed)
        return feed

    # ------------------------------------------------------------------ internals

    async def _written(self, operation: str, path: str, notes: list[Notification]) -> None:
        self.events.emit(EventType.topology_changed, self.ELEMENT, node=self.node_id,
                         interface="etsi015", operation=operation, resource=path)
        await self._publish(notes)

    async def _publish(self, notes: list[Notification]) -> None:
        for note in notes:
            msg = SdnNotification(node=self.node_id, qkdn_id=self.qkdn_id, name=note.name,
                                  event_time=date_and_time(note.wall_s), content=note.content)
            for feed in list(self._feeds):
                feed.put(msg)
            try:
                await self.bus.publish(topics.sdn_notifications(self.node_id), msg)
            except Exception:
                logger.exception("SDN agent %s could not publish %s", self.node_id, note.name)

    async def _on_telemetry(self, topic: str, msg: Message) -> None:
        if not isinstance(msg, LinkTelemetry):
            return None
        notes = self.datastore.apply_telemetry(msg.link_id, state=msg.state,
                                               skr_bps=msg.skr_bps, qber=msg.qber,
                                               wall_s=self.clock.wall())
        await self._publish(notes)
        return None

    async def _on_alarm(self, topic: str, msg: Message) -> None:
        if not isinstance(msg, LinkAlarm) or self.datastore.link_uuid(msg.link_id) is None:
            return None
        notes = self.datastore.apply_alarm(msg.link_id, kind=msg.kind, severity=msg.severity,
                                           message=msg.message, wall_s=self.clock.wall())
        if msg.kind in ("link_down", "cleared"):
            self.events.emit(EventType.link_state, self.ELEMENT, node=self.node_id,
                             link=msg.link_id,
                             status=self.datastore.link_status(
                                 self.datastore.link_uuid(msg.link_id) or ""))
        await self._publish(notes)
        return None

    async def _on_km_telemetry(self, topic: str, msg: Message) -> None:
        if isinstance(msg, KmTelemetry) and msg.node == self.node_id:
            for link_id, bits in msg.buffer_bits.items():
                self.datastore.apply_buffer(link_id, bits)
        return None

    async def _statistics_loop(self) -> None:
        try:
            while True:
                await self.clock.sleep(self.settings.statistics_period_s)
                self.datastore.close_statistics_period(self.clock.wall())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("SDN agent %s statistics loop failed", self.node_id)

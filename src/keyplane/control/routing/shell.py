"""The Routing Element on the bus: the thin asyncio shell around :class:`.core.RoutingCore`.

Answers route requests, follows topology changes and link alarms, re-reads link metrics
on the clock, and orders Admission Control to move the sessions of a link that went down
or raised an alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from keyplane.bus import Bus, Message, Subscription, topics, unsubscribe_all
from keyplane.clock import Clock
from keyplane.config import HybridPolicy, Topology
from keyplane.control.routing.core import NoRoute, Reservation, RoutingCore
from keyplane.control.routing.weights import WeightFunction
from keyplane.control.settings import RoutingSettings
from keyplane.control.wire import (
    FIBRE,
    MONITORING_METRICS,
    SDN_SNAPSHOT,
    FibreShare,
    LinkMetricsReport,
    LiveSessions,
    LiveSessionsApplied,
    LiveSessionsRequest,
    RerouteAck,
    RerouteOrder,
    RouteRelease,
    RouteReply,
    RouteRequest,
    TopologySnapshot,
    TopologySnapshotRequest,
)
from keyplane.errors import BusError, StoreError
from keyplane.events import EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import LinkAlarm, TopologyChange
from keyplane.store import Database
from keyplane.store.topology import LinkMetrics, get_link_metrics
from keyplane.trust import trusted_relays

__all__ = ["ELEMENT", "RoutingElement"]

logger = logging.getLogger(__name__)

ELEMENT = "routing"


class RoutingElement(Service):
    """The Routing Element on the bus (one per control plane; runnable alone).

    Args:
        topology: the topology file (initial graph when the SDN Controller is not up).
        bus: where Admission Control, the SDN Controller and Monitoring are reached.
        clock: drives the optional database re-read of metrics.
        events: the event stream.
        db: topology database to read link metrics from (``None``: no metrics).
        settings: weight and capacity rules.
        weight_fn: a custom weight function (overrides ``settings.weight``).
    """

    def __init__(self, topology: Topology, bus: Bus, clock: Clock, events: EventStream, *,
                 db: Database | None = None, settings: RoutingSettings | None = None,
                 weight_fn: WeightFunction | None = None) -> None:
        self.settings = settings or RoutingSettings()
        self.core = RoutingCore.from_topology(topology, self.settings, weight_fn)
        self.bus = bus
        self.clock = clock
        self.events = events
        self.db = db
        self._subs: list[Subscription] = []
        self._refresher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._shared: set[str] = set()  # fibres shared with the entanglement service
        self._key_shares: dict[str, float] = {}
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Load the SDN snapshot and metrics, subscribe, start the metrics refresh."""
        if self._started:
            return
        self._started = True
        try:
            snap = await self.bus.request(SDN_SNAPSHOT, TopologySnapshotRequest(),
                                          timeout_s=self.settings.snapshot_timeout_s)
            if isinstance(snap, TopologySnapshot):
                self.core.load_snapshot(snap)
        except BusError:
            logger.info("no SDN snapshot; routing starts from the topology file")
        await self.refresh_metrics()
        try:
            live = await self.bus.request(topics.ADMISSION, LiveSessionsRequest(),
                                          timeout_s=self.settings.admission_timeout_s)
            if isinstance(live, LiveSessions):
                self.apply_live_sessions(live)
        except BusError:
            logger.info("Admission Control not up; it sends its live sessions when it starts")
        self._subs.append(await self.bus.subscribe(topics.ROUTING, self._on_routing))
        self._subs.append(await self.bus.subscribe(topics.SDN, self._on_sdn))
        self._subs.append(await self.bus.subscribe(topics.alarm("*"), self._on_alarm))
        self._subs.append(await self.bus.subscribe(MONITORING_METRICS, self._on_metrics))
        self._subs.append(await self.bus.subscribe(FIBRE, self._on_fibre))
        if self.db is not None and self.settings.metrics_refresh_s is not None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())
        self.events.emit(EventType.element_started, ELEMENT,
                         nodes=self.core.graph.number_of_nodes(),
                         links=self.core.graph.number_of_edges())

    def apply_live_sessions(self, live: LiveSessions) -> LiveSessionsApplied:
        """Make the reservations match Admission Control's live sessions (after a restart
        of either): hold the missing ones on the paths the sessions use, free the others."""
        wanted = {(s.session_id, s.epoch): s for s in live.sessions}
        released = sorted({r.session_id for r in self.core.reservations()
                           if (r.session_id, r.epoch) not in wanted})
        for res in self.core.reservations():
            if (res.session_id, res.epoch) not in wanted:
                self.core.release(res.session_id, res.epoch)
        held = {(r.session_id, r.epoch) for r in self.core.reservations()}
        restored: list[str] = []
        missing: dict[str, list[str]] = {}
        for key, s in wanted.items():
            if key in held:
                continue
            try:
                fallback = HybridPolicy(s.hybrid_policy).allows_pqc_alone
            except ValueError:
                fallback = False
            res, gone = self.core.restore(s.session_id, s.epoch, s.path, s.min_bps,
                                          pqc_fallback=fallback,
                                          max_trusted_relays=s.max_trusted_relays)
            restored.append(s.session_id)
            if gone:
                missing[s.session_id] = list(gone)
            self.events.emit(EventType.session_restored, ELEMENT, session=s.session_id,
                             path=list(res.route.nodes), epoch=s.epoch, min_bps=s.min_bps,
                             missing_links=list(gone))
        overbooked = self.core.overbooked()
        if released or overbooked or missing:
            logger.warning("live sessions applied: released %s, overbooked links %s, "
                           "hops without a link %s", released, overbooked, missing)
        return LiveSessionsApplied(restored=sorted(set(restored)), released=released,
                                   overbooked=overbooked, missing_links=missing)

    async def refresh_metrics(self) -> None:
        """Re-read link metrics from the topology database (no-op without one)."""
        if self.db is None:
            return
        try:
            metrics = await get_link_metrics(self.db)
        except StoreError:
            logger.exception("cannot read link metrics")
            return
        self.core.set_metrics(metrics)

    async def _refresh_loop(self) -> None:
        interval = self.settings.metrics_refresh_s
        assert interval is not None
        while True:
            await self.clock.sleep(interval)
            await self.refresh_metrics()

    async def _on_metrics(self, _topic: str, msg: Message) -> None:
        """The Monitoring Element's figures of the links that changed: re-weigh only those."""
        if isinstance(msg, LinkMetricsReport):
            self.core.update_metrics({f.link_id: LinkMetrics(
                link_id=f.link_id, t=f.t, state=f.state, skr_bps=f.skr_bps, qber=f.qber,
                sessions=f.sessions, buffer_bits=f.buffer_bits) for f in msg.links})

    async def _on_fibre(self, _topic: str, msg: Message) -> None:
        """The entanglement service's share of a shared fibre (wire flow 7): scale the
        link's key capacity, and answer with what the key streams need of it."""
        if isinstance(msg, FibreShare) and msg.by == "entanglement":
            self.core.set_fibre_taken(msg.link_id, msg.share)
            self._shared.add(msg.link_id)
            await self._publish_key_shares([msg.link_id])

    async def _publish_key_shares(self, link_ids: Iterable[str]) -> None:
        for lid in link_ids:
            if lid not in self._shared:
                continue
            share = self.core.key_share(lid)
            if self._key_shares.get(lid) == share:
                continue
            self._key_shares[lid] = share
            try:
                await self.bus.publish(FIBRE, FibreShare(link_id=lid, by="keys", share=share))
            except BusError:
                logger.warning("key share of %s not published", lid, exc_info=True)

    async def _on_routing(self, _topic: str, msg: Message) -> Message | None:
        reply = await self._on_routing_request(msg)
        if self._shared and isinstance(msg, RouteRequest | RouteRelease | LiveSessions):
            await self._publish_key_shares(sorted(self._shared))
        return reply

    async def _on_routing_request(self, msg: Message) -> Message | None:
        if isinstance(msg, RouteRequest):
            try:
                try:
                    fallback = HybridPolicy(msg.hybrid_policy).allows_pqc_alone
                except ValueError:
                    raise NoRoute(msg.source_node, msg.destination_node, msg.min_bps,
                                  f"unknown hybrid policy {msg.hybrid_policy!r}") from None
                res = self.core.route_and_reserve(msg.session_id, msg.epoch, msg.source_node,
                                                  msg.destination_node, msg.min_bps,
                                                  pqc_fallback=fallback,
                                                  max_trusted_relays=msg.max_trusted_relays)
            except NoRoute as exc:
                self.events.emit(EventType.route_computed, ELEMENT, session=msg.session_id,
                                 ok=False, reason=str(exc))
                return RouteReply(session_id=msg.session_id, epoch=msg.epoch, ok=False,
                                  reason=str(exc))
            self.events.emit(EventType.route_computed, ELEMENT, session=msg.session_id, ok=True,
                             path=list(res.route.nodes), epoch=msg.epoch,
                             min_bps=msg.min_bps, hybrid_policy=msg.hybrid_policy,
                             pqc_links=[lid for lid in res.route.links
                                        if not self.core.has_qkd_key(lid)],
                             max_trusted_relays=msg.max_trusted_relays,
                             trusted_relays=list(trusted_relays(res.route.nodes)),
                             untrusted_nodes=self.core.untrusted_on(res.route))
            return RouteReply(session_id=msg.session_id, epoch=msg.epoch, ok=True,
                              path=list(res.route.nodes), links=list(res.route.links))
        if isinstance(msg, RouteRelease):
            self.core.release(msg.session_id, msg.epoch)
        elif isinstance(msg, LiveSessions):
            return self.apply_live_sessions(msg)
        return None

    async def _on_sdn(self, _topic: str, msg: Message) -> None:
        if not isinstance(msg, TopologyChange):
            return
        gone: list[str] = []
        if msg.change == "node_added" and msg.node:
            self.core.add_node(msg.node)
        elif msg.change == "node_removed" and msg.node:
            gone = self.core.remove_node(msg.node)
        elif msg.change in ("link_added", "link_updated") and msg.link_id and msg.endpoints:
            enabled = bool(msg.attributes.get("enable", True)) and \
                msg.attributes.get("status", "ACTIVE") != "OFF"
            was = self.core.usable(msg.link_id)
            try:
                self.core.add_link(msg.link_id, *msg.endpoints, enabled=enabled)
            except ValueError:
                logger.warning("ignoring %s for %s: endpoints already linked",
                               msg.change, msg.link_id)
                return
            if was and not self.core.usable(msg.link_id):
                gone = [msg.link_id]
        elif msg.change == "link_removed" and msg.link_id:
            if self.core.has_link(msg.link_id):
                self.core.set_enabled(msg.link_id, False)
                await self._reroute_link(msg.link_id, "link removed")
                self.core.remove_link(msg.link_id)
                return
        for lid in gone:
            await self._reroute_link(lid, f"topology change: {msg.change}")

    async def _on_alarm(self, _topic: str, msg: Message) -> None:
        if not isinstance(msg, LinkAlarm):
            return
        if self.core.apply_alarm(msg):
            await self._reroute_link(msg.link_id, f"alarm {msg.kind} on {msg.link_id}")

    async def _reroute_link(self, link_id: str, reason: str) -> None:
        """Move every session using ``link_id`` to a new reserved path."""
        async with self._lock:
            for res in self.core.affected_by(link_id):
                await self._reroute(res, reason)

    async def _reroute(self, res: Reservation, reason: str) -> None:
        try:
            new = self.core.plan_reroute(res)
        except NoRoute as exc:
            self.events.emit(EventType.session_rerouted, ELEMENT, session=res.session_id,
                             ok=False, reason=f"{reason}: {exc}")
            return
        if new.route.nodes == res.route.nodes or (
                res.pqc_fallback and new.route.cost >= self.core.route_cost(res.route, True)):
            # a PQC-fallback session with no better path: it stays, its KMs use ML-KEM
            self.core.release(res.session_id, new.epoch)
            self.events.emit(EventType.route_computed, ELEMENT, session=res.session_id,
                             ok=True, kept=True, path=list(res.route.nodes), epoch=res.epoch,
                             reason=f"{reason}: no better path; hops without QKD key use "
                                    f"ML-KEM")
            return
        order = RerouteOrder(session_id=res.session_id, old_epoch=res.epoch,
                             new_epoch=new.epoch, path=list(new.route.nodes),
                             links=list(new.route.links), reason=reason)
        try:
            ack = await self.bus.request(topics.ADMISSION, order,
                                         timeout_s=self.settings.admission_timeout_s)
        except BusError as exc:
            ack = RerouteAck(session_id=res.session_id, accepted=False, reason=str(exc))
        if not (isinstance(ack, RerouteAck) and ack.accepted):
            self.core.release(res.session_id, new.epoch)
            why = ack.reason if isinstance(ack, RerouteAck) else "unexpected reply"
            self.events.emit(EventType.session_rerouted, ELEMENT, session=res.session_id,
                             ok=False, reason=f"{reason}: admission refused: {why}")

    async def close(self) -> None:
        """Unsubscribe and stop the refresh loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await unsubscribe_all(self._subs)
        self._subs.clear()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._started:
            self.events.emit(EventType.element_stopped, ELEMENT)

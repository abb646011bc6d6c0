"""Routing Element: capacity-aware shortest paths over the QKD link graph (paper §III).

Map:

* :class:`RoutingCore` — pure logic, no I/O: a :mod:`networkx` graph of nodes and PHYS
  links (built from the SDN Controller's topology), link weights from monitored metrics
  (:class:`MetricWeight`, see :class:`~keyplane.control.settings.RoutingSettings` for the
  formula), per-link capacity and the reservations of live sessions, reroute planning.
* :class:`RoutingElement` — the bus shell: answers :class:`~keyplane.control.wire.RouteRequest`,
  follows :class:`~keyplane.messages.TopologyChange` and :class:`~keyplane.messages.LinkAlarm`,
  re-reads metrics from the topology database on the clock, and orders Admission Control
  to move the sessions of a link that went down or raised an alarm.

Decisions:

* Paths are computed with bidirectional Dijkstra on a weight *function* that hides a link
  (returns ``None``) when it is out of service or lacks the requested free capacity, so no
  filtered copy of the graph is built per request (≈1 ms at 1,000 nodes, see
  docs/benchmarks.md).
* A reservation is keyed by ``(session, epoch)``. A link's reserved rate counts each session
  once (its largest epoch reservation on that link), so while a session moves from its old
  path to its new one the links both share are not counted twice.
* Rerouting reserves the new path (epoch + 1) before telling Admission Control, and the old
  epoch stays reserved until Admission has removed the old forwarding entries: at no point
  is a live session without a reserved path.
* Restart (docs/control.md, "Controller restart"): reservations live in memory; Admission
  Control owns the sessions (and persists them). A starting Routing Element asks Admission
  for its :class:`~keyplane.control.wire.LiveSessions`, and a starting Admission sends them;
  either way :meth:`RoutingElement.apply_live_sessions` re-holds the capacity on the paths
  the sessions use (:meth:`RoutingCore.restore`) and frees reservations nobody owns.
* Hybrid provisioning (docs/hybrid.md): a request carries the session's hybrid policy. A
  link without QKD key (:meth:`RoutingCore.has_qkd_key`) is hidden from every session except
  those whose policy allows PQC alone (``pqc_fallback``); for those it costs
  ``pqc_hop_penalty`` more and its QKD capacity is not checked. When such a link fails, a
  fallback session moves only if a better path exists; otherwise it keeps its path and its
  KMs switch that hop to ML-KEM.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx

from keyplane.bus import Bus, Message, Subscription, topics, unsubscribe_all
from keyplane.clock import Clock
from keyplane.config import HybridPolicy, Topology
from keyplane.control.settings import RoutingSettings
from keyplane.control.wire import (
    SDN_SNAPSHOT,
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
from keyplane.errors import BusError, QosNotMet, StoreError
from keyplane.events import EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import LinkAlarm, TopologyChange
from keyplane.store import Database
from keyplane.store.topology import LinkMetrics, get_link_metrics

__all__ = [
    "MetricWeight",
    "NoRoute",
    "Reservation",
    "Route",
    "RoutingCore",
    "RoutingElement",
    "WeightFunction",
    "hop_weight",
]

logger = logging.getLogger(__name__)

ELEMENT = "routing"

WeightFunction = Callable[[LinkMetrics | None], float]
"""Maps a link's latest metrics (``None``: never measured) to a positive weight."""


def hop_weight(_: LinkMetrics | None) -> float:
    """Every link weighs 1: shortest hop count (the paper's experiment)."""
    return 1.0


@dataclass(frozen=True)
class MetricWeight:
    """The default weight function; the formula is in :class:`RoutingSettings`."""

    skr_ref_bps: float = 1_000.0
    skr_coef: float = 1.0
    qber_coef: float = 10.0
    sessions_coef: float = 0.1
    buffer_ref_bits: float = 100_000.0
    buffer_coef: float = 0.5

    @classmethod
    def from_settings(cls, s: RoutingSettings) -> MetricWeight:
        """The weight function ``s`` describes."""
        return cls(skr_ref_bps=s.skr_ref_bps, skr_coef=s.skr_coef, qber_coef=s.qber_coef,
                   sessions_coef=s.sessions_coef, buffer_ref_bits=s.buffer_ref_bits,
                   buffer_coef=s.buffer_coef)

    def __call__(self, m: LinkMetrics | None) -> float:
        if m is None:
            return 1.0
        w = 1.0
        if m.skr_bps is not None:
            w += self.skr_coef * self.skr_ref_bps / max(m.skr_bps, 1.0)
        if m.qber is not None:
            w += self.qber_coef * m.qber
        w += self.sessions_coef * m.sessions
        w += self.buffer_coef * self.buffer_ref_bits / (m.buffer_bits + self.buffer_ref_bits)
        return w


class NoRoute(QosNotMet):
    """No path with enough free capacity joins the two nodes."""

    def __init__(self, source: str, destination: str, min_bps: float, why: str = "") -> None:
        detail = f" ({why})" if why else ""
        super().__init__(f"no route from {source} to {destination} "
                         f"able to carry {min_bps:g} bps{detail}")
        self.source = source
        self.destination = destination
        self.min_bps = min_bps


@dataclass(frozen=True)
class Route:
    """A path: the KMs in order and the links between consecutive ones."""

    nodes: tuple[str, ...]
    links: tuple[str, ...]
    cost: float = 0.0


@dataclass(frozen=True)
class Reservation:
    """Capacity held by one epoch of one session on every link of its route."""

    session_id: str
    epoch: int
    route: Route
    min_bps: float
    pqc_fallback: bool = False


@dataclass
class _Link:
    link_id: str
    a: str
    b: str
    enabled: bool = True
    alarms: set[str] = field(default_factory=set)
    weight: float = 1.0
    capacity_bps: float = math.inf
    reserved: dict[str, dict[int, float]] = field(default_factory=dict)  # session → epoch → bps

    @property
    def usable(self) -> bool:
        return self.enabled and not self.alarms

    @property
    def reserved_bps(self) -> float:
        return sum(max(e.values()) for e in self.reserved.values() if e)

    def free_for(self, session_id: str | None) -> float:
        """Free capacity as seen by ``session_id`` (its own reservations count as free)."""
        used = sum(max(e.values()) for s, e in self.reserved.items() if e and s != session_id)
        return self.capacity_bps - used


class RoutingCore:
    """The Routing Element's state and logic (no I/O; callers pass the clock's time).

    Args:
        settings: weight mode, coefficients and the capacity rule.
        weight_fn: overrides the weight function the settings describe.
    """

    def __init__(self, settings: RoutingSettings | None = None,
                 weight_fn: WeightFunction | None = None) -> None:
        self.settings = settings or RoutingSettings()
        if weight_fn is not None:
            self.weight_fn: WeightFunction = weight_fn
        elif self.settings.weight == "hops":
            self.weight_fn = hop_weight
        else:
            self.weight_fn = MetricWeight.from_settings(self.settings)
        self.graph: nx.Graph[str] = nx.Graph()
        self._links: dict[str, _Link] = {}
        self._metrics: dict[str, LinkMetrics] = {}
        self._reservations: dict[tuple[str, int], Reservation] = {}

    # ------------------------------------------------------------------ topology

    @classmethod
    def from_topology(cls, topology: Topology, settings: RoutingSettings | None = None,
                      weight_fn: WeightFunction | None = None) -> RoutingCore:
        """A core holding ``topology``'s nodes and PHYS links."""
        core = cls(settings, weight_fn)
        for n in topology.nodes:
            core.add_node(n.id)
        for link in topology.links:
            core.add_link(link.link_id, *link.endpoints, enabled=link.enabled)
        return core

    def load_snapshot(self, snap: TopologySnapshot) -> None:
        """Replace the graph with the SDN Controller's (PHYS links only; keeps reservations)."""
        keep = {lid: link for lid, link in self._links.items()}
        self.graph = nx.Graph()
        self._links = {}
        for n in snap.nodes:
            self.add_node(n)
        for sl in snap.links:
            if sl.type != "PHYS":
                continue
            self.add_link(sl.link_id, *sl.endpoints, enabled=sl.enable and sl.status != "OFF")
            old = keep.get(sl.link_id)
            if old is not None:
                self._links[sl.link_id].reserved = old.reserved
                self._links[sl.link_id].alarms = old.alarms
        self._refresh_all()

    def add_node(self, node: str) -> None:
        """Add a KM (idempotent)."""
        self.graph.add_node(node)

    def remove_node(self, node: str) -> list[str]:
        """Remove a KM and its links; returns the ids of the links removed."""
        gone = [lid for lid, link in self._links.items() if node in (link.a, link.b)]
        for lid in gone:
            self.remove_link(lid)
        if node in self.graph:
            self.graph.remove_node(node)
        return gone

    def add_link(self, link_id: str, a: str, b: str, *, enabled: bool = True) -> None:
        """Add (or replace) a PHYS link between KMs ``a`` and ``b``.

        Raises:
            ValueError: another link already joins ``a`` and ``b``.
        """
        if self.graph.has_edge(a, b) and self.graph.edges[a, b]["link"].link_id != link_id:
            raise ValueError(f"{a} and {b} are already joined by another link")
        old = self._links.get(link_id)
        if old is not None and {old.a, old.b} != {a, b}:
            self.remove_link(link_id)
            old = None
        link = old or _Link(link_id, a, b)
        link.enabled = enabled
        self._links[link_id] = link
        self.graph.add_edge(a, b, link=link)
        self._refresh(link)

    def remove_link(self, link_id: str) -> None:
        """Remove a link (its reservations stay with their sessions until released)."""
        link = self._links.pop(link_id, None)
        if link is not None and self.graph.has_edge(link.a, link.b):
            self.graph.remove_edge(link.a, link.b)

    def has_link(self, link_id: str) -> bool:
        """Whether ``link_id`` is in the graph."""
        return link_id in self._links

    def set_enabled(self, link_id: str, enabled: bool) -> None:
        """Switch a link in or out of service (SDN ``qkdl_enable`` / status)."""
        if link_id in self._links:
            self._links[link_id].enabled = enabled

    def usable(self, link_id: str) -> bool:
        """Whether a link may carry new or rerouted sessions."""
        link = self._links.get(link_id)
        return link is not None and link.usable

    def has_qkd_key(self, link_id: str) -> bool:
        """Whether a link can give QKD hop keys: in service, and not monitored as down or
        as producing no key with an empty buffer."""
        link = self._links.get(link_id)
        if link is None or not link.usable:
            return False
        m = self._metrics.get(link_id)
        if m is None:
            return True
        if m.state == "down":
            return False
        return not (m.skr_bps is not None and m.skr_bps <= 0 and m.buffer_bits <= 0)

    # ------------------------------------------------------------------ metrics, alarms

    def set_metrics(self, metrics: dict[str, LinkMetrics]) -> None:
        """Take the latest monitored figures (weights and SKR capacities follow)."""
        self._metrics = dict(metrics)
        self._refresh_all()

    def _refresh_all(self) -> None:
        for link in self._links.values():
            self._refresh(link)

    def _refresh(self, link: _Link) -> None:
        m = self._metrics.get(link.link_id)
        w = float(self.weight_fn(m))
        if not (w > 0 and math.isfinite(w)):
            raise ValueError(f"weight function gave {w!r} for {link.link_id}: "
                             "need a positive finite float")
        link.weight = w
        configured = self.settings.link_capacity_bps.get(link.link_id)
        if configured is not None:
            link.capacity_bps = configured
        elif self.settings.use_skr_as_capacity and m is not None and m.skr_bps is not None:
            link.capacity_bps = m.skr_bps
        elif self.settings.default_capacity_bps is not None:
            link.capacity_bps = self.settings.default_capacity_bps
        else:
            link.capacity_bps = math.inf

    def apply_alarm(self, alarm: LinkAlarm) -> bool:
        """Record an alarm; returns True when the link just went out of service."""
        link = self._links.get(alarm.link_id)
        if link is None:
            return False
        was_usable = link.usable
        if alarm.kind == "cleared":
            link.alarms.clear()
        elif alarm.kind in self.settings.reroute_on:
            link.alarms.add(alarm.kind)
        return was_usable and not link.usable

    # ------------------------------------------------------------------ paths

    def weight(self, link_id: str) -> float:
        """The current weight of a link."""
        return self._links[link_id].weight

    def capacity_bps(self, link_id: str) -> float:
        """What a link sustains (``inf``: unbounded)."""
        return self._links[link_id].capacity_bps

    def reserved_bps(self, link_id: str) -> float:
        """The rate live sessions hold on a link."""
        return self._links[link_id].reserved_bps

    def compute_path(self, source: str, destination: str, min_bps: float = 0.0, *,
                     session_id: str | None = None, avoid: Iterable[str] = (),
                     pqc_fallback: bool = False) -> Route:
        """The lightest path whose every link is usable and has ``min_bps`` free.

        Args:
            session_id: reservations of this session count as free (rerouting).
            avoid: link ids not to use.
            pqc_fallback: the session's hybrid policy allows PQC alone, so links without
                QKD key may be used too (weight + ``pqc_hop_penalty``, capacity unchecked).

        Raises:
            NoRoute: unknown endpoint, same endpoints, or no such path.
        """
        if source not in self.graph or destination not in self.graph:
            raise NoRoute(source, destination, min_bps, "unknown node")
        if source == destination:
            raise NoRoute(source, destination, min_bps, "both ends on the same node")
        avoided = frozenset(avoid)

        penalty = self.settings.pqc_hop_penalty

        def cost(_u: str, _v: str, d: dict[str, _Link]) -> float | None:
            link = d["link"]
            if link.link_id in avoided:
                return None
            if not self.has_qkd_key(link.link_id):
                return link.weight + penalty if pqc_fallback else None
            if min_bps > 0 and link.free_for(session_id) < min_bps:
                return None
            return link.weight

        try:
            total, nodes = nx.bidirectional_dijkstra(self.graph, source, destination,
                                                     weight=cost)
        except nx.NetworkXNoPath:
            raise NoRoute(source, destination, min_bps) from None
        links = tuple(self.graph.edges[u, v]["link"].link_id
                      for u, v in itertools.pairwise(nodes))
        return Route(tuple(nodes), links, float(total))

    def route_cost(self, route: Route, pqc_fallback: bool = False) -> float:
        """What ``route`` weighs now (``inf`` if a link is gone or, without
        ``pqc_fallback``, has no QKD key); capacity is not considered."""
        total = 0.0
        for lid in route.links:
            link = self._links.get(lid)
            if link is None:
                return math.inf
            if not self.has_qkd_key(lid):
                if not pqc_fallback:
                    return math.inf
                total += self.settings.pqc_hop_penalty
            total += link.weight
        return total

    def reserve(self, session_id: str, epoch: int, route: Route, min_bps: float, *,
                pqc_fallback: bool = False) -> Reservation:
        """Hold ``min_bps`` on every link of ``route`` for ``(session_id, epoch)``.

        Args:
            pqc_fallback: links without QKD key are acceptable (their hops use ML-KEM).

        Raises:
            NoRoute: a link is gone, out of service or would exceed its capacity.
        """
        for lid in route.links:
            link = self._links.get(lid)
            if link is None:
                raise NoRoute(route.nodes[0], route.nodes[-1], min_bps, f"link {lid} is gone")
            if not self.has_qkd_key(lid):
                if pqc_fallback:
                    continue
                raise NoRoute(route.nodes[0], route.nodes[-1], min_bps,
                              f"link {lid} has no QKD key")
            if min_bps > 0:
                own = max(link.reserved.get(session_id, {}).values(), default=0.0)
                if link.free_for(session_id) < max(min_bps, own):
                    raise NoRoute(route.nodes[0], route.nodes[-1], min_bps,
                                  f"link {lid} lacks capacity")
        res = Reservation(session_id, epoch, route, float(min_bps), pqc_fallback)
        self.release(session_id, epoch)
        self._reservations[(session_id, epoch)] = res
        for lid in route.links:
            self._links[lid].reserved.setdefault(session_id, {})[epoch] = float(min_bps)
        return res

    def route_and_reserve(self, session_id: str, epoch: int, source: str, destination: str,
                          min_bps: float, *, pqc_fallback: bool = False) -> Reservation:
        """:meth:`compute_path` then :meth:`reserve` (the Admission request).

        Raises:
            NoRoute: no path can carry ``min_bps``.
        """
        route = self.compute_path(source, destination, min_bps, session_id=session_id,
                                  pqc_fallback=pqc_fallback)
        return self.reserve(session_id, epoch, route, min_bps, pqc_fallback=pqc_fallback)

    def release(self, session_id: str, epoch: int | None = None) -> list[Reservation]:
        """Free ``(session_id, epoch)`` (every epoch when ``epoch`` is None)."""
        keys = [k for k in self._reservations
                if k[0] == session_id and (epoch is None or k[1] == epoch)]
        out = []
        for key in keys:
            res = self._reservations.pop(key)
            out.append(res)
            for lid in res.route.links:
                link = self._links.get(lid)
                if link is None:
                    continue
                epochs = link.reserved.get(session_id)
                if epochs is not None:
                    epochs.pop(res.epoch, None)
                    if not epochs:
                        del link.reserved[session_id]
        return out

    def restore(self, session_id: str, epoch: int, nodes: Iterable[str], min_bps: float, *,
                pqc_fallback: bool = False) -> tuple[Reservation, tuple[str, ...]]:
        """Hold ``min_bps`` for ``(session_id, epoch)`` on a path the session already uses.

        Unlike :meth:`reserve` nothing is checked: after a restart the session's KMs forward
        on this path whatever the links' state, so its capacity is held even if that
        overbooks a link (see :meth:`overbooked`); moving it is the reroute's job.

        Returns:
            The reservation, and the hops (``"u-v"``) with no link in the graph, where
            nothing could be held.
        """
        path = tuple(nodes)
        links: list[str] = []
        missing: list[str] = []
        for u, v in itertools.pairwise(path):
            if self.graph.has_edge(u, v):
                links.append(self.graph.edges[u, v]["link"].link_id)
            else:
                missing.append(f"{u}-{v}")
        route = Route(path, tuple(links))
        route = Route(path, route.links, self.route_cost(route, pqc_fallback))
        res = Reservation(session_id, epoch, route, float(min_bps), pqc_fallback)
        self.release(session_id, epoch)
        self._reservations[(session_id, epoch)] = res
        for lid in links:
            self._links[lid].reserved.setdefault(session_id, {})[epoch] = float(min_bps)
        return res, tuple(missing)

    def overbooked(self) -> list[str]:
        """Links whose reservations exceed their capacity (only :meth:`restore` does that)."""
        return sorted(lid for lid, link in self._links.items()
                      if link.reserved_bps > link.capacity_bps)

    def reservations(self) -> list[Reservation]:
        """Every live reservation."""
        return list(self._reservations.values())

    def current(self, session_id: str) -> Reservation | None:
        """The session's newest reservation."""
        epochs = [r for (s, _), r in self._reservations.items() if s == session_id]
        return max(epochs, key=lambda r: r.epoch, default=None)

    def affected_by(self, link_id: str) -> list[Reservation]:
        """Newest reservations of the sessions whose current route uses ``link_id``."""
        out = []
        for sid in sorted({s for s, _ in self._reservations}):
            res = self.current(sid)
            if res is not None and link_id in res.route.links:
                out.append(res)
        return out

    def plan_reroute(self, res: Reservation) -> Reservation:
        """Reserve a new route for a live session under ``res.epoch + 1``.

        The old epoch stays reserved until its owner releases it.

        Raises:
            NoRoute: no usable path can carry the session's ``min_bps``.
        """
        src, dst = res.route.nodes[0], res.route.nodes[-1]
        return self.route_and_reserve(res.session_id, res.epoch + 1, src, dst, res.min_bps,
                                      pqc_fallback=res.pqc_fallback)


class RoutingElement(Service):
    """The Routing Element on the bus (one per control plane; runnable alone).

    Args:
        topology: the topology file (initial graph when the SDN Controller is not up).
        bus: where Admission Control, the SDN Controller and Monitoring are reached.
        clock: drives the metrics refresh.
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
        if self.db is not None:
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
                                          pqc_fallback=fallback)
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
        while True:
            await self.clock.sleep(self.settings.metrics_refresh_s)
            await self.refresh_metrics()

    async def _on_routing(self, _topic: str, msg: Message) -> Message | None:
        if isinstance(msg, RouteRequest):
            try:
                try:
                    fallback = HybridPolicy(msg.hybrid_policy).allows_pqc_alone
                except ValueError:
                    raise NoRoute(msg.source_node, msg.destination_node, msg.min_bps,
                                  f"unknown hybrid policy {msg.hybrid_policy!r}") from None
                res = self.core.route_and_reserve(msg.session_id, msg.epoch, msg.source_node,
                                                  msg.destination_node, msg.min_bps,
                                                  pqc_fallback=fallback)
            except NoRoute as exc:
                self.events.emit(EventType.route_computed, ELEMENT, session=msg.session_id,
                                 ok=False, reason=str(exc))
                return RouteReply(session_id=msg.session_id, epoch=msg.epoch, ok=False,
                                  reason=str(exc))
            self.events.emit(EventType.route_computed, ELEMENT, session=msg.session_id, ok=True,
                             path=list(res.route.nodes), epoch=msg.epoch,
                             min_bps=msg.min_bps, hybrid_policy=msg.hybrid_policy,
                             pqc_links=[lid for lid in res.route.links
                                        if not self.core.has_qkd_key(lid)])
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


"""The Routing Element's pure core: the link graph, weights, capacity ledgers, reservations.

No I/O; callers pass the figures. Every per-request operation costs what the path and the
links it touches cost, never the number of live sessions (issue #15: p99 at 1,000 nodes
with 10,000 live sessions):

* each link keeps a *ledger* of what sessions hold on it (per session: the largest epoch
  reservation) with a running total, so the free capacity a path search checks on every
  edge it relaxes is O(1) (summing the reservations per edge made the search grow with
  the number of live sessions: 22 ms p99 at 10,000);
* reservations are indexed by session (release, current epoch) and links by the sessions
  they carry (:meth:`RoutingCore.affected_by`), instead of scans of every reservation.

Trust (issue #19.2, :mod:`keyplane.trust`): a session may cap the trusted relays on its
path (``max_trusted_relays``; 0: a single link). The plain search runs first; only when its
path has too many relays does a hop-bounded search (Bellman-Ford by layers, ``cap + 1``
edges at most) look for the lightest path within the cap. A link's untrusted station
(measurement station, entanglement source) is not a graph node: a key crosses it without
being exposed, so it never counts as a relay.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx

from keyplane.config import Topology
from keyplane.control.routing.weights import MetricWeight, WeightFunction, hop_weight
from keyplane.control.settings import RoutingSettings
from keyplane.control.wire import TopologySnapshot
from keyplane.errors import QosNotMet
from keyplane.messages import LinkAlarm
from keyplane.store.topology import LinkMetrics

__all__ = ["NoRoute", "Reservation", "Route", "RoutingCore"]


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
    max_trusted_relays: int | None = None


@dataclass
class _Link:
    link_id: str
    a: str
    b: str
    enabled: bool = True
    alarms: set[str] = field(default_factory=set)
    weight: float = 1.0
    capacity_bps: float = math.inf
    fibre_taken: float = 0.0  # share of the fibre's time the entanglement schedule holds
    keyless: bool = False  # monitored as down, or no key rate and an empty buffer
    reserved: dict[str, dict[int, float]] = field(default_factory=dict)  # session → epoch → bps
    held: dict[str, float] = field(default_factory=dict)  # session → max over its epochs
    held_total: float = 0.0

    @property
    def usable(self) -> bool:
        return self.enabled and not self.alarms

    @property
    def qkd_ok(self) -> bool:
        return self.enabled and not self.alarms and not self.keyless

    @property
    def reserved_bps(self) -> float:
        return self.held_total

    def free_for(self, session_id: str | None) -> float:
        """Free capacity as seen by ``session_id`` (its own reservations count as free)."""
        own = self.held.get(session_id, 0.0) if session_id is not None else 0.0
        return self.capacity_bps - self.held_total + own

    def hold(self, session_id: str, epoch: int, bps: float) -> None:
        epochs = self.reserved.setdefault(session_id, {})
        epochs[epoch] = bps
        self._settle(session_id, max(epochs.values()))

    def drop(self, session_id: str, epoch: int) -> None:
        epochs = self.reserved.get(session_id)
        if epochs is None or epochs.pop(epoch, None) is None:
            return
        if epochs:
            self._settle(session_id, max(epochs.values()))
        else:
            del self.reserved[session_id]
            self._settle(session_id, None)

    def _settle(self, session_id: str, bps: float | None) -> None:
        self.held_total -= self.held.pop(session_id, 0.0)
        if bps is not None:
            self.held[session_id] = bps
            self.held_total += bps
        if not self.held:
            self.held_total = 0.0  # no float residue once the link is empty


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
        self._reservations: dict[str, dict[int, Reservation]] = {}  # session → epoch → res
        self.stations: dict[str, str] = {}  # link id → its untrusted station (topology file)

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
            if link.station is not None:
                core.stations[link.link_id] = link.station
        return core

    def untrusted_on(self, route: Route) -> list[str]:
        """The untrusted stations of ``route``'s links, in path order."""
        return [self.stations[lid] for lid in route.links if lid in self.stations]

    def load_snapshot(self, snap: TopologySnapshot) -> None:
        """Replace the graph with the SDN Controller's (PHYS links only; keeps reservations)."""
        keep = dict(self._links)
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
                new = self._links[sl.link_id]
                new.reserved, new.held, new.held_total = old.reserved, old.held, old.held_total
                new.alarms = old.alarms
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
        return link is not None and link.qkd_ok

    # ------------------------------------------------------------------ metrics, alarms

    def set_metrics(self, metrics: dict[str, LinkMetrics]) -> None:
        """Take the latest monitored figures (weights and SKR capacities follow)."""
        self._metrics = dict(metrics)
        self._refresh_all()

    def update_metrics(self, metrics: dict[str, LinkMetrics]) -> None:
        """Take the latest figures of some links (the others keep theirs); only those links
        are re-weighed, so a report costs what it carries, not the size of the graph."""
        for lid, m in metrics.items():
            self._metrics[lid] = m
            link = self._links.get(lid)
            if link is not None:
                self._refresh(link)

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
        link.keyless = m is not None and (
            m.state == "down"
            or (m.skr_bps is not None and m.skr_bps <= 0 and m.buffer_bits <= 0))
        configured = self.settings.link_capacity_bps.get(link.link_id)
        if configured is not None:
            link.capacity_bps = configured
        elif self.settings.use_skr_as_capacity and m is not None and m.skr_bps is not None:
            link.capacity_bps = m.skr_bps
        elif self.settings.default_capacity_bps is not None:
            link.capacity_bps = self.settings.default_capacity_bps
        else:
            link.capacity_bps = math.inf
        if math.isfinite(link.capacity_bps):  # an unbounded link has no budget to share
            link.capacity_bps *= 1.0 - link.fibre_taken

    def set_fibre_taken(self, link_id: str, share: float) -> None:
        """The entanglement service holds ``share`` of a shared fibre's time: the link
        carries key only in the rest, so its capacity is scaled by ``1 - share``."""
        link = self._links.get(link_id)
        if link is not None:
            link.fibre_taken = min(1.0, max(0.0, share))
            self._refresh(link)

    def key_share(self, link_id: str) -> float:
        """The share of a link's full-time key rate its reservations need (0 when the
        capacity is unbounded, 1 at most)."""
        link = self._links.get(link_id)
        if link is None:
            return 0.0
        full = link.capacity_bps / (1.0 - link.fibre_taken) if link.fibre_taken < 1.0 \
            else math.inf
        if not math.isfinite(full) or full <= 0:
            return 0.0 if link.held_total <= 0 or math.isinf(full) else 1.0
        return min(1.0, link.held_total / full)

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

    def alarms(self, link_id: str) -> frozenset[str]:
        """The alarm kinds that keep a link out of service (empty: none)."""
        link = self._links.get(link_id)
        return frozenset(link.alarms) if link is not None else frozenset()

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
                     pqc_fallback: bool = False,
                     max_trusted_relays: int | None = None) -> Route:
        """The lightest path whose every link is usable and has ``min_bps`` free.

        Args:
            session_id: reservations of this session count as free (rerouting).
            avoid: link ids not to use.
            pqc_fallback: the session's hybrid policy allows PQC alone, so links without
                QKD key may be used too (weight + ``pqc_hop_penalty``, capacity unchecked).
            max_trusted_relays: at most this many intermediate key managers (None: any).

        Raises:
            NoRoute: unknown endpoint, same endpoints, or no such path.
        """
        if source not in self.graph or destination not in self.graph:
            raise NoRoute(source, destination, min_bps, "unknown node")
        if source == destination:
            raise NoRoute(source, destination, min_bps, "both ends on the same node")
        avoided = frozenset(avoid)
        penalty = self.settings.pqc_hop_penalty
        check_capacity = min_bps > 0

        def cost(_u: str, _v: str, d: dict[str, _Link]) -> float | None:
            # called once per edge the search relaxes: keep it O(1) and call-free
            link = d["link"]
            if avoided and link.link_id in avoided:
                return None
            if not (link.enabled and not link.alarms and not link.keyless):
                return link.weight + penalty if pqc_fallback else None
            if check_capacity:
                own = link.held.get(session_id, 0.0) if session_id is not None else 0.0
                if link.capacity_bps - link.held_total + own < min_bps:
                    return None
            return link.weight

        try:
            total, nodes = nx.bidirectional_dijkstra(self.graph, source, destination,
                                                     weight=cost)
        except nx.NetworkXNoPath:
            raise NoRoute(source, destination, min_bps) from None
        if max_trusted_relays is not None and len(nodes) - 2 > max_trusted_relays:
            found = self._bounded_path(source, destination, max_trusted_relays + 1, cost)
            if found is None:
                raise NoRoute(source, destination, min_bps,
                              f"no path with at most {max_trusted_relays} trusted relays")
            total, nodes = found
        links = tuple(self.graph.edges[u, v]["link"].link_id
                      for u, v in itertools.pairwise(nodes))
        return Route(tuple(nodes), links, float(total))

    def _bounded_path(self, source: str, destination: str, max_edges: int,
                      cost: Callable[[str, str, dict[str, _Link]], float | None]
                      ) -> tuple[float, list[str]] | None:
        """The lightest path of at most ``max_edges`` links (Bellman-Ford by layers).

        Costs ``max_edges`` passes over the edges reachable so far; a trust cap is small
        (a few relays), so this stays near a plain search.
        """
        best: dict[str, tuple[float, list[str]]] = {source: (0.0, [source])}
        frontier = dict(best)
        for _ in range(max_edges):
            nxt: dict[str, tuple[float, list[str]]] = {}
            for u, (du, pu) in frontier.items():
                for v, data in self.graph[u].items():
                    if v in pu:
                        continue
                    w = cost(u, v, data)
                    if w is None:
                        continue
                    dv = du + w
                    if dv < best.get(v, (math.inf, []))[0] and dv < nxt.get(
                            v, (math.inf, []))[0]:
                        nxt[v] = (dv, [*pu, v])
            best.update(nxt)
            frontier = {v: e for v, e in nxt.items() if v != destination}
            if not frontier:
                break
        return best.get(destination)

    def route_cost(self, route: Route, pqc_fallback: bool = False) -> float:
        """What ``route`` weighs now (``inf`` if a link is gone or, without
        ``pqc_fallback``, has no QKD key); capacity is not considered."""
        total = 0.0
        for lid in route.links:
            link = self._links.get(lid)
            if link is None:
                return math.inf
            if not link.qkd_ok:
                if not pqc_fallback:
                    return math.inf
                total += self.settings.pqc_hop_penalty
            total += link.weight
        return total

    # ------------------------------------------------------------------ reservations

    def reserve(self, session_id: str, epoch: int, route: Route, min_bps: float, *,
                pqc_fallback: bool = False,
                max_trusted_relays: int | None = None) -> Reservation:
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
            if not link.qkd_ok:
                if pqc_fallback:
                    continue
                raise NoRoute(route.nodes[0], route.nodes[-1], min_bps,
                              f"link {lid} has no QKD key")
            if min_bps > 0:
                own = link.held.get(session_id, 0.0)
                if link.free_for(session_id) < max(min_bps, own):
                    raise NoRoute(route.nodes[0], route.nodes[-1], min_bps,
                                  f"link {lid} lacks capacity")
        if max_trusted_relays is not None and len(route.nodes) - 2 > max_trusted_relays:
            raise NoRoute(route.nodes[0], route.nodes[-1], min_bps,
                          f"{len(route.nodes) - 2} trusted relays, at most "
                          f"{max_trusted_relays} allowed")
        return self._hold(Reservation(session_id, epoch, route, float(min_bps), pqc_fallback,
                                      max_trusted_relays))

    def _hold(self, res: Reservation) -> Reservation:
        self.release(res.session_id, res.epoch)
        self._reservations.setdefault(res.session_id, {})[res.epoch] = res
        for lid in res.route.links:
            link = self._links.get(lid)
            if link is not None:
                link.hold(res.session_id, res.epoch, res.min_bps)
        return res

    def route_and_reserve(self, session_id: str, epoch: int, source: str, destination: str,
                          min_bps: float, *, pqc_fallback: bool = False,
                          max_trusted_relays: int | None = None) -> Reservation:
        """:meth:`compute_path` then :meth:`reserve` (the Admission request).

        Raises:
            NoRoute: no path can carry ``min_bps`` within ``max_trusted_relays``.
        """
        route = self.compute_path(source, destination, min_bps, session_id=session_id,
                                  pqc_fallback=pqc_fallback,
                                  max_trusted_relays=max_trusted_relays)
        return self.reserve(session_id, epoch, route, min_bps, pqc_fallback=pqc_fallback,
                            max_trusted_relays=max_trusted_relays)

    def release(self, session_id: str, epoch: int | None = None) -> list[Reservation]:
        """Free ``(session_id, epoch)`` (every epoch when ``epoch`` is None)."""
        epochs = self._reservations.get(session_id)
        if not epochs:
            return []
        keys = list(epochs) if epoch is None else [epoch] if epoch in epochs else []
        out = []
        for key in keys:
            res = epochs.pop(key)
            out.append(res)
            for lid in res.route.links:
                link = self._links.get(lid)
                if link is not None:
                    link.drop(session_id, key)
        if not epochs:
            del self._reservations[session_id]
        return out

    def restore(self, session_id: str, epoch: int, nodes: Iterable[str], min_bps: float, *,
                pqc_fallback: bool = False, max_trusted_relays: int | None = None
                ) -> tuple[Reservation, tuple[str, ...]]:
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
        res = self._hold(Reservation(session_id, epoch, route, float(min_bps), pqc_fallback,
                                     max_trusted_relays))
        return res, tuple(missing)

    def overbooked(self) -> list[str]:
        """Links whose reservations exceed their capacity (only :meth:`restore` does that)."""
        return sorted(lid for lid, link in self._links.items()
                      if link.reserved_bps > link.capacity_bps)

    def reservations(self) -> list[Reservation]:
        """Every live reservation."""
        return [r for epochs in self._reservations.values() for r in epochs.values()]

    def current(self, session_id: str) -> Reservation | None:
        """The session's newest reservation."""
        epochs = self._reservations.get(session_id)
        return epochs[max(epochs)] if epochs else None

    def affected_by(self, link_id: str) -> list[Reservation]:
        """Newest reservations of the sessions whose current route uses ``link_id``."""
        link = self._links.get(link_id)
        if link is None:  # gone from the graph: its ledger went with it
            candidates: Iterable[str] = self._reservations
        else:
            candidates = link.reserved
        out = []
        for sid in sorted(candidates):
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
                                      pqc_fallback=res.pqc_fallback,
                                      max_trusted_relays=res.max_trusted_relays)

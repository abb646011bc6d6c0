"""What the dashboard shows, folded from the network's own messages (pure, no I/O).

:class:`NetworkView` starts from the topology and folds in what the elements already publish:
link telemetry (secret key rate, QBER, state), KM telemetry (key-store levels, sessions per
link), the Monitoring Element's alarms, and the event stream (sessions, routes, key delivery,
the paper's Fig. 4 markers). :meth:`NetworkView.snapshot` is the JSON the page renders; it
never carries key material (the event stream refuses such fields at the source).

Rates are computed from what happened: a session's keys/s is its delivered keys over a
sliding window of the clock's time, not a configured figure.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from keyplane.config import Topology
from keyplane.events import Event, EventType
from keyplane.messages import KmTelemetry, LinkAlarm, LinkTelemetry

__all__ = ["TIMELINE_TYPES", "NetworkView"]

TIMELINE_TYPES: dict[EventType, str] = {
    EventType.request_arrived: "request",
    EventType.authenticated: "authenticated",
    EventType.configured: "configuration",
    EventType.session_operative: "operative",
    EventType.key_material_ready: "key ready",
    EventType.key_relayed: "relay",
    EventType.key_delivered: "response",
    EventType.session_closed: "closed",
    EventType.alarm: "alarm",
    EventType.session_rerouted: "rerouted",
}
"""Event types drawn on the live timeline (the paper's Fig. 4 markers), with their labels."""


@dataclass
class _Link:
    link_id: str
    a: str
    b: str
    length_km: float
    protocol: str
    state: str = "unknown"
    skr_bps: float | None = None
    qber: float | None = None
    store_bits: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    blocks: int = 0
    aborted: int = 0
    history: deque[tuple[float, float | None, float | None]] = field(
        default_factory=lambda: deque(maxlen=240))


@dataclass
class _Session:
    session_id: str
    pair: str = ""
    path: list[str] = field(default_factory=list)
    state: str = "opening"
    opened_t: float = 0.0
    # per endpoint node: keys handed to its application, and when (both ends hand out the
    # same keys, so a session's figure is the larger end's)
    delivered: dict[str, int] = field(default_factory=dict)
    recent: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)


class NetworkView:
    """The dashboard's model of one network.

    Args:
        topology: the network (nodes, links).
        rate_window_s: window of the per-session keys/s figure.
        timeline_events: how many timeline markers to keep.
    """

    def __init__(self, topology: Topology, *, rate_window_s: float = 10.0,
                 timeline_events: int = 2000) -> None:
        self.topology = topology
        self.rate_window_s = rate_window_s
        self.version = 0
        self._links = {
            link.link_id: _Link(link.link_id, link.endpoints[0], link.endpoints[1],
                                link.length_km, link.protocol,
                                state="up" if link.enabled else "down")
            for link in topology.links}
        self._sessions: dict[str, _Session] = {}
        self._alarms: dict[str, dict[str, Any]] = {}
        self._alarm_log: deque[dict[str, Any]] = deque(maxlen=200)
        self._timeline: deque[dict[str, Any]] = deque(maxlen=timeline_events)
        self._reported: dict[str, float] = {}  # node -> time of its KM's last telemetry
        self._now = 0.0
        self._t0: float | None = None
        self._positions: dict[str, tuple[float, float]] | None = None  # by _layout()

    # -- folding ---------------------------------------------------------------------

    def on_link_telemetry(self, msg: LinkTelemetry) -> None:
        """A link's per-block or periodic figures."""
        link = self._links.get(msg.link_id)
        if link is None:
            return
        link.state = str(msg.state.value if hasattr(msg.state, "value") else msg.state)
        # the modules report their current rate (0 while every block aborts); only a state
        # report before any figure carries none
        if msg.block_id is not None or msg.skr_bps or link.skr_bps is not None:
            link.skr_bps = msg.skr_bps
        if msg.qber is not None:
            link.qber = msg.qber
        link.aborted = max(link.aborted, msg.aborted_blocks)
        if msg.block_id is not None:
            link.blocks += 1
        self._tick(msg.t)
        link.history.append((msg.t, link.skr_bps, link.qber))
        self.version += 1

    def on_km_telemetry(self, msg: KmTelemetry) -> None:
        """A KM's key-store levels and sessions per link."""
        self._reported[msg.node] = msg.t
        for lid, bits in msg.buffer_bits.items():
            link = self._links.get(lid)
            if link is not None:
                link.store_bits[msg.node] = bits
        for lid, n in msg.sessions.items():
            link = self._links.get(lid)
            if link is not None:
                link.sessions = n
        self._tick(msg.t)
        self.version += 1

    def on_alarm(self, msg: LinkAlarm) -> None:
        """The Monitoring Element raised or cleared an alarm."""
        entry = {"link": msg.link_id, "kind": msg.kind, "severity": msg.severity,
                 "qber": msg.qber, "skr_bps": msg.skr_bps, "message": msg.message, "t": msg.t}
        if msg.kind == "cleared":
            self._alarms.pop(msg.link_id, None)
        else:
            self._alarms[msg.link_id] = entry
        self._alarm_log.append(entry)
        self._tick(msg.t)
        self.version += 1

    def on_event(self, e: Event) -> None:
        """One event of the stream."""
        self._tick(e.t)
        if e.type in TIMELINE_TYPES and e.node:
            self._timeline.append({"t": e.t, "node": e.node, "type": TIMELINE_TYPES[e.type],
                                   "session": (e.session or "")[:8]})
        sid = e.session
        if sid:
            s = self._sessions.get(sid)
            if s is None and e.type in (EventType.request_arrived, EventType.route_computed,
                                        EventType.session_operative, EventType.configured):
                s = self._sessions[sid] = _Session(sid, opened_t=e.t)
            if s is not None:
                self._fold_session(s, e)
        if e.type is EventType.link_state:
            link = self._links.get(str(e.data.get("link", "")))
            if link is not None and e.data.get("state"):
                link.state = str(e.data["state"])
        self.version += 1

    def _fold_session(self, s: _Session, e: Event) -> None:
        if e.type is EventType.request_arrived and not s.pair:
            s.pair = f"{e.data.get('sae', '?')} - {e.data.get('peer', '?')}"
        elif e.type in (EventType.route_computed, EventType.session_rerouted):
            path = e.data.get("path")
            if isinstance(path, list):
                s.path = [str(n) for n in path]
        elif e.type is EventType.session_operative:
            s.state = "operative"
        elif e.type is EventType.key_delivered and e.node:
            n = int(e.data.get("key_count") or len(e.data.get("key_ids") or []) or 1)
            s.delivered[e.node] = s.delivered.get(e.node, 0) + n
            s.recent.setdefault(e.node, deque(maxlen=1024)).append((e.t, n))
        elif e.type in (EventType.session_closed, EventType.session_deleted):
            s.state = "closed"

    def _tick(self, t: float) -> None:
        if t and not math.isnan(t):
            self._now = max(self._now, t)
            if self._t0 is None:
                self._t0 = t

    # -- output ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The JSON document the page renders."""
        t0 = self._t0 or 0.0
        now = self._now
        links = []
        for link in self._links.values():
            links.append({
                "id": link.link_id, "a": link.a, "b": link.b, "length_km": link.length_km,
                "protocol": link.protocol, "state": link.state, "skr_bps": link.skr_bps,
                "qber": link.qber, "store_bits": dict(link.store_bits),
                "sessions": link.sessions, "blocks": link.blocks, "aborted": link.aborted,
                "alarm": self._alarms.get(link.link_id, {}).get("kind"),
                "history": [[round(t - t0, 3), skr, q] for t, skr, q in link.history]})
        sessions = []
        for s in self._sessions.values():
            recent = max((sum(n for t, n in q if t >= now - self.rate_window_s)
                          for q in s.recent.values()), default=0)
            span = min(self.rate_window_s, max(now - s.opened_t, 1e-9))
            sessions.append({"id": s.session_id, "pair": s.pair, "path": s.path,
                             "state": s.state, "keys": max(s.delivered.values(), default=0),
                             "keys_per_s": round(recent / span, 3) if recent else 0.0})
        layout = self._layout()
        return {
            "version": self.version,
            "network": self.topology.name,
            "t": round(now - t0, 3),
            "nodes": [{"id": n.id, "name": n.name or n.id, "x": layout[n.id][0],
                       "y": layout[n.id][1],
                       "reported_s_ago": (round(max(0.0, now - self._reported[n.id]), 1)
                                          if n.id in self._reported else None)}
                      for n in self.topology.nodes],
            "links": links,
            "sessions": sessions,
            "alarms": list(self._alarms.values()),
            "alarm_log": list(self._alarm_log)[-50:],
            "timeline": [{**m, "t": round(m["t"] - t0, 4)} for m in self._timeline],
        }

    def _layout(self) -> dict[str, tuple[float, float]]:
        """The node positions, placed on the first snapshot (a dashboard's first request),
        not when the view is built: at 1,000 nodes the spring layout took about 5 s of CPU
        from ``keyplane run``'s start."""
        if self._positions is None:
            self._positions = self._place(self.topology)
        return self._positions

    @staticmethod
    def _place(topology: Topology) -> dict[str, tuple[float, float]]:
        """Node positions in [0, 1000]^2: Kamada-Kawai on fibre lengths (seeded, stable)."""
        g: nx.Graph[str] = nx.Graph()
        g.add_nodes_from(n.id for n in topology.nodes)
        for link in topology.links:
            g.add_edge(*link.endpoints, weight=max(link.length_km, 1.0))
        if len(g) == 1:
            return {next(iter(g)): (500.0, 500.0)}
        small = len(g) <= 200 and nx.is_connected(g)
        pos = (nx.kamada_kawai_layout(g, weight="weight") if small
               else nx.spring_layout(g, seed=1, iterations=100))
        xs = [float(p[0]) for p in pos.values()]
        ys = [float(p[1]) for p in pos.values()]
        span = max(max(xs) - min(xs), max(ys) - min(ys), 1e-9)
        return {n: (round(50 + 900 * (float(p[0]) - min(xs)) / span, 1),
                    round(50 + 900 * (float(p[1]) - min(ys)) / span, 1))
                for n, p in pos.items()}

"""Messages between control-plane elements (never seen by a KM).

Each element can run in its own process, so Admission Control, the Routing Element and
the SDN Controller talk over the bus too; the KM contract stays in :mod:`keyplane.messages`.

Flows:

1. Admission → Routing, request/reply on ``keyplane.control.routing``:
   :class:`RouteRequest` → :class:`RouteReply` (a found route is reserved at once);
   :class:`RouteRelease` (publish) frees a session epoch's reservation.
2. Routing → Admission, request/reply on ``keyplane.control.admission``:
   :class:`RerouteOrder` → :class:`RerouteAck` (a link failed or raised an alarm; the
   new route is already reserved under ``new_epoch``; Admission pushes it and releases
   whichever epoch it stops using).
3. Routing → SDN Controller, request/reply on ``keyplane.control.sdn.snapshot``:
   :class:`TopologySnapshotRequest` → :class:`TopologySnapshot`.
4. Admission / operators → SDN Controller, request/reply on
   ``keyplane.control.sdn.register``: :class:`RegisterLink` → :class:`RegisterLinkReply`
   (new PHYS links; the VIRT records sessions create), :class:`UnregisterLink`.
5. Monitoring → Routing, publish on :data:`MONITORING_METRICS`: :class:`LinkMetricsReport`,
   the latest figures of the links that changed, at most once per ``persist_interval_s``
   (the same batch the Monitoring Element writes to ``link_metrics``).
6. Restart recovery (docs/control.md, "Controller restart"). Admission Control owns the
   truth about live sessions. When it starts, it sends its :class:`LiveSessions` to the
   Routing Element as a request on ``keyplane.control.routing`` (→ :class:`LiveSessionsApplied`:
   the reservations now match) before it takes any new request; when the Routing Element or
   the SDN Controller starts, it asks Admission with :class:`LiveSessionsRequest` on
   ``keyplane.control.admission`` (→ :class:`LiveSessions`).
7. Shared fibre time (docs/quantum-networking.md, "Shared fibre"), publish on
   :data:`FIBRE`: :class:`FibreShare` from the entanglement service (the share of a fibre's
   time its schedule booked: Routing scales the link's key capacity by what is left) and
   from the Routing Element (the share the key streams' reservations need: the scheduler
   books entanglement only in the rest).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from keyplane.bus import topics
from keyplane.bus.codec import Message

__all__ = [
    "FIBRE",
    "MONITORING_METRICS",
    "SDN_REGISTER",
    "SDN_SNAPSHOT",
    "FibreShare",
    "LinkFigures",
    "LinkMetricsReport",
    "LiveSession",
    "LiveSessions",
    "LiveSessionsApplied",
    "LiveSessionsRequest",
    "RegisterLink",
    "RegisterLinkReply",
    "RerouteAck",
    "RerouteOrder",
    "RouteRelease",
    "RouteReply",
    "RouteRequest",
    "SnapshotLink",
    "TopologySnapshot",
    "TopologySnapshotRequest",
    "UnregisterLink",
    "virtual_link_id",
]

SDN_SNAPSHOT = f"{topics.SDN}.snapshot"
SDN_REGISTER = f"{topics.SDN}.register"
MONITORING_METRICS = f"{topics.MONITORING}.metrics"
FIBRE = "keyplane.control.fibre"


def virtual_link_id(session_id: str) -> str:
    """The SDN Controller's link id of a session's VIRT record (see keyplane.control.sdn)."""
    return f"virt-{session_id}"


class RouteRequest(Message):
    """Admission asks for a path from ``source_node`` to ``destination_node``."""

    KIND = "control.route_request"

    session_id: str
    epoch: Annotated[int, Field(ge=0)] = 0
    source_node: str
    destination_node: str
    min_bps: Annotated[float, Field(ge=0)] = 0.0
    hybrid_policy: str = "qkd-only"
    """The session's hybrid policy: with one that allows PQC alone (``either``) a link
    without QKD key may still be on the path (its hops use ML-KEM), at a weight penalty."""
    max_trusted_relays: Annotated[int, Field(ge=0)] | None = None
    """At most this many intermediate key managers on the path (None: no cap)."""


class RouteReply(Message):
    """A reserved path (``ok``) or why there is none."""

    KIND = "control.route_reply"

    session_id: str
    epoch: int
    ok: bool
    path: list[str] = Field(default_factory=list)
    links: list[str] = Field(default_factory=list)
    reason: str = ""


class RouteRelease(Message):
    """Free what ``(session_id, epoch)`` reserved (``epoch=None``: every epoch)."""

    KIND = "control.route_release"

    session_id: str
    epoch: int | None = None


class RerouteOrder(Message):
    """Routing moved a live session to ``path`` (reserved under ``new_epoch``)."""

    KIND = "control.reroute_order"

    session_id: str
    old_epoch: int
    new_epoch: int
    path: list[str]
    links: list[str] = Field(default_factory=list)
    reason: str = ""


class RerouteAck(Message):
    """Admission took the order (it will push the new path) or refused it."""

    KIND = "control.reroute_ack"

    session_id: str
    accepted: bool
    reason: str = ""


class TopologySnapshotRequest(Message):
    """Ask the SDN Controller for its whole topology."""

    KIND = "sdn.snapshot_request"


class SnapshotLink(Message):
    """One link in a :class:`TopologySnapshot` (ETSI 015 ``qkd_link`` essentials)."""

    KIND = "sdn.snapshot_link"

    link_id: str
    qkdl_id: str
    endpoints: tuple[str, str]
    type: Literal["PHYS", "VIRT"] = "PHYS"
    status: Literal["ACTIVE", "PASSIVE", "PENDING", "OFF"] = "ACTIVE"
    enable: bool = True
    path: list[str] = Field(default_factory=list)
    bandwidth_bps: float = 0.0


class TopologySnapshot(Message):
    """Nodes and links as the SDN Controller holds them."""

    KIND = "sdn.snapshot"

    nodes: list[str]
    links: list[SnapshotLink]


class RegisterLink(Message):
    """Register a new PHYS link, or a session's VIRT record (its ``path``)."""

    KIND = "sdn.register_link"

    link_id: str
    type: Literal["PHYS", "VIRT"] = "PHYS"
    endpoints: tuple[str, str]
    path: list[str] = Field(default_factory=list)
    bandwidth_bps: Annotated[float, Field(ge=0)] = 0.0
    session_id: str | None = None
    source_sae: str = ""
    """VIRT: the session's initiating SAE (ETSI 015 ``server_app_id`` of its ``qkd_app``)."""
    destination_sae: str = ""
    """VIRT: the peer SAE (``client_app_id``)."""
    priority: Annotated[int, Field(ge=0)] = 0
    """VIRT: the session's priority (``app_priority``)."""
    max_bps: Annotated[float, Field(ge=0)] = 0.0
    """VIRT: the session's requested rate (``app_qos/max_bandwidth``; 0: not set)."""


class UnregisterLink(Message):
    """Remove a link (a VIRT link when its session ends)."""

    KIND = "sdn.unregister_link"

    link_id: str


class RegisterLinkReply(Message):
    """The SDN Controller's answer to a (un)registration."""

    KIND = "sdn.register_reply"

    link_id: str
    ok: bool
    qkdl_id: str = ""
    reason: str = ""


class LiveSession(Message):
    """One session Admission Control holds capacity for, with the reservation it needs.

    ``epoch`` is the Routing Element's reservation key (Admission's ``route_epoch``). The
    SAE ids, priority and rates describe the session's VIRT link and ``qkd_app`` when
    ``path`` has more than two nodes.
    """

    KIND = "control.live_session"

    session_id: str
    epoch: Annotated[int, Field(ge=0)] = 0
    path: list[str]
    min_bps: Annotated[float, Field(ge=0)] = 0.0
    hybrid_policy: str = "qkd-only"
    source_sae: str = ""
    destination_sae: str = ""
    priority: Annotated[int, Field(ge=0)] = 0
    max_bps: Annotated[float, Field(ge=0)] = 0.0
    max_trusted_relays: Annotated[int, Field(ge=0)] | None = None
    """The session's cap on intermediate key managers (None: none), kept on reroutes."""


class LiveSessionsRequest(Message):
    """A (re)started Routing Element or SDN Controller asks Admission for its sessions."""

    KIND = "control.live_sessions_request"


class LiveSessions(Message):
    """Every reservation Admission Control needs, and nothing else: a reservation of any
    other ``(session, epoch)`` is a leftover of a previous run. A session moving to a new
    path appears once per epoch it holds."""

    KIND = "control.live_sessions"

    sessions: list[LiveSession] = Field(default_factory=list)


class LiveSessionsApplied(Message):
    """The Routing Element's answer to :class:`LiveSessions`.

    ``restored``: sessions whose reservation was missing and is held again; ``released``:
    reservations of sessions Admission does not know, freed; ``overbooked``: links whose
    restored reservations exceed their capacity; ``missing_links``: per session, path hops
    with no link in the graph (nothing reserved there).
    """

    KIND = "control.live_sessions_applied"

    restored: list[str] = Field(default_factory=list)
    released: list[str] = Field(default_factory=list)
    overbooked: list[str] = Field(default_factory=list)
    missing_links: dict[str, list[str]] = Field(default_factory=dict)


class LinkFigures(Message):
    """One link's latest monitored figures (the ``link_metrics`` row; ``None``: not measured)."""

    KIND = "control.link_figures"

    link_id: str
    t: float = 0.0
    state: str = "up"
    skr_bps: float | None = None
    qber: float | None = None
    sessions: Annotated[int, Field(ge=0)] = 0
    buffer_bits: Annotated[int, Field(ge=0)] = 0


class LinkMetricsReport(Message):
    """The Monitoring Element's latest figures of the links that changed since its last
    report; the Routing Element re-weighs only those links."""

    KIND = "control.link_metrics_report"

    links: list[LinkFigures] = Field(default_factory=list)


class FibreShare(Message):
    """The share of a shared fibre's time one service holds (flow 7).

    ``by="entanglement"``: the entanglement schedule's booked share of the current period;
    ``by="keys"``: what the key streams' reservations need of the link's full-time key rate.
    """

    KIND = "control.fibre_share"

    link_id: str
    by: Literal["entanglement", "keys"]
    share: Annotated[float, Field(ge=0.0, le=1.0)]

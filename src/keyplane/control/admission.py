"""Admission Control: the per-session cycle of the paper's Fig. 2b.

``requested → accepted → active → terminated``

* **requested** — an endpoint KM's open request passed the SLA check and waits for its
  peer (ETSI 004). Nothing is reserved. A peer that never comes is refused after
  ``peer_wait_timeout_s`` (clock).
* **accepted** — both peers asked (ETSI 004), or the master asked (ETSI 014: the slave
  never opens, so the session is configured at once). A route is requested from the
  Routing Element and the configuration is pushed to every KM on the path.
* **active** — every KM acknowledged. The session timer (SLA idle timeout + grace, on
  the clock) is reset by each :class:`~keyplane.messages.KeepAlive`.
* **terminated** — refused, rolled back, closed by an endpoint or expired. Every KM on
  the path gets a :class:`~keyplane.messages.SessionDelete`; once they confirm (or the
  confirmation bound passes) the reserved link capacity is released.

Map: :class:`AdmissionCore` is the pure logic — each method takes one event and ``now``
and returns the :data:`Effect` list to carry out (faucet's ``valve.py`` style);
:class:`AdmissionControl` is the thin bus shell that carries the effects out and feeds
their results (routes, acknowledgements, confirmations) back to the core.

Decisions (documented for the KM side):

* **Relay source.** The path runs from the KM of the *initiator* — the first open request
  to arrive (ETSI 004), or the master SAE's KM (ETSI 014) — to the KM of its peer SAE.
  ``SessionConfig.source_sae`` is the initiator's SAE at every hop; the source KM makes the
  end-to-end keys.
* **Pairing.** A second open with the same ``session_id`` and the mirrored SAE pair joins
  the waiting session; one with another id but the mirrored SAE pair joins it too, and its
  KM learns the stream's id from ``SessionConfig.opened_as`` (its own id) and ``session_id``.
* **QoS against the SLA** (:func:`check_qos`): per session, ``max_bps`` (0: the SLA's)
  and ``min_bps`` at most the SLA's ``max_bps``; ``priority`` at most the SLA's;
  ``key_chunk_size``, ``ttl_s`` within the settings' bounds; ``jitter`` at most the rate.
  Live sessions per user at most ``max_sessions``. The pushed configuration takes the
  rate ``min`` of both peers', reserves ``max(min_bps, SLA min_bps)`` of both on every link,
  priority and idle timeout the lower of both SLAs.
* **Hybrid policy** (docs/hybrid.md): a session runs under the policy both users' SLAs
  accept (:meth:`~keyplane.config.HybridPolicy.meet`; ``qkd-only`` with ``qkd-and-pqc`` has
  none: refused). It goes to the Routing Element with the route request (a link without
  QKD key serves only a policy that allows PQC alone) and to every KM in its configuration.
* **Persistence** (docs/control.md, "Controller restart"): an admitted session is written
  to the store (:class:`StoreSession`) when it becomes ``active``, rewritten when it moves
  to a new path or ends (``terminated`` while its deletions are out) and removed
  (:class:`ForgetStored`) once they are confirmed. A starting Admission Control reloads
  them (:meth:`AdmissionCore.restore`): session timers re-armed from the start, keep-alives
  and closes accepted, the Routing Element told which capacity to hold, VIRT links
  announced again. Sessions still waiting for their peer (``requested``) or being set up
  (``accepted``) are not stored: their KMs' open requests are refused or time out and the
  applications open again.
* **Key_stream_ID in use** is answered synchronously in the :class:`~keyplane.messages.OpenAck`
  (``accepted_for_review=False``), never by a deletion signal that would hit the live
  session of that id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from keyplane.bus import Bus, Message, Subscription, topics
from keyplane.clock import Clock
from keyplane.config import SlaProfile, User
from keyplane.control.settings import AdmissionSettings
from keyplane.control.wire import (
    SDN_REGISTER,
    LiveSession,
    LiveSessions,
    LiveSessionsApplied,
    LiveSessionsRequest,
    RegisterLink,
    RerouteAck,
    RerouteOrder,
    RouteRelease,
    RouteReply,
    RouteRequest,
    UnregisterLink,
    virtual_link_id,
)
from keyplane.errors import BusError, StoreError
from keyplane.events import EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import (
    ConfigAck,
    DeleteConfirm,
    HopRole,
    KeepAlive,
    OpenAck,
    Qos,
    SessionClose,
    SessionConfig,
    SessionDelete,
    SessionOpenRequest,
)
from keyplane.store import Database
from keyplane.store.admitted import (
    AdmittedSession,
    delete_admitted_session,
    load_admitted_sessions,
    save_admitted_session,
    touch_admitted_session,
)
from keyplane.store.topology import get_application, get_user

__all__ = [
    "AdmissionControl",
    "AdmissionCore",
    "AdmissionSession",
    "AdmissionState",
    "AnnounceVirtualLink",
    "DeletePurpose",
    "Effect",
    "Endpoint",
    "ForgetStored",
    "Notify",
    "PushConfigs",
    "RecordKeepAlive",
    "ReleaseRoute",
    "RequestRoute",
    "SendDeletes",
    "StoreSession",
    "check_qos",
]

logger = logging.getLogger(__name__)

ELEMENT = "admission"


class AdmissionState(StrEnum):
    """Admission Control's session states (paper Fig. 2b, verbatim)."""

    requested = "requested"
    accepted = "accepted"
    active = "active"
    terminated = "terminated"


class DeletePurpose(StrEnum):
    """Why a batch of :class:`~keyplane.messages.SessionDelete` is sent."""

    refusal = "refusal"  # the paper's deletion signal before any configuration
    rollback = "rollback"  # a KM did not acknowledge: undo the others
    close = "close"  # an endpoint closed, or the session timer expired
    reroute_cleanup = "reroute_cleanup"  # KMs that left the path drop the old epoch
    reroute_rollback = "reroute_rollback"  # the new path failed: drop the new epoch


# ---------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class Notify:
    """Emit an event."""

    type: EventType
    session: str | None = None
    node: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestRoute:
    """Ask the Routing Element for a path (reserved under ``(session_id, epoch)``)."""

    session_id: str
    epoch: int
    source_node: str
    destination_node: str
    min_bps: float
    hybrid_policy: str = "qkd-only"


@dataclass(frozen=True)
class ReleaseRoute:
    """Tell the Routing Element to free ``(session_id, epoch)``."""

    session_id: str
    epoch: int | None


@dataclass(frozen=True)
class PushConfigs:
    """Send each KM its configuration and collect every acknowledgement."""

    session_id: str
    epoch: int
    configs: tuple[SessionConfig, ...]


@dataclass(frozen=True)
class SendDeletes:
    """Send deletions and collect confirmations; the result comes back with ``purpose``."""

    session_id: str
    purpose: DeletePurpose
    epoch: int | None
    deletes: tuple[SessionDelete, ...]


@dataclass(frozen=True)
class AnnounceVirtualLink:
    """Register (``active``) or remove a session's key association at the SDN Controller:
    a VIRT link over a multi-hop path; for adjacent endpoints the PHYS link carries the key,
    and only the session's ``qkd_app`` is put on the two nodes.

    The SAE ids, priority and maximum rate describe the session's ETSI 015 ``qkd_app``
    (``server_app_id``, ``client_app_id``, ``app_priority``, ``app_qos``).
    """

    session_id: str
    path: tuple[str, ...]
    bandwidth_bps: float
    active: bool
    source_sae: str = ""
    destination_sae: str = ""
    priority: int = 0
    max_bps: float = 0.0


@dataclass(frozen=True)
class StoreSession:
    """Write the session's record to the store (insert or update)."""

    record: AdmittedSession


@dataclass(frozen=True)
class ForgetStored:
    """Remove the session's record from the store."""

    session_id: str


@dataclass(frozen=True)
class RecordKeepAlive:
    """The session was kept alive: the shell stamps its record (coalesced)."""

    session_id: str


Effect = (Notify | RequestRoute | ReleaseRoute | PushConfigs | SendDeletes
          | AnnounceVirtualLink | StoreSession | ForgetStored | RecordKeepAlive)


# ---------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Endpoint:
    """One side's open request, with the SLA of its user."""

    node: str
    user_id: str
    sae_id: str
    peer_sae: str
    qos: Qos
    opened_as: str
    sla: SlaProfile

    def mirrors(self, other: Endpoint) -> bool:
        """Whether ``other`` asks for the same SAE pair from the other end."""
        return self.sae_id == other.peer_sae and self.peer_sae == other.sae_id

    def to_json(self) -> dict[str, Any]:
        """The stored form (:attr:`AdmittedSession.initiator` / ``responder``)."""
        return {"node": self.node, "user_id": self.user_id, "sae_id": self.sae_id,
                "peer_sae": self.peer_sae, "opened_as": self.opened_as,
                "qos": self.qos.model_dump(mode="json"),
                "sla": self.sla.model_dump(mode="json")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Endpoint:
        """The endpoint a stored form describes.

        Raises:
            KeyError, ValueError: the stored form is incomplete or invalid.
        """
        return cls(node=data["node"], user_id=data["user_id"], sae_id=data["sae_id"],
                   peer_sae=data["peer_sae"], opened_as=data["opened_as"],
                   qos=Qos.model_validate(data["qos"]),
                   sla=SlaProfile.model_validate(data["sla"]))


@dataclass
class AdmissionSession:
    """Admission Control's record of one session."""

    session_id: str
    interface: str
    initiator: Endpoint
    destination_node: str
    state: AdmissionState
    created_t: float
    responder: Endpoint | None = None
    epoch: int = 0  # KM forwarding-entry epoch
    route_epoch: int = 0  # the Routing Element's reservation key
    path: tuple[str, ...] = ()
    pending_epoch: int | None = None  # KM epoch being pushed (reroute or restore)
    pending_route_epoch: int | None = None
    pending_kind: str | None = None  # "reroute" | "restore"
    pending_path: tuple[str, ...] = ()
    peer_deadline: float | None = None
    timer_deadline: float | None = None
    closing: str | None = None  # close reason received while being set up
    rate_bps: float = 0.0
    min_bps: float = 0.0
    priority: int = 0
    idle_timeout_s: float = 60.0
    key_chunk_size: int = 32
    bucket_size_bits: int = 256
    hybrid_policy: str = "qkd-only"
    inflight: set[str] = field(default_factory=set)

    @property
    def users(self) -> set[str]:
        """Users taking part (one per endpoint)."""
        out = {self.initiator.user_id}
        if self.responder is not None:
            out.add(self.responder.user_id)
        return out

    @property
    def endpoint_nodes(self) -> tuple[str, str]:
        """The initiator's and the destination's KM."""
        return (self.initiator.node, self.destination_node)

    def record(self) -> AdmittedSession:
        """The stored form of an ``active`` or ``terminated`` session."""
        return AdmittedSession(
            session_id=self.session_id, interface=self.interface,
            source_sae=self.initiator.sae_id, destination_sae=self.initiator.peer_sae,
            source_node=self.initiator.node, destination_node=self.destination_node,
            initiator=self.initiator.to_json(),
            responder=self.responder.to_json() if self.responder is not None else None,
            path=self.path, epoch=self.epoch, route_epoch=self.route_epoch,
            min_bps=self.min_bps, rate_bps=self.rate_bps, priority=self.priority,
            idle_timeout_s=self.idle_timeout_s, key_chunk_size=self.key_chunk_size,
            bucket_size_bits=self.bucket_size_bits, hybrid_policy=self.hybrid_policy,
            state="terminated" if self.state is AdmissionState.terminated else "active")


def check_qos(qos: Qos, sla: SlaProfile, settings: AdmissionSettings) -> str | None:
    """Why ``qos`` exceeds ``sla`` or the settings' bounds, or None when it fits."""
    rate = qos.max_bps or sla.max_bps
    if qos.max_bps > sla.max_bps:
        return f"max_bps {qos.max_bps} above the SLA's {sla.max_bps}"
    if qos.min_bps > sla.max_bps:
        return f"min_bps {qos.min_bps} above the SLA's max_bps {sla.max_bps}"
    if qos.min_bps > rate:
        return f"min_bps {qos.min_bps} above max_bps {rate}"
    if qos.priority > sla.priority:
        return f"priority {qos.priority} above the SLA's {sla.priority}"
    if qos.key_chunk_size > settings.max_key_chunk_size:
        return (f"key_chunk_size {qos.key_chunk_size} above the limit "
                f"{settings.max_key_chunk_size}")
    if qos.ttl_s > settings.max_key_ttl_s:
        return f"ttl_s {qos.ttl_s} above the limit {settings.max_key_ttl_s}"
    if qos.jitter > rate:
        return f"jitter {qos.jitter} larger than the rate {rate}"
    return None


def _reserve_bps(ep: Endpoint) -> float:
    rate = ep.qos.max_bps or ep.sla.max_bps
    return float(min(max(ep.qos.min_bps, ep.sla.min_bps), rate))


class AdmissionCore:
    """The pure Admission Control logic: ``(event, now) → effects``.

    Args:
        settings: timers and QoS bounds.
    """

    def __init__(self, settings: AdmissionSettings | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self.sessions: dict[str, AdmissionSession] = {}
        self._aliases: dict[str, str] = {}

    # ------------------------------------------------------------------ queries

    def session(self, session_id: str) -> AdmissionSession | None:
        """A session by its id or by the id a paired peer opened it under."""
        return self.sessions.get(self._aliases.get(session_id, session_id))

    def live_sessions_of(self, user_id: str) -> int:
        """Sessions (not terminated) the user takes part in."""
        return sum(1 for s in self.sessions.values()
                   if s.state is not AdmissionState.terminated and user_id in s.users)

    def live_sessions(self) -> list[LiveSession]:
        """Every ``(session, route epoch)`` whose reservation is still needed: a path in
        use, a path being configured, or a path whose deletions are not yet confirmed."""
        out: list[LiveSession] = []

        def add(sess: AdmissionSession, epoch: int, path: tuple[str, ...]) -> None:
            out.append(LiveSession(session_id=sess.session_id, epoch=epoch, path=list(path),
                                   min_bps=sess.min_bps, hybrid_policy=sess.hybrid_policy,
                                   source_sae=sess.initiator.sae_id,
                                   destination_sae=sess.initiator.peer_sae,
                                   priority=sess.priority, max_bps=sess.rate_bps))

        for sess in self.sessions.values():
            if sess.state is AdmissionState.accepted and sess.pending_path:
                add(sess, sess.epoch, sess.pending_path)
            elif sess.state in (AdmissionState.active, AdmissionState.terminated) and sess.path:
                add(sess, sess.route_epoch, sess.path)
                if (sess.state is AdmissionState.active and sess.pending_kind == "reroute"
                        and sess.pending_route_epoch is not None):
                    add(sess, sess.pending_route_epoch, sess.pending_path)
        return out

    def next_deadline(self) -> float | None:
        """The earliest peer-wait or session-timer deadline."""
        deadlines = [d for s in self.sessions.values()
                     for d in (s.peer_deadline, s.timer_deadline) if d is not None]
        return min(deadlines, default=None)

    # ------------------------------------------------------------------ open

    def _refusal(self, node: str, session_id: str, reason: str, **data: Any) -> list[Effect]:
        delete = SessionDelete(session_id=session_id, node=node, reason=reason, refused=True)
        return [Notify(EventType.admission_refused, session_id, node, {"reason": reason, **data}),
                SendDeletes(session_id, DeletePurpose.refusal, None, (delete,))]

    def open(self, req: SessionOpenRequest, user: User | None, destination_node: str | None,
             now: float, *, source_node: str | None = None) -> tuple[OpenAck, list[Effect]]:
        """An endpoint KM's open request (paper Fig. 2a 'user accepted' → Fig. 2b).

        Args:
            req: the request.
            user: the user ``req.user_id`` from the user database (None: unknown).
            destination_node: the KM of ``req.destination_sae`` (None: unknown SAE).
            source_node: the KM of ``req.source_sae`` if known; it must be ``req.node``.

        Returns:
            The reply to the KM (``accepted_for_review=False`` only when the id is in use)
            and the effects to carry out.
        """
        sid = req.session_id
        registered = OpenAck(session_id=sid)
        effects: list[Effect] = [Notify(EventType.admission_requested, sid, req.node,
                                        {"source_sae": req.source_sae,
                                         "destination_sae": req.destination_sae,
                                         "interface": req.interface})]
        if user is None or user.id != req.user_id:
            return registered, effects + self._refusal(req.node, sid, "unknown user")
        if destination_node is None:
            return registered, effects + self._refusal(req.node, sid,
                                                       "unknown destination SAE")
        if source_node is not None and source_node != req.node:
            return registered, effects + self._refusal(req.node, sid,
                                                       f"{req.source_sae} is not served by "
                                                       f"{req.node}")
        if req.source_sae == req.destination_sae:
            return registered, effects + self._refusal(req.node, sid, "SAE paired with itself")
        if not user.sla.allows_peer(req.destination_sae):
            return registered, effects + self._refusal(req.node, sid,
                                                       "peer not allowed by the SLA")
        reason = check_qos(req.qos, user.sla, self.settings)
        if reason is not None:
            return registered, effects + self._refusal(req.node, sid, f"QoS above SLA: {reason}")
        ep = Endpoint(node=req.node, user_id=user.id, sae_id=req.source_sae,
                      peer_sae=req.destination_sae, qos=req.qos, opened_as=sid, sla=user.sla)

        existing = self.session(sid)
        if existing is not None:
            if (existing.state is AdmissionState.requested and existing.interface == "etsi004"
                    and req.interface == "etsi004" and existing.initiator.mirrors(ep)):
                return registered, effects + self._pair(existing, ep, now)
            if existing.state is not AdmissionState.terminated:
                reason = "Key_stream_ID already in use"
                return (OpenAck(session_id=sid, accepted_for_review=False, reason=reason),
                        [Notify(EventType.admission_refused, sid, req.node, {"reason": reason})])
            self._forget(existing)
        if req.interface == "etsi004":
            for waiting in self.sessions.values():
                if (waiting.state is AdmissionState.requested and waiting.interface == "etsi004"
                        and waiting.initiator.mirrors(ep)):
                    self._aliases[sid] = waiting.session_id
                    return registered, effects + self._pair(waiting, ep, now)
        if self.live_sessions_of(user.id) >= user.sla.max_sessions:
            return registered, effects + self._refusal(
                req.node, sid, f"max_sessions {user.sla.max_sessions} reached")
        if destination_node == req.node:
            return registered, effects + self._refusal(req.node, sid,
                                                       "both SAEs on the same KM")
        sess = AdmissionSession(session_id=sid, interface=req.interface, initiator=ep,
                                destination_node=destination_node,
                                state=AdmissionState.requested, created_t=now)
        self.sessions[sid] = sess
        if req.interface == "etsi014":
            # ETSI 014: the slave SAE never opens; its KM is configured directly.
            return registered, effects + self._accept(sess, now)
        sess.peer_deadline = now + self.settings.peer_wait_timeout_s
        effects.append(Notify(EventType.peer_waiting, sid, req.node,
                              {"peer_sae": req.destination_sae,
                               "timeout_s": self.settings.peer_wait_timeout_s}))
        return registered, effects

    def _pair(self, sess: AdmissionSession, ep: Endpoint, now: float) -> list[Effect]:
        init = sess.initiator
        sid = ep.opened_as
        if ep.node != sess.destination_node:
            self._aliases.pop(sid, None)
            return self._refusal(ep.node, sid, f"{ep.sae_id} is not served by this KM")
        if ep.user_id != init.user_id and self.live_sessions_of(ep.user_id) >= ep.sla.max_sessions:
            self._aliases.pop(sid, None)
            return self._refusal(ep.node, sid, f"max_sessions {ep.sla.max_sessions} reached")
        if ep.qos.key_chunk_size != init.qos.key_chunk_size:
            self._aliases.pop(sid, None)
            return self._refusal(ep.node, sid, "key_chunk_size differs from the peer's")
        rate = min(ep.qos.max_bps or ep.sla.max_bps, init.qos.max_bps or init.sla.max_bps)
        if max(_reserve_bps(ep), _reserve_bps(init)) > rate:
            self._aliases.pop(sid, None)
            return self._refusal(ep.node, sid, "peers' QoS incompatible: min_bps above the "
                                 "other side's max_bps")
        sess.responder = ep
        sess.peer_deadline = None
        return self._accept(sess, now)

    def _accept(self, sess: AdmissionSession, now: float) -> list[Effect]:
        init, resp = sess.initiator, sess.responder
        eps = [init] if resp is None else [init, resp]
        policy = init.sla.hybrid_policy if resp is None else \
            init.sla.hybrid_policy.meet(resp.sla.hybrid_policy)
        if policy is None:
            assert resp is not None
            return self._refuse_endpoints(
                sess, f"hybrid policies {init.sla.hybrid_policy.value} and "
                      f"{resp.sla.hybrid_policy.value} of the two users have no key source "
                      f"in common")
        sess.hybrid_policy = policy.value
        sess.rate_bps = float(min(e.qos.max_bps or e.sla.max_bps for e in eps))
        sess.min_bps = max(_reserve_bps(e) for e in eps)
        sess.priority = min(e.sla.priority for e in eps)
        sess.idle_timeout_s = min(e.sla.idle_timeout_s for e in eps)
        sess.key_chunk_size = init.qos.key_chunk_size
        sess.bucket_size_bits = max(sess.key_chunk_size * 8,
                           math.ceil(sess.rate_bps * self.settings.bucket_burst_s))
        sess.state = AdmissionState.accepted
        sess.inflight.add("route")
        return [Notify(EventType.admission_requested, sess.session_id, sess.destination_node,
                       {"state": "accepted", "min_bps": sess.min_bps, "rate_bps": sess.rate_bps,
                        "hybrid_policy": sess.hybrid_policy}),
                RequestRoute(sess.session_id, sess.epoch, init.node, sess.destination_node,
                             sess.min_bps, sess.hybrid_policy)]

    # ------------------------------------------------------------------ route, configs

    def route_found(self, session_id: str, epoch: int, path: list[str] | tuple[str, ...],
                    now: float) -> list[Effect]:
        """The Routing Element reserved ``path`` under ``(session_id, epoch)``."""
        sess = self.sessions.get(session_id)
        if sess is None:
            return [ReleaseRoute(session_id, epoch)]
        sess.inflight.discard("route")
        if sess.state is not AdmissionState.accepted or epoch != sess.epoch or sess.closing:
            out: list[Effect] = [ReleaseRoute(session_id, epoch)]
            if sess.closing:
                out += self._terminate(sess, Notify(EventType.session_closed, session_id, None,
                                                    {"reason": sess.closing}))
            return out
        path = tuple(path)
        if len(path) < 2 or path[0] != sess.initiator.node or path[-1] != sess.destination_node:
            return self.route_failed(session_id, epoch, f"bad route {list(path)}", now)
        sess.pending_path = path
        sess.inflight.add(f"config:{epoch}")
        return [Notify(EventType.route_computed, session_id, path[0],
                       {"path": list(path), "epoch": epoch}),
                PushConfigs(session_id, epoch, self._configs(sess, path, epoch))]

    def route_failed(self, session_id: str, epoch: int, reason: str,
                     now: float) -> list[Effect]:
        """No route (or no answer): refuse both endpoints."""
        sess = self.sessions.get(session_id)
        out: list[Effect] = [ReleaseRoute(session_id, epoch)]
        if sess is None or sess.state is not AdmissionState.accepted or epoch != sess.epoch:
            return out
        sess.inflight.discard("route")
        if sess.closing:
            return out + self._terminate(sess, Notify(EventType.session_closed, session_id,
                                                      None, {"reason": sess.closing}))
        out += self._refuse_endpoints(sess, f"no route: {reason}")
        return out

    def _refuse_endpoints(self, sess: AdmissionSession, reason: str,
                          configured: tuple[str, ...] = (),
                          acked: tuple[str, ...] = ()) -> list[Effect]:
        """Refuse both endpoints and roll back every KM a configuration went to.

        Rollback covers ``configured`` (the whole path), not only the KMs that acknowledged:
        a KM whose acknowledgement was late may have applied the configuration. A responder
        endpoint that did not acknowledge may know only the id its own open request carried,
        so it is addressed by that id.
        """
        deletes = []
        for node in dict.fromkeys((*sess.endpoint_nodes, *configured)):
            sid = sess.session_id
            if (sess.responder is not None and node == sess.responder.node
                    and node not in acked):
                sid = sess.responder.opened_as
            deletes.append(SessionDelete(session_id=sid, node=node, reason=reason,
                                         refused=True))
        purpose = DeletePurpose.rollback if configured else DeletePurpose.refusal
        return self._terminate(sess, Notify(EventType.admission_refused, sess.session_id, None,
                                            {"reason": reason}),
                               SendDeletes(sess.session_id, purpose, None, tuple(deletes)))

    def _configs(self, sess: AdmissionSession, path: tuple[str, ...],
                 epoch: int) -> tuple[SessionConfig, ...]:
        init, last = sess.initiator, len(path) - 1
        out = []
        for i, node in enumerate(path):
            role = (HopRole.source if i == 0 else
                    HopRole.destination if i == last else HopRole.intermediate)
            opened_as = None
            if (i == last and sess.responder is not None
                    and sess.responder.opened_as != sess.session_id):
                opened_as = sess.responder.opened_as
            out.append(SessionConfig(
                session_id=sess.session_id, node=node, epoch=epoch, role=role,
                prev_km=path[i - 1] if i > 0 else None,
                next_km=path[i + 1] if i < last else None,
                source_sae=init.sae_id, destination_sae=init.peer_sae,
                local_sae=init.sae_id if i == 0 else init.peer_sae if i == last else None,
                priority=sess.priority, bucket_size_bits=sess.bucket_size_bits,
                token_rate_bps=sess.rate_bps, idle_timeout_s=sess.idle_timeout_s,
                key_chunk_size=sess.key_chunk_size,
                hybrid_policy=sess.hybrid_policy, opened_as=opened_as))
        return tuple(out)

    def configs_applied(self, session_id: str, epoch: int, acked: tuple[str, ...],
                        failed: dict[str, str], now: float) -> list[Effect]:
        """Every KM of ``epoch``'s path answered (``acked``) or did not (``failed``)."""
        sess = self.sessions.get(session_id)
        if sess is None:
            return []
        sess.inflight.discard(f"config:{epoch}")
        if sess.state is AdmissionState.accepted and epoch == sess.epoch:
            if failed or sess.closing:
                if sess.closing:
                    out: list[Effect] = [ReleaseRoute(session_id, epoch)]
                    deletes = tuple(SessionDelete(session_id=session_id, node=n,
                                                  reason=sess.closing)
                                    for n in sess.pending_path)
                    return out + self._terminate(
                        sess, Notify(EventType.session_closed, session_id, None,
                                     {"reason": sess.closing}),
                        SendDeletes(session_id, DeletePurpose.rollback, None, deletes))
                why = "; ".join(f"{n}: {r}" for n, r in sorted(failed.items()))
                return [ReleaseRoute(session_id, epoch),
                        Notify(EventType.config_refused, session_id, None,
                               {"failed": sorted(failed), "reason": why}),
                        *self._refuse_endpoints(sess, f"configuration failed: {why}",
                                                configured=sess.pending_path,
                                                acked=tuple(acked))]
            sess.state = AdmissionState.active
            sess.path = sess.pending_path
            sess.pending_path = ()
            sess.timer_deadline = now + sess.idle_timeout_s + self.settings.session_timer_grace_s
            out = [Notify(EventType.configured, session_id, n, {"epoch": epoch})
                   for n in sess.path]
            out.append(Notify(EventType.session_operative, session_id, sess.initiator.node,
                              {"path": list(sess.path), "epoch": epoch,
                               "min_bps": sess.min_bps, "rate_bps": sess.rate_bps,
                               "priority": sess.priority}))
            out.append(_virtual_link(sess, sess.path, True))
            out.append(StoreSession(sess.record()))
            return out
        if sess.state is AdmissionState.active and epoch == sess.pending_epoch:
            if sess.pending_kind == "restore":
                return self._restored(sess, epoch, failed)
            return self._rerouted(sess, epoch, failed)
        # the session ended (or moved on) while this epoch was being configured: undo it
        deletes = tuple(SessionDelete(session_id=session_id, node=n, epoch=epoch,
                                      reason="session ended during configuration")
                        for n in dict.fromkeys((*sess.pending_path, *acked)))
        out = [ReleaseRoute(session_id, None if sess.state is AdmissionState.terminated
                            else sess.pending_route_epoch)]
        if deletes:
            out.append(SendDeletes(session_id, DeletePurpose.reroute_rollback, None, deletes))
        self._maybe_forget(sess)
        return out

    def _rerouted(self, sess: AdmissionSession, epoch: int,
                  failed: dict[str, str]) -> list[Effect]:
        """The new path's KMs answered. On success the KMs that left the path drop the old
        epoch; on failure the old path is restored under a yet higher epoch (the endpoints
        that took the new epoch would ignore a lower one)."""
        sid = sess.session_id
        new_path, new_route_epoch = sess.pending_path, sess.pending_route_epoch
        sess.pending_epoch = sess.pending_route_epoch = sess.pending_kind = None
        sess.pending_path = ()
        if failed:
            why = "; ".join(f"{n}: {r}" for n, r in sorted(failed.items()))
            out: list[Effect] = [ReleaseRoute(sid, new_route_epoch),
                                 Notify(EventType.session_rerouted, sid, None,
                                        {"ok": False, "reason": f"reroute failed: {why}",
                                         "path": list(sess.path)})]
            # every KM the new epoch went to and that is not on the old path (a late
            # acknowledgement does not mean the configuration was not applied)
            strays = tuple(SessionDelete(session_id=sid, node=n, epoch=epoch,
                                         reason=f"reroute failed: {why}")
                           for n in new_path if n not in sess.path)
            if strays:
                out.append(SendDeletes(sid, DeletePurpose.reroute_rollback, None, strays))
            restore = epoch + 1
            sess.pending_epoch, sess.pending_kind = restore, "restore"
            sess.pending_path = sess.path
            sess.inflight.add(f"config:{restore}")
            out.append(PushConfigs(sid, restore, self._configs(sess, sess.path, restore)))
            return out
        old_epoch, old_route_epoch, old_path = sess.epoch, sess.route_epoch, sess.path
        sess.epoch, sess.path = epoch, new_path
        sess.route_epoch = new_route_epoch if new_route_epoch is not None else old_route_epoch
        leavers = [n for n in old_path if n not in new_path]
        out = [Notify(EventType.session_rerouted, sid, None,
                      {"ok": True, "old_path": list(old_path), "path": list(new_path),
                       "epoch": epoch})]
        if leavers:
            deletes = tuple(SessionDelete(session_id=sid, node=n, epoch=old_epoch,
                                          reason="rerouted") for n in leavers)
            out.append(SendDeletes(sid, DeletePurpose.reroute_cleanup, old_route_epoch,
                                   deletes))
        else:
            out.append(ReleaseRoute(sid, old_route_epoch))
        out.append(_virtual_link(sess, old_path, False))
        out.append(_virtual_link(sess, new_path, True))
        out.append(StoreSession(sess.record()))
        return out

    def _restored(self, sess: AdmissionSession, epoch: int,
                  failed: dict[str, str]) -> list[Effect]:
        """The old path was pushed again after a failed reroute; if even that fails, the
        session cannot be kept consistent and ends."""
        sess.pending_epoch = sess.pending_route_epoch = sess.pending_kind = None
        sess.pending_path = ()
        if failed:
            why = "; ".join(f"{n}: {r}" for n, r in sorted(failed.items()))
            return self._end(sess, f"path could not be restored after a failed reroute: {why}")
        sess.epoch = epoch
        out: list[Effect] = [Notify(EventType.configured, sess.session_id, n,
                                    {"epoch": epoch, "restored": True}) for n in sess.path]
        out.append(StoreSession(sess.record()))
        return out

    def deletes_done(self, session_id: str, purpose: DeletePurpose, epoch: int | None,
                     confirmed: tuple[str, ...], missing: tuple[str, ...],
                     now: float) -> list[Effect]:
        """Deletions were confirmed (or their bound passed): release what they freed."""
        out: list[Effect] = []
        sess = self.sessions.get(session_id)
        if purpose is DeletePurpose.close:
            out.append(ReleaseRoute(session_id, epoch))
            out.append(Notify(EventType.session_deleted, session_id, None,
                              {"confirmed": list(confirmed), "missing": list(missing)}))
            out.append(ForgetStored(session_id))
        elif purpose is DeletePurpose.reroute_cleanup:
            out.append(ReleaseRoute(session_id, epoch))
        if sess is not None:
            sess.inflight.discard(f"delete:{purpose.value}:{epoch}")
            self._maybe_forget(sess)
        return out

    # ------------------------------------------------------------------ keep-alive, close

    def keepalive(self, msg: KeepAlive, now: float) -> list[Effect]:
        """An endpoint served a key request: reset the session timer."""
        sess = self.session(msg.session_id)
        if (sess is not None and sess.state is AdmissionState.active
                and msg.node in sess.endpoint_nodes):
            sess.timer_deadline = now + sess.idle_timeout_s + self.settings.session_timer_grace_s
            return [RecordKeepAlive(sess.session_id)]
        return []

    def close(self, msg: SessionClose, now: float) -> list[Effect]:
        """An endpoint KM closed the session (application CLOSE or its idle timer)."""
        sess = self.session(msg.session_id)
        if sess is None or msg.node not in sess.endpoint_nodes:
            return []
        return self._end(sess, f"{msg.reason} from {msg.node}")

    def _end(self, sess: AdmissionSession, reason: str) -> list[Effect]:
        if sess.state is AdmissionState.requested:
            return self._terminate(sess, Notify(EventType.session_closed, sess.session_id,
                                                sess.initiator.node, {"reason": reason}))
        if sess.state is AdmissionState.accepted:
            sess.closing = reason  # finished when the route / configuration answer arrives
            return []
        if sess.state is AdmissionState.active:
            deletes = tuple(SessionDelete(session_id=sess.session_id, node=n, reason=reason)
                            for n in sess.path)
            out: list[Effect] = [Notify(EventType.session_closed, sess.session_id, None,
                                        {"reason": reason, "path": list(sess.path)})]
            out.append(_virtual_link(sess, sess.path, False))
            out += self._terminate(
                sess, SendDeletes(sess.session_id, DeletePurpose.close, None, deletes))
            if sess.session_id in self.sessions:  # deletions still out: mark the record
                out.append(StoreSession(sess.record()))
            return out
        return []

    def _terminate(self, sess: AdmissionSession, *effects: Effect) -> list[Effect]:
        sess.state = AdmissionState.terminated
        sess.peer_deadline = sess.timer_deadline = None
        for e in effects:
            if isinstance(e, SendDeletes):
                sess.inflight.add(f"delete:{e.purpose.value}:{e.epoch}")
        self._maybe_forget(sess)
        return list(effects)

    def _maybe_forget(self, sess: AdmissionSession) -> None:
        if sess.state is AdmissionState.terminated and not sess.inflight:
            self._forget(sess)

    def _forget(self, sess: AdmissionSession) -> None:
        if self.sessions.get(sess.session_id) is sess:
            del self.sessions[sess.session_id]
        for alias in [a for a, s in self._aliases.items() if s == sess.session_id]:
            del self._aliases[alias]

    # ------------------------------------------------------------------ restart

    def restore(self, rec: AdmittedSession, now: float) -> list[Effect]:
        """Take back a session a previous run stored (at start, before any request).

        An ``active`` one is active again with its session timer re-armed from ``now``
        (a full idle timeout plus grace: a KM that still serves it keeps it alive with its
        next key request, one that forgot it stays silent and the timer's deletion cleans
        up). A ``terminated`` one (its deletions were out) has its deletions sent again.
        A record that cannot be read is ended the same way.
        """
        if self.session(rec.session_id) is not None:
            return []
        path = tuple(rec.path)
        try:
            initiator = Endpoint.from_json(rec.initiator)
            responder = Endpoint.from_json(rec.responder) if rec.responder else None
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"stored session unreadable: {exc}"
            deletes = tuple(SessionDelete(session_id=rec.session_id, node=n, reason=reason)
                            for n in dict.fromkeys((*path, rec.source_node,
                                                    rec.destination_node)))
            return [Notify(EventType.session_closed, rec.session_id, None, {"reason": reason}),
                    ReleaseRoute(rec.session_id, None), ForgetStored(rec.session_id),
                    SendDeletes(rec.session_id, DeletePurpose.refusal, None, deletes)]
        sess = AdmissionSession(
            session_id=rec.session_id, interface=rec.interface, initiator=initiator,
            destination_node=rec.destination_node, state=AdmissionState.active,
            created_t=now, responder=responder, epoch=rec.epoch, route_epoch=rec.route_epoch,
            path=path, rate_bps=rec.rate_bps, min_bps=rec.min_bps, priority=rec.priority,
            idle_timeout_s=rec.idle_timeout_s, key_chunk_size=rec.key_chunk_size,
            bucket_size_bits=rec.bucket_size_bits, hybrid_policy=rec.hybrid_policy)
        self.sessions[sess.session_id] = sess
        if responder is not None and responder.opened_as != sess.session_id:
            self._aliases[responder.opened_as] = sess.session_id
        out: list[Effect] = [Notify(EventType.session_restored, sess.session_id,
                                    initiator.node,
                                    {"state": rec.state, "path": list(path),
                                     "epoch": rec.epoch, "min_bps": rec.min_bps,
                                     "idle_timeout_s": rec.idle_timeout_s})]
        if rec.state == "terminated":
            return out + self._end(sess, "deletion not confirmed before the controller "
                                         "restarted")
        sess.timer_deadline = now + sess.idle_timeout_s + self.settings.session_timer_grace_s
        out.append(_virtual_link(sess, path, True))
        return out

    # ------------------------------------------------------------------ reroute, timers

    def reroute(self, order: RerouteOrder, now: float) -> tuple[RerouteAck, list[Effect]]:
        """The Routing Element moved a live session to ``order.path`` (already reserved)."""
        sess = self.sessions.get(order.session_id)

        def refuse(reason: str) -> tuple[RerouteAck, list[Effect]]:
            return RerouteAck(session_id=order.session_id, accepted=False, reason=reason), []

        if sess is None or sess.state is not AdmissionState.active:
            return refuse("session not active")
        if sess.pending_epoch is not None:
            return refuse("a reroute is already in progress")
        if order.old_epoch != sess.route_epoch or order.new_epoch <= sess.route_epoch:
            return refuse(f"stale route epochs {order.old_epoch}->{order.new_epoch}, "
                          f"session at {sess.route_epoch}")
        path = tuple(order.path)
        if len(path) < 2 or path[0] != sess.initiator.node or path[-1] != sess.destination_node:
            return refuse(f"path {order.path} does not join the session's endpoints")
        epoch = sess.epoch + 1
        sess.pending_epoch, sess.pending_kind = epoch, "reroute"
        sess.pending_route_epoch = order.new_epoch
        sess.pending_path = path
        sess.inflight.add(f"config:{epoch}")
        return (RerouteAck(session_id=order.session_id, accepted=True),
                [Notify(EventType.route_computed, sess.session_id, path[0],
                        {"path": list(path), "epoch": epoch, "reason": order.reason}),
                 PushConfigs(sess.session_id, epoch, self._configs(sess, path, epoch))])

    def tick(self, now: float) -> list[Effect]:
        """Fire every peer-wait and session timer due at ``now``."""
        out: list[Effect] = []
        for sess in list(self.sessions.values()):
            if sess.peer_deadline is not None and sess.peer_deadline <= now:
                reason = (f"peer {sess.initiator.peer_sae} did not open within "
                          f"{self.settings.peer_wait_timeout_s:g} s")
                sess.peer_deadline = None
                out += self._refuse_endpoints_waiting(sess, reason)
            elif sess.timer_deadline is not None and sess.timer_deadline <= now:
                sess.timer_deadline = None
                out += self._end(sess, "session timer expired")
        return out

    def _refuse_endpoints_waiting(self, sess: AdmissionSession, reason: str) -> list[Effect]:
        delete = SessionDelete(session_id=sess.session_id, node=sess.initiator.node,
                               reason=reason, refused=True)
        return self._terminate(sess, Notify(EventType.admission_refused, sess.session_id,
                                            sess.initiator.node, {"reason": reason}),
                               SendDeletes(sess.session_id, DeletePurpose.refusal, None,
                                           (delete,)))


def _virtual_link(sess: AdmissionSession, path: tuple[str, ...], active: bool
                  ) -> AnnounceVirtualLink:
    """The SDN announcement of ``sess``'s VIRT link over ``path``."""
    return AnnounceVirtualLink(sess.session_id, path, sess.min_bps, active,
                               source_sae=sess.initiator.sae_id,
                               destination_sae=sess.initiator.peer_sae,
                               priority=sess.priority, max_bps=sess.rate_bps)


class AdmissionControl(Service):
    """Admission Control on the bus (subscribes ``keyplane.control.admission``).

    Args:
        bus: KMs, the Routing Element and the SDN Controller are reached here.
        db: the user database (users' SLA profiles, applications' nodes).
        clock: every protocol timer and acknowledgement bound.
        events: the event stream.
        settings: :class:`~keyplane.control.settings.AdmissionSettings`.
    """

    def __init__(self, bus: Bus, db: Database, clock: Clock, events: EventStream, *,
                 settings: AdmissionSettings | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self.core = AdmissionCore(self.settings)
        self.bus = bus
        self.db = db
        self.clock = clock
        self.events = events
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        # per session, the last SDN announcement in flight: a reroute's removal of the old
        # VIRT link must reach the SDN Controller before the new path's registration
        self._announcing: dict[str, asyncio.Future[Any]] = {}
        # store writes, in the order the core decided them (one writer task)
        self._writes: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._kept_alive: dict[str, float] = {}  # session → wall time last written
        self._started = False

    async def start(self) -> None:
        """Reload the stored sessions, tell the Routing Element which capacity they hold,
        then subscribe and start the session timers (idempotent).

        Raises:
            StoreError: the stored sessions cannot be read (starting without them would
                forget their reservations).
        """
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_loop())
        self._writer.add_done_callback(self._task_done)  # logs a writer that died
        restored = await self._restore()
        self._sub = await self.bus.subscribe(topics.ADMISSION, self._on_message)
        self._timer = loop.create_task(self._timer_loop())
        self.events.emit(EventType.element_started, ELEMENT, restored=restored)

    async def _restore(self) -> int:
        """Take back the sessions of the previous run and sync the Routing Element's
        reservations with them, before any new request can reserve capacity."""
        try:
            records = await load_admitted_sessions(self.db)
        except StoreError:
            logger.exception("cannot read the stored sessions")
            await self.close()
            raise
        now = self.clock.now()
        for rec in records:
            self._run(self.core.restore(rec, now))
        live = LiveSessions(sessions=self.core.live_sessions())
        try:
            reply = await self._ask(topics.ROUTING, live, self.settings.route_timeout_s)
        except (TimeoutError, BusError) as exc:
            logger.warning("Routing Element did not take the live sessions (%s); it asks "
                           "for them when it starts", exc)
        else:
            if isinstance(reply, LiveSessionsApplied) and (reply.overbooked
                                                           or reply.missing_links):
                logger.warning("restored sessions overbook %s; hops without a link: %s",
                               reply.overbooked, reply.missing_links)
        if records:
            logger.info("restored %d stored sessions", len(records))
        return len(records)

    # ------------------------------------------------------------------ inbound

    async def _on_message(self, _topic: str, msg: Message) -> Message | None:
        now = self.clock.now
        if isinstance(msg, SessionOpenRequest):
            return await self._open(msg)
        if isinstance(msg, KeepAlive):
            self._run(self.core.keepalive(msg, now()))
        elif isinstance(msg, SessionClose):
            self._run(self.core.close(msg, now()))
        elif isinstance(msg, RerouteOrder):
            ack, effects = self.core.reroute(msg, now())
            self._run(effects)
            return ack
        elif isinstance(msg, LiveSessionsRequest):
            return LiveSessions(sessions=self.core.live_sessions())
        return None

    async def _lookup(self, kind: str, key: str) -> Any:
        """A user or application from the database, cached for ``directory_cache_ttl_s``.

        Only hits are cached, so a user or application added to the database is seen at
        once; a changed SLA takes effect within the TTL.

        Raises:
            StoreError: the database failed.
        """
        now = self.clock.now()
        hit = self._cache.get((kind, key))
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await (get_user(self.db, key) if kind == "user"
                       else get_application(self.db, key))
        ttl = self.settings.directory_cache_ttl_s
        if value is not None and ttl > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[(kind, key)] = (now + ttl, value)
        return value

    async def _open(self, req: SessionOpenRequest) -> OpenAck:
        try:
            user = await self._lookup("user", req.user_id)
            app = await self._lookup("app", req.destination_sae)
            own = await self._lookup("app", req.source_sae)
        except StoreError as exc:
            logger.exception("user database unavailable")
            _, effects = self.core.open(req, None, None, self.clock.now())
            self._run(effects)
            return OpenAck(session_id=req.session_id, reason=f"store unavailable: {exc}")
        ack, effects = self.core.open(req, user, app.node if app else None, self.clock.now(),
                                      source_node=own.node if own else "")
        self._run(effects)
        return ack

    # ------------------------------------------------------------------ effects

    def _run(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Notify):
                self.events.emit(e.type, ELEMENT, node=e.node, session=e.session, **e.data)
            elif isinstance(e, RequestRoute):
                self._spawn(self._route(e))
            elif isinstance(e, PushConfigs):
                self._spawn(self._push(e))
            elif isinstance(e, SendDeletes):
                self._spawn(self._delete(e))
            elif isinstance(e, ReleaseRoute):
                self._spawn(self._publish(topics.ROUTING, RouteRelease(session_id=e.session_id,
                                                                       epoch=e.epoch)))
            elif isinstance(e, AnnounceVirtualLink):
                self._spawn(self._announce_in_order(e))
            elif isinstance(e, StoreSession):
                # a new record is stamped as kept alive now; an updated one keeps its stamp
                self._kept_alive.setdefault(e.record.session_id, self.clock.wall())
                self._writes.put_nowait(("save", e.record))
            elif isinstance(e, ForgetStored):
                self._kept_alive.pop(e.session_id, None)
                self._writes.put_nowait(("delete", e.session_id))
            elif isinstance(e, RecordKeepAlive):
                self._keepalive_written(e.session_id)
        self._wake.set()

    def _keepalive_written(self, session_id: str) -> None:
        """Stamp the record's keep-alive time, at most once per
        ``keepalive_store_interval_s`` per session (a keep-alive comes with every key
        request; the timer is re-armed from the restart anyway, so the stamp is for
        operators)."""
        wall = self.clock.wall()
        last = self._kept_alive.get(session_id)
        if last is None or wall - last >= self.settings.keepalive_store_interval_s:
            self._kept_alive[session_id] = wall
            self._writes.put_nowait(("touch", session_id))

    async def _write_loop(self) -> None:
        """Carry out store writes one at a time, in order; a failed write is logged and
        the session keeps running (the store lags until the session's next write)."""
        while True:
            op, arg = await self._writes.get()
            try:
                wall = self.clock.wall()
                if op == "save":
                    await save_admitted_session(self.db, arg, wall=wall)
                elif op == "delete":
                    await delete_admitted_session(self.db, arg)
                else:
                    await touch_admitted_session(self.db, arg, wall=wall)
            except StoreError:
                logger.exception("cannot %s stored session %s", op,
                                 arg.session_id if op == "save" else arg)
            finally:
                self._writes.task_done()

    def _spawn(self, aw: Awaitable[Any]) -> None:
        if self._closed:
            return
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("admission task failed", exc_info=task.exception())

    async def _publish(self, topic: str, msg: Message) -> None:
        try:
            await self.bus.publish(topic, msg)
        except BusError:
            logger.warning("cannot publish %s on %s", msg.KIND, topic)

    async def _ask(self, topic: str, msg: Message, bound_s: float) -> Message:
        """A bus request bounded by the clock (protocol) and by ``bus_timeout_s`` (transport).

        Raises:
            TimeoutError: the clock bound passed.
            BusError: the transport failed, nobody listens, or its bound passed.
        """
        return await self.clock.wait_for(
            self.bus.request(topic, msg, timeout_s=self.settings.bus_timeout_s), bound_s)

    async def _route(self, e: RequestRoute) -> None:
        req = RouteRequest(session_id=e.session_id, epoch=e.epoch, source_node=e.source_node,
                           destination_node=e.destination_node, min_bps=e.min_bps,
                           hybrid_policy=e.hybrid_policy)
        try:
            reply = await self._ask(topics.ROUTING, req, self.settings.route_timeout_s)
        except (TimeoutError, BusError) as exc:
            self._run(self.core.route_failed(e.session_id, e.epoch,
                                             f"routing unavailable: {exc}", self.clock.now()))
            return
        if isinstance(reply, RouteReply) and reply.ok:
            self._run(self.core.route_found(e.session_id, e.epoch, reply.path, self.clock.now()))
        else:
            reason = reply.reason if isinstance(reply, RouteReply) else "unexpected reply"
            self._run(self.core.route_failed(e.session_id, e.epoch, reason, self.clock.now()))

    async def _push(self, e: PushConfigs) -> None:
        async def one(cfg: SessionConfig) -> tuple[str, str | None]:
            try:
                reply = await self._ask(topics.km_config(cfg.node), cfg,
                                        self.settings.config_ack_timeout_s)
            except TimeoutError:
                return cfg.node, (f"no ConfigAck within "
                                  f"{self.settings.config_ack_timeout_s:g} s")
            except BusError as exc:
                return cfg.node, str(exc)
            if not isinstance(reply, ConfigAck):
                return cfg.node, f"unexpected reply {reply.KIND}"
            if not reply.ok:
                return cfg.node, reply.reason or "refused"
            if reply.epoch != cfg.epoch:
                return cfg.node, f"acknowledged epoch {reply.epoch}, expected {cfg.epoch}"
            return cfg.node, None

        results = await asyncio.gather(*(one(c) for c in e.configs))
        acked = tuple(n for n, r in results if r is None)
        failed = {n: r for n, r in results if r is not None}
        self._run(self.core.configs_applied(e.session_id, e.epoch, acked, failed,
                                            self.clock.now()))

    async def _delete(self, e: SendDeletes) -> None:
        async def one(d: SessionDelete) -> tuple[str, bool]:
            try:
                reply = await self._ask(topics.km_config(d.node), d,
                                        self.settings.delete_confirm_timeout_s)
            except (TimeoutError, BusError):
                return d.node, False
            return d.node, isinstance(reply, DeleteConfirm)

        results = await asyncio.gather(*(one(d) for d in e.deletes))
        confirmed = tuple(n for n, ok in results if ok)
        missing = tuple(n for n, ok in results if not ok)
        self._run(self.core.deletes_done(e.session_id, e.purpose, e.epoch, confirmed, missing,
                                         self.clock.now()))

    async def _announce_in_order(self, e: AnnounceVirtualLink) -> None:
        """Send ``e`` after the session's previous announcement has been answered."""
        previous = self._announcing.get(e.session_id)
        mine: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._announcing[e.session_id] = mine
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await self._announce(e)
        finally:
            mine.set_result(None)
            if self._announcing.get(e.session_id) is mine:
                del self._announcing[e.session_id]

    async def _announce(self, e: AnnounceVirtualLink) -> None:
        link_id = virtual_link_id(e.session_id)
        msg: Message = (RegisterLink(link_id=link_id, type="VIRT",
                                     endpoints=(e.path[0], e.path[-1]), path=list(e.path),
                                     bandwidth_bps=e.bandwidth_bps, session_id=e.session_id,
                                     source_sae=e.source_sae,
                                     destination_sae=e.destination_sae, priority=e.priority,
                                     max_bps=e.max_bps)
                        if e.active else UnregisterLink(link_id=link_id))
        try:
            await self._ask(SDN_REGISTER, msg, self.settings.route_timeout_s)
        except (TimeoutError, BusError) as exc:
            logger.info("SDN Controller did not take %s for %s: %s", msg.KIND, link_id, exc)

    # ------------------------------------------------------------------ timers

    async def _timer_loop(self) -> None:
        while True:
            self._wake.clear()
            deadline = self.core.next_deadline()
            waker = asyncio.ensure_future(self._wake.wait())
            waits: set[asyncio.Future[Any]] = {waker}
            if deadline is not None:
                waits.add(asyncio.ensure_future(self.clock.sleep_until(deadline)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if deadline is not None and self.clock.now() >= deadline:
                self._run(self.core.tick(self.clock.now()))

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Unsubscribe, stop the timers, finish the store writes decided so far (bounded by
        ``bus_timeout_s``) and cancel in-flight work (idempotent).

        Sessions are not deleted at the KMs, nor in the store: a control plane started
        again on the same store takes them back, and the KMs' own idle timers end those
        nobody uses.
        """
        if self._closed:
            return
        self._closed = True
        if self._sub is not None:
            with contextlib.suppress(BusError):
                await self._sub.unsubscribe()
        if self._writer is not None and not self._writer.done():
            try:
                async with asyncio.timeout(self.settings.bus_timeout_s):
                    await self._writes.join()
            except TimeoutError:
                logger.warning("%d store writes dropped at close", self._writes.qsize())
        tasks = [t for t in (self._timer, self._writer, *self._tasks)
                 if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sub is not None:
            self.events.emit(EventType.element_stopped, ELEMENT)


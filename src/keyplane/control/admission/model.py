"""Admission Control's data: session states, effects the core returns, session records.

The effects are plain frozen dataclasses the shell (:mod:`.shell`) carries out; the
session record (:class:`AdmissionSession`) is what the core (:mod:`.core`) keeps per
session and what :class:`~keyplane.store.admitted.AdmittedSession` stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from keyplane.config import SlaProfile
from keyplane.control.wire import LiveSession
from keyplane.events import EventType
from keyplane.messages import Qos, SessionConfig, SessionDelete
from keyplane.store.admitted import AdmittedSession

__all__ = [
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
    "RepushConfig",
    "RequestRoute",
    "SendDeletes",
    "StoreSession",
    "virtual_link",
]


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
    max_trusted_relays: int | None = None


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
class RepushConfig:
    """Send a restarted KM its configuration of an active session again; the answer only
    goes to :meth:`~.core.AdmissionCore.config_repushed` (the session's state is unchanged
    whatever it is)."""

    config: SessionConfig


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


Effect = (Notify | RequestRoute | ReleaseRoute | PushConfigs | RepushConfig | SendDeletes
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

    def deadline(self, kind: str) -> float | None:
        """The ETSI 004 peer-wait deadline (``"peer"``) or the session timer's."""
        return self.peer_deadline if kind == "peer" else self.timer_deadline

    @property
    def max_trusted_relays(self) -> int | None:
        """The tightest cap on trusted relays of the endpoints' SLAs (None: no cap)."""
        caps = [e.sla.max_trusted_relays for e in (self.initiator, self.responder)
                if e is not None and e.sla.max_trusted_relays is not None]
        return min(caps, default=None)

    @property
    def endpoint_nodes(self) -> tuple[str, str]:
        """The initiator's and the destination's KM."""
        return (self.initiator.node, self.destination_node)

    @classmethod
    def from_record(cls, rec: AdmittedSession, now: float) -> AdmissionSession:
        """The ``active`` session ``rec`` stores, taken back at ``now``.

        Raises:
            KeyError, TypeError, ValueError: an endpoint's stored form cannot be read.
        """
        return cls(
            session_id=rec.session_id, interface=rec.interface,
            initiator=Endpoint.from_json(rec.initiator),
            destination_node=rec.destination_node, state=AdmissionState.active,
            created_t=now, responder=Endpoint.from_json(rec.responder) if rec.responder
            else None, epoch=rec.epoch, route_epoch=rec.route_epoch, path=tuple(rec.path),
            rate_bps=rec.rate_bps, min_bps=rec.min_bps, priority=rec.priority,
            idle_timeout_s=rec.idle_timeout_s, key_chunk_size=rec.key_chunk_size,
            bucket_size_bits=rec.bucket_size_bits, hybrid_policy=rec.hybrid_policy)

    def reservations(self) -> list[LiveSession]:
        """Each ``(route epoch, path)`` whose reservation is still needed: a path in use,
        being configured, or whose deletions are not yet confirmed."""
        held: list[tuple[int, tuple[str, ...]]] = []
        if self.state is AdmissionState.accepted and self.pending_path:
            held.append((self.epoch, self.pending_path))
        elif self.state in (AdmissionState.active, AdmissionState.terminated) and self.path:
            held.append((self.route_epoch, self.path))
            if (self.state is AdmissionState.active and self.pending_kind == "reroute"
                    and self.pending_route_epoch is not None):
                held.append((self.pending_route_epoch, self.pending_path))
        return [LiveSession(session_id=self.session_id, epoch=epoch, path=list(path),
                            min_bps=self.min_bps, hybrid_policy=self.hybrid_policy,
                            max_trusted_relays=self.max_trusted_relays,
                            source_sae=self.initiator.sae_id,
                            destination_sae=self.initiator.peer_sae,
                            priority=self.priority, max_bps=self.rate_bps)
                for epoch, path in held]

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


def virtual_link(sess: AdmissionSession, path: tuple[str, ...], active: bool
                 ) -> AnnounceVirtualLink:
    """The SDN announcement of ``sess``'s VIRT link over ``path``."""
    return AnnounceVirtualLink(sess.session_id, path, sess.min_bps, active,
                               source_sae=sess.initiator.sae_id,
                               destination_sae=sess.initiator.peer_sae,
                               priority=sess.priority, max_bps=sess.rate_bps)

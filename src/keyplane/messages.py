"""Versioned wire models that elements exchange over the bus.

This module is the only coupling between ``keyplane.control`` and ``keyplane.keymanager``:
neither imports the other. Every model is a :class:`keyplane.bus.Message` (frozen pydantic,
JSON on the wire, ``KIND`` + ``VERSION`` in the envelope).

Flows (paper Fig. 2 and 3; topics in :class:`keyplane.bus.topics`):

1. KM → Access Control, request/reply on ``keyplane.control.access``:
   :class:`AuthRequest` → :class:`AuthResponse`.
2. KM → Admission Control, request/reply on ``keyplane.control.admission``:
   :class:`SessionOpenRequest` → :class:`OpenAck` (the request was registered; the
   decision comes later, asynchronously, because Admission Control waits for the peer).
3. Admission Control → every KM on the path, request/reply on ``keyplane.km.<node>.config``:
   :class:`SessionConfig` → :class:`ConfigAck`; or to refuse / end a session
   :class:`SessionDelete` → :class:`DeleteConfirm`. A refusal before any configuration is a
   :class:`SessionDelete` with ``refused=True`` and a reason (the paper's deletion signal).
4. KM → Admission Control, publish on ``keyplane.control.admission``:
   :class:`KeepAlive` on each key request; :class:`SessionClose` when the application
   closes or the KM's idle timer fires; :class:`KmReady` when a KM (re)started.
5. QKD modules / KMs → Monitoring Element, publish on ``keyplane.telemetry.…``:
   :class:`LinkTelemetry`, :class:`KmTelemetry`.
6. Monitoring Element → Routing Element and SDN Controller, publish on
   ``keyplane.alarms.<link>``: :class:`LinkAlarm`.
7. SDN Controller → subscribers, publish on ``keyplane.control.sdn``: :class:`TopologyChange`.
8. A node process → SDN Controller, request/reply on ``keyplane.control.sdn.nodes``:
   :class:`NodeAnnouncement` → :class:`NodeWelcome`.
9. SDN agent of a node → SDN Controller, publish on ``keyplane.sdn.<node>.notifications``:
   :class:`SdnNotification` (ETSI GS QKD 015 notifications: link down, perf update, alarm, …).

Identifiers: ``session_id`` is the ETSI 004 ``Key_stream_ID`` (a UUID string); node ids
and SAE ids are the topology file's.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from keyplane.bus.codec import Message

__all__ = [
    "AuthRequest",
    "AuthResponse",
    "ConfigAck",
    "DeleteConfirm",
    "HopRole",
    "KeepAlive",
    "KmReady",
    "KmTelemetry",
    "LinkAlarm",
    "LinkState",
    "LinkTelemetry",
    "NodeAnnouncement",
    "NodeWelcome",
    "OpenAck",
    "Qos",
    "SdnNotification",
    "SessionClose",
    "SessionConfig",
    "SessionDelete",
    "SessionOpenRequest",
    "StreamTelemetry",
    "TopologyChange",
]

UInt32 = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Qos(Message):
    """ETSI GS QKD 004 QoS (clause 6.1.1), as requested by an application.

    ``priority``: larger is more urgent. Admission Control serves it (and the rates), capped
    by the owner's SLA (:func:`keyplane.control.admission.qos.check_qos`); the KM serves
    what :class:`SessionConfig` carries.
    """

    KIND = "qos"

    key_chunk_size: Annotated[int, Field(ge=1, le=1 << 20)] = 32
    max_bps: UInt32 = 0
    min_bps: UInt32 = 0
    jitter: UInt32 = 0
    priority: UInt32 = 0
    timeout_ms: UInt32 = 5_000
    ttl_s: UInt32 = 0
    metadata_mimetype: str = "application/json"


class AuthRequest(Message):
    """KM asks Access Control whether ``identity`` may act as ``sae_id`` towards ``peer_sae_id``.

    ``identity`` is the mTLS client certificate subject (RFC 4514 string) or, when
    ``method == "token"``, a bearer token (never logged).
    """

    KIND = "access.auth_request"

    node: str
    sae_id: str
    peer_sae_id: str | None = None
    method: Literal["certificate", "token"] = "certificate"
    identity: str = Field(repr=False)


class AuthResponse(Message):
    """Access Control's answer; ``user_id`` is set when ``ok``."""

    KIND = "access.auth_response"

    ok: bool
    user_id: str | None = None
    reason: str = ""


class SessionOpenRequest(Message):
    """An endpoint KM asks Admission Control for a session (paper Fig. 2a, 'user accepted').

    Admission Control pairs the two endpoints' requests by ``session_id`` (the
    Key_stream_ID both applications use) or, when the opener gave none, by the SAE pair.
    """

    KIND = "admission.open"

    session_id: str
    node: str
    user_id: str
    source_sae: str
    destination_sae: str
    qos: Qos = Qos()
    interface: Literal["etsi004", "etsi014"] = "etsi004"


class OpenAck(Message):
    """Admission Control registered an open request (decision follows on the KM topic)."""

    KIND = "admission.open_ack"

    session_id: str
    accepted_for_review: bool = True
    reason: str = ""
    waiting_for_peer: bool = False
    """ETSI 004: the request is registered and waits for the peer's open of the same
    Key_stream_ID (until the QoS ``Timeout``); the KM answers status 1 at once."""


class HopRole(StrEnum):
    """A KM's place on a session's path."""

    source = "source"  # makes the end-to-end key (the path's first KM)
    intermediate = "intermediate"  # trusted node: decrypts and re-pads
    destination = "destination"  # the path's last KM


class SessionConfig(Message):
    """Per-KM session configuration pushed by Admission Control (paper Fig. 2b).

    A KM learns only its own hop: ``prev_km`` and ``next_km``, never the whole path.
    ``epoch`` grows with every reroute; a KM replaces its forwarding entry only with a
    configuration of a higher epoch.
    """

    KIND = "km.session_config"

    session_id: str
    node: str
    epoch: Annotated[int, Field(ge=0)] = 0
    role: HopRole
    prev_km: str | None = None
    next_km: str | None = None
    source_sae: str
    destination_sae: str
    local_sae: str | None = None  # the SAE served at this KM (None at intermediates)
    priority: Annotated[int, Field(ge=0, le=7)] = 0
    bucket_size_bits: Annotated[int, Field(ge=1)]
    token_rate_bps: Annotated[float, Field(ge=0)]
    idle_timeout_s: Annotated[float, Field(gt=0)]
    key_chunk_size: Annotated[int, Field(ge=1)] = 32
    hybrid_policy: str = "qkd-only"
    opened_as: str | None = None
    """Set at an endpoint whose open request carried another Key_stream_ID: Admission
    Control paired it with its peer by SAE pair and ``session_id`` is the stream's id."""
    min_bps: Annotated[float, Field(ge=0)] = 0.0
    """The rate reserved for the session on every link of its path (the guaranteed share
    under key scarcity); ``token_rate_bps`` is its ceiling."""
    timeout_ms: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    """At an endpoint: how long a key request of the session may wait for key (the QoS
    ``Timeout``: the ETSI 004 application's own, or the ETSI 014 application's profile);
    ``None`` (and at intermediates): the KM's own setting."""
    qos: Qos | None = None
    """At an endpoint: the QoS the session was negotiated with, the same at both ends (what
    ETSI 004 OPEN_CONNECT returns); ``None`` at intermediates."""


class ConfigAck(Message):
    """A KM applied (``ok``) or refused a :class:`SessionConfig`."""

    KIND = "km.config_ack"

    session_id: str
    node: str
    epoch: int = 0
    ok: bool
    reason: str = ""


class SessionDelete(Message):
    """Admission Control ends a session at a KM (or refuses it: ``refused=True``).

    ``epoch`` set: remove only the forwarding entry of that epoch (after a reroute the
    old path's KMs drop their entries; the session goes on elsewhere).
    """

    KIND = "km.session_delete"

    session_id: str
    node: str
    reason: str = ""
    refused: bool = False
    epoch: int | None = None
    qos_offer: Qos | None = None
    """With a refusal because the requested QoS exceeds the SLA: the request capped by the
    SLA, which Admission Control would admit (the ETSI 004 status 7 counter-proposal)."""


class DeleteConfirm(Message):
    """A KM deleted a session's configuration and freed what it reserved."""

    KIND = "km.delete_confirm"

    session_id: str
    node: str
    freed_bits: int = 0


class KeepAlive(Message):
    """An endpoint KM served a key request: Admission Control resets the session timer."""

    KIND = "admission.keepalive"

    session_id: str
    node: str
    delivered_bits: int = 0


class SessionClose(Message):
    """An endpoint KM ends a session: the application closed or the idle timer expired."""

    KIND = "admission.close"

    session_id: str
    node: str
    reason: Literal["close", "idle_timeout", "error"] = "close"


class KmReady(Message):
    """A KM (re)started and answers on its config topic: Admission Control pushes it again
    the configuration of every active session through it (a KM killed between a
    configuration's acknowledgement and its write, or restarted from a store that lags,
    would otherwise relay nothing for that session; a KM that holds it already just
    acknowledges it)."""

    KIND = "admission.km_ready"

    node: str


class LinkState(StrEnum):
    """Operational state of a quantum link."""

    up = "up"
    degraded = "degraded"
    down = "down"


class LinkTelemetry(Message):
    """Per-block figures from a link's QKD modules (one message per block or period)."""

    KIND = "telemetry.link"

    link_id: str
    node: str
    state: LinkState = LinkState.up
    block_id: int | None = None
    sifted_bits: int = 0
    secret_bits: int = 0
    qber: float | None = None
    sifted_rate_bps: float = 0.0
    skr_bps: float = 0.0
    ec_efficiency: float | None = None
    leaked_bits: int = 0
    aborted_blocks: int = 0
    t: float = 0.0
    qber_sample_bits: Annotated[int, Field(ge=0)] | None = None
    """How many bits ``qber`` was estimated on (the parameter-estimation sample). The
    Monitoring Element's eavesdropper test weighs each estimate by it; ``None``: it infers
    the test-basis share of ``sifted_bits`` from ``postprocessing.z_basis_probability``
    (``auto`` resolved as the twin resolves it)."""


class StreamTelemetry(BaseModel):
    """One live session at an endpoint KM, in :class:`KmTelemetry`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pending_requests: int = 0
    """Key requests inside the KM: waiting on the token bucket, for an exchange slot, or
    being served."""
    bucket_bits: float | None = None
    """Token-bucket level (negative while reservations are outstanding); None before
    Admission Control configured the session."""
    bucket_size_bits: int | None = None
    """Token-bucket size (the burst Admission Control granted)."""
    keys_delivered: int = 0
    """Keys this KM handed to the session's application so far."""
    keys_per_s: float = 0.0
    """Keys handed out per second over the publisher's window."""


class KmTelemetry(Message):
    """A KM's view of its link key stores and sessions (published periodically by
    :mod:`keyplane.keymanager.telemetry`)."""

    KIND = "telemetry.km"

    node: str
    buffer_bits: dict[str, int] = Field(default_factory=dict)  # per link id
    sessions: dict[str, int] = Field(default_factory=dict)  # live sessions per link id
    queued_requests: int = 0  # requests waiting for one of the KM's exchange slots
    streams: dict[str, StreamTelemetry] = Field(default_factory=dict)  # by session id
    t: float = 0.0


class LinkAlarm(Message):
    """The Monitoring Element flags a link (possible eavesdropper, failure, recovery).

    ``kind``: ``eavesdropper_suspected`` (QBER significantly above the link's own
    baseline, below the abort threshold), ``qber_high`` (above the threshold),
    ``key_rate_collapse``, ``link_down``; ``cleared`` once none of them holds any more.
    ``active`` lists the kinds raised on the link after this alarm (empty with
    ``cleared``), so a consumer that missed one message still ends in the right state.
    """

    KIND = "monitoring.alarm"

    link_id: str
    kind: Literal["eavesdropper_suspected", "qber_high", "key_rate_collapse", "link_down",
                  "cleared"]
    severity: Literal["MAJOR", "MINOR"] = "MAJOR"
    qber: float | None = None
    skr_bps: float | None = None
    message: str = ""
    t: float = 0.0
    active: list[str] = Field(default_factory=list)


class TopologyChange(Message):
    """The SDN Controller announces a change to its topology (nodes, PHYS or VIRT links)."""

    KIND = "sdn.topology_change"

    change: Literal["link_added", "link_removed", "link_updated", "node_added",
                    "node_removed", "virtual_link_added", "virtual_link_removed"]
    link_id: str | None = None
    node: str | None = None
    endpoints: tuple[str, str] | None = None
    attributes: dict[str, float | str | bool | None] = Field(default_factory=dict)


SdnNotificationName = Literal[
    "sdqkdn_application_new", "sdqkdn_application_qos_update",
    "sdqkdn_application_disconnected", "sdqkdn_interface_new", "sdqkdn_interface_down",
    "sdqkdn_interface_out", "sdqkdn_link_down", "sdqkdn_link_perf_update",
    "sdqkdn_link_overloaded", "alarm", "event"]
"""The ETSI 015 notification names (plus keyplane's alarm and event)."""


class SdnNotification(Message):
    """An ETSI GS QKD 015 notification from a node's SDN agent (clause 6, YANG notifications).

    ``name`` is the YANG notification (``sdqkdn_link_down``, ``sdqkdn_link_perf_update``,
    ``alarm``, …) and ``content`` its RFC 7951 JSON body, e.g.
    ``{"qkd_link": {"qkdl_id": "…", "reason": "…"}}``; ``event_time`` is RFC 3339.
    """

    KIND = "sdn.etsi015_notification"

    node: str
    qkdn_id: str
    name: SdnNotificationName
    event_time: str
    content: dict[str, Any] = Field(default_factory=dict)


class NodeAnnouncement(Message):
    """A node process announces itself (and its interface URLs) to the control plane.

    Sent as a request on ``keyplane.control.sdn`` when a node starts; the SDN Controller
    replies with :class:`NodeWelcome`. This is how a distributed control plane learns where
    each node's ETSI 014/004/015 servers listen.
    """

    KIND = "sdn.node_announcement"

    node: str
    endpoints: dict[str, str] = Field(default_factory=dict)
    pid: int = 0


class NodeWelcome(Message):
    """The control plane's answer to a :class:`NodeAnnouncement`."""

    KIND = "sdn.node_welcome"

    node: str
    known: bool
    reason: str = ""

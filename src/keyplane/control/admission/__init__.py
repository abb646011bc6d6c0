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
* **QoS against the SLA** (:mod:`.qos`): per session, ``max_bps`` (0: the application's
  profile, else the SLA's) and ``min_bps`` at most the SLA's ``max_bps``; ``priority`` at
  most the SLA's; ``key_chunk_size``, ``ttl_s`` within the settings' bounds; ``jitter`` at
  most the rate. Live sessions per user at most ``max_sessions``. Per-application QoS
  (issue #17.2): an ETSI 004 session runs with its OPEN_CONNECT's priority and rates, an
  ETSI 014 session with its application's profile in the owner's SLA, both capped by the
  SLA; the pushed configuration takes the lower priority and rate of both peers, reserves
  the higher of their reservations on every link, the lower SLA idle timeout, and gives
  each endpoint its own application's wait bound (``SessionConfig.timeout_ms``).
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

Modules: :mod:`.model` (states, effects, session records), :mod:`.qos` (QoS against the
SLA), :mod:`.core` (the pure logic), :mod:`.shell` (the bus shell).
"""

from keyplane.control.admission.core import AdmissionCore
from keyplane.control.admission.model import (
    AdmissionSession,
    AdmissionState,
    AnnounceVirtualLink,
    DeletePurpose,
    Effect,
    Endpoint,
    ForgetStored,
    Notify,
    PushConfigs,
    RecordKeepAlive,
    ReleaseRoute,
    RequestRoute,
    SendDeletes,
    StoreSession,
)
from keyplane.control.admission.qos import check_qos
from keyplane.control.admission.shell import AdmissionControl

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

"""keyplane's exception tree.

```
KeyplaneError
├── ConfigError                 bad topology or settings file (CLI exit code 2)
├── BusError                    transport problems, raised only by keyplane.bus
│   ├── BusTimeout              no reply within the request timeout
│   ├── NoResponders            nobody subscribes to the request's topic
│   ├── BusClosed               the bus was closed
│   ├── BusUnavailable          the bus server has been unreachable too long (or its buffer is full)
│   ├── MessageDecodeError      a message that is not a known, versioned keyplane model
│   └── MessageRejected         a message whose signature or signer's role is not acceptable
├── StoreError                  persistence problems, raised only by keyplane.store
│   ├── CommitFailed            a journal group commit failed (retried; nothing was handed out)
│   └── SealedDataError         sealed key material did not open (wrong KEK, altered or moved row)
├── SessionError                a session-level refusal or failure
│   ├── AuthenticationFailed    Access Control refused the identity
│   ├── QosNotMet               Admission Control refused the QoS (ETSI 004 status 7)
│   │   └── ExtensionNotMet     an ETSI 014 extension_mandatory cannot be honoured (400)
│   ├── SessionNotFound         unknown Key_stream_ID / session id
│   ├── SessionIdInUse          ETSI 004 status 5
│   ├── PeerNotConnected        ETSI 004 status 1/3
│   ├── IllegalTransition       a state-machine transition the paper's Fig. 2 forbids
│   ├── KmBusy                  a KM's priority queues are full (ETSI 004 status 2, 014 503)
│   ├── ControlPlaneUnreachable Access/Admission Control did not answer (004 status 6, 014 503)
│   └── RateLimited             the session's token bucket cannot serve within the QoS timeout
├── KeyStoreError
│   ├── InsufficientKeyMaterial not enough key now (ETSI 004 status 2, ETSI 014 503)
│   └── KeyNotFound             unknown key_ID / index, or already delivered (014 400)
├── RelayError
│   ├── RelayTimeout            a hop did not answer in time
│   ├── PeerUnreachable         no route / KM down (ETSI 004 status 4)
│   ├── RelayAuthenticationFailed  a hop's tag did not verify
│   └── PqcUnavailable          no authenticated ML-KEM exchange with the peer KM now
└── PhysicalError
    ├── QberAboveThreshold      a block aborted on its QBER estimate
    ├── ReconciliationFailed    error correction or verification failed
    └── ClassicalChannelError   the QKD modules' classical channel failed
        └── ClassicalChannelTimeout  the peer module did not answer in time
```
Foreign exceptions (NATS, SQLAlchemy, httpx) are translated at the package that owns
them and re-raised ``from`` the original. No error message carries key material.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyplane.messages import Qos

__all__ = [
    "AuthenticationFailed",
    "BusClosed",
    "BusError",
    "BusTimeout",
    "BusUnavailable",
    "ClassicalChannelError",
    "ClassicalChannelTimeout",
    "CommitFailed",
    "ConfigError",
    "ControlPlaneUnreachable",
    "ExceedsTokenBucket",
    "ExtensionNotMet",
    "IllegalTransition",
    "InsufficientKeyMaterial",
    "KeyNotFound",
    "KeyStoreError",
    "KeyplaneError",
    "KmBusy",
    "MessageDecodeError",
    "MessageRejected",
    "NoResponders",
    "PeerNotConnected",
    "PeerUnreachable",
    "PhysicalError",
    "PqcUnavailable",
    "QberAboveThreshold",
    "QosNotMet",
    "RateLimited",
    "ReconciliationFailed",
    "RelayAuthenticationFailed",
    "RelayError",
    "RelayTimeout",
    "SealedDataError",
    "SessionError",
    "SessionIdInUse",
    "SessionNotFound",
    "StoreError",
]


class KeyplaneError(Exception):
    """Base of every error keyplane raises on purpose."""


class ConfigError(KeyplaneError):
    """A topology or settings file is unreadable or invalid."""


class BusError(KeyplaneError):
    """The message bus failed."""


class BusTimeout(BusError):
    """A bus request got no reply in time."""

    def __init__(self, topic: str, timeout_s: float) -> None:
        super().__init__(f"no reply on {topic!r} within {timeout_s} s")
        self.topic = topic
        self.timeout_s = timeout_s


class NoResponders(BusError):
    """A bus request was sent to a topic no one listens on."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"no responders on {topic!r}")
        self.topic = topic


class BusClosed(BusError):
    """The bus is closed."""


class BusUnavailable(BusError):
    """The bus server is unreachable: for longer than the settings allow, or so long that the
    publish buffer is full. A process that sees this on its own bus exits for its supervisor."""


class MessageDecodeError(BusError):
    """Bytes on the bus are not a known keyplane message of a supported version."""


class MessageRejected(BusError):
    """A message failed end-to-end authentication: unsigned where the policy asks for a
    signature, an unknown or untrusted signer, a bad signature, or a signer whose role may
    not send that kind (docs/security.md, "Bus")."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind} rejected: {reason}")
        self.kind = kind
        self.reason = reason


class StoreError(KeyplaneError):
    """The database failed."""


class CommitFailed(StoreError):
    """A group commit of key-manager state failed.

    Every waiter on that commit gets this error and must not hand out what it waited for;
    the journal keeps the changes and retries the commit on its own.
    """


class SealedDataError(StoreError):
    """Sealed key material did not open: another node's or a retired, unknown KEK, an
    altered value, or a value moved from another row (docs/security.md, keys at rest)."""


class SessionError(KeyplaneError):
    """A session was refused or failed."""


class ControlPlaneUnreachable(SessionError):
    """Access Control or Admission Control did not answer a KM in time.

    Likely causes: the control plane is down, not yet started, or overloaded. Nothing is
    wrong with the QKD links or the peer KM, which is why this is not PeerUnreachable.
    """


class AuthenticationFailed(SessionError):
    """Access Control refused the identity or the requested SAE/peer."""


class QosNotMet(SessionError):
    """Admission Control refused the requested QoS or found no path for it.

    ``counter_proposal`` (a :class:`keyplane.messages.Qos`), when set, is the QoS the
    network could serve instead; ETSI 004 returns it with status 7.
    """

    def __init__(self, message: str = "", *, counter_proposal: Qos | None = None) -> None:
        super().__init__(message)
        self.counter_proposal = counter_proposal


class ExtensionNotMet(QosNotMet):
    """An ETSI 014 ``extension_mandatory`` is unsupported or cannot be met (HTTP 400)."""


class SessionNotFound(SessionError):
    """No such session / Key_stream_ID."""


class SessionIdInUse(SessionError):
    """The Key_stream_ID is already used by another stream."""


class PeerNotConnected(SessionError):
    """The peer application has not opened its side of the session yet."""


class IllegalTransition(SessionError):
    """A session state machine was asked for a transition the model forbids."""

    def __init__(self, machine: str, state: str, event: str) -> None:
        super().__init__(f"{machine}: event {event!r} is not allowed in state {state!r}")
        self.machine = machine
        self.state = state
        self.event = event


class KmBusy(SessionError):
    """A key manager's request queues are full: try again later (a clear busy answer)."""

    def __init__(self, node: str, queued: int, limit: int) -> None:
        super().__init__(f"key manager {node} is busy: {queued} requests queued (limit {limit})")
        self.node = node
        self.queued = queued
        self.limit = limit


class RateLimited(SessionError):
    """A session's token bucket cannot serve a request within the request's QoS timeout."""

    def __init__(self, session_id: str, bits: int, wait_s: float, timeout_s: float) -> None:
        super().__init__(
            f"session {session_id}: {bits} bits need {wait_s:.3f} s of token bucket refill, "
            f"more than the request's timeout of {timeout_s:.3f} s"
        )
        self.session_id = session_id
        self.bits = bits
        self.wait_s = wait_s
        self.timeout_s = timeout_s


class ExceedsTokenBucket(RateLimited):
    """A request asks for more bits than its session's token bucket holds: no wait can
    ever serve it (a client error, unlike a bucket that is merely empty)."""

    def __init__(self, session_id: str, bits: int, size_bits: int) -> None:
        SessionError.__init__(
            self,
            f"session {session_id}: {bits} bits in one request exceed the session's token "
            f"bucket of {size_bits} bits (its burst size): ask for fewer or smaller keys",
        )
        self.session_id = session_id
        self.bits = bits
        self.wait_s = float("inf")
        self.timeout_s = 0.0
        self.size_bits = size_bits


class KeyStoreError(KeyplaneError):
    """A key store failed."""


class InsufficientKeyMaterial(KeyStoreError):
    """Not enough key material is available right now."""


class KeyNotFound(KeyStoreError):
    """No such key for this caller: unknown key_ID or index, or already delivered once."""


class RelayError(KeyplaneError):
    """A trusted-node relay failed."""


class RelayTimeout(RelayError):
    """A relay hop did not answer in time."""


class PeerUnreachable(RelayError):
    """No KM or route to the peer."""


class RelayAuthenticationFailed(RelayError):
    """A relay frame's authentication tag did not verify."""


class PqcUnavailable(RelayError):
    """A hop needed an ML-KEM exchange and could not make one (hybrid provisioning).

    Likely causes: this KM or the peer KM has no certificate, the peer did not answer
    the offer request in time, or the peer's offer did not authenticate.
    """


class PhysicalError(KeyplaneError):
    """The emulated QKD layer failed to produce a block."""


class QberAboveThreshold(PhysicalError):
    """The estimated QBER is above the abort threshold."""

    def __init__(self, qber: float, threshold: float) -> None:
        super().__init__(f"estimated QBER {qber:.4f} above threshold {threshold:.4f}")
        self.qber = qber
        self.threshold = threshold


class ReconciliationFailed(PhysicalError):
    """Error correction or verification did not yield identical keys."""


class ClassicalChannelError(PhysicalError):
    """The classical channel between two QKD modules failed (closed, or out of sync)."""


class ClassicalChannelTimeout(ClassicalChannelError):
    """The peer QKD module did not send the expected message in time."""

    def __init__(self, link_id: str, timeout_s: float) -> None:
        super().__init__(f"link {link_id}: no message from the peer module within {timeout_s} s")
        self.link_id = link_id
        self.timeout_s = timeout_s

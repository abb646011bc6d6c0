"""Access Control: authenticates users and authorizes SAE ids and peers (paper Fig. 2a).

A KM that receives an open request (ETSI 004 OPEN_CONNECT, or the first ETSI 014 call for
an SAE pair) asks, on ``keyplane.control.access``, whether the caller's identity may act as
``sae_id`` towards ``peer_sae_id`` (:class:`~keyplane.messages.AuthRequest` →
:class:`~keyplane.messages.AuthResponse`). The decision has three steps, each with its own
refusal reason (:class:`RefusalReason`):

1. *authenticate*: the identity is a user in the user database — by mTLS certificate
   subject (RFC 4514 string), or by bearer token compared through its SHA-256 digest;
2. *authorize the SAE*: the application ``sae_id`` exists, belongs to that user and is
   attached to the asking KM's node;
3. *authorize the peer*: ``peer_sae_id`` (if given) exists and the user's SLA profile
   allows reaching it.

Every refusal is an ``auth_refused`` event with its reason. Tokens never appear in events,
logs or replies; certificate subjects are identities, not secrets, and are reported.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from enum import StrEnum

from keyplane.bus import Bus, Message, Subscription, topics
from keyplane.clock import Clock
from keyplane.config import Application, User
from keyplane.control.settings import AccessSettings
from keyplane.errors import BusError, StoreError
from keyplane.events import EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import AuthRequest, AuthResponse
from keyplane.store import Database
from keyplane.store.topology import get_application, get_user_by_subject, get_user_by_token

__all__ = ["AccessControl", "AccessDecision", "RefusalReason", "decide"]

logger = logging.getLogger(__name__)

ELEMENT = "access"


class RefusalReason(StrEnum):
    """Why Access Control refused a request (also the ``reason`` of the reply)."""

    unknown_identity = "unknown_identity"  # no user with that certificate subject / token
    unknown_sae = "unknown_sae"  # sae_id is not a registered application
    sae_not_owned = "sae_not_owned"  # the application belongs to another user
    sae_not_at_node = "sae_not_at_node"  # the application is attached to another KM
    unknown_peer = "unknown_peer"  # peer_sae_id is not a registered application
    peer_not_allowed = "peer_not_allowed"  # the user's SLA does not allow that peer
    store_unavailable = "store_unavailable"  # the user database could not be read


@dataclass(frozen=True)
class AccessDecision:
    """The outcome of :func:`decide`."""

    ok: bool
    user_id: str | None = None
    reason: RefusalReason | None = None

    def to_response(self) -> AuthResponse:
        """The bus reply."""
        return AuthResponse(ok=self.ok, user_id=self.user_id if self.ok else None,
                            reason=self.reason.value if self.reason else "")


def decide(req: AuthRequest, user: User | None, app: Application | None,
           peer_app: Application | None, *, require_peer_known: bool = True) -> AccessDecision:
    """Pure authorization decision from what the user database returned.

    Args:
        req: the KM's request.
        user: the user the identity maps to (None: unknown identity).
        app: the application ``req.sae_id`` (None: unknown).
        peer_app: the application ``req.peer_sae_id`` (None: unknown or not asked).
        require_peer_known: refuse a ``peer_sae_id`` that is not a registered application.
    """
    if user is None:
        return AccessDecision(False, reason=RefusalReason.unknown_identity)
    if app is None:
        return AccessDecision(False, reason=RefusalReason.unknown_sae)
    if app.owner != user.id:
        return AccessDecision(False, reason=RefusalReason.sae_not_owned)
    if app.node != req.node:
        return AccessDecision(False, reason=RefusalReason.sae_not_at_node)
    if req.peer_sae_id is not None:
        if peer_app is None and require_peer_known:
            return AccessDecision(False, reason=RefusalReason.unknown_peer)
        if not user.sla.allows_peer(req.peer_sae_id):
            return AccessDecision(False, reason=RefusalReason.peer_not_allowed)
    return AccessDecision(True, user_id=user.id)


class AccessControl(Service):
    """Access Control on the bus (subscribes ``keyplane.control.access``).

    Args:
        bus: where KMs send :class:`~keyplane.messages.AuthRequest`.
        db: the user database (users and applications tables).
        clock: unused by the logic today; kept so every element has the same shape.
        events: receives ``authenticated`` and ``auth_refused`` events.
        settings: :class:`~keyplane.control.settings.AccessSettings`.
    """

    def __init__(self, bus: Bus, db: Database, clock: Clock, events: EventStream, *,
                 settings: AccessSettings | None = None) -> None:
        self.bus = bus
        self.db = db
        self.clock = clock
        self.events = events
        self.settings = settings or AccessSettings()
        self._sub: Subscription | None = None
        self._closed = False

    async def start(self) -> None:
        """Subscribe to authentication requests (idempotent)."""
        if self._sub is None:
            self._sub = await self.bus.subscribe(topics.ACCESS, self._on_request)
            self.events.emit(EventType.element_started, ELEMENT)

    async def authenticate(self, req: AuthRequest) -> AccessDecision:
        """Look the identity, the SAE and the peer up, decide, and emit the event.

        Never raises on a database failure: that is a refusal (``store_unavailable``).
        """
        try:
            if req.method == "token":
                user = await get_user_by_token(self.db, req.identity)
            else:
                user = await get_user_by_subject(self.db, req.identity)
            app = await get_application(self.db, req.sae_id) if user is not None else None
            peer = (await get_application(self.db, req.peer_sae_id)
                    if user is not None and req.peer_sae_id is not None else None)
        except StoreError:
            logger.exception("user database unavailable")
            decision = AccessDecision(False, reason=RefusalReason.store_unavailable)
        else:
            decision = decide(req, user, app, peer,
                              require_peer_known=self.settings.require_peer_known)
        who = {"subject": req.identity} if req.method == "certificate" else {}
        if decision.ok:
            self.events.emit(EventType.authenticated, ELEMENT, node=req.node,
                             user=decision.user_id, sae=req.sae_id, peer=req.peer_sae_id,
                             method=req.method)
        else:
            reason = decision.reason.value if decision.reason else ""
            self.events.emit(EventType.auth_refused, ELEMENT, node=req.node, sae=req.sae_id,
                             peer=req.peer_sae_id, method=req.method, reason=reason, **who)
        return decision

    async def _on_request(self, _topic: str, msg: Message) -> Message | None:
        if not isinstance(msg, AuthRequest):
            return None
        return (await self.authenticate(msg)).to_response()

    async def close(self) -> None:
        """Unsubscribe (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._sub is not None:
            with contextlib.suppress(BusError):
                await self._sub.unsubscribe()
            self.events.emit(EventType.element_stopped, ELEMENT)


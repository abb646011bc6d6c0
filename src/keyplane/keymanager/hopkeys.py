"""The key of each relay hop: link key (QKD), an ML-KEM exchange (PQC), or both (combined).

The half of the KM-to-KM relay (:mod:`keyplane.keymanager.relay`) that turns a hop of a
frame into key bytes, kept apart from the frame flow (source, intermediate, destination)
it serves. The KM that *sends* a frame over a hop picks that hop's key source from the
session's hybrid policy (:mod:`keyplane.keymanager.hybrid`) and what is available now:
link key in the store, an answer to a fresh ML-KEM offer request from the receiving KM
(:mod:`keyplane.keymanager.pqc`), or both. The receiver refuses a frame whose source the
policy does not allow (no downgrade). Each ML-KEM exchange serves one frame: the receiver
drops its decapsulation key when the frame arrives or after ``pqc_offer_ttl_s``. Shared
secrets and derived hop keys live only in locals; they are never logged, put in events or
persisted.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keyplane.bus import Bus, topics
from keyplane.clock import Clock
from keyplane.errors import (
    BusError,
    InsufficientKeyMaterial,
    KeyplaneError,
    KeyStoreError,
    PqcUnavailable,
    RelayAuthenticationFailed,
    RelayError,
)
from keyplane.events import EventStream, EventType
from keyplane.keymanager.hybrid import (
    HopSource,
    allowed_sources,
    needs_pqc,
    needs_qkd,
    preferred_sources,
)
from keyplane.keymanager.keystore import LinkKeyStore, Segment
from keyplane.keymanager.pqc import (
    KmIdentity,
    PqcOffer,
    PqcReceiver,
    PqcReply,
    combine_hop_key,
    pqc_send,
)
from keyplane.keymanager.settings import KmSettings
from keyplane.keymanager.wire import (
    MAC_KEY_BYTES,
    ConfirmFrame,
    DemandFrame,
    KeyFrame,
    PqcBlob,
    PqcOfferReply,
    PqcOfferRequest,
    b64d,
    b64e,
    verify,
)

if TYPE_CHECKING:
    from keyplane.keymanager.relay import RelayHost

__all__ = ["HopKey", "HopKeys"]


@dataclass
class HopKey:
    """The key bytes of one hop of one frame: ``mac_key || pad`` (never printed)."""

    source: HopSource
    segments: list[Segment]
    material: bytes = field(repr=False)
    pqc: PqcBlob | None
    gen: int


@dataclass
class _PendingOffer:
    """A receiver's open ML-KEM offer: usable by one frame from ``peer``, until ``expires``."""

    receiver: PqcReceiver = field(repr=False)
    peer: str
    session_id: str
    epoch: int
    expires: float


def _pqc_context(session_id: str, epoch: int, sender: str, receiver: str,
                 exchange_id: str) -> bytes:
    """What both KMs bind an exchange to (signed, and the HKDF info): the hop and session."""
    return f"keyplane-hop|{session_id}|{epoch}|{sender}->{receiver}|{exchange_id}".encode()


class HopKeys:
    """A KM's hop keys for the frames it sends and receives (one per relay).

    Args:
        host: the key manager (its forwarding table says who may ask for an ML-KEM offer).
        bus, clock, events, settings: the KM's.
        identity: the KM's certificate and key for ML-KEM hops (None: QKD hops only).
    """

    def __init__(self, host: RelayHost, bus: Bus, clock: Clock, events: EventStream,
                 settings: KmSettings, identity: KmIdentity | None = None) -> None:
        self._host = host
        self._bus = bus
        self._clock = clock
        self._events = events
        self._settings = settings
        self.identity = identity
        self.offers: dict[str, _PendingOffer] = {}
        self.hops_sent: Counter[str] = Counter()  # frames sent, by hop source

    async def take(self, session_id: str, epoch: int, peer: str, store: LinkKeyStore,
                   policy: str, nbytes: int, *, deadline: float | None = None,
                   urgent: bool = False) -> HopKey:
        """``nbytes`` of key for one frame to ``peer``, from the best source ``policy`` allows.

        QKD key comes through the session's share of the link (:meth:`RelayHost.take_link_key`):
        when QKD is the last source the policy leaves, the frame waits for it until
        ``deadline`` (default ``forward_key_wait_s`` from now: a hop that cannot know the
        request's timeout; at most half the sender's confirmation wait, so its refusal arrives
        first); with a fallback, only as long as blocks awaiting the peer's
        acknowledgement could cover it (``peer_block_wait_s``).

        Raises:
            KeyWaitExpired: QKD key was needed and the session's share did not cover the
                frame by the deadline.
            InsufficientKeyMaterial: QKD key was preferred, its fallback failed too.
            PqcUnavailable: an ML-KEM exchange was needed and could not be made.
        """
        failures: list[KeyplaneError] = []
        sources = preferred_sources(policy)
        now = self._clock.now()
        for i, source in enumerate(sources):
            segments: list[Segment] = []
            gen = 0
            qkd_key = b""
            if needs_qkd(source):
                hop_wait = min(self._settings.forward_key_wait_s,
                               self._settings.relay_confirm_timeout_s / 2)
                until = now + hop_wait if deadline is None else deadline
                if i < len(sources) - 1:  # a fallback follows: wait only for acknowledgements
                    acks = store.sendable_bytes + store.unconfirmed_bytes >= nbytes
                    until = min(until, now + (self._settings.peer_block_wait_s if acks else 0))
                try:
                    segments, qkd_key, gen = await self._host.take_link_key(
                        store, session_id, nbytes, until, urgent=urgent)
                except KeyStoreError as exc:
                    failures.append(exc if i == len(sources) - 1 else InsufficientKeyMaterial(
                        f"link {store.link_id}: {nbytes} bytes wanted, "
                        f"{store.sendable_bytes} sendable"))
                    continue
            blob: PqcBlob | None = None
            pqc_key = b""
            if needs_pqc(source):
                try:
                    blob, pqc_key = await self._pqc_send(session_id, epoch, peer, nbytes)
                except PqcUnavailable as exc:  # the QKD part taken (if any) is spent
                    failures.append(exc)
                    continue
            material = pqc_key
            if needs_qkd(source):
                material = combine_hop_key(qkd_key, pqc_key) if blob is not None else qkd_key
            self.hops_sent[source.value] += 1
            return HopKey(source, segments, material, blob, gen)
        raise failures[0]

    async def _pqc_send(self, session_id: str, epoch: int, peer: str, nbytes: int
                        ) -> tuple[PqcBlob, bytes]:
        """Sender's side of one ML-KEM exchange with ``peer`` (offer request, encapsulation).

        Raises:
            PqcUnavailable: no identity here, the peer did not answer or refused, or its
                offer did not authenticate.
        """
        if self.identity is None:
            raise PqcUnavailable(f"KM {self._host.node_id} has no certificate for ML-KEM hops")
        xid = uuid.uuid4().hex
        try:
            reply = await self._bus.request(
                topics.km_relay(peer), PqcOfferRequest(session_id=session_id, epoch=epoch,
                                                       sender=self._host.node_id, exchange_id=xid),
                timeout_s=self._settings.pqc_offer_timeout_s)
        except BusError as exc:
            raise PqcUnavailable(f"KM {peer} made no ML-KEM offer: {exc}") from exc
        if not isinstance(reply, PqcOfferReply) or reply.exchange_id != xid:
            raise PqcUnavailable(f"KM {peer} answered the ML-KEM offer request with "
                                 f"{reply.KIND}")
        if not reply.ok:
            raise PqcUnavailable(f"KM {peer} refused an ML-KEM offer: {reply.reason}")
        try:
            offer = PqcOffer(context=_pqc_context(session_id, epoch, self._host.node_id, peer, xid),
                             encapsulation_key=b64d(reply.encapsulation_key),
                             nonce=b64d(reply.nonce), cert_pem=reply.cert_pem.encode(),
                             signature=b64d(reply.signature))
            answer, key = pqc_send(self.identity, peer, offer, nbytes)
        except (ValueError, RelayAuthenticationFailed) as exc:
            raise PqcUnavailable(f"ML-KEM offer from {peer} did not authenticate: {exc}"
                                 ) from exc
        return PqcBlob(exchange_id=xid, ciphertext=b64e(answer.ciphertext),
                       cert_pem=answer.cert_pem.decode(), signature=b64e(answer.signature)), key

    def offer(self, req: PqcOfferRequest) -> PqcOfferReply:
        """Receiver's side, first half: a fresh signed encapsulation key for one frame."""
        def refuse(reason: str) -> PqcOfferReply:
            return PqcOfferReply(exchange_id=req.exchange_id, ok=False, reason=reason)

        if self.identity is None:
            return refuse(f"KM {self._host.node_id} has no certificate for ML-KEM hops")
        entry = self._host.forwarding.at(req.session_id, req.epoch)
        if entry is None or req.sender not in (entry.prev_km, entry.next_km):
            return refuse(f"no hop of session {req.session_id} epoch {req.epoch} "
                          f"with {req.sender}")
        now = self._clock.now()
        for xid in [x for x, o in self.offers.items() if o.expires <= now]:
            del self.offers[xid]
        if len(self.offers) >= self._settings.pqc_max_pending_offers:
            return refuse("too many open ML-KEM offers")
        if req.exchange_id in self.offers:
            return refuse("exchange id in use")
        rx = PqcReceiver(self.identity, req.sender, _pqc_context(
            req.session_id, req.epoch, req.sender, self._host.node_id, req.exchange_id))
        self.offers[req.exchange_id] = _PendingOffer(rx, req.sender, req.session_id, req.epoch,
                                                      now + self._settings.pqc_offer_ttl_s)
        o = rx.offer
        return PqcOfferReply(exchange_id=req.exchange_id, ok=True,
                             encapsulation_key=b64e(o.encapsulation_key), nonce=b64e(o.nonce),
                             cert_pem=o.cert_pem.decode(), signature=b64e(o.signature))

    def _pqc_finish(self, frame: KeyFrame | ConfirmFrame | DemandFrame, nbytes: int) -> bytes:
        """Receiver's side, second half: the frame's ciphertext -> the PQC hop key (once)."""
        blob = frame.pqc
        if blob is None:
            raise RelayError(f"{frame.hop_source} hop without its ML-KEM ciphertext")
        pending = self.offers.pop(blob.exchange_id, None)
        if (pending is None or pending.peer != frame.sender
                or pending.session_id != frame.session_id or pending.epoch != frame.epoch
                or pending.expires <= self._clock.now()):
            raise RelayAuthenticationFailed("frame names no open ML-KEM offer of this hop")
        try:
            reply = PqcReply(ciphertext=b64d(blob.ciphertext), cert_pem=blob.cert_pem.encode(),
                             signature=b64d(blob.signature))
        except ValueError as exc:
            raise RelayAuthenticationFailed("malformed ML-KEM reply") from exc
        return pending.receiver.finish(reply, nbytes)

    def open(self, store: LinkKeyStore, frame: KeyFrame | ConfirmFrame | DemandFrame,
              policy: str, nbytes: int) -> bytes:
        """Take the frame's hop key (named segments and/or ML-KEM), verify its tag; the pad.

        Raises:
            RelayError: wrong link, a source ``policy`` does not allow, or a bad tag.
            KeyStoreError: the named segments are unknown or already used.
        """
        if frame.link_id != store.link_id:
            raise RelayError(f"frame names link {frame.link_id}, expected {store.link_id}")
        source = HopSource(frame.hop_source)
        if source not in allowed_sources(policy):
            raise RelayError(f"hop source {source.value} not allowed by policy {policy}")
        qkd_key = b""
        if needs_qkd(source):
            qkd_key, _ = store.take_received(frame.segments)
            if len(qkd_key) != nbytes:
                raise RelayError(f"frame names {len(qkd_key)} link key bytes, {nbytes} needed")
        elif frame.segments:
            raise RelayError("a PQC hop names link key segments")
        if needs_pqc(source):
            pqc_key = self._pqc_finish(frame, nbytes)
            material = combine_hop_key(qkd_key, pqc_key) if needs_qkd(source) else pqc_key
        else:
            material = qkd_key
        if not verify(frame, material[:MAC_KEY_BYTES]):
            self._events.emit(EventType.key_request_refused, "km", node=self._host.node_id,
                              session=frame.session_id, reason="relay tag did not verify",
                              link_id=store.link_id, hop_source=source.value)
            raise RelayError("authentication tag did not verify")
        return material[MAC_KEY_BYTES:]

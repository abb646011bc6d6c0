"""Trusted-node key relay between KMs (paper §"key management", DESIGN.md §2).

A batch of end-to-end keys goes source -> intermediates -> destination, one frame per hop
(:mod:`keyplane.keymanager.wire`):

1. **Source** (role ``source``): the keys were made fresh by the source KM (``secrets``;
   it is the *link* keys that come from QKD) and written to its vault as ``pending``. It
   takes ``32 + n * size`` bytes of the link key it shares with its next hop, waits until
   that consumption is durable, sends ``KeyFrame(keys XOR pad, HMAC tag)`` and waits (on the
   clock, ``relay_confirm_timeout_s``) for the confirmation. Adjacent endpoints (the next
   hop hosts the destination SAE) skip the fresh key: the link key bytes *are* the keys
   (``direct``).
2. **Intermediate**: consumes exactly the segments the frame names from the link with the
   sender, verifies the tag, removes the pad, re-pads with its own link key to its next hop
   and forwards. It holds no key afterwards.
3. **Destination**: consumes, verifies, removes the pad, stores the keys durably, and sends
   ``ConfirmFrame`` back along the previous hops, each hop authenticated with a fresh
   32-byte MAC key; only after it has been sent are the keys offered to its application.
4. The source marks the keys ``ready`` on a positive confirmation.

Durability: a KM awaits the journal before any byte leaves it for what makes that safe —
its own *send* reservation (so a pad is never reused, even after a crash), the source's
pending keys, the destination's stored keys. Consumption of *received* segments is written
by the same journal without holding the frame up: if a KM crashes before that write, the
segments merely look unused after the restart; the sender never names them again, and a
replayed frame can only repeat a key the destination already treats as a duplicate.

A failure on any hop (no link key, bad tag, no route, timeout) delivers the keys to neither
end: the destination never saw them, or the source never got a confirmation and keeps them
``pending``. The source retries (``relay_attempts``) with fresh link key on the *current*
forwarding entry, so a reroute that happened meanwhile carries the retry; the destination
treats a repeated ``key_ID`` as a duplicate and re-confirms it. Frames name their epoch;
intermediates forward by that epoch's entry, so frames in flight on an old path still
arrive until Admission Control deletes the old entries.

Hybrid hops (:mod:`keyplane.keymanager.hopkeys`, which makes each hop's key;
:mod:`keyplane.keymanager.hybrid`, :mod:`keyplane.keymanager.pqc`): the KM
that *sends* a frame over a hop picks that hop's key source from the session's hybrid
policy (narrowed by the batch's, when an application required a provenance) and what is
available now: link key in the store (QKD), an answer to a fresh ML-KEM offer request from
the receiving KM (PQC), or both (combined). Every frame kind does this, so confirmations
and demands keep flowing through a quantum outage too when the policy allows PQC. The
receiver refuses a frame whose source the policy does not allow (no downgrade). Each ML-KEM
exchange serves one frame: the receiver drops its decapsulation key when the frame arrives
or after ``pqc_offer_ttl_s``. Shared secrets and derived hop keys live only in locals; they
are never logged, put in events or persisted.

Residual window (stated, not hidden): if the destination stored a batch and every
confirmation attempt is lost, the destination holds keys the source still has ``pending``;
the next request of those indexes at the source resends the same keys (same ids and bytes),
which the destination re-confirms, so both ends converge to the same key.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from keyplane.bus import Bus, Message, topics
from keyplane.clock import Clock
from keyplane.errors import (
    BusError,
    BusUnavailable,
    InsufficientKeyMaterial,
    KeyplaneError,
    KeyStoreError,
    KeyWaitExpired,
    PeerUnreachable,
    PqcUnavailable,
    RelayError,
    RelayTimeout,
)
from keyplane.events import EventStream, EventType
from keyplane.keymanager.forwarding import ForwardingEntry, ForwardingTable
from keyplane.keymanager.hopkeys import HopKeys
from keyplane.keymanager.hybrid import hop_record, meet
from keyplane.keymanager.journal import Journal
from keyplane.keymanager.keystore import LinkKeyStore, Segment
from keyplane.keymanager.pqc import KmIdentity
from keyplane.keymanager.settings import KmSettings
from keyplane.keymanager.vault import HeldKey
from keyplane.keymanager.wire import (
    MAC_KEY_BYTES,
    ConfirmFrame,
    DemandFrame,
    KeyFrame,
    LinkBlocksHeld,
    PqcOfferRequest,
    SessionProbe,
    SessionProbeReply,
    b64d,
    b64e,
    seal,
    xor,
)
from keyplane.messages import HopRole

__all__ = ["Relay", "RelayHost"]

logger = logging.getLogger(__name__)

_FORWARDED_REMEMBERED = 4096
"""Forwarded batches an intermediate remembers until their confirmation comes back: far
more than are in flight within one confirmation wait; a retry (``attempt`` > 0) of one of
them means the next hop lost the earlier forward."""


def _cut(keys: list[HeldKey], blob: bytes, size_bytes: int) -> None:
    """Give ``keys`` their bytes, ``size_bytes`` each from ``blob`` in order."""
    for i, k in enumerate(keys):
        k.material = blob[i * size_bytes:(i + 1) * size_bytes]


class RelayHost(Protocol):
    """What the relay needs from its key manager."""

    node_id: str

    @property
    def forwarding(self) -> ForwardingTable:
        """The KM's forwarding table."""
        ...

    def link_store(self, peer: str) -> LinkKeyStore:
        """The store of the link to neighbour ``peer`` (PeerUnreachable if none)."""
        ...

    async def take_link_key(self, store: LinkKeyStore, session_id: str, nbytes: int,
                            deadline: float, *, urgent: bool = False
                            ) -> tuple[list[Segment], bytes, int]:
        """``nbytes`` of ``store``'s send half for a frame of ``session_id``, waiting for the
        session's share of scarce key until ``deadline`` (KeyWaitExpired after it)."""
        ...

    def hold_keys(self, keys: list[HeldKey]) -> int:
        """Source: write new pending keys to the vault; the journal generation."""
        ...

    def accept_keys(self, frame: KeyFrame, keys: list[bytes]
                    ) -> tuple[bool, str, int, list[dict[str, str]]]:
        """Destination: store a batch; ``(ok, reason, journal generation, provenance)``."""
        ...

    def keys_confirmed_sent(self, frame: KeyFrame) -> None:
        """Destination: the confirmation for ``frame`` left; offer its keys."""
        ...

    def link_blocks_held(self, msg: LinkBlocksHeld) -> None:
        """The peer of a link says which blocks it holds."""
        ...

    async def answer_probe(self, msg: SessionProbe) -> SessionProbeReply:
        """An idle probe (keymanager/liveness.py): forward it or answer it."""
        ...

    def demand(self, session_id: str, indexes: list[int]) -> None:
        """Source: the destination asks for ``indexes``."""
        ...


class Relay:
    """A KM's end of the KM-to-KM channel on ``keyplane.km.<node>.relay``.

    Args:
        host: the key manager (link stores, vault, forwarding table).
        bus, journal, clock, events, settings: the KM's.
        identity: the KM's certificate and key for ML-KEM hops (None: QKD hops only;
            a PQC or combined hop towards or from this KM is then unavailable).
    """

    def __init__(self, host: RelayHost, bus: Bus, journal: Journal, clock: Clock,
                 events: EventStream, settings: KmSettings,
                 identity: KmIdentity | None = None) -> None:
        self._host = host
        self._bus = bus
        self._journal = journal
        self._clock = clock
        self._events = events
        self._settings = settings
        self.hop_keys = HopKeys(host, bus, clock, events, settings, identity)
        self._waiters: dict[str, asyncio.Future[ConfirmFrame]] = {}
        self._silent: set[str] = set()  # next hops whose last frame went unconfirmed
        # as an intermediate: batches forwarded and not confirmed back yet, the oldest
        # forgotten first (a batch whose confirmation never comes is retried within seconds)
        self._forwarded: OrderedDict[str, str] = OrderedDict()
        self._offers = self.hop_keys.offers  # the same dict: cancel_all drops open offers
        self.frames_in = 0
        self.frames_dropped = 0
        self.hops_sent = self.hop_keys.hops_sent  # frames sent, by hop source

    @property
    def node_id(self) -> str:
        return self._host.node_id

    @property
    def identity(self) -> KmIdentity | None:
        """The KM's certificate and key for ML-KEM hops (None: QKD hops only)."""
        return self.hop_keys.identity

    @identity.setter
    def identity(self, identity: KmIdentity | None) -> None:
        self.hop_keys.identity = identity

    # ---- source ------------------------------------------------------------------------
    async def send_batch(self, session_id: str, keys: list[HeldKey], size_bytes: int,
                         direct_to: str | None, policy: str | None = None,
                         deadline: float | None = None) -> list[dict[str, str]]:
        """Relay ``keys`` to the session's destination and wait for its confirmation.

        Keys whose ``material`` is None are taken from the hop key directly when the next
        hop is still ``direct_to`` (the adjacent destination they were made for) and none of
        the batch's keys has bytes yet; they are written to the vault through
        :meth:`RelayHost.hold_keys` in the same commit as the link key consumption. Else
        (the session was rerouted since, or a resent key rides with them) they get fresh
        random bytes, are held, and travel encrypted like any relayed key: a direct frame
        reaching an intermediate is dropped there, and a resent key's bytes must not change
        (its destination may hold them already).

        Args:
            direct_to: the node direct keys may go to (None: no direct frame).
            policy: a hybrid policy narrowing the session's for this batch (an
                application's required provenance); None: the session's.
            deadline: the clock time until which the batch may wait for its share of
                scarce link key (its requests' QoS timeout); None: ``forward_key_wait_s``.

        Returns:
            The batch's provenance as the destination confirmed it (one record per hop).

        Raises:
            PeerUnreachable: no route or no link to the next hop.
            RelayTimeout: no confirmation after ``relay_attempts`` attempts.
            InsufficientKeyMaterial: no QKD key where the policy needs it.
            KeyWaitExpired: the link key did not come by ``deadline`` (not retried).
            PqcUnavailable: no ML-KEM exchange where the policy needs one.
            RelayError: the destination refused the batch.
        """
        batch_id = uuid.uuid4().hex
        last: KeyplaneError | None = None
        for attempt in range(self._settings.relay_attempts):
            try:
                confirm = await self._attempt(session_id, keys, size_bytes, direct_to,
                                              batch_id, attempt, policy, deadline)
            except KeyWaitExpired:
                raise
            except (RelayTimeout, KeyStoreError, BusError, PqcUnavailable) as exc:
                last = exc if isinstance(exc, KeyplaneError) else RelayError(str(exc))
                logger.info("relay %s attempt %d failed: %s", batch_id, attempt + 1, exc)
                continue
            if confirm.ok:
                return list(confirm.provenance)
            last = _refusal(confirm)
            if confirm.reason.startswith("refused:"):
                break
        if last is None or type(last) is RelayTimeout:
            raise RelayTimeout(
                f"session {session_id}: no confirmation after {self._settings.relay_attempts} "
                f"attempt(s)") from last
        raise last

    async def _attempt(self, session_id: str, keys: list[HeldKey], size_bytes: int,
                       direct_to: str | None, batch_id: str, attempt: int,
                       batch_policy: str | None,
                       deadline: float | None = None) -> ConfirmFrame:
        entry = self._host.forwarding.current(session_id)
        if entry is None or entry.next_km is None:
            raise PeerUnreachable(f"session {session_id}: no next hop configured")
        policy = meet(entry.hybrid_policy, batch_policy)
        if policy is None:
            raise RelayError(f"refused: policy {batch_policy} conflicts with the session's "
                             f"{entry.hybrid_policy}")
        store = self._host.link_store(entry.next_km)
        fresh = [k for k in keys if k.material is None]
        direct = len(fresh) == len(keys) and entry.next_km == direct_to
        if fresh and not direct:
            _cut(fresh, secrets.token_bytes(size_bytes * len(fresh)), size_bytes)
            # durable now, not only before this attempt's frame: if the attempt fails
            # before its frame, the next one finds them with bytes and waits for no commit
            await self._journal.flushed(self._host.hold_keys(fresh))
        n = len(keys) * size_bytes
        await self._bus_up(session_id, deadline)
        if entry.next_km in self._silent:
            await self._next_hop_answers(session_id, entry.epoch, entry.next_km, deadline)
        hop = await self.hop_keys.take(session_id, entry.epoch, entry.next_km, store, policy.value,
                                       MAC_KEY_BYTES + n, deadline=deadline)
        mac_key, pad = hop.material[:MAC_KEY_BYTES], hop.material[MAC_KEY_BYTES:]
        gen = hop.gen
        ciphertext = ""
        if direct:
            _cut(keys, pad, size_bytes)
            gen = max(gen, self._host.hold_keys(keys))
        else:
            ciphertext = b64e(xor(b"".join(k.material or b"" for k in keys), pad))
        frame = seal(KeyFrame(
            session_id=session_id, epoch=entry.epoch, sender=self.node_id,
            link_id=store.link_id, segments=hop.segments, batch_id=batch_id,
            key_ids=[k.key_id for k in keys], indexes=[k.index for k in keys],
            key_size_bytes=size_bytes, direct=direct, ciphertext=ciphertext, attempt=attempt,
            hop_source=hop.source.value, pqc=hop.pqc, policy=batch_policy,
            provenance=[hop_record(self.node_id, entry.next_km, hop.source)],
        ), mac_key)
        await self._journal.flushed(gen)
        fut: asyncio.Future[ConfirmFrame] = asyncio.get_running_loop().create_future()
        self._waiters[batch_id] = fut
        try:
            await self._bus.publish(topics.km_relay(entry.next_km), frame)
            self._relayed_event(frame, entry.next_km)
            try:
                confirm = await self._clock.wait_for(fut,
                                                     self._settings.relay_confirm_timeout_s)
                self._silent.discard(entry.next_km)
                return confirm
            except TimeoutError as exc:
                self._silent.add(entry.next_km)
                raise RelayTimeout(
                    f"session {session_id}: hop {self.node_id}->{entry.next_km} confirmation "
                    f"not received within {self._settings.relay_confirm_timeout_s} s") from exc
        finally:
            self._waiters.pop(batch_id, None)

    async def _bus_up(self, session_id: str, deadline: float | None) -> None:
        """Wait for the bus before spending link key on a frame, within the batch's deadline
        (None: one confirmation wait). A frame sent while the bus reconnects sits in the
        client's buffer, its attempt times out and the next one spends fresh key: a 30 s
        outage emptied the links' stores that way, and after it every KM waited for new
        blocks (issue #14's resumption after a NATS outage).

        Raises:
            BusUnavailable: the bus was not back by then (nothing spent).
        """
        if self._bus.connected:
            return
        now = self._clock.now()
        until = now + self._settings.relay_confirm_timeout_s if deadline is None else deadline
        try:
            await self._clock.wait_for(self._bus.wait_connected(), max(0.0, until - now))
        except TimeoutError:
            raise BusUnavailable(f"session {session_id}: the bus did not come back within "
                                 f"the batch's timeout; no link key spent") from None

    async def _next_hop_answers(self, session_id: str, epoch: int, hop: str,
                                deadline: float | None) -> None:
        """Before fresh link key goes to a hop whose last frame went unconfirmed, ask it
        (a probe, which carries no key) until it answers, within the batch's deadline
        (None: one confirmation wait). A frame to a KM that is down or restarting spends
        its key for nothing: with three attempts per batch and several batches, a source
        emptied its store into a killed intermediate and waited for new blocks after the
        intermediate came back (the fault matrix's intermediate kill at 6x load).

        Raises:
            RelayTimeout: ``hop`` did not answer by then (nothing spent).
        """
        bound = self._settings.relay_confirm_timeout_s
        until = self._clock.now() + bound if deadline is None else deadline
        while True:
            start = self._clock.now()
            left = min(bound, until - start)
            if left <= 0:
                raise RelayTimeout(f"session {session_id}: hop {self.node_id}->{hop} does not "
                                   f"answer; no link key spent")
            try:
                reply = await self._bus.request(topics.km_relay(hop), SessionProbe(
                    session_id=session_id, epoch=epoch, sender=self.node_id, target=hop,
                    timeout_s=left), timeout_s=left)
                if isinstance(reply, SessionProbeReply) and reply.node == hop:
                    self._silent.discard(hop)
                    return
            except BusError as exc:
                logger.info("node %s: hop %s does not answer yet: %s", self.node_id, hop, exc)
            # no responders comes back at once: ask again after one bound, not in a loop
            await self._clock.sleep(max(0.0, min(until, start + left) - self._clock.now()))

    def _relayed_event(self, frame: KeyFrame, to: str) -> None:
        self._events.emit(EventType.key_relayed, "km", node=self.node_id,
                          session=frame.session_id, hop=f"{self.node_id}->{to}",
                          link_id=frame.link_id,
                          link_key_ids=[f"{b}:{o}+{n}" for b, o, n in frame.segments],
                          key_ids=frame.key_ids, key_count=len(frame.key_ids),
                          direct=frame.direct, attempt=frame.attempt,
                          hop_source=frame.hop_source, provenance=frame.provenance)

    # ---- destination -> source ---------------------------------------------------------
    async def send_demand(self, session_id: str, indexes: list[int],
                          deadline: float | None = None) -> None:
        """Ask the source (back along the previous hops) to produce ``indexes``, waiting for
        the frame's link key until ``deadline`` (the request's; None: ``forward_key_wait_s``).

        Raises:
            PeerUnreachable: no previous hop or link.
            KeyStoreError / PqcUnavailable: no hop key the policy allows for the tag.
        """
        entry = self._host.forwarding.current(session_id)
        if entry is None or entry.prev_km is None:
            raise PeerUnreachable(f"session {session_id}: no previous hop configured")
        store = self._host.link_store(entry.prev_km)
        hop = await self.hop_keys.take(session_id, entry.epoch, entry.prev_km, store,
                                       entry.hybrid_policy, MAC_KEY_BYTES, deadline=deadline,
                                       urgent=True)
        frame = seal(DemandFrame(session_id=session_id, epoch=entry.epoch, sender=self.node_id,
                                 link_id=store.link_id, segments=hop.segments, indexes=indexes,
                                 hop_source=hop.source.value, pqc=hop.pqc), hop.material)
        await self._journal.flushed(hop.gen)
        await self._bus.publish(topics.km_relay(entry.prev_km), frame)

    # ---- frames in ---------------------------------------------------------------------
    async def handle(self, topic: str, msg: Message) -> Message | None:
        """Bus handler for ``keyplane.km.<node>.relay`` (frames; ML-KEM offer requests)."""
        if isinstance(msg, PqcOfferRequest):
            return self.hop_keys.offer(msg)
        if isinstance(msg, SessionProbe):
            return await self._host.answer_probe(msg)
        if isinstance(msg, LinkBlocksHeld):
            try:
                self._host.link_blocks_held(msg)
            except KeyplaneError as exc:
                self._drop(msg, str(exc))
            return None
        self.frames_in += 1
        try:
            if isinstance(msg, KeyFrame):
                await self._on_key(msg)
            elif isinstance(msg, ConfirmFrame):
                await self._on_confirm(msg)
            elif isinstance(msg, DemandFrame):
                await self._on_demand(msg)
            else:
                self._drop(msg, f"unexpected {type(msg).__name__} on the relay topic")
        except (KeyplaneError, ValueError) as exc:
            self._drop(msg, str(exc))
        return None

    def _drop(self, msg: Message, why: str) -> None:
        self.frames_dropped += 1
        logger.warning("node %s dropped relay frame %s: %s", self.node_id, msg.KIND, why)

    def _entry(self, session_id: str, epoch: int, sender: str, from_next: bool
               ) -> ForwardingEntry:
        entry = self._host.forwarding.at(session_id, epoch)
        if entry is None:
            raise RelayError(f"no forwarding entry for session {session_id} epoch {epoch}")
        expected = entry.next_km if from_next else entry.prev_km
        if sender != expected:
            raise RelayError(f"frame from {sender}, expected {expected}")
        return entry

    async def _on_key(self, frame: KeyFrame) -> None:
        entry = self._entry(frame.session_id, frame.epoch, frame.sender, from_next=False)
        policy = meet(entry.hybrid_policy, frame.policy)
        if policy is None:
            raise RelayError(f"batch policy {frame.policy} conflicts with the session's "
                             f"{entry.hybrid_policy}")
        store = self._host.link_store(frame.sender)
        n = len(frame.key_ids) * frame.key_size_bytes
        pad = self.hop_keys.open(store, frame, policy.value, MAC_KEY_BYTES + n)
        if len(frame.indexes) != len(frame.key_ids):
            raise RelayError("key frame sizes do not match")
        keys_blob = pad if frame.direct else xor(b64d(frame.ciphertext), pad)
        if entry.role is HopRole.intermediate:
            if frame.direct or entry.next_km is None:
                raise RelayError("direct key frame at an intermediate KM")
            nstore = self._host.link_store(entry.next_km)
            if frame.attempt > 0 and self._forwarded.get(frame.batch_id) == entry.next_km:
                self._silent.add(entry.next_km)  # our forward of an earlier attempt was lost
            if entry.next_km in self._silent:
                try:  # no fresh key into a hop that is down: ask it first (half a wait, so
                    # the source hears the refusal before its own wait ends)
                    await self._next_hop_answers(frame.session_id, frame.epoch, entry.next_km,
                                                 self._clock.now() + self._settings
                                                 .relay_confirm_timeout_s / 2)
                except RelayTimeout as exc:
                    await self._refuse(frame, entry, store, f"hop {self.node_id}: {exc}",
                                       type(exc).__name__)
                    return
            try:
                hop = await self.hop_keys.take(frame.session_id, frame.epoch, entry.next_km, nstore,
                                               policy.value, MAC_KEY_BYTES + n)
            except (KeyStoreError, RelayError) as exc:
                await self._refuse(frame, entry, store, f"hop {self.node_id}: {exc}",
                                   type(exc).__name__)
                return
            out = seal(frame.model_copy(update={
                "sender": self.node_id, "link_id": nstore.link_id, "segments": hop.segments,
                "ciphertext": b64e(xor(keys_blob, hop.material[MAC_KEY_BYTES:])),
                "direct": False, "hop_source": hop.source.value, "pqc": hop.pqc,
                "provenance": [*frame.provenance,
                               hop_record(self.node_id, entry.next_km, hop.source)],
            }), hop.material[:MAC_KEY_BYTES])
            # only the *sending* side's consumption must be durable before bytes leave
            # (a pad is never reused); the received segments are recorded by the same
            # journal in this or the next commit (see the module docstring)
            await self._journal.flushed(hop.gen)
            await self._bus.publish(topics.km_relay(entry.next_km), out)
            self._relayed_event(out, entry.next_km)
            self._forwarded[frame.batch_id] = entry.next_km
            while len(self._forwarded) > _FORWARDED_REMEMBERED:
                self._forwarded.popitem(last=False)
            return
        if entry.role is not HopRole.destination:
            raise RelayError("key frame at the source KM")
        keys = [keys_blob[i * frame.key_size_bytes:(i + 1) * frame.key_size_bytes]
                for i in range(len(frame.key_ids))]
        ok, reason, gen3, provenance = self._host.accept_keys(frame, keys)
        hop = await self.hop_keys.take(frame.session_id, frame.epoch, frame.sender, store,
                                       entry.hybrid_policy, MAC_KEY_BYTES, urgent=True)
        confirm = seal(ConfirmFrame(
            session_id=frame.session_id, epoch=frame.epoch, sender=self.node_id,
            link_id=store.link_id, segments=hop.segments, batch_id=frame.batch_id,
            key_ids=frame.key_ids, ok=ok, reason=reason, hop_source=hop.source.value,
            pqc=hop.pqc, provenance=provenance), hop.material)
        await self._journal.flushed(max(gen3, hop.gen))  # keys stored before confirmed
        await self._bus.publish(topics.km_relay(frame.sender), confirm)
        if ok:
            self._host.keys_confirmed_sent(frame)

    async def _refuse(self, frame: KeyFrame, entry: ForwardingEntry, store: LinkKeyStore,
                      reason: str, cause: str) -> None:
        """Tell the source at once that this hop cannot carry the batch (best effort).

        ``cause`` (the error's class name) lets the source raise the same error, so an
        application learns e.g. "insufficient key" rather than a generic relay failure.
        """
        try:
            hop = await self.hop_keys.take(frame.session_id, frame.epoch, frame.sender, store,
                                           entry.hybrid_policy, MAC_KEY_BYTES, urgent=True)
        except (KeyStoreError, RelayError) as exc:
            logger.warning("node %s cannot even refuse batch %s: %s (%s)", self.node_id,
                           frame.batch_id, reason, exc)
            return
        confirm = seal(ConfirmFrame(
            session_id=frame.session_id, epoch=frame.epoch, sender=self.node_id,
            link_id=store.link_id, segments=hop.segments, batch_id=frame.batch_id,
            key_ids=frame.key_ids, ok=False, reason=reason, cause=cause,
            hop_source=hop.source.value, pqc=hop.pqc), hop.material)
        await self._journal.flushed(hop.gen)
        await self._bus.publish(topics.km_relay(frame.sender), confirm)

    async def _on_confirm(self, frame: ConfirmFrame) -> None:
        entry = self._entry(frame.session_id, frame.epoch, frame.sender, from_next=True)
        store = self._host.link_store(frame.sender)
        self.hop_keys.open(store, frame, entry.hybrid_policy, MAC_KEY_BYTES)
        if entry.role is HopRole.intermediate:
            self._forwarded.pop(frame.batch_id, None)
            self._silent.discard(frame.sender)
            await self._forward_back(frame, entry)
            return
        fut = self._waiters.get(frame.batch_id)
        if fut is not None and not fut.done():
            fut.set_result(frame)

    async def _on_demand(self, frame: DemandFrame) -> None:
        entry = self._entry(frame.session_id, frame.epoch, frame.sender, from_next=True)
        store = self._host.link_store(frame.sender)
        self.hop_keys.open(store, frame, entry.hybrid_policy, MAC_KEY_BYTES)
        if entry.role is HopRole.intermediate:
            await self._forward_back(frame, entry)
            return
        if entry.role is HopRole.source:
            self._host.demand(frame.session_id, list(frame.indexes))

    async def _forward_back(self, frame: ConfirmFrame | DemandFrame, entry: ForwardingEntry
                            ) -> None:
        if entry.prev_km is None:
            raise RelayError("intermediate entry without a previous hop")
        pstore = self._host.link_store(entry.prev_km)
        hop = await self.hop_keys.take(frame.session_id, frame.epoch, entry.prev_km, pstore,
                                       entry.hybrid_policy, MAC_KEY_BYTES, urgent=True)
        out = seal(frame.model_copy(update={"sender": self.node_id, "link_id": pstore.link_id,
                                            "segments": hop.segments,
                                            "hop_source": hop.source.value, "pqc": hop.pqc}),
                   hop.material)
        await self._journal.flushed(hop.gen)
        await self._bus.publish(topics.km_relay(entry.prev_km), out)

    def cancel_all(self, reason: Callable[[], BaseException]) -> None:
        """Fail every source waiting for a confirmation (KM closing); drop open offers."""
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(reason())
        self._waiters.clear()
        self._offers.clear()


def _refusal(confirm: ConfirmFrame) -> KeyplaneError:
    """The error a negative confirmation stands for (its ``cause``, else a relay error)."""
    if confirm.cause == InsufficientKeyMaterial.__name__:
        return InsufficientKeyMaterial(confirm.reason)
    if confirm.cause == KeyWaitExpired.__name__:
        return KeyWaitExpired(confirm.reason)
    if confirm.cause == PqcUnavailable.__name__:
        return PqcUnavailable(confirm.reason)
    return RelayError(f"destination refused key batch: {confirm.reason}")

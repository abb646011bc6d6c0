"""The key manager shell's application operations: ETSI 004 and ETSI 014.

Each operation checks its input, asks Access/Admission Control over the bus where the
standard's flow needs it, and runs key requests through :mod:`~keyplane.keymanager.production`.
Session bookkeeping (streams, pairs, indexes) is the core's (:mod:`~keyplane.keymanager.core`).

* ETSI 004: :meth:`_Requests.open_connect`, :meth:`_Requests.get_key` and
  :meth:`_Requests.close_stream` (CLOSE; ``close()`` is the KM's lifecycle close).
* ETSI 014: the first ``enc_keys`` for an SAE pair opens an implicit session
  (``interface="etsi014"``; Admission Control configures the path without waiting for the
  slave); keys are made at the master's KM, relayed, and held at the slave's KM for
  ``dec_keys``, which hands each key once and only to the slave it was made for. An
  application may require a provenance with ``extension_mandatory:
  [{"keyplane_provenance": <policy>}]`` (docs/hybrid.md).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from keyplane import config
from keyplane.bus import topics
from keyplane.errors import (
    AuthenticationFailed,
    BusError,
    ControlPlaneUnreachable,
    ExtensionNotMet,
    KeyNotFound,
    PeerNotConnected,
    PeerUnreachable,
    QosNotMet,
    RelayTimeout,
    SessionIdInUse,
    SessionNotFound,
)
from keyplane.events import EventType
from keyplane.keymanager.ack014 import _Ack014
from keyplane.keymanager.core import Interface, Stream
from keyplane.keymanager.effects import digest
from keyplane.keymanager.hybrid import (
    PROVENANCE_EXTENSION,
    meet,
    provenance_requirement,
    satisfies,
)
from keyplane.keymanager.interface import (
    Caller,
    DeliveredKeys,
    GetKeyResult,
    OpenResult,
    PairStatus,
)
from keyplane.keymanager.session import SessionEvent, SessionState
from keyplane.keymanager.vault import HeldKey
from keyplane.messages import (
    AuthRequest,
    AuthResponse,
    HopRole,
    OpenAck,
    Qos,
    SessionOpenRequest,
)

__all__ = ["NIL_KEY_STREAM_ID"]

NIL_KEY_STREAM_ID = "00000000-0000-0000-0000-000000000000"
"""The nil UUID: ETSI 004 clients send it as Key_stream_ID to mean "assign one"."""


def _answer(keys: Sequence[HeldKey], materials: Sequence[bytes]) -> DeliveredKeys:
    """ETSI 014 keys with their provenance extension, as lists (no object per key): one
    extension per distinct provenance list (a relay batch's keys share one; a copy of it,
    so the answer owns it)."""
    extensions: dict[int, dict[str, Any]] = {}
    exts: list[dict[str, Any] | None] = []
    for k in keys:
        p = k.provenance
        ext = extensions.get(id(p))
        if ext is None:
            ext = extensions[id(p)] = {PROVENANCE_EXTENSION: list(p)}
        exts.append(ext)
    if len(materials) != len(keys):
        raise ValueError("one key's bytes each")
    return DeliveredKeys([k.key_id for k in keys], list(materials), exts)


class _Requests(_Ack014):
    """ETSI 004 and ETSI 014 on top of the key work (see the module docstring)."""

    _pair_locks: dict[tuple[str, str], asyncio.Lock]

    # ==== opening sessions =============================================================
    async def _authenticate(self, caller: Caller, sae_id: str, peer: str | None) -> str:
        try:
            reply = await self._bus.request(topics.ACCESS, AuthRequest(
                node=self.node_id, sae_id=sae_id, peer_sae_id=peer, method=caller.method,
                identity=caller.identity), timeout_s=self.settings.auth_request_timeout_s)
        except BusError as exc:
            raise ControlPlaneUnreachable(
                f"Access Control did not answer within "
                f"{self.settings.auth_request_timeout_s} s: {exc}") from exc
        if not isinstance(reply, AuthResponse):
            raise ControlPlaneUnreachable(f"Access Control answered with {reply.KIND}")
        if not reply.ok:
            raise AuthenticationFailed(reply.reason or f"{sae_id} refused by Access Control")
        return reply.user_id or ""

    async def open_connect(self, caller: Caller, source: str, destination: str, qos: Qos,
                           key_stream_id: str | None) -> OpenResult:
        """ETSI 004 OPEN_CONNECT (see :class:`~keyplane.keymanager.interface.ApplicationService`).

        Raises:
            AuthenticationFailed: the caller may not act as ``source`` (ETSI 401).
            SessionIdInUse: ``key_stream_id`` is taken at this KM (status 5).
            QosNotMet: Admission Control refused (status 7).
            ControlPlaneUnreachable: Access/Admission Control did not answer (status 6).
        """
        self._check_running()
        return await self._open(caller, source, destination, qos, key_stream_id, "etsi004")

    async def _open(self, caller: Caller, source: str, destination: str, qos: Qos,
                    key_stream_id: str | None, interface: Interface) -> OpenResult:
        self._check_local_app(source)
        self._peer_node(destination)
        # ETSI 004 6.3: a null Key_stream_ID (absent, or the nil UUID clients send for it)
        # asks the KM for a new one
        assigned = key_stream_id is None or key_stream_id == NIL_KEY_STREAM_ID
        sid = str(uuid.uuid4()) if assigned else str(key_stream_id)
        owner = digest(caller.principal)
        existing = self.core.streams.get(sid)
        if not assigned and existing is not None and existing.live \
                and existing.owner == owner and not existing.implicit \
                and existing.interface == interface == "etsi004" \
                and (existing.local_sae, existing.peer_sae) == (source, destination):
            # the opener asks again for its own stream (it got status 1): its state now,
            # with the negotiated QoS once the peer joined (the same at both ends)
            return OpenResult(sid, self.core.served_qos(existing), existing.config is not None)
        user = ""
        if existing is not None and existing.live and existing.implicit \
                and existing.owner is None and existing.local_sae == source \
                and existing.peer_sae == destination:
            # an implicit stream (configured for this end first) is joined once Access
            # Control accepts the caller
            user = await self._authenticate(caller, source, destination)
        s, joined = self.core.claim_open(owner, source, destination, qos, sid, interface)
        if joined:
            s.user_id = user
            self._run([self.core.persist(s)])
            return OpenResult(sid, self.core.served_qos(s), True)
        io = self._io(sid)
        decision: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        io.decision = decision
        self._emit(EventType.request_arrived, session=sid, sae=source, peer=destination,
                   interface=interface)
        try:
            s.user_id = await self._authenticate(caller, source, destination)
        except (AuthenticationFailed, ControlPlaneUnreachable, PeerUnreachable) as exc:
            self._apply(s, SessionEvent.auth_refused)
            self._emit(EventType.auth_refused, session=sid, reason=str(exc))
            raise
        self._apply(s, SessionEvent.auth_ok)
        self._emit(EventType.authenticated, session=sid, user=s.user_id)
        try:
            ack = await self._bus.request(topics.ADMISSION, SessionOpenRequest(
                session_id=sid, node=self.node_id, user_id=s.user_id, source_sae=source,
                destination_sae=destination, qos=qos, interface=interface),
                timeout_s=self.settings.admission_request_timeout_s)
        except BusError as exc:
            if s.live:
                self._apply(s, SessionEvent.close)
            raise ControlPlaneUnreachable(
                f"Admission Control did not answer within "
                f"{self.settings.admission_request_timeout_s} s: {exc}") from exc
        self._emit(EventType.admission_requested, session=sid)
        if isinstance(ack, OpenAck) and not ack.accepted_for_review and s.live:
            # Admission Control answers this only for a Key_stream_ID already in use
            self._apply(s, SessionEvent.admission_refused)
            self._emit(EventType.admission_refused, session=sid, reason=ack.reason)
            raise SessionIdInUse(ack.reason or f"Key_stream_ID {sid} is already in use")
        if isinstance(ack, OpenAck) and ack.waiting_for_peer and not decision.done():
            # ETSI 004 6.3: the peer has not opened this Key_stream_ID yet: status 1 now.
            # Admission Control keeps the open joinable until its QoS Timeout, then refuses
            # it (the stream ends here); GET_KEY meanwhile waits for the configuration.
            self._spawn(self._config_watchdog(s), f"km-config-wait-{sid}")
            self._emit(EventType.peer_waiting, session=sid)
            return OpenResult(sid, qos, False)
        try:
            # up to the QoS Timeout: a refusal (QoS above the SLA, status 7) or the peer
            # (status 0) may still come; after it, status 1
            await self._clock.wait_for(asyncio.shield(decision), qos.timeout_ms / 1000)
            # s.session_id differs from sid when Admission Control merged our request into
            # the peer's stream: both applications get the same Key_stream_ID
            return OpenResult(s.session_id, self.core.served_qos(s), True)
        except TimeoutError:
            pass
        except SessionNotFound as exc:
            raise QosNotMet(f"session ended while opening: {exc}") from exc
        if not s.live:
            raise QosNotMet("session ended while opening")
        # configured later (ETSI 004 status 1): keep waiting in the background, bounded
        self._spawn(self._config_watchdog(s), f"km-config-wait-{sid}")
        self._emit(EventType.peer_waiting, session=sid)
        return OpenResult(sid, qos, False)

    async def _configured(self, s: Stream) -> None:
        """Wait, up to the stream's QoS Timeout, for a stream opened with status 1 to be
        joined by its peer and configured.

        Raises:
            PeerNotConnected: not within the Timeout, or the open was refused or expired.
        """
        io = self._io_of.get(s.session_id)
        pending = io.decision if io is not None else None
        if pending is None or (pending.done() and pending.exception() is not None):
            raise PeerNotConnected(f"stream {s.session_id}: the peer has not connected")
        try:
            await self._clock.wait_for(asyncio.shield(pending), s.qos.timeout_ms / 1000)
        except (TimeoutError, QosNotMet, SessionNotFound) as exc:
            raise PeerNotConnected(f"stream {s.session_id}: the peer has not connected "
                                   f"({exc or 'QoS Timeout'})") from None

    async def _config_watchdog(self, s: Stream) -> None:
        await self._clock.sleep(self.settings.config_wait_s)
        if s.machine.state is SessionState.user_accepted:
            self._apply(s, SessionEvent.config_timeout)

    # ==== ETSI 004 ======================================================================
    async def get_key(self, caller: Caller, key_stream_id: str, index: int | None,
                      metadata: dict[str, Any] | None = None, *, acknowledge: bool = False,
                      confirm: Sequence[int] = ()) -> GetKeyResult:
        """ETSI 004 GET_KEY: the chunk at ``index`` (this end's next one when None).

        With ``acknowledge`` (opt-in, #14.4, docs/api/etsi004.md "GET_KEY with
        acknowledgement") the chunk is handed out without being spent: it stays held, sealed
        in the store, for this stream's owner, who may fetch it again (after a KM crash
        between delivery and the answer, say) until it confirms it. ``confirm`` names
        indexes the caller received and confirms now (they are spent durably, before this
        call's chunk is served); CLOSE confirms the rest. Without ``acknowledge`` a chunk is
        spent durably before it is returned (#14.1): a crash in between loses it.

        Raises:
            SessionNotFound: no such stream for this caller.
            PeerNotConnected: the stream is not configured yet (status 3).
            RateLimited / TimeoutError / RelayTimeout: not within the QoS timeout (status 6).
            KmBusy, InsufficientKeyMaterial: no capacity now (status 2).
            PeerUnreachable: no route (status 4).
            KeyNotFound: ``index`` was already delivered (or confirmed) at this end, or a
                ``confirm`` index was never handed out here.
            StoreError: the delivery could not be written; the same index is served again.
        """
        s = self.core.app_stream(digest(caller.principal), key_stream_id)
        if confirm:
            await self._confirm(s, confirm)
        if index is not None and index < 0:
            raise KeyNotFound("a stream index is >= 0")
        if s.machine.state is SessionState.user_accepted:
            await self._configured(s)
        size = s.config.key_chunk_size if s.config else s.qos.key_chunk_size
        idx = self.core.next_get_index(s, index)
        timeout_s = s.wait_s
        async with self._exchange(s, size * 8, timeout_s) as deadline:
            held = self.vault.get(s.session_id, idx)
            if held is not None and held.state == "delivered":
                raise KeyNotFound(f"stream {key_stream_id}: index {idx} was already delivered")
            if s.role is HopRole.source:
                try:
                    await self._clock.wait_for(
                        self._ensure_source(s, [idx], size, deadline=deadline),
                        deadline - self._clock.now())
                except TimeoutError:
                    raise RelayTimeout(f"stream {key_stream_id}: index {idx} not relayed "
                                       f"within the QoS timeout") from None
                k = self.vault.get(s.session_id, idx)
                if k is None or k.state != "ready":
                    raise KeyNotFound(f"stream {key_stream_id}: index {idx} is not available")
            else:
                k = await self._destination_key(s, idx, deadline)
            if acknowledge:
                material = await self._hand_unconfirmed(s, k)
            else:
                (material,) = await self._deliver(s, [k], announce=idx not in s.unconfirmed)
                s.unconfirmed.discard(idx)
            self.core.delivered_index(s, idx)
        meta = dict(metadata or {})
        meta.update(key_ID=k.key_id)
        meta[PROVENANCE_EXTENSION] = list(k.provenance)
        return GetKeyResult(key_stream_id, idx, material, meta)

    async def _hand_unconfirmed(self, s: Stream, k: HeldKey) -> bytes:
        """The bytes of a held key, left held for the owner until it confirms them.

        Durable before delivered holds here too: the key's row (state ``ready``, sealed
        bytes) is committed before the bytes leave, so a crash after the answer leaves it
        in the store for the owner to fetch again, and for no one else (GET_KEY serves a
        stream's indexes to its owner only).

        Raises:
            KeyNotFound: the key is no longer held.
            StoreError: the key's row could not be written; it is not handed out.
        """
        if k.state != "ready" or k.material is None:
            raise KeyNotFound(f"stream {s.session_id}: index {k.index} is not available")
        material = k.material
        await self.journal.flushed(self.vault.touch(k))
        if k.index not in s.unconfirmed:  # announced once, not per fetch or confirmation
            s.unconfirmed.add(k.index)
            self._announce_delivered(s, [k], [material])
        return material

    async def _confirm(self, s: Stream, indexes: Sequence[int]) -> None:
        """Spend, durably, keys the owner received with acknowledgement.

        An index already spent (confirmed twice, or fetched without acknowledgement)
        changes nothing. An index this end holds for the owner may be confirmed even if
        this process did not hand it out: a KM restarted between handing it out and its
        confirmation no longer knows (``unconfirmed`` is memory only), the owner does (it
        can only spend its own key).

        Raises:
            KeyNotFound: an index was never handed out at this end.
            StoreError: the confirmation could not be written (the keys stay held).
        """
        keys: list[HeldKey] = []
        for i in sorted(set(indexes)):
            k = self.vault.get(s.session_id, i)
            if i not in s.unconfirmed and i >= s.next_index and (k is None
                                                                  or k.state != "ready"):
                raise KeyNotFound(f"stream {s.session_id}: index {i} was not handed out here, "
                                  f"it cannot be confirmed")
            if k is not None and k.state != "delivered":
                keys.append(k)
        if keys:
            await self._deliver(s, keys, announce=False)
            for k in keys:  # this end's next index moves past what the owner holds
                self.core.delivered_index(s, k.index)
        s.unconfirmed.difference_update(indexes)

    async def close_stream(self, caller: Caller, key_stream_id: str) -> None:
        """ETSI 004 CLOSE: end the caller's stream, free its resources and tell Admission
        Control (``SessionClose(reason="close")``).

        Closing a stream that already ended (the peer closed it, Admission Control deleted
        it, or the idle timer fired) succeeds and changes nothing: CLOSE is idempotent.

        Raises:
            SessionNotFound: no such stream for this caller.
        """
        owner = digest(caller.principal)
        s = self.core.stream(key_stream_id)
        if s is not None and s.owner == owner and not s.live:
            return
        s = self.core.app_stream(owner, key_stream_id)
        self._apply(s, SessionEvent.close)
        await self.journal.sync()

    # ==== ETSI 014 ======================================================================
    def _check_014(self, number: int, size_bits: int, additional_slaves: list[str] | None,
                   extensions: dict[str, Any] | None
                   ) -> tuple[config.HybridPolicy | None, config.HybridPolicy | None]:
        """Check an enc_keys request; the (mandatory, optional) provenance policies asked."""
        st = self.settings
        if additional_slaves:
            raise QosNotMet("additional_slave_SAE_IDs: multicast is not supported "
                            "(max_SAE_ID_count is 0)")
        try:
            mandatory, optional, unsupported = provenance_requirement(extensions)
        except ValueError as exc:
            raise ExtensionNotMet(str(exc)) from None
        if unsupported:
            raise ExtensionNotMet("not all extension_mandatory parameters are supported: "
                                  f"{sorted(unsupported)} (supported: {PROVENANCE_EXTENSION})")
        if not 1 <= number <= st.max_keys_per_request:
            raise QosNotMet(f"number must be 1..{st.max_keys_per_request}")
        if size_bits % 8 or not st.min_key_size_bits <= size_bits <= st.max_key_size_bits:
            raise QosNotMet(f"size must be a multiple of 8 in {st.min_key_size_bits}.."
                            f"{st.max_key_size_bits}")
        return mandatory, optional

    @staticmethod
    def _batch_policy(s: Stream, mandatory: config.HybridPolicy | None,
                      optional: config.HybridPolicy | None) -> config.HybridPolicy | None:
        """The policy a batch runs under: the session's narrowed by what the application
        asked (None: the session's own).

        Raises:
            ExtensionNotMet: the required provenance conflicts with the hybrid policy.
        """
        session_policy = s.config.hybrid_policy if s.config else "qkd-only"
        policy = None
        if mandatory is not None:
            policy = meet(session_policy, mandatory)
            if policy is None:
                raise ExtensionNotMet(f"{PROVENANCE_EXTENSION} {mandatory.value} cannot be met: "
                                      f"the session's hybrid policy is {session_policy}")
        if optional is not None:
            policy = meet(policy or session_policy, optional) or policy
        return None if policy is None or policy.value == session_policy else policy

    async def _pair_session(self, caller: Caller, master: str, slave: str, size_bits: int
                            ) -> Stream:
        lock = self._pair_locks.setdefault((master, slave), asyncio.Lock())
        async with lock:
            sid = self.core.pairs.get((master, slave))
            s = self.core.streams.get(sid) if sid else None
            if s is not None and s.live:
                if s.owner != digest(caller.principal):
                    await self._authenticate(caller, master, slave)
                return s
            qos = Qos(key_chunk_size=max(1, size_bits // 8),
                      timeout_ms=self.settings.etsi014_qos_timeout_ms)
            result = await self._open(caller, master, slave, qos, None, "etsi014")
            s = self.core.streams[result.key_stream_id]
            if not result.peer_connected:
                self._apply(s, SessionEvent.close)
                raise TimeoutError(f"no configuration for {master}->{slave} within "
                                   f"{self.settings.etsi014_qos_timeout_ms} ms")
            self.core.pairs[(master, slave)] = s.session_id
            return s

    async def enc_keys(self, caller: Caller, master_sae: str, slave_sae: str, number: int,
                       size_bits: int, additional_slaves: list[str] | None = None,
                       extensions: dict[str, Any] | None = None) -> DeliveredKeys:
        """ETSI 014 enc_keys: ``number`` fresh keys for the master, held for the slave.

        Raises:
            QosNotMet: bad number/size, multicast or mandatory extensions asked (400), or
                Admission Control refused the pair.
            AuthenticationFailed: the caller may not act as ``master_sae`` (401).
            RateLimited, KmBusy, InsufficientKeyMaterial, RelayTimeout, PeerUnreachable,
                TimeoutError, StoreError: the KM cannot serve now (503).
        """
        self._check_running()
        mandatory, optional = self._check_014(number, size_bits, additional_slaves, extensions)
        self._check_local_app(master_sae)
        s = await self._pair_session(caller, master_sae, slave_sae, size_bits)
        policy = self._batch_policy(s, mandatory, optional)
        size = size_bits // 8
        narrowed = policy.value if policy else None
        async with self._exchange(s, number * size_bits, s.wait_s) as deadline:
            # keys relayed ahead when the stock covers the request (production.py, "key
            # stock"), else its own batch; a stock running low is refilled in the background
            # once the request's own keys are relayed (the refill never competes with them)
            indexes = self._from_stock(s, number, size_bits, narrowed)
            stocked = indexes is not None
            if indexes is None:
                indexes = self.core.claim_indexes(s, number, size_bits, self._key_state,
                                                  self._meets(s, narrowed))
            try:
                try:
                    if not stocked:
                        await self._clock.wait_for(
                            self._ensure_source(s, indexes, size, narrowed, deadline),
                            deadline - self._clock.now())
                except TimeoutError:
                    raise RelayTimeout(f"{master_sae}->{slave_sae}: keys not relayed within "
                                       f"the timeout") from None
                self._refill_stock(s)
                keys = self.vault.get_many(s.session_id, indexes)
                ready = [k for k in keys if k is not None and k.state == "ready"]
                if len(ready) != number:
                    raise RelayTimeout(f"{master_sae}->{slave_sae}: relay incomplete")
                if mandatory is not None and not all(satisfies(k.provenance, mandatory)
                                                     for k in ready):
                    # every hop enforces the batch policy, so this is a guard, not a path
                    raise QosNotMet(f"{PROVENANCE_EXTENSION} {mandatory.value} not met")
                materials = await self._deliver(s, ready)
            except BaseException:
                self.core.release_indexes(s, indexes, self._key_state)
                raise
        return _answer(ready, materials)

    async def dec_keys(self, caller: Caller, slave_sae: str, master_sae: str,
                       key_ids: list[str], *, acknowledge: bool = False,
                       confirm: Sequence[str] = ()) -> DeliveredKeys:
        """ETSI 014 dec_keys: the named keys ``master_sae`` made for ``slave_sae``, once.

        All or nothing: if any key is unknown, not for this slave/master, or already
        delivered, none is returned. With ``acknowledge`` (opt-in, #14, docs/api/etsi014.md
        "dec_keys with acknowledgement") the keys are handed out without being spent: they
        stay held for this slave, who may fetch them again until it confirms them;
        ``confirm`` names keys it received so and spends them durably first
        (:mod:`~keyplane.keymanager.ack014`).

        Raises:
            AuthenticationFailed: the caller may not act as ``slave_sae``, or a named key
                was made for another master/slave pair (401).
            KeyNotFound: a key is unknown or already delivered (400).
            StoreError: the delivery could not be written; the keys stay deliverable.
        """
        self._check_running()
        self._check_local_app(slave_sae)
        if not key_ids:
            raise KeyNotFound("no key_IDs given")
        if len(key_ids) > self.settings.max_keys_per_request or len(set(key_ids)) != len(key_ids):
            raise KeyNotFound("key_IDs must be distinct and at most max_key_per_request")
        reader = digest(f"{caller.method}\0{caller.identity}")
        if not self._accepted_reader(reader, slave_sae, master_sae, [*key_ids, *confirm]):
            await self._authenticate(caller, slave_sae, master_sae)
        found = self._keys_for(slave_sae, master_sae, key_ids)
        # checked before the confirmation spends anything: a refused call changes nothing
        if any(k.state != "ready" and k.key_id not in confirm for k in found):
            raise KeyNotFound("one or more keys specified are not found on KME")
        if confirm:
            await self._confirm_014(slave_sae, master_sae, confirm)
            if any(k.state != "ready" for k in found):  # the call confirmed its own keys
                raise KeyNotFound("one or more keys specified are not found on KME")
        for sid in {k.session_id for k in found}:  # a bulk request's keys share one
            self.core.streams[sid].readers.add(reader)  # accepted above
        if acknowledge:
            out = await self._hand_014(found)
        else:
            out = await self._spend_014(found, announce=True)
        return _answer(found, [out[k.key_id] for k in found])

    def _accepted_reader(self, reader: str, slave_sae: str, master_sae: str,
                         key_ids: list[str]) -> bool:
        """Whether Access Control already accepted ``reader`` as ``slave_sae`` for keys from
        ``master_sae`` in every live session the named keys belong to (no new question)."""
        get, last = self.vault.by_id.get, ""
        for key_id in key_ids:
            k = get(key_id)
            if k is None or k.sae_id != slave_sae or k.peer_sae != master_sae:
                return False
            if k.session_id == last:
                continue  # a bulk request's keys share a session: checked once
            s = self.core.streams.get(k.session_id)
            if s is None or not s.live or reader not in s.readers:
                return False
            last = k.session_id
        return True

    async def status(self, caller: Caller, master_sae: str, slave_sae: str) -> PairStatus:
        """ETSI 014 Status for the pair, from live figures.

        ``stored_key_count``: at the master's KM, keys of ``key_size`` the link key towards
        the pair's next hop can carry now (the direct link to the slave's node when no
        session exists yet; 0 if neither), plus the pair's key stock (keys relayed ahead,
        #15) of that size.

        Raises:
            AuthenticationFailed: the caller may not act as ``master_sae``.
            PeerUnreachable: unknown slave.
        """
        self._check_running()
        self._check_local_app(master_sae)
        target = self._peer_node(slave_sae)
        await self._authenticate(caller, master_sae, slave_sae)
        size = self.settings.default_key_size_bits
        count = 0
        sid = self.core.pairs.get((master_sae, slave_sae))
        entry = self.core.forwarding.current(sid) if sid else None
        peer = entry.next_km if entry is not None else (target if target in self._stores else None)
        if peer is not None:
            count = max(0, (self._stores[peer].sendable_bytes - 32) // (size // 8))
        s = self.core.streams.get(sid) if sid else None
        if s is not None and s.stock_bits == size:
            count += len(s.stock)
        count = min(count, self.settings.max_keys_per_pair)
        return PairStatus(source_kme_id=self.node_id, target_kme_id=target,
                          master_sae_id=master_sae, slave_sae_id=slave_sae, key_size=size,
                          stored_key_count=count, max_key_count=self.settings.max_keys_per_pair,
                          max_key_per_request=self.settings.max_keys_per_request,
                          max_key_size=self.settings.max_key_size_bits,
                          min_key_size=self.settings.min_key_size_bits, max_sae_id_count=0)

    def held_for(self, slave_sae: str, master_sae: str) -> int:
        """Keys this KM holds for ``slave_sae`` from ``master_sae`` (ready, undelivered).

        This includes the master's key stock (#15): keys relayed ahead that the master has
        not handed out yet, so their key_IDs are known to no SAE; the slave's KM cannot
        tell them from keys handed out and not yet fetched.
        """
        return sum(1 for k in self.vault.by_id.values()
                   if k.sae_id == slave_sae and k.peer_sae == master_sae and k.state == "ready")

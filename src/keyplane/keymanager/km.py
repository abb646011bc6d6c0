"""The per-node virtual key manager (paper Fig. 2): the I/O shell around the pure cores.

One :class:`KeyManager` per node. It

* serves its node's applications through :class:`~keyplane.keymanager.interface.ApplicationService`
  (ETSI 004 OPEN_CONNECT / GET_KEY / CLOSE, ETSI 014 status / enc_keys / dec_keys);
* runs each session's Fig. 2a cycle (:mod:`~keyplane.keymanager.session`), asking Access
  Control and Admission Control over the bus (the models of :mod:`keyplane.messages`,
  never Python calls into ``keyplane.control``);
* answers Admission Control on ``keyplane.km.<node>.config`` (SessionConfig -> ConfigAck,
  SessionDelete -> DeleteConfirm) and keeps the forwarding table;
* paces key requests with a token bucket per session and orders them in priority queues
  (:mod:`~keyplane.keymanager.scheduling`);
* holds one link key store per neighbour (the physical layer's sink,
  :meth:`KeyManager.link_key_sink` or :meth:`KeyManager.put_block`) and relays keys
  over ``keyplane.km.<node>.relay`` (:mod:`~keyplane.keymanager.relay`);
* persists sessions, link key consumption and end-to-end keys through a group-commit
  journal, so a restart loses no key and hands none out twice.

ETSI 004 stream indexes: index ``i`` of a stream is made by the session's *source* KM
(role from SessionConfig) and relayed. A GET_KEY at the source makes index ``i`` if it does
not exist yet; a GET_KEY at the destination for an index it does not hold sends a demand
back to the source and waits for the key up to the QoS timeout. Each end hands each index
out once; ``index=None`` means this end's next index.

Hybrid provisioning (docs/hybrid.md): each hop's key comes from QKD, ML-KEM or both, as the
session's hybrid policy (``SessionConfig.hybrid_policy``) allows, when the KM has an identity
(:class:`~keyplane.keymanager.pqc.KmIdentity`). Every key records its provenance (one record
per hop it crossed); it is reported in ``key_delivered`` events (merged, and counted per hop
and source in ``provenance_counts`` for the ETSI 015 view), in ETSI 004 GET_KEY metadata
and in ETSI 014 ``key_extension`` under ``keyplane_provenance``. An ETSI 014 application may
require a provenance with ``extension_mandatory: [{"keyplane_provenance": <policy>}]``: the
batch then runs under the stricter of the two policies, or is refused with QosNotMet.

ETSI 014: the first ``enc_keys`` for an SAE pair opens an implicit session
(``interface="etsi014"``; Admission Control configures the path without waiting for the
slave); keys are made at the master's KM, relayed, and held at the slave's KM for
``dec_keys``, which hands each key once and only to the slave it was made for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from keyplane import config
from keyplane.bus import Bus, Message, Subscription, topics, unsubscribe_all
from keyplane.clock import Clock
from keyplane.errors import (
    AuthenticationFailed,
    BusError,
    ControlPlaneUnreachable,
    ExtensionNotMet,
    IllegalTransition,
    KeyNotFound,
    KeyplaneError,
    KeyStoreError,
    KmBusy,
    PeerNotConnected,
    PeerUnreachable,
    QosNotMet,
    RateLimited,
    RelayError,
    RelayTimeout,
    SessionIdInUse,
    SessionNotFound,
)
from keyplane.events import EventStream, EventType
from keyplane.keymanager.forwarding import ForwardingTable
from keyplane.keymanager.hybrid import (
    PROVENANCE_EXTENSION,
    count_provenance,
    meet,
    merge_provenance,
    parse_policy,
    provenance_requirement,
    satisfies,
)
from keyplane.keymanager.interface import (
    Caller,
    DeliveredKey,
    GetKeyResult,
    OpenResult,
    PairStatus,
)
from keyplane.keymanager.journal import Journal
from keyplane.keymanager.keystore import LinkKeyStore
from keyplane.keymanager.pqc import KmIdentity
from keyplane.keymanager.relay import Relay
from keyplane.keymanager.scheduling import PriorityQueues, TokenBucket
from keyplane.keymanager.session import (
    Action,
    ArmIdleTimer,
    ConfirmDelete,
    FreeResources,
    SendKeepAlive,
    SendSessionClose,
    SessionEvent,
    SessionMachine,
    SessionState,
)
from keyplane.keymanager.settings import KmSettings
from keyplane.keymanager.vault import HeldKey, KeyVault, SessionRows, new_key_id
from keyplane.keymanager.wire import KeyFrame, LinkBlocksHeld
from keyplane.messages import (
    AuthRequest,
    AuthResponse,
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

__all__ = ["KeyManager"]

logger = logging.getLogger(__name__)

ELEMENT = "km"


def _digest(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()


@dataclass
class _Session:
    """A session at an endpoint KM (intermediates keep only forwarding entries)."""

    session_id: str
    machine: SessionMachine
    local_sae: str
    peer_sae: str
    interface: Literal["etsi004", "etsi014"] = "etsi004"
    qos: Qos = field(default_factory=Qos)
    user_id: str = ""
    owner: str | None = None  # sha256 of the transport identity that opened it
    implicit: bool = False  # created by Admission Control's configuration (014 slave side)
    config: SessionConfig | None = None
    configs: dict[int, SessionConfig] = field(default_factory=dict)
    bucket: TokenBucket | None = None
    next_index: int = 0  # this end's next index for GET_KEY(index=None)
    next_gen: int = 0  # source: next index for enc_keys
    idle_deadline: float = 0.0
    idle_task: asyncio.Task[None] | None = None
    decision: asyncio.Future[SessionConfig] | None = None
    producing: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    batches: dict[tuple[int, str | None], tuple[list[int], asyncio.Task[None]]] = field(
        default_factory=dict)
    arrivals: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    demanded: set[int] = field(default_factory=set)
    last_keepalive: float = float("-inf")
    keepalive_owed: bool = False  # a coalesced request still awaits its trailing KeepAlive
    # identities (sha256) Access Control accepted for dec_keys of this session's keys, as
    # ``owner`` is for the opener: asked once per session, not per request
    readers: set[str] = field(default_factory=set)
    freed_bits: int = 0
    ended: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def role(self) -> HopRole | None:
        return self.config.role if self.config else None

    @property
    def priority(self) -> int:
        return self.config.priority if self.config else 0

    def data(self) -> dict[str, Any]:
        """The persisted form (no key material, no identity in clear)."""
        return {
            "local_sae": self.local_sae, "peer_sae": self.peer_sae, "interface": self.interface,
            "qos": self.qos.model_dump(mode="json"), "user_id": self.user_id,
            "owner": self.owner, "implicit": self.implicit, "next_index": self.next_index,
            "next_gen": self.next_gen,
            "configs": {str(e): c.model_dump(mode="json") for e, c in self.configs.items()},
        }


class KeyManager:
    """A node's virtual key manager.

    Args:
        node_id: the node this KM serves (a topology node id).
        topology: the network description (links to neighbours, applications).
        bus: the bus to the control plane and the other KMs.
        db: the store (link key blocks, sessions, held keys).
        clock: the clock for every protocol timer.
        events: the event stream (paper Fig. 4).
        settings: tunables (:class:`KmSettings`); defaults if None.
        identity: this KM's certificate and key (``keyplane.certs``) for ML-KEM hops; None:
            QKD hops only (sessions whose policy needs PQC then get PqcUnavailable).
    """

    def __init__(self, node_id: str, topology: config.Topology, bus: Bus, db: Database,
                 clock: Clock, events: EventStream, settings: KmSettings | None = None,
                 identity: KmIdentity | None = None) -> None:
        topology.node(node_id)  # KeyError on an unknown node, before anything starts
        self.node_id = node_id
        self.topology = topology
        self.settings = settings or KmSettings()
        self._bus = bus
        self._db = db
        self._clock = clock
        self._events = events
        self.journal = Journal.shared(db)
        self.forwarding = ForwardingTable()
        self.vault = KeyVault(node_id, self.journal)
        self._rows = SessionRows(node_id, self.journal)
        self._stores: dict[str, LinkKeyStore] = {}  # by neighbour
        self._stores_by_link: dict[str, LinkKeyStore] = {}
        for link in topology.links_of(node_id):
            peer = link.endpoints[1] if link.endpoints[0] == node_id else link.endpoints[0]
            store = LinkKeyStore(node_id, link.link_id, peer, self.journal, events, clock,
                                 self.settings)
            self._stores[peer] = store
            self._stores_by_link[link.link_id] = store
            store.set_announcer(functools.partial(self._announce_blocks, store))
        self.relay = Relay(self, bus, self.journal, clock, events, self.settings, identity)
        self._sessions: dict[str, _Session] = {}
        self._pairs: dict[tuple[str, str], str] = {}  # (master, slave) -> 014 session id
        # Key_stream_IDs this KM assigned that Admission Control merged into the peer's
        # stream (paired by SAE pair, SessionConfig.opened_as): own id -> stream id
        self._aliases: dict[str, str] = {}
        self._pair_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._queues: PriorityQueues[asyncio.Future[None]] = PriorityQueues(
            self.settings.aging_interval_s, self.settings.queue_limit)
        self._active = 0
        self._requests = 0
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._status: Literal["new", "running", "draining", "closed"] = "new"
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"KeyManager(node={self.node_id!r}, status={self._status}, " \
               f"sessions={len(self._sessions)})"

    def set_identity(self, identity: KmIdentity | None) -> None:
        """Give the KM its certificate for ML-KEM hops (the runtime loads it at start)."""
        if identity is not None and identity.node_id != self.node_id:
            raise ValueError(f"identity of {identity.node_id} given to KM {self.node_id}")
        self.relay.identity = identity

    @property
    def pqc_capable(self) -> bool:
        """Whether this KM can take part in ML-KEM hops (it has an identity)."""
        return self.relay.identity is not None

    # ==== lifecycle =====================================================================
    async def start(self) -> None:
        """Load persisted state, subscribe to the KM topics and start the journal.

        Raises:
            StoreError: the store cannot be read.
            BusError: the subscriptions fail.
        """
        if self._status != "new":
            return
        for store in self._stores.values():
            await store.load(self._db)
        await self.vault.load(self._db)
        await self._restore_sessions()
        self.journal.start()
        self._subs.append(await self._bus.subscribe(topics.km_config(self.node_id),
                                                    self._on_config))
        self._subs.append(await self._bus.subscribe(topics.km_relay(self.node_id),
                                                    self.relay.handle))
        self._status = "running"
        for store in self._stores.values():  # agree again with each peer on what both hold
            self._announce_blocks(store, store.inventory(), inventory=True, reply=True)
        self._events.emit(EventType.element_started, ELEMENT, node=self.node_id,
                          links=sorted(self._stores_by_link), sessions=len(self._sessions))

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Stop taking new requests, finish the exchanges in flight, then close.

        Returns at once if already draining or closed.
        """
        if self._status in ("draining", "closed"):
            return
        self._status = "draining"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        await self.close()

    async def _close_km(self) -> None:
        """Stop now: unsubscribe, cancel timers and relays, write what is dirty (idempotent)."""
        if self._status == "closed":
            return
        self._status = "closed"
        await unsubscribe_all(self._subs)
        self._subs.clear()
        tasks = [t for t in self._tasks if not t.done()]
        for s in self._sessions.values():
            if s.idle_task is not None:
                tasks.append(s.idle_task)
            for fut in s.arrivals.values():
                if not fut.done():
                    fut.cancel()
            if s.decision is not None and not s.decision.done():
                s.decision.cancel()
            for t in s.producing.values():
                tasks.append(t)
        self.relay.cancel_all(lambda: PeerUnreachable("key manager closed"))
        while True:
            popped = self._queues.pop(float("inf"))
            if popped is None:
                break
            fut = popped
            if not fut.done():
                fut.set_exception(KmBusy(self.node_id, 0, 0))
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.journal.release([*self._stores.values(), self.vault, self._rows])
        self._events.emit(EventType.element_stopped, ELEMENT, node=self.node_id)

    async def __aenter__(self) -> KeyManager:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def _check_running(self) -> None:
        if self._status != "running":
            raise PeerUnreachable(f"key manager {self.node_id} is {self._status}")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ==== the physical layer's sink ====================================================
    def link_key_sink(self, link_id: str) -> LinkKeyStore:
        """The store of ``link_id`` (implements ``LinkKeySink.put_block``).

        Raises:
            KeyError: ``link_id`` is not a link of this node.
        """
        return self._stores_by_link[link_id]

    async def put_block(self, link_id: str, block_id: int, material: bytes) -> None:
        """``LinkKeySink``: store a block of ``link_id`` (the KM itself as the sink).

        Raises:
            KeyStoreError: not a link of this node, or a repeated block id.
        """
        store = self._stores_by_link.get(link_id)
        if store is None:
            raise KeyStoreError(f"{link_id!r} is not a link of node {self.node_id}")
        await store.put_block(link_id, block_id, material)

    def _announce_blocks(self, store: LinkKeyStore, block_ids: list[int], *,
                         inventory: bool = False, reply: bool = False) -> None:
        """Tell ``store``'s peer which blocks this end holds (``LinkBlocksHeld``)."""
        if self._status == "closed":
            return
        msg = LinkBlocksHeld(sender=self.node_id, link_id=store.link_id, block_ids=block_ids,
                             inventory=inventory, reply=reply)

        async def send() -> None:
            try:
                await self._bus.publish(topics.km_relay(store.peer_id), msg)
            except BusError as exc:  # the peer's inventory at its start repairs this
                logger.warning("node %s: link %s holdings not sent to %s: %s", self.node_id,
                               store.link_id, store.peer_id, exc)
        self._spawn(send(), f"km-held-{store.link_id}")

    async def links_acknowledged(self, timeout_s: float = 10.0) -> bool:
        """Wait until each link's peer has acknowledged every block stored here (tools and
        tests that feed both ends of a link directly); whether it did within ``timeout_s``
        seconds of event-loop time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(st.unconfirmed_bytes for st in self._stores.values()):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.001)
        return True

    def link_blocks_held(self, msg: LinkBlocksHeld) -> None:
        """Relay host: the peer of ``msg.link_id`` holds ``msg.block_ids``.

        Raises:
            RelayError: the sender is not this link's other end.
        """
        store = self._stores_by_link.get(msg.link_id)
        if store is None or store.peer_id != msg.sender:
            raise RelayError(f"{msg.sender} is not the other end of link {msg.link_id}")
        store.peer_holds(msg.block_ids, inventory=msg.inventory)
        if msg.reply:
            self._announce_blocks(store, store.inventory(), inventory=True)

    def link_store(self, peer: str) -> LinkKeyStore:
        """The link key store shared with neighbour ``peer``.

        Raises:
            PeerUnreachable: no quantum link to ``peer``.
        """
        store = self._stores.get(peer)
        if store is None:
            raise PeerUnreachable(f"node {self.node_id} has no link to {peer}")
        return store

    @property
    def link_stores(self) -> dict[str, LinkKeyStore]:
        """Stores by link id (read-only use: figures and tests)."""
        return dict(self._stores_by_link)

    # ==== session state machine shell ==================================================
    def _apply(self, s: _Session, event: SessionEvent, *,
               idle_timeout_s: float | None = None,
               close_reason: Literal["close", "idle_timeout", "error"] | None = None
               ) -> list[Action]:
        actions = s.machine.handle(event, self._clock.now(), idle_timeout_s=idle_timeout_s)
        for a in actions:
            if isinstance(a, ArmIdleTimer):
                self._arm_idle(s, a.deadline)
            elif isinstance(a, SendKeepAlive):
                self._keepalive(s)
            elif isinstance(a, SendSessionClose):
                self._publish(topics.ADMISSION, SessionClose(
                    session_id=s.session_id, node=self.node_id, reason=a.reason))
                self._events.emit(EventType.session_closed, ELEMENT, node=self.node_id,
                                  session=s.session_id, reason=a.reason)
            elif isinstance(a, FreeResources):
                self._free(s)
            elif isinstance(a, ConfirmDelete):
                pass  # the SessionDelete handler replies DeleteConfirm itself
        if event not in (SessionEvent.key_request, SessionEvent.key_done):
            self._persist(s)
        return actions

    def _persist(self, s: _Session) -> int:
        return self._rows.put(s.session_id, s.machine.state.value, s.data(), self._clock.now())

    def _publish(self, topic: str, msg: Message) -> None:
        async def send() -> None:
            try:
                await self._bus.publish(topic, msg)
            except BusError as exc:
                logger.warning("node %s could not publish %s: %s", self.node_id, msg.KIND, exc)
        self._spawn(send(), f"km-publish-{msg.KIND}")

    def _keepalive_interval(self, s: _Session) -> float:
        # at most half the idle timeout, so Admission Control's session timer (idle
        # timeout + grace, reset by each KeepAlive) always sees one in time
        return min(self.settings.keepalive_min_interval_s, s.machine.idle_timeout_s / 2)

    def _keepalive(self, s: _Session) -> None:
        """Signal a key request to Admission Control, at most once per interval.

        A request inside the interval is not lost: it is covered by one trailing KeepAlive
        at the end of the interval, so the last KeepAlive is never older than the last
        request and Admission Control's timer never ends a session the KM still serves.
        """
        now = self._clock.now()
        interval = self._keepalive_interval(s)
        if now - s.last_keepalive >= interval:
            s.last_keepalive = now
            self._publish(topics.ADMISSION, KeepAlive(session_id=s.session_id,
                                                      node=self.node_id))
        elif not s.keepalive_owed:
            s.keepalive_owed = True
            self._spawn(self._trailing_keepalive(s, s.last_keepalive + interval),
                        f"km-keepalive-{s.session_id}")

    async def _trailing_keepalive(self, s: _Session, at: float) -> None:
        try:
            await self._clock.sleep_until(at)
        finally:
            s.keepalive_owed = False
        if s.machine.live:
            s.last_keepalive = self._clock.now()
            self._publish(topics.ADMISSION, KeepAlive(session_id=s.session_id,
                                                      node=self.node_id))

    def _arm_idle(self, s: _Session, deadline: float) -> None:
        earlier = deadline < s.idle_deadline
        s.idle_deadline = deadline
        if s.idle_task is None or s.idle_task.done() or earlier:
            if s.idle_task is not None and not s.idle_task.done():
                s.idle_task.cancel()
            s.idle_task = asyncio.get_running_loop().create_task(
                self._idle_watch(s), name=f"km-idle-{s.session_id}")

    async def _idle_watch(self, s: _Session) -> None:
        while s.machine.live:
            await self._clock.sleep_until(s.idle_deadline)
            if not s.machine.live or self._clock.now() < s.idle_deadline:
                continue
            if s.machine.state is SessionState.key_exchanging:
                # busy is not idle: look again one idle period after now
                s.idle_deadline = self._clock.now() + s.machine.idle_timeout_s
                continue
            if s.machine.state is SessionState.operative:
                logger.info("node %s: session %s idle for %.1f s, closing", self.node_id,
                            s.session_id, s.machine.idle_timeout_s)
                s.idle_task = None
                self._apply(s, SessionEvent.idle_expired)
            return

    def _free(self, s: _Session) -> None:
        """Release everything a terminated session holds."""
        self.forwarding.remove(s.session_id)
        s.bucket = None
        if not s.ended.done():
            s.ended.set_result(None)
        if s.idle_task is not None and s.idle_task is not asyncio.current_task():
            s.idle_task.cancel()
        s.idle_task = None
        for t in s.producing.values():
            t.cancel()
        for fut in s.arrivals.values():
            if not fut.done():
                fut.set_exception(SessionNotFound(f"session {s.session_id} ended"))
                fut.exception()  # retrieved: nobody may be waiting
        if s.decision is not None and not s.decision.done():
            s.decision.set_exception(SessionNotFound(f"session {s.session_id} ended"))
            s.decision.exception()
        s.freed_bits, _ = self.vault.drop_session(s.session_id)
        if self._pairs.get((s.local_sae, s.peer_sae)) == s.session_id:
            del self._pairs[(s.local_sae, s.peer_sae)]

    # ==== control plane: configuration and deletion ====================================
    async def _on_config(self, topic: str, msg: Message) -> Message | None:
        if isinstance(msg, SessionConfig):
            return self._on_session_config(msg)
        if isinstance(msg, SessionDelete):
            return await self._on_session_delete(msg)
        logger.warning("node %s: unexpected %s on its config topic", self.node_id, msg.KIND)
        return None

    def _on_session_config(self, cfg: SessionConfig) -> ConfigAck:
        def ack(ok: bool, reason: str = "") -> ConfigAck:
            if not ok:
                self._events.emit(EventType.config_refused, ELEMENT, node=self.node_id,
                                  session=cfg.session_id, reason=reason)
            return ConfigAck(session_id=cfg.session_id, node=self.node_id, epoch=cfg.epoch,
                             ok=ok, reason=reason)

        if cfg.node != self.node_id:
            return ack(False, f"configuration for {cfg.node} sent to {self.node_id}")
        try:
            parse_policy(cfg.hybrid_policy)
        except ValueError:
            return ack(False, f"unknown hybrid policy {cfg.hybrid_policy!r}")
        for peer in (cfg.prev_km, cfg.next_km):
            if peer is not None and peer not in self._stores:
                return ack(False, f"no quantum link from {self.node_id} to {peer}")
        if cfg.role is HopRole.intermediate:
            if cfg.prev_km is None or cfg.next_km is None:
                return ack(False, "an intermediate hop needs prev_km and next_km")
            if not self.forwarding.apply(cfg):
                return ack(False, f"stale epoch {cfg.epoch}")
            self._persist_intermediate(cfg.session_id)
            self._events.emit(EventType.configured, ELEMENT, node=self.node_id,
                              session=cfg.session_id, role=cfg.role.value, epoch=cfg.epoch,
                              prev_km=cfg.prev_km, next_km=cfg.next_km)
            return ack(True)
        if cfg.opened_as and cfg.opened_as != cfg.session_id \
                and cfg.session_id not in self._sessions:
            own = self._sessions.get(cfg.opened_as)
            if own is not None and own.machine.live and own.config is None:
                self._adopt_stream_id(own, cfg.session_id)
        s = self._sessions.get(cfg.session_id)
        if s is None or not s.machine.live:
            if cfg.local_sae is None:
                return ack(False, "an endpoint configuration needs local_sae")
            peer = cfg.destination_sae if cfg.role is HopRole.source else cfg.source_sae
            s = _Session(cfg.session_id, SessionMachine(cfg.session_id,
                                                        SessionState.user_accepted),
                         local_sae=cfg.local_sae, peer_sae=peer, implicit=True,
                         interface="etsi014")
            self._sessions[cfg.session_id] = s
        current = self.forwarding.current(cfg.session_id)
        if current is not None and cfg.epoch < current.epoch:
            return ack(False, f"stale epoch {cfg.epoch} < {current.epoch}")
        try:
            if s.machine.state is SessionState.user_accepted:
                event = SessionEvent.config_received
            else:
                event = SessionEvent.reconfigured
            if not s.machine.can(event):
                s.machine.handle(event, self._clock.now())  # raises and logs
        except IllegalTransition as exc:
            return ack(False, str(exc))
        rerouted = current is not None and cfg.epoch > current.epoch
        self.forwarding.apply(cfg)
        s.config = cfg
        s.configs[cfg.epoch] = cfg
        now = self._clock.now()
        if s.bucket is None:
            s.bucket = TokenBucket(cfg.bucket_size_bits, cfg.token_rate_bps, now)
        else:
            s.bucket.reconfigure(cfg.bucket_size_bits, cfg.token_rate_bps, now)
        self._apply(s, event, idle_timeout_s=cfg.idle_timeout_s)
        self._events.emit(EventType.configured, ELEMENT, node=self.node_id,
                          session=cfg.session_id, role=cfg.role.value, epoch=cfg.epoch,
                          prev_km=cfg.prev_km, next_km=cfg.next_km, priority=cfg.priority,
                          hybrid_policy=cfg.hybrid_policy)
        if rerouted:
            self._events.emit(EventType.session_rerouted, ELEMENT, node=self.node_id,
                              session=cfg.session_id, epoch=cfg.epoch)
        if event is SessionEvent.config_received:
            self._events.emit(EventType.session_operative, ELEMENT, node=self.node_id,
                              session=cfg.session_id)
            if s.decision is not None and not s.decision.done():
                s.decision.set_result(cfg)
        return ack(True)

    def _adopt_stream_id(self, s: _Session, stream_id: str) -> None:
        """Admission Control paired our open request with the peer's by SAE pair: the
        session takes the stream's Key_stream_ID (both ends must use the same one); the id
        we assigned stays an alias for the application that holds it."""
        own = s.session_id
        del self._sessions[own]
        s.session_id = stream_id
        s.machine.session_id = stream_id
        self._sessions[stream_id] = s
        self._aliases[own] = stream_id
        self._rows.put(own, "terminated", {}, self._clock.now())
        self._persist(s)
        self._events.emit(EventType.configured, ELEMENT, node=self.node_id, session=stream_id,
                          adopted_from=own)

    def _persist_intermediate(self, session_id: str) -> None:
        epochs = {str(epoch): {"prev_km": e.prev_km, "next_km": e.next_km,
                               "hybrid_policy": e.hybrid_policy}
                  for epoch, e in self.forwarding.epochs(session_id).items()}
        self._rows.put(session_id, "forwarding" if epochs else "terminated",
                       {"intermediate": epochs}, self._clock.now())

    async def _on_session_delete(self, msg: SessionDelete) -> DeleteConfirm:
        sid = msg.session_id
        s = self._sessions.get(sid)
        if msg.epoch is not None and not msg.refused:
            # a reroute retires one epoch's hop; the session (if any) goes on
            removed = self.forwarding.remove_epoch(sid, msg.epoch)
            if s is not None:
                s.configs.pop(msg.epoch, None)
                self._persist(s)
            elif removed:
                self._persist_intermediate(sid)
            self._events.emit(EventType.session_deleted, ELEMENT, node=self.node_id,
                              session=sid, epoch=msg.epoch, reason=msg.reason, scope="epoch")
            return DeleteConfirm(session_id=sid, node=self.node_id)
        if s is None or not s.machine.live:
            if self.forwarding.remove(sid):
                self._rows.put(sid, "terminated", {}, self._clock.now())
            self._events.emit(EventType.session_deleted, ELEMENT, node=self.node_id,
                              session=sid, reason=msg.reason)
            return DeleteConfirm(session_id=sid, node=self.node_id)
        if msg.refused and s.machine.state is SessionState.user_accepted:
            if s.decision is not None and not s.decision.done():
                s.decision.set_exception(
                    QosNotMet(msg.reason or "Admission Control refused the session"))
                s.decision.exception()  # retrieved; the opener re-raises it
            self._apply(s, SessionEvent.admission_refused)
            self._events.emit(EventType.admission_refused, ELEMENT, node=self.node_id,
                              session=sid, reason=msg.reason)
        else:
            self._apply(s, SessionEvent.deleted)
            self._events.emit(EventType.session_deleted, ELEMENT, node=self.node_id,
                              session=sid, reason=msg.reason)
        await self.journal.sync()
        return DeleteConfirm(session_id=sid, node=self.node_id, freed_bits=s.freed_bits)

    async def _restore_sessions(self) -> None:
        rows = await self._rows.load(self._db)
        now = self._clock.now()
        for sid, (state, data, _t) in rows.items():
            if "intermediate" in data:
                for epoch, hop in data["intermediate"].items():
                    self.forwarding.apply(SessionConfig(
                        session_id=sid, node=self.node_id, epoch=int(epoch),
                        role=HopRole.intermediate, prev_km=hop["prev_km"],
                        next_km=hop["next_km"], source_sae="-", destination_sae="-",
                        bucket_size_bits=1, token_rate_bps=0, idle_timeout_s=1,
                        hybrid_policy=hop.get("hybrid_policy", "qkd-only")))
                continue
            if state in (SessionState.terminated.value, SessionState.authenticating.value):
                continue
            configs = {int(e): SessionConfig.model_validate(c)
                       for e, c in data.get("configs", {}).items()}
            restored = SessionState.operative if configs else SessionState.user_accepted
            s = _Session(sid, SessionMachine(sid, restored), local_sae=data["local_sae"],
                         peer_sae=data["peer_sae"], interface=data["interface"],
                         qos=Qos.model_validate(data["qos"]), user_id=data["user_id"],
                         owner=data["owner"], implicit=data["implicit"],
                         next_index=data["next_index"], next_gen=data["next_gen"])
            # the row is not rewritten per delivery: the counters also follow from the
            # keys this end handed out (each written durably before it was returned)
            after = self.vault.delivered_end(sid)
            s.next_index = max(s.next_index, after)
            s.next_gen = max(s.next_gen, after)
            for epoch in sorted(configs):
                self.forwarding.apply(configs[epoch])
            s.configs = configs
            if configs:
                s.config = configs[max(configs)]
                s.bucket = TokenBucket(s.config.bucket_size_bits, s.config.token_rate_bps, now)
                s.machine.idle_timeout_s = s.config.idle_timeout_s
            self._sessions[sid] = s
            if s.role is HopRole.destination:
                self._promote_stored(s)
            if s.interface == "etsi014" and s.role is HopRole.source:
                self._pairs[(s.local_sae, s.peer_sae)] = sid
        for s in self._sessions.values():
            if s.config is not None:
                self._arm_idle(s, now + s.machine.idle_timeout_s)

    def _promote_stored(self, s: _Session) -> None:
        """Destination after a restart: offer the keys it stored but had not yet offered.

        The destination stores a batch durably *before* it sends the confirmation and
        offers the keys only after; a crash in between leaves them ``pending``. The source
        may have had the confirmation (its keys are then ready or delivered, and it never
        resends them), so waiting for a resend would wait forever. Offering them is safe:
        a key id names the same bytes at both ends, and if the confirmation never left, the
        source still holds the same key ``pending`` and resends exactly it on demand.
        """
        stored = [k for k in self.vault.of_session(s.session_id)
                  if k.state == "pending" and k.material is not None]
        if stored:
            self.vault.set_states(stored, "ready")

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

    def _check_local_app(self, sae_id: str) -> None:
        try:
            app = self.topology.application(sae_id)
        except KeyError:
            raise AuthenticationFailed(f"unknown application {sae_id!r}") from None
        if app.node != self.node_id:
            raise AuthenticationFailed(f"{sae_id} is not attached to key manager {self.node_id}")

    def _peer_node(self, sae_id: str) -> str:
        try:
            return self.topology.application(sae_id).node
        except KeyError:
            raise PeerUnreachable(f"unknown peer application {sae_id!r}") from None

    async def open_connect(self, caller: Caller, source: str, destination: str, qos: Qos,
                           key_stream_id: str | None) -> OpenResult:
        """ETSI 004 OPEN_CONNECT (see :class:`~keyplane.keymanager.interface.ApplicationService`).

        Raises:
            AuthenticationFailed: the caller may not act as ``source`` (ETSI 401).
            SessionIdInUse: ``key_stream_id`` is taken at this KM (status 5).
            QosNotMet: Admission Control refused (status 7).
            PeerUnreachable: Access/Admission Control did not answer (status 4).
        """
        self._check_running()
        return await self._open(caller, source, destination, qos, key_stream_id, "etsi004")

    async def _open(self, caller: Caller, source: str, destination: str, qos: Qos,
                    key_stream_id: str | None, interface: Literal["etsi004", "etsi014"]
                    ) -> OpenResult:
        self._check_local_app(source)
        self._peer_node(destination)
        sid = key_stream_id or str(uuid.uuid4())
        existing = self._sessions.get(sid)
        if existing is not None and existing.machine.live:
            if existing.implicit and existing.owner is None and existing.local_sae == source \
                    and existing.peer_sae == destination:
                existing.user_id = await self._authenticate(caller, source, destination)
                existing.owner = _digest(caller.principal)
                existing.qos = qos
                self._persist(existing)
                return OpenResult(sid, self._served_qos(existing), True)
            raise SessionIdInUse(f"Key_stream_ID {sid} is already in use")
        s = _Session(sid, SessionMachine(sid), local_sae=source, peer_sae=destination,
                     interface=interface, qos=qos, owner=_digest(caller.principal))
        s.decision = asyncio.get_running_loop().create_future()
        self._sessions[sid] = s
        self._events.emit(EventType.request_arrived, ELEMENT, node=self.node_id, session=sid,
                          sae=source, peer=destination, interface=interface)
        try:
            s.user_id = await self._authenticate(caller, source, destination)
        except (AuthenticationFailed, ControlPlaneUnreachable, PeerUnreachable) as exc:
            self._apply(s, SessionEvent.auth_refused)
            self._events.emit(EventType.auth_refused, ELEMENT, node=self.node_id, session=sid,
                              reason=str(exc))
            raise
        self._apply(s, SessionEvent.auth_ok)
        self._events.emit(EventType.authenticated, ELEMENT, node=self.node_id, session=sid,
                          user=s.user_id)
        try:
            ack = await self._bus.request(topics.ADMISSION, SessionOpenRequest(
                session_id=sid, node=self.node_id, user_id=s.user_id, source_sae=source,
                destination_sae=destination, qos=qos, interface=interface),
                timeout_s=self.settings.admission_request_timeout_s)
        except BusError as exc:
            if s.machine.live:
                self._apply(s, SessionEvent.close)
            raise ControlPlaneUnreachable(
                f"Admission Control did not answer within "
                f"{self.settings.admission_request_timeout_s} s: {exc}") from exc
        self._events.emit(EventType.admission_requested, ELEMENT, node=self.node_id,
                          session=sid)
        if isinstance(ack, OpenAck) and not ack.accepted_for_review and s.machine.live:
            self._apply(s, SessionEvent.admission_refused)
            self._events.emit(EventType.admission_refused, ELEMENT, node=self.node_id,
                              session=sid, reason=ack.reason)
            raise QosNotMet(ack.reason or "Admission Control refused the session")
        decision = s.decision
        assert decision is not None
        try:
            await self._clock.wait_for(asyncio.shield(decision), qos.timeout_ms / 1000)
            # s.session_id differs from sid when Admission Control merged our request into
            # the peer's stream: both applications get the same Key_stream_ID
            return OpenResult(s.session_id, self._served_qos(s), True)
        except TimeoutError:
            pass
        except SessionNotFound as exc:
            raise QosNotMet(f"session ended while opening: {exc}") from exc
        if not s.machine.live:
            raise QosNotMet("session ended while opening")
        # configured later (ETSI 004 status 1): keep waiting in the background, bounded
        self._spawn(self._config_watchdog(s), f"km-config-wait-{sid}")
        self._events.emit(EventType.peer_waiting, ELEMENT, node=self.node_id, session=sid)
        return OpenResult(sid, qos, False)

    async def _config_watchdog(self, s: _Session) -> None:
        await self._clock.sleep(self.settings.config_wait_s)
        if s.machine.state is SessionState.user_accepted:
            self._apply(s, SessionEvent.config_timeout)

    def _served_qos(self, s: _Session) -> Qos:
        cfg = s.config
        if cfg is None:
            return s.qos
        return s.qos.model_copy(update={
            "priority": cfg.priority, "key_chunk_size": cfg.key_chunk_size,
            "max_bps": min(int(cfg.token_rate_bps), 2**32 - 1)})

    def _app_session(self, caller: Caller, key_stream_id: str) -> _Session:
        s = self._sessions.get(self._aliases.get(key_stream_id, key_stream_id))
        if s is None or s.owner != _digest(caller.principal):
            raise SessionNotFound(f"no stream {key_stream_id} for this caller")
        if not s.machine.live:
            raise SessionNotFound(f"stream {key_stream_id} has ended")
        return s

    # ==== key requests: token bucket, priority queues ===================================
    @contextlib.asynccontextmanager
    async def _exchange(self, s: _Session, bits: int, timeout_s: float
                        ) -> AsyncIterator[float]:
        """Admit one key request: state check, token bucket, priority queue, keep-alive.

        Yields the clock deadline by which the request must be answered.
        """
        self._check_running()
        state = s.machine.state
        if state in (SessionState.authenticating, SessionState.user_accepted):
            raise PeerNotConnected(f"session {s.session_id} is not configured yet")
        if state is SessionState.terminated or s.bucket is None:
            raise SessionNotFound(f"session {s.session_id} has ended")
        now = self._clock.now()
        deadline = now + timeout_s
        wait = s.bucket.reserve(bits, now, timeout_s)
        if wait is None:
            need = s.bucket.wait_for(bits, now)
            self._events.emit(EventType.key_request_refused, ELEMENT, node=self.node_id,
                              session=s.session_id, reason="token bucket", bits=bits)
            raise RateLimited(s.session_id, bits, need, timeout_s)
        self._apply(s, SessionEvent.key_request)
        self._events.emit(EventType.key_requested, ELEMENT, node=self.node_id,
                          session=s.session_id, bits=bits, priority=s.priority)
        self._requests += 1
        self._idle.clear()
        slot = False
        try:
            if wait > 0:
                # pace on the clock, but wake at once if the session ends meanwhile
                with contextlib.suppress(TimeoutError):
                    await self._clock.wait_for(asyncio.shield(s.ended), wait)
            await self._acquire_slot(s, deadline)
            slot = True
            if not s.machine.live:
                raise SessionNotFound(f"session {s.session_id} ended while the request waited")
            yield deadline
        except BaseException:
            # nothing was delivered: the bits go back to the bucket, never lost silently
            if s.bucket is not None:
                s.bucket.refund(bits, self._clock.now())
            raise
        finally:
            if slot:
                self._release_slot()
            if s.machine.live and s.machine.can(SessionEvent.key_done):
                self._apply(s, SessionEvent.key_done)
            self._requests -= 1
            if self._requests == 0:
                self._idle.set()

    async def _acquire_slot(self, s: _Session, deadline: float) -> None:
        if self._active < self.settings.max_concurrent_exchanges and not len(self._queues):
            self._active += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._queues.push(fut, s.priority, self._clock.now()):
            self._events.emit(EventType.key_request_refused, ELEMENT, node=self.node_id,
                              session=s.session_id, reason="queue full")
            raise KmBusy(self.node_id, len(self._queues), self.settings.queue_limit)
        try:
            await self._clock.wait_for(asyncio.shield(fut), deadline - self._clock.now())
        except TimeoutError:
            if self._queues.remove(fut):
                raise TimeoutError(
                    f"session {s.session_id}: waited in the priority queue past its "
                    f"QoS timeout") from None
            # handed a slot at the deadline: take it
        except BaseException:
            if not self._queues.remove(fut) and fut.done() and not fut.cancelled():
                self._release_slot()
            raise

    def _release_slot(self) -> None:
        while True:
            fut = self._queues.pop(self._clock.now())
            if fut is None:
                self._active -= 1
                return
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next request
                return

    # ==== producing and relaying keys ==================================================
    def _next_is_destination(self, s: _Session) -> bool:
        entry = self.forwarding.current(s.session_id)
        if entry is None or entry.next_km is None or s.config is None:
            return False
        return self._peer_node(s.config.destination_sae) == entry.next_km

    def hold_keys(self, keys: list[HeldKey]) -> int:
        """Relay host: write new pending keys (direct mode); the journal generation."""
        return self.vault.add_all(keys) if keys else 0

    async def _produce(self, s: _Session, indexes: list[int], size_bytes: int,
                       policy: str | None = None) -> None:
        """Source: make (or resend) the keys of ``indexes`` and relay them as one batch
        (under ``policy`` when it narrows the session's hybrid policy)."""
        now = self._clock.now()
        wall = self._clock.wall()
        direct = self._next_is_destination(s)
        keys: list[HeldKey] = []
        fresh: list[HeldKey] = []
        for i in indexes:
            k = self.vault.get(s.session_id, i)
            if k is None:
                k = HeldKey(new_key_id(wall), s.session_id, i, size_bytes * 8,
                            None if direct else secrets.token_bytes(size_bytes), "pending",
                            s.local_sae, s.peer_sae, now)
                fresh.append(k)
            elif k.state != "pending":
                continue
            keys.append(k)
        if not keys:
            return
        # direct keys take their bytes from the hop key: the relay holds them (hold_keys)
        gen = self.vault.add_all(fresh) if fresh and not direct else 0
        self._events.emit(EventType.key_material_ready, ELEMENT, node=self.node_id,
                          session=s.session_id, key_ids=[k.key_id for k in keys],
                          key_count=len(keys), size_bits=size_bytes * 8, direct=direct)
        if gen:
            await self.journal.flushed(gen)
        provenance = await self.relay.send_batch(s.session_id, keys, size_bytes,
                                                 direct_ok=direct, policy=policy)
        done = [k for k in keys if k.state == "pending"]
        for k in done:
            k.provenance = list(provenance)
        self.vault.set_states(done, "ready", provenance_changed=True)

    async def _ensure_source(self, s: _Session, indexes: list[int], size_bytes: int,
                             policy: str | None = None) -> None:
        """Source: make sure every index is produced (one task per missing batch)."""
        waits: list[asyncio.Task[None]] = []
        missing: list[int] = []
        for i in indexes:
            t = s.producing.get(i)
            if t is not None:
                waits.append(t)
                continue
            k = self.vault.get(s.session_id, i)
            if k is None or k.state == "pending":
                missing.append(i)
        if missing:
            waits.append(self._join_batch(s, missing, size_bytes, policy))
        for t in set(waits):
            try:
                await asyncio.shield(t)
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if t.cancelled() and (me is None or not me.cancelling()):
                    # the session ended under the relay (_free cancels it): a clear answer
                    raise SessionNotFound(
                        f"stream {s.session_id} ended while its keys were relayed") from None
                raise

    def _join_batch(self, s: _Session, indexes: list[int], size_bytes: int,
                    policy: str | None = None) -> asyncio.Task[None]:
        """Add ``indexes`` to the session's open relay batch (one frame per batch).

        Requests that reach the source in the same event-loop turn share one KeyFrame, one
        MAC key per hop and one confirmation, so concurrent callers cost one relay instead of
        one each; a lone request waits a single loop turn.
        """
        slot = (size_bytes, policy)  # one batch per key size and hybrid policy
        batch = s.batches.get(slot)
        if batch is None:
            collected: list[int] = []

            async def run() -> None:
                await asyncio.sleep(0)  # let requests of this loop turn join
                s.batches.pop(slot, None)
                await self._produce(s, collected, size_bytes, policy)

            task = asyncio.get_running_loop().create_task(run(), name=f"km-produce-{s.session_id}")

            def done(t: asyncio.Task[None]) -> None:
                for i in collected:
                    if s.producing.get(i) is t:
                        del s.producing[i]
                if not t.cancelled():
                    t.exception()  # retrieved here; the waiters re-raise it
            task.add_done_callback(done)
            batch = s.batches[slot] = (collected, task)
        collected, task = batch
        collected.extend(indexes)
        for i in indexes:
            s.producing[i] = task
        return task

    def demand(self, session_id: str, indexes: list[int]) -> None:
        """Relay host: the destination asked for ``indexes`` (ETSI 004)."""
        s = self._sessions.get(session_id)
        if s is None or not s.machine.live or s.config is None:
            return
        size = s.config.key_chunk_size

        async def run() -> None:
            with contextlib.suppress(KeyplaneError):
                await self._ensure_source(s, indexes, size)
        self._spawn(run(), f"km-demand-{session_id}")

    def accept_keys(self, frame: KeyFrame, keys: list[bytes]
                    ) -> tuple[bool, str, int, list[dict[str, str]]]:
        """Relay host: the destination stores a batch (or refuses it).

        Returns ``(ok, reason, journal generation, provenance)``. A retried batch crossed
        its hops more than once: the keys' provenance is the merge of every crossing, so
        the weakest hop governs, and the confirmation tells the source the same list.
        """
        s = self._sessions.get(frame.session_id)
        if s is None or not s.machine.live or s.role is not HopRole.destination:
            return False, "refused: no such session at the destination", 0, []
        fresh: list[HeldKey] = []
        again: list[HeldKey] = []
        for key_id, index, material in zip(frame.key_ids, frame.indexes, keys, strict=True):
            held = self.vault.get(s.session_id, index)
            if held is not None:
                if held.key_id != key_id:
                    return False, f"refused: index {index} already holds another key", 0, []
                again.append(held)  # a retry of a batch already stored: confirm again
                continue
            fresh.append(HeldKey(key_id, s.session_id, index, 8 * len(material), material,
                                 "pending", s.local_sae, s.peer_sae, self._clock.now()))
        if s.interface == "etsi014":
            if self.vault.ready_count(s.session_id) + len(fresh) > self.settings.max_keys_per_pair:
                return (False, "refused: destination holds max_key_count keys for the pair",
                        0, [])
        provenance = merge_provenance(*(k.provenance for k in again), frame.provenance)
        gen = 0
        for k in again:
            if k.provenance != provenance:
                k.provenance = list(provenance)
                gen = self.vault.touch(k)
        for k in fresh:
            k.provenance = list(provenance)
        if fresh:
            gen = self.vault.add_all(fresh)
        return True, "", gen, provenance

    def keys_confirmed_sent(self, frame: KeyFrame) -> None:
        """Relay host: the destination's confirmation left; offer the keys."""
        s = self._sessions.get(frame.session_id)
        stored = [k for k in (self.vault.get(frame.session_id, i) for i in frame.indexes)
                  if k is not None and k.state == "pending"]
        if stored:
            self.vault.set_states(stored, "ready")
        for index in frame.indexes:
            if s is not None:
                fut = s.arrivals.pop(index, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                s.demanded.discard(index)

    async def _destination_key(self, s: _Session, index: int, deadline: float) -> HeldKey:
        k = self.vault.get(s.session_id, index)
        if k is None or k.state == "pending":
            fut = s.arrivals.get(index)
            if fut is None:
                fut = asyncio.get_running_loop().create_future()
                s.arrivals[index] = fut
            if index not in s.demanded:
                s.demanded.add(index)
                try:
                    await self.relay.send_demand(s.session_id, [index])
                except KeyplaneError:
                    s.demanded.discard(index)
                    raise
            try:
                await self._clock.wait_for(asyncio.shield(fut), deadline - self._clock.now())
            except TimeoutError:
                s.demanded.discard(index)
                raise RelayTimeout(f"stream {s.session_id}: index {index} did not arrive "
                                   f"within the QoS timeout") from None
            k = self.vault.get(s.session_id, index)
        if k is None or k.state != "ready":
            raise KeyNotFound(f"stream {s.session_id}: index {index} is not available")
        return k

    async def _deliver(self, s: _Session, keys: list[HeldKey]) -> list[bytes]:
        """Mark ``keys`` delivered durably, then return their bytes (each key once)."""
        for k in keys:
            if k.state != "ready" or k.material is None:
                raise KeyNotFound(f"key {k.key_id} was already delivered")
        out = [k.material or b"" for k in keys]
        gen = self.vault.set_states(keys, "delivered")
        # no session row write here: after a restart next_index / next_gen are recomputed
        # from the delivered keys (_restore_sessions), so a delivery costs its key rows only
        await self.journal.flushed(gen)
        self._events.emit(EventType.key_delivered, ELEMENT, node=self.node_id,
                          session=s.session_id, sae=s.local_sae,
                          key_ids=[k.key_id for k in keys], key_count=len(keys),
                          bits=8 * sum(len(m) for m in out),
                          indexes=[k.index for k in keys],
                          provenance=merge_provenance(*(k.provenance for k in keys)),
                          provenance_counts=count_provenance(k.provenance for k in keys))
        return out

    # ==== ETSI 004 ======================================================================
    async def get_key(self, caller: Caller, key_stream_id: str, index: int | None,
                      metadata: dict[str, Any] | None = None) -> GetKeyResult:
        """ETSI 004 GET_KEY: the chunk at ``index`` (this end's next one when None).

        Raises:
            SessionNotFound: no such stream for this caller (status 9).
            PeerNotConnected: the stream is not configured yet (status 3).
            RateLimited / TimeoutError / RelayTimeout: not within the QoS timeout (status 6).
            KmBusy, InsufficientKeyMaterial: no capacity now (status 2).
            PeerUnreachable: no route (status 4).
            KeyNotFound: ``index`` was already delivered at this end.
        """
        s = self._app_session(caller, key_stream_id)
        if index is not None and index < 0:
            raise KeyNotFound("a stream index is >= 0")
        size = s.config.key_chunk_size if s.config else s.qos.key_chunk_size
        idx = s.next_index if index is None else index
        timeout_s = s.qos.timeout_ms / 1000
        async with self._exchange(s, size * 8, timeout_s) as deadline:
            held = self.vault.get(s.session_id, idx)
            if held is not None and held.state == "delivered":
                raise KeyNotFound(f"stream {key_stream_id}: index {idx} was already delivered")
            if s.role is HopRole.source:
                try:
                    await self._clock.wait_for(self._ensure_source(s, [idx], size),
                                               deadline - self._clock.now())
                except TimeoutError:
                    raise RelayTimeout(f"stream {key_stream_id}: index {idx} not relayed "
                                       f"within the QoS timeout") from None
                k = self.vault.get(s.session_id, idx)
                if k is None or k.state != "ready":
                    raise KeyNotFound(f"stream {key_stream_id}: index {idx} is not available")
            else:
                k = await self._destination_key(s, idx, deadline)
            if idx >= s.next_index:
                s.next_index = idx + 1
            (material,) = await self._deliver(s, [k])
        meta = dict(metadata or {})
        meta.update(key_ID=k.key_id)
        meta[PROVENANCE_EXTENSION] = list(k.provenance)
        return GetKeyResult(key_stream_id, idx, material, meta)

    async def close(self, caller: Caller | None = None, key_stream_id: str | None = None
                    ) -> None:
        """ETSI 004 CLOSE with ``(caller, key_stream_id)``; with no arguments, close the KM.

        ``close()`` on the KM object is also the lifecycle method: with no arguments it stops
        the key manager (idempotent). With arguments it ends the caller's stream, frees its
        resources and tells Admission Control (``SessionClose(reason="close")``).

        Closing a stream that already ended (the peer closed it, Admission Control deleted
        it, or the idle timer fired) succeeds and changes nothing: CLOSE is idempotent.

        Raises:
            SessionNotFound: no such stream for this caller.
        """
        if caller is None and key_stream_id is None:
            await self._close_km()
            return
        if caller is None or key_stream_id is None:
            raise TypeError("CLOSE needs both caller and key_stream_id")
        s = self._sessions.get(self._aliases.get(key_stream_id, key_stream_id))
        if s is not None and s.owner == _digest(caller.principal) and not s.machine.live:
            return
        s = self._app_session(caller, key_stream_id)
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
    def _batch_policy(s: _Session, mandatory: config.HybridPolicy | None,
                      optional: config.HybridPolicy | None) -> config.HybridPolicy | None:
        """The policy a batch runs under: the session's narrowed by what the application
        asked (None: the session's own).

        Raises:
            QosNotMet: the required provenance conflicts with the user's hybrid policy.
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
                            ) -> _Session:
        lock = self._pair_locks.setdefault((master, slave), asyncio.Lock())
        async with lock:
            sid = self._pairs.get((master, slave))
            s = self._sessions.get(sid) if sid else None
            if s is not None and s.machine.live:
                if s.owner != _digest(caller.principal):
                    await self._authenticate(caller, master, slave)
                return s
            qos = Qos(key_chunk_size=max(1, size_bits // 8),
                      timeout_ms=self.settings.etsi014_qos_timeout_ms)
            result = await self._open(caller, master, slave, qos, None, "etsi014")
            s = self._sessions[result.key_stream_id]
            if not result.peer_connected:
                self._apply(s, SessionEvent.close)
                raise TimeoutError(f"no configuration for {master}->{slave} within "
                                   f"{self.settings.etsi014_qos_timeout_ms} ms")
            self._pairs[(master, slave)] = s.session_id
            return s

    async def enc_keys(self, caller: Caller, master_sae: str, slave_sae: str, number: int,
                       size_bits: int, additional_slaves: list[str] | None = None,
                       extensions: dict[str, Any] | None = None) -> list[DeliveredKey]:
        """ETSI 014 enc_keys: ``number`` fresh keys for the master, held for the slave.

        Raises:
            QosNotMet: bad number/size, multicast or mandatory extensions asked (400), or
                Admission Control refused the pair.
            AuthenticationFailed: the caller may not act as ``master_sae`` (401).
            RateLimited, KmBusy, InsufficientKeyMaterial, RelayTimeout, PeerUnreachable,
                TimeoutError: the KM cannot serve now (503).
        """
        self._check_running()
        mandatory, optional = self._check_014(number, size_bits, additional_slaves, extensions)
        self._check_local_app(master_sae)
        s = await self._pair_session(caller, master_sae, slave_sae, size_bits)
        policy = self._batch_policy(s, mandatory, optional)
        size = size_bits // 8
        async with self._exchange(s, number * size_bits, s.qos.timeout_ms / 1000) as deadline:
            first = s.next_gen
            s.next_gen += number
            indexes = list(range(first, first + number))
            try:
                await self._clock.wait_for(
                    self._ensure_source(s, indexes, size, policy.value if policy else None),
                    deadline - self._clock.now())
            except TimeoutError:
                raise RelayTimeout(f"{master_sae}->{slave_sae}: keys not relayed within "
                                   f"the timeout") from None
            keys = [self.vault.get(s.session_id, i) for i in indexes]
            ready = [k for k in keys if k is not None and k.state == "ready"]
            if len(ready) != number:
                raise RelayTimeout(f"{master_sae}->{slave_sae}: relay incomplete")
            if mandatory is not None and not all(satisfies(k.provenance, mandatory)
                                                 for k in ready):
                # every hop enforces the batch policy, so this is a guard, not a path
                raise QosNotMet(f"{PROVENANCE_EXTENSION} {mandatory.value} not met")
            materials = await self._deliver(s, ready)
        return [DeliveredKey(k.key_id, m, {PROVENANCE_EXTENSION: list(k.provenance)})
                for k, m in zip(ready, materials, strict=True)]

    async def dec_keys(self, caller: Caller, slave_sae: str, master_sae: str,
                       key_ids: list[str]) -> list[DeliveredKey]:
        """ETSI 014 dec_keys: the named keys ``master_sae`` made for ``slave_sae``, once.

        All or nothing: if any key is unknown, not for this slave/master, or already
        delivered, none is returned.

        Raises:
            AuthenticationFailed: the caller may not act as ``slave_sae``, or a named key
                was made for another master/slave pair (401).
            KeyNotFound: a key is unknown or already delivered (400).
        """
        self._check_running()
        self._check_local_app(slave_sae)
        if not key_ids:
            raise KeyNotFound("no key_IDs given")
        if len(key_ids) > self.settings.max_keys_per_request or len(set(key_ids)) != len(key_ids):
            raise KeyNotFound("key_IDs must be distinct and at most max_key_per_request")
        reader = _digest(f"{caller.method}\0{caller.identity}")
        if not self._accepted_reader(reader, slave_sae, master_sae, key_ids):
            await self._authenticate(caller, slave_sae, master_sae)
        found: list[HeldKey] = []
        for key_id in key_ids:
            k = self.vault.by_id.get(key_id)
            if k is not None and (k.sae_id != slave_sae or k.peer_sae != master_sae):
                # the key exists here but was made for another pair: ETSI 014 says 401
                raise AuthenticationFailed(
                    f"{slave_sae} is not entitled to the keys it asked for")
            if k is None or k.state != "ready":
                raise KeyNotFound("one or more keys specified are not found on KME")
            found.append(k)
        by_session: dict[str, list[HeldKey]] = {}
        for k in found:
            by_session.setdefault(k.session_id, []).append(k)
        out: dict[str, bytes] = {}
        for sid, ks in by_session.items():
            s = self._sessions[sid]
            s.readers.add(reader)  # Access Control accepted it for this pair above
            if s.machine.can(SessionEvent.key_request):
                self._apply(s, SessionEvent.key_request)
                try:
                    for k, m in zip(ks, await self._deliver(s, ks), strict=True):
                        out[k.key_id] = m
                finally:
                    if s.machine.can(SessionEvent.key_done):
                        self._apply(s, SessionEvent.key_done)
            else:
                for k, m in zip(ks, await self._deliver(s, ks), strict=True):
                    out[k.key_id] = m
        return [DeliveredKey(k.key_id, out[k.key_id], {PROVENANCE_EXTENSION: list(k.provenance)})
                for k in found]

    def _accepted_reader(self, reader: str, slave_sae: str, master_sae: str,
                         key_ids: list[str]) -> bool:
        """Whether Access Control already accepted ``reader`` as ``slave_sae`` for keys from
        ``master_sae`` in every live session the named keys belong to (no new question)."""
        for key_id in key_ids:
            k = self.vault.by_id.get(key_id)
            if k is None or k.sae_id != slave_sae or k.peer_sae != master_sae:
                return False
            s = self._sessions.get(k.session_id)
            if s is None or not s.machine.live or reader not in s.readers:
                return False
        return True

    async def status(self, caller: Caller, master_sae: str, slave_sae: str) -> PairStatus:
        """ETSI 014 Status for the pair, from live figures.

        ``stored_key_count``: at the master's KM, keys of ``key_size`` the link key towards
        the pair's next hop can carry now (the direct link to the slave's node when no
        session exists yet; 0 if neither); at the slave's KM, keys held for the slave.

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
        sid = self._pairs.get((master_sae, slave_sae))
        entry = self.forwarding.current(sid) if sid else None
        peer = entry.next_km if entry is not None else (target if target in self._stores else None)
        if peer is not None:
            count = max(0, (self._stores[peer].sendable_bytes - 32) // (size // 8))
        count = min(count, self.settings.max_keys_per_pair)
        return PairStatus(source_kme_id=self.node_id, target_kme_id=target,
                          master_sae_id=master_sae, slave_sae_id=slave_sae, key_size=size,
                          stored_key_count=count, max_key_count=self.settings.max_keys_per_pair,
                          max_key_per_request=self.settings.max_keys_per_request,
                          max_key_size=self.settings.max_key_size_bits,
                          min_key_size=self.settings.min_key_size_bits, max_sae_id_count=0)

    def held_for(self, slave_sae: str, master_sae: str) -> int:
        """Keys this KM holds for ``slave_sae`` from ``master_sae`` (ready, undelivered)."""
        return sum(1 for k in self.vault.by_id.values()
                   if k.sae_id == slave_sae and k.peer_sae == master_sae and k.state == "ready")

    # ==== introspection =================================================================
    def session_state(self, session_id: str) -> SessionState | None:
        """The Fig. 2a state of a session at this KM (None if unknown)."""
        s = self._sessions.get(session_id)
        return s.machine.state if s else None

    def session_history(self, session_id: str) -> list[tuple[float, str, str, str]]:
        """The transitions a session went through here: ``(t, from, event, to)``."""
        s = self._sessions.get(session_id)
        if s is None:
            return []
        return [(t, a.value, e.value, b.value) for t, a, e, b in s.machine.history]

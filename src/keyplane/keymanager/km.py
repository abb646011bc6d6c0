"""The per-node virtual key manager (paper Fig. 2): a thin asyncio shell around a pure core.

One :class:`KeyManager` per node. It

* serves its node's applications through :class:`~keyplane.keymanager.interface.ApplicationService`
  (ETSI 004 OPEN_CONNECT / GET_KEY / CLOSE as :meth:`~KeyManager.close_stream`, ETSI 014
  status / enc_keys / dec_keys; :mod:`~keyplane.keymanager.requests`);
* keeps every session's bookkeeping in :class:`~keyplane.keymanager.core.KmCore` (pure:
  events and ``now`` in, effects out): the Fig. 2a cycle, pairing, indexes, the token
  buckets and priority queues, keep-alives, the forwarding table;
* asks Access Control and Admission Control over the bus (the models of
  :mod:`keyplane.messages`, never Python calls into ``keyplane.control``) and answers
  Admission Control on ``keyplane.km.<node>.config`` (SessionConfig -> ConfigAck,
  SessionDelete -> DeleteConfirm);
* holds one link key store per neighbour (the physical layer's sink,
  :meth:`KeyManager.link_key_sink` or :meth:`KeyManager.put_block`) and relays keys over
  ``keyplane.km.<node>.relay`` (:mod:`~keyplane.keymanager.relay`,
  :mod:`~keyplane.keymanager.production`);
* persists sessions, link key consumption and end-to-end keys through a group-commit
  journal, so a restart loses no key and hands none out twice, and hands a key out only
  once its delivery is durable (#14.1).

Layers of the shell: :mod:`~keyplane.keymanager.shell` (effects, timers, per-stream waits)
<- :mod:`~keyplane.keymanager.production` (key requests, relay host, delivery)
<- :mod:`~keyplane.keymanager.requests` (ETSI 004/014) <- this module (lifecycle, link key
stores, the control plane's messages).

Hybrid provisioning (docs/hybrid.md): each hop's key comes from QKD, ML-KEM or both, as the
session's hybrid policy (``SessionConfig.hybrid_policy``) allows, when the KM has an identity
(:class:`~keyplane.keymanager.pqc.KmIdentity`). Every key records its provenance (one record
per hop it crossed); it is reported in ``key_delivered`` events, in ETSI 004 GET_KEY
metadata and in ETSI 014 ``key_extension`` under ``keyplane_provenance``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging

from keyplane import config
from keyplane.bus import Bus, Message, Subscription, topics, unsubscribe_all
from keyplane.clock import Clock
from keyplane.errors import (
    BusError,
    KeyStoreError,
    KmBusy,
    PeerUnreachable,
    RelayError,
    StoreError,
)
from keyplane.events import EventStream, EventType
from keyplane.keymanager.core import KmCore
from keyplane.keymanager.forwarding import ForwardingTable
from keyplane.keymanager.journal import Journal
from keyplane.keymanager.keystore import LinkKeyStore
from keyplane.keymanager.pqc import KmIdentity
from keyplane.keymanager.relay import Relay
from keyplane.keymanager.requests import _Requests
from keyplane.keymanager.session import SessionState
from keyplane.keymanager.settings import KmSettings
from keyplane.keymanager.shell import StreamIo
from keyplane.keymanager.vault import KeyVault, SessionRows
from keyplane.keymanager.wire import LinkBlocksHeld
from keyplane.lifecycle import Service
from keyplane.messages import (
    DeleteConfirm,
    HopRole,
    KmReady,
    SessionConfig,
    SessionDelete,
    StreamTelemetry,
)
from keyplane.store import Database

__all__ = ["KeyManager"]

logger = logging.getLogger(__name__)


class KeyManager(_Requests, Service):
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
        self.vault = KeyVault(node_id, self.journal)
        self._rows = SessionRows(node_id, self.journal)
        self._stores = {}  # by neighbour
        self._stores_by_link = {}
        for link in topology.links_of(node_id):
            peer = link.endpoints[1] if link.endpoints[0] == node_id else link.endpoints[0]
            store = LinkKeyStore(node_id, link.link_id, peer, self.journal, events, clock,
                                 self.settings)
            self._stores[peer] = store
            self._stores_by_link[link.link_id] = store
            store.set_announcer(functools.partial(self._announce_blocks, store))
        self.core = KmCore(node_id, self._stores, self.settings)
        for store in self._stores.values():
            self._watch_supply(store)
        self.relay = Relay(self, bus, self.journal, clock, events, self.settings, identity)
        self._io_of: dict[str, StreamIo] = {}
        self._pair_locks = {}
        self._stock_inflight = collections.Counter()
        self._requests = 0
        self._pending = collections.Counter()
        self._subs: list[Subscription] = []
        self._tasks = set()
        self._status = "new"
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"KeyManager(node={self.node_id!r}, status={self._status}, " \
               f"sessions={len(self.core.streams)})"

    @property
    def forwarding(self) -> ForwardingTable:
        """The forwarding table (the core's; the relay reads it)."""
        return self.core.forwarding

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
        if self._stores:
            # one query for every link of this KM (1,000 nodes start with 1,000, not 4,000)
            loaded = await self.journal.store.load_node_blocks(
                self.node_id, [s.link_id for s in self._stores.values()])
            for store in self._stores.values():
                store.restore(loaded[store.link_id])
        await self.vault.load(self._db)
        await self._restore_sessions()
        self._rearm_014()
        self.journal.start()
        self._subs.append(await self._bus.subscribe(topics.km_config(self.node_id),
                                                    self._on_config))
        self._subs.append(await self._bus.subscribe(topics.km_relay(self.node_id),
                                                    self.relay.handle))
        self._status = "running"
        # Admission Control pushes again what a restart may have lost (see KmReady)
        self._publish(topics.ADMISSION, KmReady(node=self.node_id))
        for store in self._stores.values():  # agree again with each peer on what both hold
            self._announce_blocks(store, store.inventory(), inventory=True, reply=True)
        self._emit(EventType.element_started, links=sorted(self._stores_by_link),
                   sessions=len(self.core.streams))

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

    async def close(self) -> None:
        """Stop now: unsubscribe, cancel timers and relays, write what is dirty (idempotent).

        This is the KM's lifecycle close; ETSI 004 CLOSE is :meth:`close_stream`.
        """
        if self._status == "closed":
            return
        self._status = "closed"
        await unsubscribe_all(self._subs)
        self._subs.clear()
        tasks = [t for t in self._tasks if not t.done()]
        for io in self._io_of.values():
            if io.idle_task is not None:
                tasks.append(io.idle_task)
            for fut in io.arrivals.values():
                if not fut.done():
                    fut.cancel()
            if io.decision is not None and not io.decision.done():
                io.decision.cancel()
            tasks.extend(io.producing.values())
        self.relay.cancel_all(lambda: PeerUnreachable("key manager closed"))
        while True:
            ticket = self.core.queues.pop(float("inf"))
            if ticket is None:
                break
            if isinstance(ticket, asyncio.Future) and not ticket.done():
                ticket.set_exception(KmBusy(self.node_id, 0, 0))
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for store in self._stores.values():
            store.write_spent()  # no spent link key left at rest by a clean stop
        await self.journal.release([*self._stores.values(), self.vault, self._rows])
        self._emit(EventType.element_stopped)

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

    # ==== control plane: configuration and deletion ====================================
    async def _on_config(self, topic: str, msg: Message) -> Message | None:
        if isinstance(msg, SessionConfig):
            ack, effects = self.core.session_config(msg, self._clock.now())
            self._run(effects)
            if ack.ok:
                # acknowledged only once durable: a KM killed after the acknowledgement
                # must find its hop again when it restarts
                try:
                    await self.journal.sync()
                except StoreError as exc:
                    return ack.model_copy(update={"ok": False,
                                                  "reason": f"not durable: {exc}"})
                # a reroute: waits for key on links off the new hops fail over
                self._reroute_waiters(msg.session_id, {p for p in (msg.prev_km, msg.next_km)
                                                       if p is not None})
            return ack
        if isinstance(msg, SessionDelete):
            return await self._on_session_delete(msg)
        logger.warning("node %s: unexpected %s on its config topic", self.node_id, msg.KIND)
        return None

    async def _on_session_delete(self, msg: SessionDelete) -> DeleteConfirm:
        s, effects = self.core.session_delete(msg, self._clock.now())
        self._run(effects)
        self._offer_link_key()  # an intermediate's share went back to the pools
        if s is None:
            return DeleteConfirm(session_id=msg.session_id, node=self.node_id)
        await self.journal.sync()
        return DeleteConfirm(session_id=msg.session_id, node=self.node_id,
                             freed_bits=s.freed_bits)

    async def _restore_sessions(self) -> None:
        rows = await self._rows.load(self._db)

        def held(sid: str) -> list[int]:
            return [k.index for k in self.vault.of_session(sid)]
        effects = self.core.restore(rows, self.vault.delivered_end, held, self._clock.now())
        for s in self.core.streams.values():
            if s.role is HopRole.destination:
                self._promote_stored(s.session_id)
        self._run(effects)

    def _promote_stored(self, session_id: str) -> None:
        """Destination after a restart: offer the keys it stored but had not yet offered.

        The destination stores a batch durably *before* it sends the confirmation and
        offers the keys only after; a crash in between leaves them ``pending``. The source
        may have had the confirmation (its keys are then ready or delivered, and it never
        resends them), so waiting for a resend would wait forever. Offering them is safe:
        a key id names the same bytes at both ends, and if the confirmation never left, the
        source still holds the same key ``pending`` and resends exactly it on demand.
        """
        stored = [k for k in self.vault.of_session(session_id)
                  if k.state == "pending" and k.material is not None]
        if stored:
            self.vault.set_states(stored, "ready")

    # ==== introspection =================================================================
    def session_state(self, session_id: str) -> SessionState | None:
        """The Fig. 2a state of a session at this KM (None if unknown)."""
        s = self.core.streams.get(session_id)
        return s.machine.state if s else None

    def session_history(self, session_id: str) -> list[tuple[float, str, str, str]]:
        """The transitions a session went through here: ``(t, from, event, to)``."""
        s = self.core.streams.get(session_id)
        if s is None:
            return []
        return [(t, a.value, e.value, b.value) for t, a, e, b in s.machine.history]

    @property
    def queued_requests(self) -> int:
        """Key requests waiting for one of the exchange slots (the priority queues)."""
        return len(self.core.queues)

    def stream_figures(self) -> dict[str, StreamTelemetry]:
        """Per live endpoint session: requests inside the KM and its token bucket (read by
        the KM's telemetry publisher, :mod:`keyplane.keymanager.telemetry`)."""
        now = self._clock.now()
        return {sid: StreamTelemetry(
                    pending_requests=self._pending.get(sid, 0),
                    bucket_bits=s.bucket.level(now) if s.bucket is not None else None,
                    bucket_size_bits=s.bucket.size_bits if s.bucket is not None else None)
                for sid, s in self.core.streams.items() if s.live}

"""The key manager shell's common part: what it holds besides the core, and how it carries
out the core's effects.

The shell is split in three layers, one module each, all parts of one
:class:`~keyplane.keymanager.km.KeyManager`:

* here, :class:`KmShellBase`: the state the core cannot hold (futures and tasks per stream,
  :class:`StreamIo`), and :meth:`KmShellBase._run`, which carries out
  :data:`~keyplane.keymanager.core.Effect` lists (timers on the clock, bus publications,
  session rows through the journal, events); and the waits for scarce link key
  (:meth:`KmShellBase.take_link_key`: every frame's link key goes through the core's
  :class:`~keyplane.keymanager.shares.LinkShares`);
* :mod:`~keyplane.keymanager.production`: key requests (bucket, slots), making, relaying and
  delivering keys (durable before delivered);
* :mod:`~keyplane.keymanager.requests`: the application operations (ETSI 004 and 014);
* :mod:`~keyplane.keymanager.km`: lifecycle, link key stores, the control plane's messages.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from keyplane import config
from keyplane.bus import Bus, Message, topics
from keyplane.clock import Clock
from keyplane.errors import (
    AuthenticationFailed,
    BusError,
    InsufficientKeyMaterial,
    KeyWaitExpired,
    PeerUnreachable,
    QosNotMet,
    SessionNotFound,
)
from keyplane.events import EventStream, EventType
from keyplane.keymanager.core import KmCore, Stream
from keyplane.keymanager.effects import (
    ArmIdle,
    Decide,
    Effect,
    FreeStream,
    KeepAliveAt,
    PersistRow,
    ProbePeer,
    Renamed,
    SendAdmission,
)
from keyplane.keymanager.journal import Journal
from keyplane.keymanager.keystore import LinkKeyStore, Segment
from keyplane.keymanager.liveness import Forward, PeerState
from keyplane.keymanager.relay import Relay
from keyplane.keymanager.session import SessionEvent
from keyplane.keymanager.settings import KmSettings
from keyplane.keymanager.shares import Expired, Grant
from keyplane.keymanager.vault import KeyVault, SessionRows
from keyplane.keymanager.wire import SessionProbe, SessionProbeReply
from keyplane.store import Database

__all__ = ["ELEMENT", "KmShellBase", "StreamIo"]

logger = logging.getLogger(__name__)

ELEMENT = "km"


@dataclass
class StreamIo:
    """What the shell holds for one stream: waits and tasks (never persisted)."""

    idle_task: asyncio.Task[None] | None = None
    idle_at: float = 0.0
    decision: asyncio.Future[None] | None = None
    producing: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    # open relay batches by (key size, policy, lane): indexes, latest deadline, the task (a
    # stock refill has a lane of its own: no request's keys ride in its frame, nor it in theirs)
    batches: dict[tuple[int, str | None, str],
                  tuple[list[int], list[float], asyncio.Task[None]]] = field(default_factory=dict)
    arrivals: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    demanded: set[int] = field(default_factory=set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class KmShellBase:
    """State and effect runner shared by the shell's layers (see the module docstring)."""

    node_id: str
    topology: config.Topology
    settings: KmSettings
    core: KmCore
    journal: Journal
    vault: KeyVault
    relay: Relay
    _bus: Bus
    _db: Database
    _clock: Clock
    _events: EventStream
    _rows: SessionRows
    _stores: dict[str, LinkKeyStore]
    _stores_by_link: dict[str, LinkKeyStore]
    _io_of: dict[str, StreamIo]
    _tasks: set[asyncio.Task[Any]]
    _status: Literal["new", "running", "draining", "closed"]
    _requests: int
    _pending: collections.Counter[str]  # key requests inside the KM, by session (telemetry)
    _idle: asyncio.Event

    def _check_running(self) -> None:
        if self._status != "running":
            raise PeerUnreachable(f"key manager {self.node_id} is {self._status}")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _check_local_app(self, sae_id: str) -> None:
        """Raises AuthenticationFailed unless ``sae_id`` is an application of this node."""
        try:
            app = self.topology.application(sae_id)
        except KeyError:
            raise AuthenticationFailed(f"unknown application {sae_id!r}") from None
        if app.node != self.node_id:
            raise AuthenticationFailed(f"{sae_id} is not attached to key manager {self.node_id}")

    def _peer_node(self, sae_id: str) -> str:
        """The node of a peer application (PeerUnreachable if unknown)."""
        try:
            return self.topology.application(sae_id).node
        except KeyError:
            raise PeerUnreachable(f"unknown peer application {sae_id!r}") from None

    def _io(self, session_id: str) -> StreamIo:
        io = self._io_of.get(session_id)
        if io is None:
            io = self._io_of[session_id] = StreamIo()
        return io

    def _emit(self, type: EventType, **data: Any) -> None:
        self._events.emit(type, ELEMENT, node=self.node_id, **data)

    def _apply(self, s: Stream, event: SessionEvent, *,
               idle_timeout_s: float | None = None) -> None:
        """Feed an event to the stream's machine and carry out what follows."""
        self._run(self.core.apply(s, event, self._clock.now(), idle_timeout_s=idle_timeout_s))

    # ---- effects -------------------------------------------------------------------------
    def _run(self, effects: list[Effect]) -> None:
        """Carry out the core's effects, in order."""
        for e in effects:
            if isinstance(e, ArmIdle):
                self._arm_idle(e.session_id, e.deadline)
            elif isinstance(e, KeepAliveAt):
                self._spawn(self._trailing_keepalive(e.session_id, e.at),
                            f"km-keepalive-{e.session_id}")
            elif isinstance(e, SendAdmission):
                self._publish(topics.ADMISSION, e.msg)
            elif isinstance(e, PersistRow):
                self._rows.put(e.session_id, e.state, e.data, self._clock.now())
            elif isinstance(e, FreeStream):
                self._free_io(e.session_id)
            elif isinstance(e, Decide):
                self._decide(e)
            elif isinstance(e, ProbePeer):
                self._spawn(self._probe(e), f"km-probe-{e.session_id}")
            elif isinstance(e, Renamed):
                io = self._io_of.pop(e.old, None)
                if io is not None:
                    self._io_of[e.new] = io
            else:
                self._emit(e.type, **e.data)

    def _publish(self, topic: str, msg: Message) -> None:
        async def send() -> None:
            try:
                await self._bus.publish(topic, msg)
            except BusError as exc:
                logger.warning("node %s could not publish %s: %s", self.node_id, msg.KIND, exc)
        self._spawn(send(), f"km-publish-{msg.KIND}")

    def _decide(self, e: Decide) -> None:
        io = self._io_of.get(e.session_id)
        fut = io.decision if io is not None else None
        if fut is None or fut.done():
            return
        if e.error is None:
            fut.set_result(None)
            return
        if e.error == "refused":
            fut.set_exception(QosNotMet(e.reason or "Admission Control refused the session",
                                        counter_proposal=e.offer))
        else:
            fut.set_exception(SessionNotFound(f"session {e.session_id} ended"))
        fut.exception()  # retrieved: the opener re-raises it, if it still waits

    async def _trailing_keepalive(self, session_id: str, at: float) -> None:
        await self._clock.sleep_until(at)
        self._run(self.core.keepalive_due(session_id, self._clock.now()))

    def _arm_idle(self, session_id: str, deadline: float) -> None:
        """Make sure a watcher wakes at ``deadline`` (one watcher per stream: a later
        deadline is read from the core when the watcher wakes, so a key request costs no
        new timer)."""
        io = self._io(session_id)
        task = io.idle_task
        if task is not None and not task.done():
            if deadline >= io.idle_at or task is asyncio.current_task():
                return
            task.cancel()
        io.idle_at = deadline
        io.idle_task = asyncio.get_running_loop().create_task(
            self._idle_watch(session_id, io), name=f"km-idle-{session_id}")

    async def _idle_watch(self, session_id: str, io: StreamIo) -> None:
        while True:
            await self._clock.sleep_until(io.idle_at)
            deadline, effects = self.core.idle_due(session_id, self._clock.now())
            if deadline is None:
                if effects:
                    logger.info("node %s: session %s idle here, %s", self.node_id, session_id,
                                "asking the other end" if any(
                                    isinstance(e, ProbePeer) for e in effects) else "closing")
                io.idle_task = None
                self._run(effects)
                return
            io.idle_at = deadline

    # ---- idle probes (keymanager/liveness.py) --------------------------------------------
    def _probe_timeout(self, session_id: str) -> float:
        """A probe's bound: the setting, at most half the session's idle timeout (the
        KeepAlive sent with the probe covers Admission Control's timer until then)."""
        s = self.core.streams.get(session_id)
        idle = s.machine.idle_timeout_s if s is not None else self.settings.idle_probe_timeout_s
        return min(self.settings.idle_probe_timeout_s, idle / 2)

    async def _probe(self, e: ProbePeer) -> None:
        """Ask the other endpoint how long its end has been idle; hand the core its answer
        (``unknown`` when none came: a hop or the peer is down)."""
        state: PeerState = "unknown"
        idle_for = 0.0
        timeout = self._probe_timeout(e.session_id)
        try:
            reply = await self._bus.request(topics.km_relay(e.hop), SessionProbe(
                session_id=e.session_id, epoch=e.epoch, sender=self.node_id,
                target=self._peer_node(e.peer_sae), timeout_s=timeout), timeout_s=timeout)
            if isinstance(reply, SessionProbeReply) and reply.session_id == e.session_id:
                state, idle_for = reply.state, reply.idle_for_s
        except (BusError, PeerUnreachable) as exc:
            logger.info("node %s: idle probe of session %s got no answer: %s", self.node_id,
                        e.session_id, exc)
        self._run(self.core.probe_result(e.session_id, e.seq, state, idle_for,
                                         self._clock.now()))

    async def answer_probe(self, msg: SessionProbe) -> SessionProbeReply:
        """Relay host: an idle probe reached this KM: answer it (the target endpoint, or a
        hop that cannot route it) or pass it on along the path and return what comes back."""
        step = self.core.probe_step(msg.session_id, msg.epoch, msg.sender, msg.target,
                                    self._clock.now())
        if isinstance(step, Forward):
            left = msg.timeout_s * 0.8  # the answer must come back within the sender's bound
            try:
                reply = await self._bus.request(topics.km_relay(step.to), msg.model_copy(
                    update={"sender": self.node_id, "timeout_s": left}), timeout_s=left)
                if isinstance(reply, SessionProbeReply):
                    return reply
            except BusError as exc:
                logger.info("node %s: idle probe of session %s not passed on to %s: %s",
                            self.node_id, msg.session_id, step.to, exc)
            return SessionProbeReply(session_id=msg.session_id, node=self.node_id,
                                     state="unknown")
        return SessionProbeReply(session_id=msg.session_id, node=self.node_id,
                                 state=step.state, idle_for_s=step.idle_for_s)

    def _free_io(self, session_id: str) -> None:
        """Release the waits and tasks of a terminated stream and destroy its keys."""
        io = self._io_of.get(session_id)
        if io is not None:
            io.ended.set()
            if io.idle_task is not None and io.idle_task is not asyncio.current_task():
                io.idle_task.cancel()
            io.idle_task = None
            for t in io.producing.values():
                t.cancel()
            for fut in io.arrivals.values():
                if not fut.done():
                    fut.set_exception(SessionNotFound(f"session {session_id} ended"))
                    fut.exception()  # retrieved: nobody may be waiting
        bits, _ = self.vault.drop_session(session_id)
        self.core.freed(session_id, bits)
        self._offer_link_key()

    def _reroute_waiters(self, session_id: str, keep: set[str]) -> None:
        """The session now runs over other hops: its requests waiting for key on links to
        neighbours not in ``keep`` fail over (the relay tries again on the current path)."""
        for peer, shares in self.core.shares.items():
            if peer in keep:
                continue
            for fut in shares.withdraw(session_id):
                assert isinstance(fut, asyncio.Future)
                if not fut.done():
                    fut.set_exception(InsufficientKeyMaterial(
                        f"session {session_id} rerouted off the link to {peer}"))
        self._offer_link_key()  # its credit on those links went back to their pools

    def _offer_link_key(self) -> None:
        """Offer every link's key to its shares again (a session's credit went back to the
        pools: a waiter it now covers is served at once)."""
        now = self._clock.now()
        for peer, shares in self.core.shares.items():
            if shares.waiting:
                store = self._stores[peer]
                self._settle_shares(store, shares.supply(store.sendable_bytes, now))

    # ---- scarce link key ---------------------------------------------------------------
    def _watch_supply(self, store: LinkKeyStore) -> None:
        """Let ``store`` tell the link's shares when its sendable key rises (once per loop
        turn, outside the store's own bookkeeping)."""
        pending = [False]

        def supplied() -> None:
            pending[0] = False
            self._settle_shares(store, self.core.shares[store.peer_id].supply(
                store.sendable_bytes, self._clock.now()))

        def on_supply() -> None:
            if not pending[0]:
                pending[0] = True
                asyncio.get_running_loop().call_soon(supplied)
        store.on_supply = on_supply

    def _settle_shares(self, store: LinkKeyStore, decisions: Sequence[Grant | Expired]) -> None:
        """Carry out the shares' decisions: a grant takes its bytes from the store at once
        (so no other request can take them), an expiry fails the waiter."""
        for d in decisions:
            fut = d.ticket
            assert isinstance(fut, asyncio.Future)
            if isinstance(d, Expired):
                if not fut.done():
                    fut.set_exception(KeyWaitExpired(
                        f"link {store.link_id}: no key for {d.nbytes} bytes within the "
                        f"request's timeout"))
                continue
            try:
                taken = store.take_send(d.nbytes)
            except InsufficientKeyMaterial as exc:  # the store fell below the shares' stock
                if not fut.done():
                    fut.set_exception(exc)
                continue
            if fut.done():  # the waiter left: the taken key is spent, never reused
                continue
            fut.set_result(taken)

    async def take_link_key(self, store: LinkKeyStore, session_id: str, nbytes: int,
                            deadline: float, *, urgent: bool = False
                            ) -> tuple[list[Segment], bytes, int]:
        """Take ``nbytes`` of ``store``'s send half for one frame of ``session_id``, waiting
        for its share of the link's key until ``deadline`` (the clock's) if need be.

        Args:
            urgent: a confirmation or demand frame (may use other sessions' shares).

        Returns:
            ``(segments, pad, gen)`` as :meth:`LinkKeyStore.take_send` returns them.

        Raises:
            KeyWaitExpired: ``deadline`` passed first (the timeout status on the wire).
        """
        shares = self.core.shares[store.peer_id]
        now = self._clock.now()
        self._settle_shares(store, shares.supply(store.sendable_bytes, now))
        fut: asyncio.Future[tuple[list[Segment], bytes, int]] = \
            asyncio.get_running_loop().create_future()
        self._settle_shares(store, shares.request(
            fut, session_id, self.core.flow_priority(session_id), nbytes, deadline, now,
            urgent=urgent))
        try:
            return await self._clock.wait_for(asyncio.shield(fut), deadline - now)
        except TimeoutError:
            if not fut.done():
                self._settle_shares(store, shares.due(self._clock.now()))
            if not fut.done():
                shares.cancel(fut)
                fut.set_exception(KeyWaitExpired(f"link {store.link_id}: no key for "
                                                 f"{nbytes} bytes within the timeout"))
            return fut.result()
        except BaseException:
            shares.cancel(fut)
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # retrieved: the caller is gone
            raise

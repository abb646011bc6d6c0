"""Admission Control on the bus: the thin asyncio shell around :class:`.core.AdmissionCore`.

It subscribes ``keyplane.control.admission``, looks users and applications up in the
database, carries out the core's effects (route requests, configuration pushes,
deletions, SDN announcements, store writes) and feeds their results back to the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

from keyplane.bus import Bus, Message, Subscription, topics
from keyplane.clock import Clock
from keyplane.control.admission.core import AdmissionCore
from keyplane.control.admission.model import (
    AnnounceVirtualLink,
    Effect,
    ForgetStored,
    Notify,
    PushConfigs,
    RecordKeepAlive,
    ReleaseRoute,
    RepushConfig,
    RequestRoute,
    SendDeletes,
    StoreSession,
)
from keyplane.control.settings import AdmissionSettings
from keyplane.control.wire import (
    SDN_REGISTER,
    LiveSessions,
    LiveSessionsApplied,
    LiveSessionsRequest,
    RegisterLink,
    RerouteOrder,
    RouteRelease,
    RouteReply,
    RouteRequest,
    UnregisterLink,
    virtual_link_id,
)
from keyplane.errors import BusError, StoreError
from keyplane.events import EventStream, EventType
from keyplane.lifecycle import Service
from keyplane.messages import (
    ConfigAck,
    DeleteConfirm,
    KeepAlive,
    KmReady,
    OpenAck,
    SessionClose,
    SessionConfig,
    SessionDelete,
    SessionOpenRequest,
)
from keyplane.store import Database
from keyplane.store.admitted import (
    AdmittedWrite,
    load_admitted_sessions,
    write_admitted_sessions,
)
from keyplane.store.topology import get_application, get_user

__all__ = ["ELEMENT", "AdmissionControl"]

logger = logging.getLogger(__name__)

ELEMENT = "admission"

WRITE_BATCH = 500
"""Most store changes (session saves, keep-alive stamps, deletions) in one transaction."""


class AdmissionControl(Service):
    """Admission Control on the bus (subscribes ``keyplane.control.admission``).

    Args:
        bus: KMs, the Routing Element and the SDN Controller are reached here.
        db: the user database (users' SLA profiles, applications' nodes).
        clock: every protocol timer and acknowledgement bound.
        events: the event stream.
        settings: :class:`~keyplane.control.settings.AdmissionSettings`.
    """

    def __init__(self, bus: Bus, db: Database, clock: Clock, events: EventStream, *,
                 settings: AdmissionSettings | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self.core = AdmissionCore(self.settings)
        self.bus = bus
        self.db = db
        self.clock = clock
        self.events = events
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sleeping_until: float | None = None  # the timer loop's deadline (None: none)
        self._closed = False
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        # per session, the last SDN announcement in flight: a reroute's removal of the old
        # VIRT link must reach the SDN Controller before the new path's registration
        self._announcing: dict[str, asyncio.Future[Any]] = {}
        # store writes, in the order the core decided them (one writer task)
        self._writes: asyncio.Queue[AdmittedWrite] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._kept_alive: dict[str, float] = {}  # session → wall time last written
        self._started = False

    async def start(self) -> None:
        """Reload the stored sessions, tell the Routing Element which capacity they hold,
        then subscribe and start the session timers (idempotent).

        Raises:
            StoreError: the stored sessions cannot be read (starting without them would
                forget their reservations).
        """
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_loop())
        self._writer.add_done_callback(self._task_done)  # logs a writer that died
        restored = await self._restore()
        self._sub = await self.bus.subscribe(topics.ADMISSION, self._on_message)
        self._timer = loop.create_task(self._timer_loop())
        self.events.emit(EventType.element_started, ELEMENT, restored=restored)

    async def _restore(self) -> int:
        """Take back the sessions of the previous run and sync the Routing Element's
        reservations with them, before any new request can reserve capacity."""
        try:
            records = await load_admitted_sessions(self.db)
        except StoreError:
            logger.exception("cannot read the stored sessions")
            await self.close()
            raise
        now = self.clock.now()
        for rec in records:
            self._run(self.core.restore(rec, now))
        live = LiveSessions(sessions=self.core.live_sessions())
        try:
            reply = await self._ask(topics.ROUTING, live, self.settings.route_timeout_s)
        except (TimeoutError, BusError) as exc:
            logger.warning("Routing Element did not take the live sessions (%s); it asks "
                           "for them when it starts", exc)
        else:
            if isinstance(reply, LiveSessionsApplied) and (reply.overbooked
                                                           or reply.missing_links):
                logger.warning("restored sessions overbook %s; hops without a link: %s",
                               reply.overbooked, reply.missing_links)
        if records:
            logger.info("restored %d stored sessions", len(records))
        return len(records)

    # ------------------------------------------------------------------ inbound

    async def _on_message(self, _topic: str, msg: Message) -> Message | None:
        now = self.clock.now
        if isinstance(msg, SessionOpenRequest):
            return await self._open(msg)
        if isinstance(msg, KeepAlive):
            self._run(self.core.keepalive(msg, now()))
        elif isinstance(msg, KmReady):
            self._run(self.core.km_ready(msg.node))
        elif isinstance(msg, SessionClose):
            self._run(self.core.close(msg, now()))
        elif isinstance(msg, RerouteOrder):
            ack, effects = self.core.reroute(msg, now())
            self._run(effects)
            return ack
        elif isinstance(msg, LiveSessionsRequest):
            return LiveSessions(sessions=self.core.live_sessions())
        return None

    async def _lookup(self, kind: str, key: str) -> Any:
        """A user or application from the database, cached for ``directory_cache_ttl_s``.

        Only hits are cached, so a user or application added to the database is seen at
        once; a changed SLA takes effect within the TTL.

        Raises:
            StoreError: the database failed.
        """
        now = self.clock.now()
        hit = self._cache.get((kind, key))
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await (get_user(self.db, key) if kind == "user"
                       else get_application(self.db, key))
        ttl = self.settings.directory_cache_ttl_s
        if value is not None and ttl > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[(kind, key)] = (now + ttl, value)
        return value

    async def _open(self, req: SessionOpenRequest) -> OpenAck:
        try:
            user = await self._lookup("user", req.user_id)
            app = await self._lookup("app", req.destination_sae)
            own = await self._lookup("app", req.source_sae)
        except StoreError as exc:
            logger.exception("user database unavailable")
            _, effects = self.core.open(req, None, None, self.clock.now())
            self._run(effects)
            return OpenAck(session_id=req.session_id, reason=f"store unavailable: {exc}")
        ack, effects = self.core.open(req, user, app.node if app else None, self.clock.now(),
                                      source_node=own.node if own else "")
        self._run(effects)
        return ack

    # ------------------------------------------------------------------ effects

    def _run(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Notify):
                self.events.emit(e.type, ELEMENT, node=e.node, session=e.session, **e.data)
            elif isinstance(e, RequestRoute):
                self._spawn(self._route(e))
            elif isinstance(e, PushConfigs):
                self._spawn(self._push(e))
            elif isinstance(e, RepushConfig):
                self._spawn(self._repush(e.config))
            elif isinstance(e, SendDeletes):
                self._spawn(self._delete(e))
            elif isinstance(e, ReleaseRoute):
                self._spawn(self._publish(topics.ROUTING, RouteRelease(session_id=e.session_id,
                                                                       epoch=e.epoch)))
            elif isinstance(e, AnnounceVirtualLink):
                self._spawn(self._announce_in_order(e))
            elif isinstance(e, StoreSession):
                # a new record is stamped as kept alive now; an updated one keeps its stamp
                self._kept_alive.setdefault(e.record.session_id, self.clock.wall())
                self._writes.put_nowait(("save", e.record, self.clock.wall()))
            elif isinstance(e, ForgetStored):
                self._kept_alive.pop(e.session_id, None)
                self._writes.put_nowait(("delete", e.session_id, self.clock.wall()))
            elif isinstance(e, RecordKeepAlive):
                self._keepalive_written(e.session_id)
        # wake the timer loop only for an earlier deadline than it sleeps to: a keep-alive
        # (one per served key) only moves a timer later, found when the sleep ends
        deadline = self.core.next_deadline()
        if deadline is not None and (self._sleeping_until is None
                                     or deadline < self._sleeping_until):
            self._wake.set()

    def _keepalive_written(self, session_id: str) -> None:
        """Stamp the record's keep-alive time, at most once per
        ``keepalive_store_interval_s`` per session (a keep-alive comes with every key
        request; the timer is re-armed from the restart anyway, so the stamp is for
        operators)."""
        wall = self.clock.wall()
        last = self._kept_alive.get(session_id)
        if last is None or wall - last >= self.settings.keepalive_store_interval_s:
            self._kept_alive[session_id] = wall
            self._writes.put_nowait(("touch", session_id, wall))

    async def _write_loop(self) -> None:
        """Carry out store writes in order, all those queued (up to ``WRITE_BATCH``) in one
        transaction: one commit per session each would fall behind thousands of sessions
        opened at once. A failed batch is written again one change at a time; a change
        that still fails is logged and its session keeps running (the store lags until the
        session's next write)."""
        while True:
            writes = [await self._writes.get()]
            while len(writes) < WRITE_BATCH and not self._writes.empty():
                writes.append(self._writes.get_nowait())
            try:
                await write_admitted_sessions(self.db, writes)
            except StoreError:
                for w in writes:  # one at a time: only a change that fails is lost
                    await self._write_one(w)
            finally:
                for _ in writes:
                    self._writes.task_done()

    async def _write_one(self, w: AdmittedWrite) -> None:
        try:
            await write_admitted_sessions(self.db, [w])
        except StoreError:
            logger.exception("cannot %s stored session %s", w[0],
                             w[1].session_id if w[0] == "save" else w[1])

    def _spawn(self, aw: Awaitable[Any]) -> None:
        if self._closed:
            return
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("admission task failed", exc_info=task.exception())

    async def _publish(self, topic: str, msg: Message) -> None:
        try:
            await self.bus.publish(topic, msg)
        except BusError:
            logger.warning("cannot publish %s on %s", msg.KIND, topic)

    async def _ask(self, topic: str, msg: Message, bound_s: float) -> Message:
        """A bus request bounded by the clock (protocol) and by ``bus_timeout_s`` (transport).

        Raises:
            TimeoutError: the clock bound passed.
            BusError: the transport failed, nobody listens, or its bound passed.
        """
        return await self.clock.wait_for(
            self.bus.request(topic, msg, timeout_s=self.settings.bus_timeout_s), bound_s)

    async def _route(self, e: RequestRoute) -> None:
        req = RouteRequest(session_id=e.session_id, epoch=e.epoch, source_node=e.source_node,
                           destination_node=e.destination_node, min_bps=e.min_bps,
                           hybrid_policy=e.hybrid_policy,
                           max_trusted_relays=e.max_trusted_relays)
        try:
            reply = await self._ask(topics.ROUTING, req, self.settings.route_timeout_s)
        except (TimeoutError, BusError) as exc:
            self._run(self.core.route_failed(e.session_id, e.epoch,
                                             f"routing unavailable: {exc}", self.clock.now()))
            return
        if isinstance(reply, RouteReply) and reply.ok:
            self._run(self.core.route_found(e.session_id, e.epoch, reply.path, self.clock.now()))
        else:
            reason = reply.reason if isinstance(reply, RouteReply) else "unexpected reply"
            self._run(self.core.route_failed(e.session_id, e.epoch, reason, self.clock.now()))

    async def _push(self, e: PushConfigs) -> None:
        async def one(cfg: SessionConfig) -> tuple[str, str | None]:
            try:
                reply = await self._ask(topics.km_config(cfg.node), cfg,
                                        self.settings.config_ack_timeout_s)
            except TimeoutError:
                return cfg.node, (f"no ConfigAck within "
                                  f"{self.settings.config_ack_timeout_s:g} s")
            except BusError as exc:
                return cfg.node, str(exc)
            if not isinstance(reply, ConfigAck):
                return cfg.node, f"unexpected reply {reply.KIND}"
            if not reply.ok:
                return cfg.node, reply.reason or "refused"
            if reply.epoch != cfg.epoch:
                return cfg.node, f"acknowledged epoch {reply.epoch}, expected {cfg.epoch}"
            return cfg.node, None

        results = await asyncio.gather(*(one(c) for c in e.configs))
        acked = tuple(n for n, r in results if r is None)
        failed = {n: r for n, r in results if r is not None}
        self._run(self.core.configs_applied(e.session_id, e.epoch, acked, failed,
                                            self.clock.now()))

    async def _repush(self, cfg: SessionConfig) -> None:
        try:
            reply = await self._ask(topics.km_config(cfg.node), cfg,
                                    self.settings.config_ack_timeout_s)
        except (TimeoutError, BusError) as exc:
            error: str | None = f"no ConfigAck: {exc or type(exc).__name__}"
        else:
            error = None if isinstance(reply, ConfigAck) and reply.ok else (
                reply.reason if isinstance(reply, ConfigAck) else f"unexpected {reply.KIND}")
        if error is not None:
            logger.warning("%s did not take session %s again: %s", cfg.node,
                           cfg.session_id, error)
        self._run(self.core.config_repushed(cfg, error))

    async def _delete(self, e: SendDeletes) -> None:
        async def one(d: SessionDelete) -> tuple[str, bool]:
            try:
                reply = await self._ask(topics.km_config(d.node), d,
                                        self.settings.delete_confirm_timeout_s)
            except (TimeoutError, BusError):
                return d.node, False
            return d.node, isinstance(reply, DeleteConfirm)

        results = await asyncio.gather(*(one(d) for d in e.deletes))
        confirmed = tuple(n for n, ok in results if ok)
        missing = tuple(n for n, ok in results if not ok)
        self._run(self.core.deletes_done(e.session_id, e.purpose, e.epoch, confirmed, missing,
                                         self.clock.now()))

    async def _announce_in_order(self, e: AnnounceVirtualLink) -> None:
        """Send ``e`` after the session's previous announcement has been answered."""
        previous = self._announcing.get(e.session_id)
        mine: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._announcing[e.session_id] = mine
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await self._announce(e)
        finally:
            mine.set_result(None)
            if self._announcing.get(e.session_id) is mine:
                del self._announcing[e.session_id]

    async def _announce(self, e: AnnounceVirtualLink) -> None:
        link_id = virtual_link_id(e.session_id)
        msg: Message = (RegisterLink(link_id=link_id, type="VIRT",
                                     endpoints=(e.path[0], e.path[-1]), path=list(e.path),
                                     bandwidth_bps=e.bandwidth_bps, session_id=e.session_id,
                                     source_sae=e.source_sae,
                                     destination_sae=e.destination_sae, priority=e.priority,
                                     max_bps=e.max_bps)
                        if e.active else UnregisterLink(link_id=link_id))
        try:
            await self._ask(SDN_REGISTER, msg, self.settings.route_timeout_s)
        except (TimeoutError, BusError) as exc:
            logger.info("SDN Controller did not take %s for %s: %s", msg.KIND, link_id, exc)

    # ------------------------------------------------------------------ timers

    async def _timer_loop(self) -> None:
        while True:
            self._wake.clear()
            deadline = self._sleeping_until = self.core.next_deadline()
            waker = asyncio.ensure_future(self._wake.wait())
            waits: set[asyncio.Future[Any]] = {waker}
            if deadline is not None:
                waits.add(asyncio.ensure_future(self.clock.sleep_until(deadline)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if deadline is not None and self.clock.now() >= deadline:
                self._run(self.core.tick(self.clock.now()))

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Unsubscribe, stop the timers, finish the store writes decided so far (bounded by
        ``bus_timeout_s``) and cancel in-flight work (idempotent).

        Sessions are not deleted at the KMs, nor in the store: a control plane started
        again on the same store takes them back, and the KMs' own idle timers end those
        nobody uses.
        """
        if self._closed:
            return
        self._closed = True
        if self._sub is not None:
            with contextlib.suppress(BusError):
                await self._sub.unsubscribe()
        if self._writer is not None and not self._writer.done():
            try:
                async with asyncio.timeout(self.settings.bus_timeout_s):
                    await self._writes.join()
            except TimeoutError:
                logger.warning("%d store writes dropped at close", self._writes.qsize())
        tasks = [t for t in (self._timer, self._writer, *self._tasks)
                 if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sub is not None:
            self.events.emit(EventType.element_stopped, ELEMENT)

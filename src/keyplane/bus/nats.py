"""NATS bus (nats-py) for distributed runs: one element per process, one real server.

Same semantics as :class:`~keyplane.bus.memory.MemoryBus`. Each delivery runs in its own
task so that a slow handler (e.g. Admission Control waiting for a peer) never blocks the
subscription. NATS exceptions stop here and become :mod:`keyplane.errors` bus errors.

Security (:mod:`keyplane.bus.security`): TLS with the element's client certificate, replies
on the element's own inbox prefix, and the kinds in :data:`keyplane.bus.auth.POLICY` signed
on the way out and checked on the way in. A message that fails the check never reaches a
handler; a rejected *request* is answered with :class:`Rejected`, so its sender gets
:class:`~keyplane.errors.MessageRejected` at once instead of a timeout.

Coming back (:class:`~keyplane.bus.settings.BusSettings`): at start the connection is tried
with exponential backoff and jitter until ``startup_timeout_s``. Afterwards it reconnects
forever with the same backoff (capped at ``reconnect_backoff_cap_s``: once the server is
back, a process is connected again within that pause plus its handshake); an attempt that
*timed out* doubles the next attempt's bound (``connect_timeout_cap_s``), so a process
starved of CPU still completes a handshake instead of timing out every attempt until
``max_outage_s`` ends it; subscriptions are restored by the client; publishes are
buffered (``pending_bytes``); requests wait up to their own deadline, and a request that
meets "no responders" shortly after a reconnect (its responder has not reconnected yet) is
retried within that deadline. When the server stays unreachable for ``max_outage_s``, or the
server closes the connection for good, the bus is *failed*: :meth:`NatsBus.wait_failure`
returns and the process exits non-zero for its supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.client import Server as _Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as _NatsSub
from nats.errors import ConnectionClosedError, NoServersError, OutboundBufferLimitError
from nats.errors import Error as _NatsError
from nats.errors import NoRespondersError as _NatsNoResponders
from nats.errors import TimeoutError as _NatsTimeout

from keyplane.bus.auth import Rejected, reply_binding, topic_binding
from keyplane.bus.base import Bus, Handler, Subscription, validate_topic
from keyplane.bus.codec import Message, decode, encode
from keyplane.bus.security import BusSecurity
from keyplane.bus.settings import BusSettings
from keyplane.errors import (
    BusClosed,
    BusError,
    BusTimeout,
    BusUnavailable,
    MessageDecodeError,
    MessageRejected,
    NoResponders,
)

__all__ = ["NatsBus"]

logger = logging.getLogger(__name__)


class _TlsEofNoise(logging.Filter):
    """nats-py upgrades a plain connection to TLS (``loop.start_tls``), so the stream
    protocol does not know it runs over TLS and asks to keep the transport open at EOF;
    asyncio's TLS transport ignores that and warns on every closed connection. Only that
    one message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(
            "returning true from eof_received() has no effect when using ssl")


logging.getLogger("asyncio").addFilter(_TlsEofNoise())

class _NatsSubscription(Subscription):
    def __init__(self, sub: _NatsSub) -> None:
        self._sub = sub
        self._done = False

    async def unsubscribe(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await self._sub.unsubscribe()
        except (ConnectionClosedError, nats.errors.BadSubscriptionError):
            pass


class NatsBus(Bus):
    """A bus over a NATS connection. Create with :meth:`connect`."""

    def __init__(self, nc: Client, security: BusSecurity, settings: BusSettings) -> None:
        self._nc = nc
        self._security = security
        self._auth = security.auth
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._down_since: float | None = None
        self._reconnected_at: float | None = None
        self._give_up: asyncio.TimerHandle | None = None
        self._failure: BusError | None = None
        self._failed = asyncio.Event()
        self._up = asyncio.Event()  # connected, or given up / closed (wakes wait_connected)
        self._up.set()
        self._rng = random.Random()
        self.rejected = 0
        """Messages refused by the end-to-end check (for tests and metrics)."""
        self.permission_errors: list[str] = []
        """Permission violations the server reported for this connection (newest last)."""
        self.failed_reconnects = 0
        """Reconnection attempts that failed, over the bus's life (operations and tests)."""
        self.timed_out_attempts = 0
        """Consecutive reconnection attempts that timed out (reset once connected): the
        next attempt's bound is :meth:`BusSettings.attempt_timeout_s` of it."""
        self.outages: list[float] = []
        """How long each outage of this connection lasted, seconds (newest last)."""

    # ---- connection ------------------------------------------------------------------
    @classmethod
    async def connect(cls, url: str, *, security: BusSecurity, name: str = "keyplane",
                      settings: BusSettings | None = None, **options: Any) -> NatsBus:
        """Connect to ``url`` (e.g. ``tls://127.0.0.1:4222``), backing off until the server
        accepts us or ``settings.startup_timeout_s`` has passed.

        Args:
            url: the server.
            security: TLS credential, inbox and message auth; use
                :meth:`BusSecurity.danger_insecure` for a plain server (logs a WARNING).
            name: the client name the server shows.
            settings: timeouts and backoff (default :class:`BusSettings`).
            options: passed to :func:`nats.connect` (tests).

        Raises:
            BusError: the server did not accept us in time (the last error is named).
        """
        st = settings or BusSettings()
        holder: dict[str, NatsBus] = {}
        last: list[BaseException] = []
        rng = random.Random()

        async def error_cb(exc: Exception) -> None:
            bus = holder.get("bus")
            if bus is not None:
                bus._on_error(exc)
            else:
                last[:] = [exc]

        async def disconnected_cb() -> None:
            if "bus" in holder:
                holder["bus"]._on_disconnected()

        async def reconnected_cb() -> None:
            if "bus" in holder:
                holder["bus"]._on_reconnected()

        async def closed_cb() -> None:
            if "bus" in holder:
                holder["bus"]._on_closed()

        def pick(servers: list[_Server], _info: dict[str, Any]) -> tuple[_Server | None, float]:
            server = servers[0]
            bus = holder.get("bus")
            if bus is not None:
                # nats-py reads this option at every phase of the next attempt
                bus._nc.options["connect_timeout"] = math.ceil(
                    st.attempt_timeout_s(bus.timed_out_attempts))
            return server, st.backoff_s(server.reconnects, rng.random())

        deadline = asyncio.get_running_loop().time() + st.startup_timeout_s
        attempt = 0
        while True:
            try:
                # At start the backoff and the deadline are ours: one call is one attempt
                # (nats-py tries twice, reconnect_time_wait apart, then gives up). Reconnecting
                # forever is switched on below, once connected.
                nc = await nats.connect(
                    url, name=name, tls=security.tls, inbox_prefix=security.inbox,
                    # TLS first: with a TLS credential the client never speaks in clear,
                    # even to a server that does not ask for TLS (no downgrade)
                    tls_handshake_first=security.tls is not None,
                    connect_timeout=math.ceil(st.connect_timeout_s), allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=st.reconnect_backoff_base_s,
                    reconnect_to_server_handler=pick,
                    pending_size=st.pending_bytes, drain_timeout=math.ceil(st.drain_timeout_s),
                    ping_interval=math.ceil(st.ping_interval_s),
                    max_outstanding_pings=st.max_outstanding_pings,
                    error_cb=error_cb, disconnected_cb=disconnected_cb,
                    reconnected_cb=reconnected_cb, closed_cb=closed_cb, **options)
                break
            except (NoServersError, OSError, TimeoutError, _NatsError) as exc:
                if not isinstance(exc, NoServersError) or not last:  # keep the real cause
                    last[:] = [exc]
            pause = st.backoff_s(attempt, rng.random())
            attempt += 1
            if asyncio.get_running_loop().time() + pause > deadline:
                why = f"{type(last[0]).__name__}: {last[0]}" if last else "no answer"
                raise BusError(f"cannot connect to NATS at {url} within "
                               f"{st.startup_timeout_s:g} s ({attempt} attempts; {why})")
            if attempt == 1:
                logger.warning("bus %s not reachable yet (%s); retrying with backoff",
                               url, last[0] if last else "?")
            await asyncio.sleep(pause)
        # nats-py reads both options when the connection drops: from now on it reconnects
        # forever, pausing as ``pick`` says (backoff and jitter)
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        bus = cls(nc, security, st)
        holder["bus"] = bus
        logger.info("bus connected to %s as %s (%s)", url, name,
                    "TLS, client certificate" if security.secure else "INSECURE")
        return bus

    def _on_error(self, exc: Exception) -> None:
        text = str(exc)
        if "permissions violation" in text.lower():
            self.permission_errors.append(text)
            logger.warning("bus refused an operation: %s", text)
        elif self._down_since is None:
            logger.info("bus error: %s", text or type(exc).__name__)
        else:
            self.failed_reconnects += 1
            if isinstance(exc, TimeoutError):  # nats-py's own TimeoutError is one too
                self.timed_out_attempts += 1
                logger.warning("bus reconnection attempt timed out (%d in a row); the next "
                               "may take %g s", self.timed_out_attempts,
                               self.settings.attempt_timeout_s(self.timed_out_attempts))
            else:
                logger.debug("bus reconnection attempt failed: %s",
                             text or type(exc).__name__)

    def _on_disconnected(self) -> None:
        if self._closed or self._down_since is not None:
            return
        self._down_since = self._loop.time()
        self._up.clear()
        logger.warning("bus disconnected; reconnecting (giving up after %g s)",
                       self.settings.max_outage_s)
        self._give_up = self._loop.call_later(self.settings.max_outage_s, self._fail,
                                              BusUnavailable(
                                                  f"bus unreachable for more than "
                                                  f"{self.settings.max_outage_s:g} s"))

    def _on_reconnected(self) -> None:
        if self._give_up is not None:
            self._give_up.cancel()
            self._give_up = None
        now = self._loop.time()
        if self._down_since is not None:
            self.outages.append(now - self._down_since)
            # WARNING, as the disconnection: the pair tells from a process's log how long
            # its bus was away (the fault matrix's resume time is traced from these)
            logger.warning("bus reconnected after %.1f s (%d failed attempts)",
                           now - self._down_since, self.failed_reconnects)
        self._down_since = None
        self._up.set()
        self._reconnected_at = now
        self.timed_out_attempts = 0
        self._nc.options["connect_timeout"] = math.ceil(self.settings.connect_timeout_s)

    def _on_closed(self) -> None:
        if not self._closed:
            self._fail(BusUnavailable("the bus connection was closed by the server or client"))

    def _fail(self, failure: BusError) -> None:
        if self._failure is not None or self._closed:
            return
        self._failure = failure
        logger.error("bus failed: %s", failure)
        self._failed.set()
        self._up.set()
        if not self._nc.is_closed:
            task = self._loop.create_task(self._nc.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def failure(self) -> BusError | None:
        return self._failure

    async def wait_failure(self) -> BusError:
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    @property
    def connected(self) -> bool:
        """Whether the connection to the server is up right now."""
        return self._nc.is_connected

    async def wait_connected(self) -> None:
        await self._up.wait()
        self._check_open()

    def _check_open(self) -> None:
        if self._failure is not None:
            raise BusUnavailable(str(self._failure))
        if self._closed or self._nc.is_closed:
            raise BusClosed("bus is closed")

    # ---- encoding with the end-to-end check --------------------------------------------
    def _seal(self, msg: Message, binding: bytes) -> bytes:
        return self._auth.seal(msg, binding) if self._auth is not None else encode(msg)

    def _open(self, data: bytes, binding: bytes) -> Message:
        if self._auth is None:
            return decode(data)
        msg, _ = self._auth.open(data, binding)
        return msg

    # ---- Bus -------------------------------------------------------------------------
    async def publish(self, topic: str, msg: Message) -> None:
        self._check_open()
        validate_topic(topic)
        try:
            await self._nc.publish(topic, self._seal(msg, topic_binding(topic)))
        except ConnectionClosedError as exc:
            raise BusClosed("NATS connection closed") from exc
        except OutboundBufferLimitError as exc:
            raise BusUnavailable("bus unreachable and its publish buffer is full") from exc

    async def subscribe(self, pattern: str, handler: Handler, *, queue: str | None = None
                        ) -> Subscription:
        self._check_open()
        validate_topic(pattern, wildcards=True)

        async def run(m: Msg) -> None:
            try:
                message = self._open(m.data, topic_binding(m.subject))
            except MessageDecodeError:
                logger.warning("dropping undecodable message on %s", m.subject)
                return
            except MessageRejected as exc:
                self.rejected += 1
                logger.warning("rejected a message on %s: %s", m.subject, exc)
                if m.reply:
                    await self._reply(m, Rejected(kind=exc.kind, reason=exc.reason))
                return
            try:
                result = await handler(m.subject, message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("bus handler for %s failed on %s", pattern, m.subject)
                return
            if m.reply and result is not None:
                await self._reply(m, result)

        async def cb(m: Msg) -> None:
            task = self._loop.create_task(run(m))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            sub = await self._nc.subscribe(pattern, queue=queue or "", cb=cb)
            if self._nc.is_connected:
                # make sure the server knows the interest before the caller publishes to it
                # (while reconnecting, the client restores it on reconnection)
                await self._nc.flush(timeout=math.ceil(self.settings.connect_timeout_s))
        except ConnectionClosedError as exc:
            raise BusClosed("NATS connection closed") from exc
        except (_NatsTimeout, TimeoutError) as exc:
            raise BusTimeout(pattern, self.settings.connect_timeout_s) from exc
        return _NatsSubscription(sub)

    async def _reply(self, m: Msg, result: Message) -> None:
        if self._nc.is_closed:
            return
        try:
            await self._nc.publish(m.reply, self._seal(result, reply_binding(m.data)))
        except (ConnectionClosedError, OutboundBufferLimitError):
            logger.debug("reply on %s lost: bus unavailable", m.subject)

    async def request(self, topic: str, msg: Message, *, timeout_s: float = 2.0) -> Message:
        self._check_open()
        validate_topic(topic)
        data = self._seal(msg, topic_binding(topic))
        deadline = self._loop.time() + timeout_s
        pause = 0
        while True:
            left = deadline - self._loop.time()
            if left <= 0:
                raise BusTimeout(topic, timeout_s)
            try:
                reply = await self._nc.request(topic, data, timeout=left)
                break
            except _NatsNoResponders as exc:
                if not self._no_responders_retry():
                    raise NoResponders(topic) from exc
            except _NatsTimeout as exc:
                raise BusTimeout(topic, timeout_s) from exc
            except ConnectionClosedError as exc:
                self._check_open()
                raise BusClosed("NATS connection closed") from exc
            except OutboundBufferLimitError as exc:
                raise BusUnavailable("bus unreachable and its publish buffer is full") from exc
            # shortly after an outage the responder may not have reconnected yet
            await asyncio.sleep(min(self.settings.backoff_s(pause, self._rng.random()),
                                    max(0.0, deadline - self._loop.time())))
            pause += 1
        answer = self._open(reply.data, reply_binding(data))
        if isinstance(answer, Rejected):
            raise MessageRejected(answer.kind, answer.reason)
        return answer

    def _no_responders_retry(self) -> bool:
        """Whether "no responders" may be an outage artefact: we are disconnected, or came
        back less than ``reconnect_settle_s`` ago (the responder may still be reconnecting)."""
        if self._down_since is not None or not self._nc.is_connected:
            return True
        back = self._reconnected_at
        return back is not None and self._loop.time() - back < self.settings.reconnect_settle_s

    async def flush(self) -> None:
        self._check_open()
        try:
            await self._nc.flush(timeout=math.ceil(self.settings.connect_timeout_s))
        except ConnectionClosedError as exc:
            raise BusClosed("NATS connection closed") from exc
        except (_NatsTimeout, TimeoutError) as exc:
            raise BusTimeout("flush", self.settings.connect_timeout_s) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._up.set()
        if self._give_up is not None:
            self._give_up.cancel()
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if not t.done() and t is not me]
        try:
            if self._nc.is_connected:
                # nats-py bounds the subscriptions' drain by drain_timeout_s; its final
                # flush is bounded here too
                async with asyncio.timeout(2 * self.settings.drain_timeout_s):
                    await self._nc.drain()
        except Exception:
            logger.debug("NATS drain failed", exc_info=True)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if not self._nc.is_closed:
            await self._nc.close()

"""NATS bus (nats-py) for distributed runs: one element per process, one real server.

Same semantics as :class:`~keyplane.bus.memory.MemoryBus`. Each delivery runs in its own
task so that a slow handler (e.g. Admission Control waiting for a peer) never blocks the
subscription. NATS exceptions stop here and become :mod:`keyplane.errors` bus errors.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as _NatsSub
from nats.errors import ConnectionClosedError, NoServersError
from nats.errors import NoRespondersError as _NatsNoResponders
from nats.errors import TimeoutError as _NatsTimeout

from keyplane.bus.base import Bus, Handler, Subscription, validate_topic
from keyplane.bus.codec import Message, decode, encode
from keyplane.errors import BusClosed, BusError, BusTimeout, MessageDecodeError, NoResponders

__all__ = ["NatsBus"]

logger = logging.getLogger(__name__)


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

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def connect(cls, url: str, *, name: str = "keyplane", connect_timeout_s: float = 5.0,
                      **options: Any) -> NatsBus:
        """Connect to ``url`` (e.g. ``nats://127.0.0.1:4222``).

        Raises:
            BusError: the server cannot be reached.
        """
        try:
            nc = await nats.connect(
                url, name=name, connect_timeout=int(max(1, connect_timeout_s)),
                max_reconnect_attempts=options.pop("max_reconnect_attempts", 10), **options)
        except (NoServersError, OSError, TimeoutError) as exc:
            raise BusError(f"cannot connect to NATS at {url}: {exc}") from exc
        return cls(nc)

    def _check_open(self) -> None:
        if self._closed or self._nc.is_closed:
            raise BusClosed("bus is closed")

    async def publish(self, topic: str, msg: Message) -> None:
        self._check_open()
        validate_topic(topic)
        try:
            await self._nc.publish(topic, encode(msg))
        except ConnectionClosedError as exc:
            raise BusClosed("NATS connection closed") from exc

    async def subscribe(self, pattern: str, handler: Handler, *, queue: str | None = None
                        ) -> Subscription:
        self._check_open()
        validate_topic(pattern, wildcards=True)

        async def run(m: Msg) -> None:
            try:
                message = decode(m.data)
            except MessageDecodeError:
                logger.warning("dropping undecodable message on %s", m.subject)
                return
            try:
                result = await handler(m.subject, message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("bus handler for %s failed on %s", pattern, m.subject)
                return
            if m.reply and result is not None and not self._nc.is_closed:
                try:
                    await self._nc.publish(m.reply, encode(result))
                except ConnectionClosedError:
                    pass

        async def cb(m: Msg) -> None:
            task = asyncio.get_running_loop().create_task(run(m))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        sub = await self._nc.subscribe(pattern, queue=queue or "", cb=cb)
        # make sure the server knows the interest before the caller publishes to it
        await self._nc.flush()
        return _NatsSubscription(sub)

    async def request(self, topic: str, msg: Message, *, timeout_s: float = 2.0) -> Message:
        self._check_open()
        validate_topic(topic)
        try:
            reply = await self._nc.request(topic, encode(msg), timeout=timeout_s)
        except _NatsNoResponders as exc:
            raise NoResponders(topic) from exc
        except _NatsTimeout as exc:
            raise BusTimeout(topic, timeout_s) from exc
        except ConnectionClosedError as exc:
            raise BusClosed("NATS connection closed") from exc
        return decode(reply.data)

    async def flush(self) -> None:
        self._check_open()
        await self._nc.flush()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if not t.done() and t is not me]
        try:
            if not self._nc.is_closed:
                await self._nc.drain()
        except Exception:
            logger.debug("NATS drain failed", exc_info=True)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if not self._nc.is_closed:
            await self._nc.close()

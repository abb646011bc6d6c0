"""In-memory asyncio bus for the embedded (single-process) mode and for unit tests.

Semantics match :class:`keyplane.bus.nats.NatsBus`: same topic wildcards, queue groups,
request/reply with timeout and no-responders. By default each delivery goes through the
JSON codec (``roundtrip=True``), so the embedded mode exercises exactly the bytes a
distributed run would carry and no element ever shares a mutable object with another.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random

from keyplane.bus.base import Bus, Handler, Subscription, topic_matches, validate_topic
from keyplane.bus.codec import Message, decode, encode
from keyplane.errors import BusClosed, BusTimeout, NoResponders

__all__ = ["MemoryBus"]

logger = logging.getLogger(__name__)

_MAX_ROUTES = 4096  # topics whose subscribers are remembered (then the table starts over)


class _MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, sid: int, pattern: str, handler: Handler,
                 queue: str | None) -> None:
        self._bus = bus
        self.sid = sid
        self.pattern = pattern
        self.handler = handler
        self.queue = queue

    async def unsubscribe(self) -> None:
        if self._bus._subs.pop(self.sid, None) is not None:
            self._bus._routes.clear()


class MemoryBus(Bus):
    """A bus inside one event loop."""

    def __init__(self, *, roundtrip: bool = True, seed: int | None = None) -> None:
        self._subs: dict[int, _MemorySubscription] = {}
        self._sid = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._roundtrip = roundtrip
        self._rng = random.Random(seed)
        # topic -> (plain subscribers, queue groups): topics repeat (one per KM and kind),
        # so each is matched against the patterns once, until the subscriptions change
        self._routes: dict[str, tuple[list[_MemorySubscription],
                                      list[list[_MemorySubscription]]]] = {}

    def _copy(self, msg: Message) -> Message:
        return decode(encode(msg)) if self._roundtrip else msg

    def _targets(self, topic: str) -> list[_MemorySubscription]:
        route = self._routes.get(topic)
        if route is None:
            validate_topic(topic)
            plain: list[_MemorySubscription] = []
            groups: dict[str, list[_MemorySubscription]] = {}
            for sub in list(self._subs.values()):
                if topic_matches(sub.pattern, topic):
                    if sub.queue is None:
                        plain.append(sub)
                    else:
                        groups.setdefault(sub.queue, []).append(sub)
            if len(self._routes) >= _MAX_ROUTES:
                self._routes.clear()
            route = self._routes[topic] = (plain, list(groups.values()))
        plain, group_list = route
        return [*plain, *(self._rng.choice(members) for members in group_list)]

    def _spawn(self, sub: _MemorySubscription, topic: str, msg: Message,
               reply: asyncio.Future[Message] | None) -> None:
        async def run() -> None:
            try:
                result = await sub.handler(topic, msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("bus handler for %s failed on %s", sub.pattern, topic)
                return
            if reply is not None and result is not None and not reply.done():
                reply.set_result(self._copy(result))

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish(self, topic: str, msg: Message) -> None:
        if self._closed:
            raise BusClosed("bus is closed")
        targets = self._targets(topic)  # validates the topic
        data = self._copy(msg)
        for sub in targets:
            self._spawn(sub, topic, data, None)

    async def subscribe(self, pattern: str, handler: Handler, *, queue: str | None = None
                        ) -> Subscription:
        if self._closed:
            raise BusClosed("bus is closed")
        validate_topic(pattern, wildcards=True)
        sub = _MemorySubscription(self, next(self._sid), pattern, handler, queue)
        self._subs[sub.sid] = sub
        self._routes.clear()
        return sub

    async def request(self, topic: str, msg: Message, *, timeout_s: float = 2.0) -> Message:
        if self._closed:
            raise BusClosed("bus is closed")
        targets = self._targets(topic)  # validates the topic
        if not targets:
            raise NoResponders(topic)
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        data = self._copy(msg)
        for sub in targets:
            self._spawn(sub, topic, data, reply)
        try:
            async with asyncio.timeout(timeout_s):
                return await reply
        except TimeoutError as exc:
            raise BusTimeout(topic, timeout_s) from exc
        finally:
            if not reply.done():
                reply.cancel()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._subs.clear()
        self._routes.clear()
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if not t.done() and t is not me]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

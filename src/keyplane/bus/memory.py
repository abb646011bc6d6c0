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
            self._bus._forget(self)


class MemoryBus(Bus):
    """A bus inside one event loop."""

    def __init__(self, *, roundtrip: bool = True, seed: int | None = None) -> None:
        self._subs: dict[int, _MemorySubscription] = {}
        self._sid = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._roundtrip = roundtrip
        self._rng = random.Random(seed)
        # subscriptions by pattern: literal patterns are found by a dict lookup, only the
        # (few distinct) wildcard patterns are matched against a topic. A topic's route is
        # the list of its patterns' buckets, kept until a pattern appears or goes: a new
        # subscription to an existing pattern joins its bucket and every route sees it, so
        # a network of 1,000 nodes subscribing as it starts does not rescan every
        # subscription for every message (it did: quadratic start-up)
        self._literal: dict[str, list[_MemorySubscription]] = {}
        self._wild: dict[str, list[_MemorySubscription]] = {}
        self._routes: dict[str, list[list[_MemorySubscription]]] = {}

    def _copy(self, msg: Message) -> Message:
        return decode(encode(msg)) if self._roundtrip else msg

    def _targets(self, topic: str) -> list[_MemorySubscription]:
        route = self._routes.get(topic)
        if route is None:
            validate_topic(topic)
            route = [bucket for pattern, bucket in self._wild.items()
                     if topic_matches(pattern, topic)]
            literal = self._literal.get(topic)
            if literal is not None:
                route.append(literal)
            if len(self._routes) >= _MAX_ROUTES:
                self._routes.clear()
            self._routes[topic] = route
        plain: list[_MemorySubscription] = []
        groups: dict[str, list[_MemorySubscription]] = {}
        for bucket in route:
            for sub in bucket:
                if sub.queue is None:
                    plain.append(sub)
                else:
                    groups.setdefault(sub.queue, []).append(sub)
        return [*plain, *(self._rng.choice(members) for members in groups.values())]

    def _index(self, sub: _MemorySubscription) -> None:
        wild = "*" in sub.pattern or ">" in sub.pattern
        table = self._wild if wild else self._literal
        bucket = table.get(sub.pattern)
        if bucket is None:
            bucket = table[sub.pattern] = []
            if wild:
                self._routes.clear()  # a new wildcard pattern: routes are matched again
            else:
                route = self._routes.get(sub.pattern)
                if route is not None:
                    route.append(bucket)
        bucket.append(sub)

    def _forget(self, sub: _MemorySubscription) -> None:
        table = self._wild if sub.pattern in self._wild else self._literal
        bucket = table.get(sub.pattern)
        if bucket is None:
            return
        bucket.remove(sub)
        if not bucket:
            del table[sub.pattern]
            self._routes.clear()  # the pattern is gone from every route

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

    async def publish_encoded(self, topic: str, data: bytes) -> None:
        """Decoding ``data`` already gives the subscribers their own copy: no round trip."""
        if self._closed:
            raise BusClosed("bus is closed")
        targets = self._targets(topic)
        msg = decode(data)
        for sub in targets:
            self._spawn(sub, topic, msg, None)

    async def subscribe(self, pattern: str, handler: Handler, *, queue: str | None = None
                        ) -> Subscription:
        if self._closed:
            raise BusClosed("bus is closed")
        validate_topic(pattern, wildcards=True)
        sub = _MemorySubscription(self, next(self._sid), pattern, handler, queue)
        self._subs[sub.sid] = sub
        self._index(sub)
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
        self._literal.clear()
        self._wild.clear()
        self._routes.clear()
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if not t.done() and t is not me]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

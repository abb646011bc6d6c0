"""The bus interface shared by the in-memory and NATS implementations.

Topics are dot-separated tokens, as in NATS. Subscriptions accept the NATS wildcards:
``*`` matches exactly one token and ``>`` (last token only) matches one or more. A handler
receives ``(topic, message)``; when the message came from :meth:`Bus.request`, the
handler's return value is the reply (a handler that returns ``None`` to a request leaves
the requester to time out). Handlers run concurrently, one task per delivery; an exception
in a handler is logged and never kills the bus.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

from keyplane.bus.codec import Message, decode
from keyplane.errors import BusError

__all__ = ["Bus", "Handler", "Subscription", "topic_matches", "unsubscribe_all", "validate_topic"]

logger = logging.getLogger(__name__)

Handler = Callable[[str, Message], Awaitable[Message | None]]


def validate_topic(topic: str, *, wildcards: bool = False) -> None:
    """Raise ValueError on an empty token, whitespace, or (if not allowed) a wildcard."""
    if not topic or any(c.isspace() for c in topic):
        raise ValueError(f"invalid topic {topic!r}")
    tokens = topic.split(".")
    for i, tok in enumerate(tokens):
        if not tok:
            raise ValueError(f"invalid topic {topic!r}: empty token")
        if tok in ("*", ">"):
            if not wildcards:
                raise ValueError(f"wildcards are not allowed in a publish topic: {topic!r}")
            if tok == ">" and i != len(tokens) - 1:
                raise ValueError(f"'>' must be the last token: {topic!r}")
        elif ("*" in tok or ">" in tok) and wildcards:
            raise ValueError(f"wildcard must be a whole token: {topic!r}")


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches subscription ``pattern`` (NATS semantics)."""
    p, t = pattern.split("."), topic.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(t) > i
        if i >= len(t) or (tok != "*" and tok != t[i]):
            return False
    return len(p) == len(t)


class Subscription(ABC):
    """A live subscription; :meth:`unsubscribe` is idempotent."""

    @abstractmethod
    async def unsubscribe(self) -> None:
        """Stop delivering to this subscription's handler."""


async def unsubscribe_all(subs: Iterable[Subscription]) -> None:
    """Unsubscribe each of ``subs``, going on past failures: an element closing must let go
    of every subscription even if the bus (or its connection) is already gone."""
    for sub in subs:
        try:
            await sub.unsubscribe()
        except Exception as exc:
            logger.debug("unsubscribe failed while closing: %s", exc)


class Bus(ABC):
    """Publish/subscribe with request/reply: the only way control and KMs talk."""

    @abstractmethod
    async def publish(self, topic: str, msg: Message) -> None:
        """Send ``msg`` to every subscriber of ``topic`` (fire and forget).

        Raises:
            BusClosed: the bus is closed.
        """

    async def publish_encoded(self, topic: str, data: bytes) -> None:
        """:meth:`publish` a message that arrives already encoded (its envelope, from
        :func:`~keyplane.bus.codec.encode`): a relay (the link workers' telemetry) need not
        decode and encode it again. This default decodes it and publishes.

        Raises:
            MessageDecodeError: ``data`` is not a message envelope.
            BusClosed: the bus is closed.
        """
        await self.publish(topic, decode(data))

    @abstractmethod
    async def subscribe(self, pattern: str, handler: Handler, *, queue: str | None = None
                        ) -> Subscription:
        """Deliver messages on topics matching ``pattern`` to ``handler``.

        Args:
            pattern: a topic, possibly with ``*``/``>`` wildcards.
            handler: ``async (topic, message) -> reply or None``.
            queue: a queue-group name: each message goes to one member of the group.
        """

    @abstractmethod
    async def request(self, topic: str, msg: Message, *, timeout_s: float = 2.0) -> Message:
        """Send ``msg`` and wait for the first reply.

        Raises:
            BusTimeout: no reply within ``timeout_s`` (real seconds: a transport bound).
            NoResponders: no subscriber on ``topic``.
            BusClosed: the bus is closed.
        """

    @abstractmethod
    async def close(self) -> None:
        """Stop every subscription and release the connection; idempotent."""

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Wait until published messages are handed to the transport."""

    @property
    def connected(self) -> bool:
        """Whether the bus can carry a message right now (a NATS bus that is reconnecting is
        not; it still buffers publishes and keeps requests waiting)."""
        return True

    async def wait_connected(self) -> None:  # noqa: B027 - optional hook
        """Wait until the bus can carry a message (:attr:`connected`); at once here.

        Raises:
            BusError: the bus gave up for good or was closed meanwhile.
        """

    @property
    def failure(self) -> BusError | None:
        """Why the bus gave up for good (its server unreachable for too long), or None."""
        return None

    async def wait_failure(self) -> BusError:
        """Wait until the bus gives up for good and return why (a bus that cannot fail, like
        the in-memory one, never returns): a process exits on it so its supervisor restarts
        it."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

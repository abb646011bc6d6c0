"""The classical channel between the two QKD modules of a link (and the quantum pipe).

:class:`ClassicalChannel` is one end of a duplex, ordered, authenticated-by-assumption
channel (the usual QKD assumption: the classical channel is authentic, not secret).
Two implementations:

* :class:`InProcessChannel` — two asyncio queues, for embedded mode and tests. With
  ``roundtrip=True`` every message goes through the JSON codec, as on a real wire.
* :class:`BusChannel` — over :mod:`keyplane.bus` when the two ends live in different
  processes: each end subscribes to its own topic ``keyplane.qkd.<link>.<end>`` and
  publishes to the peer's.

The emulated quantum frames travel from Alice's emulator to Bob over a second channel of
the same kind (topic end ``quantum``).

Receives wait on the peer with a transport timeout in real seconds (``asyncio.timeout``),
as the clock module prescribes for transport-level waits; a module waiting for the next
frame passes ``timeout_s=None``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Literal

from keyplane.bus.base import Bus, Subscription
from keyplane.bus.codec import Message, decode, encode
from keyplane.errors import ClassicalChannelError, ClassicalChannelTimeout
from keyplane.physical.wire import qkd_topic

__all__ = ["DEFAULT_PEER_TIMEOUT_S", "BusChannel", "ClassicalChannel", "InProcessChannel"]

DEFAULT_PEER_TIMEOUT_S = 30.0

_CLOSED = object()


class ClassicalChannel(ABC):
    """One end of a link's classical channel."""

    link_id: str

    @abstractmethod
    async def send(self, msg: Message) -> None:
        """Send ``msg`` to the peer end.

        Raises:
            ClassicalChannelError: the channel is closed.
        """

    @abstractmethod
    async def receive(self, timeout_s: float | None = DEFAULT_PEER_TIMEOUT_S) -> Message:
        """The next message from the peer.

        Raises:
            ClassicalChannelTimeout: nothing arrived within ``timeout_s`` real seconds.
            ClassicalChannelError: the channel was closed.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release the channel; idempotent. Pending receives fail."""

    async def __aenter__(self) -> ClassicalChannel:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class _QueueEnd(ClassicalChannel):
    """Shared receive logic: a local inbox queue."""

    def __init__(self, link_id: str) -> None:
        self.link_id = link_id
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._closed = False

    async def receive(self, timeout_s: float | None = DEFAULT_PEER_TIMEOUT_S) -> Message:
        if self._closed and self._inbox.empty():
            raise ClassicalChannelError(f"link {self.link_id}: channel closed")
        try:
            if timeout_s is None:
                item = await self._inbox.get()
            else:
                async with asyncio.timeout(timeout_s):
                    item = await self._inbox.get()
        except TimeoutError as exc:
            raise ClassicalChannelTimeout(self.link_id, timeout_s or 0.0) from exc
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # keep failing later receives too
            raise ClassicalChannelError(f"link {self.link_id}: channel closed")
        assert isinstance(item, Message)
        return item

    def _deliver(self, item: object) -> None:
        self._inbox.put_nowait(item)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put_nowait(_CLOSED)


class InProcessChannel(_QueueEnd):
    """One end of an in-process channel; make both ends with :meth:`pair`."""

    def __init__(self, link_id: str, roundtrip: bool) -> None:
        super().__init__(link_id)
        self._peer: InProcessChannel | None = None
        self._roundtrip = roundtrip

    @classmethod
    def pair(cls, link_id: str, *, roundtrip: bool = False
             ) -> tuple[InProcessChannel, InProcessChannel]:
        """Two connected ends (Alice's, Bob's)."""
        a, b = cls(link_id, roundtrip), cls(link_id, roundtrip)
        a._peer, b._peer = b, a
        return a, b

    async def send(self, msg: Message) -> None:
        if self._closed or self._peer is None or self._peer._closed:
            raise ClassicalChannelError(f"link {self.link_id}: channel closed")
        self._peer._deliver(decode(encode(msg)) if self._roundtrip else msg)


class BusChannel(_QueueEnd):
    """One end of a link's channel over the bus; create with :meth:`open`."""

    def __init__(self, bus: Bus, link_id: str, local: str, remote: str) -> None:
        super().__init__(link_id)
        self._bus = bus
        self._local_topic = local
        self._remote_topic = remote
        self._sub: Subscription | None = None

    @classmethod
    async def open(cls, bus: Bus, link_id: str, end: Literal["alice", "bob"], *,
                   quantum: bool = False) -> BusChannel:
        """Subscribe this end's inbox topic.

        Args:
            bus: the bus both processes are connected to.
            link_id: the link.
            end: which end this is.
            quantum: the quantum-frame pipe (Alice's emulator → Bob) instead of the
                classical channel.
        """
        if quantum:
            local = qkd_topic(link_id, "quantum") if end == "bob" else \
                qkd_topic(link_id, "quantum") + ".ack"
            remote = qkd_topic(link_id, "quantum") if end == "alice" else \
                qkd_topic(link_id, "quantum") + ".ack"
        else:
            peer: Literal["alice", "bob"] = "bob" if end == "alice" else "alice"
            local, remote = qkd_topic(link_id, end), qkd_topic(link_id, peer)
        channel = cls(bus, link_id, local, remote)

        async def handler(topic: str, msg: Message) -> None:
            channel._deliver(msg)
            return None

        channel._sub = await bus.subscribe(local, handler)
        return channel

    async def send(self, msg: Message) -> None:
        if self._closed:
            raise ClassicalChannelError(f"link {self.link_id}: channel closed")
        try:
            await self._bus.publish(self._remote_topic, msg)
        except Exception as exc:  # bus errors end the exchange, not the process
            raise ClassicalChannelError(f"link {self.link_id}: bus send failed: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        await super().close()
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

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

Rendezvous (classical channel only). Each end answers its peer's requests once
:meth:`ClassicalChannel.serve_peer` is called, i.e. once every inbox of that end is
subscribed: a :class:`~keyplane.physical.wire.PeerPing` is answered by the channel itself
with the end's boot nonce (fresh per start of the end), anything else (a
:class:`~keyplane.physical.wire.Sync`) goes to the handler given there.
:meth:`ClassicalChannel.wait_peer` pings until the peer answers, backing off on the clock
(the peer's process may not have started yet: over the bus that is
:class:`~keyplane.errors.NoResponders`), so no frame is ever published into the void.
Once an end knows the peer incarnation it is synchronized with (``peer_nonce``), a
bus receive with a timeout pings the peer every ``keepalive_s`` of silence and fails at
once when the peer is gone (its subscription vanished, e.g. its process was killed) or
was replaced by a new incarnation, instead of waiting out the whole timeout.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal

from keyplane.bus.base import Bus, Subscription
from keyplane.bus.codec import Message, decode, encode
from keyplane.clock import Clock
from keyplane.errors import (
    BusTimeout,
    ClassicalChannelError,
    ClassicalChannelTimeout,
    KeyplaneError,
    NoResponders,
)
from keyplane.physical.wire import PeerPing, PeerPong, peer_topic, qkd_topic

__all__ = [
    "DEFAULT_KEEPALIVE_S",
    "DEFAULT_PEER_TIMEOUT_S",
    "DEFAULT_PING_TIMEOUT_S",
    "DEFAULT_RENDEZVOUS_TIMEOUT_S",
    "BusChannel",
    "ChannelInterrupted",
    "ClassicalChannel",
    "InProcessChannel",
    "PeerGone",
    "PeerHandler",
    "PeerNotListening",
]

DEFAULT_PEER_TIMEOUT_S = 30.0
DEFAULT_RENDEZVOUS_TIMEOUT_S = 5.0
"""Clock seconds one :meth:`ClassicalChannel.wait_peer` keeps trying."""
DEFAULT_PING_TIMEOUT_S = 2.0
"""Real seconds one ping waits for its answer (a transport bound)."""
DEFAULT_KEEPALIVE_S = 1.0
"""Real seconds of silence after which a bus receive checks that the peer is still there."""
RENDEZVOUS_BACKOFF_S = (0.02, 0.5)
"""First and largest clock delay between pings to a peer that is not listening yet."""

PeerHandler = Callable[[Message], Awaitable[Message | None]]
"""Answers a peer's request other than a ping (``None``: no answer, the peer times out)."""

_CLOSED = object()
_INTERRUPT = object()


class PeerNotListening(ClassicalChannelError):
    """Nobody answers at the peer end yet (not started, restarting, or gone)."""


class PeerGone(ClassicalChannelError):
    """The peer end this end was synchronized with left or was restarted mid-exchange."""


class ChannelInterrupted(ClassicalChannelError):
    """A pending receive was interrupted locally (:meth:`ClassicalChannel.interrupt`),
    e.g. because the peer asked for a resynchronization."""


class ClassicalChannel(ABC):
    """One end of a link's classical channel.

    Attributes:
        boot_nonce: this end's incarnation (set by :meth:`serve_peer`).
        peer_nonce: the peer incarnation this end is synchronized with (set by the
            modules after a :class:`~keyplane.physical.wire.Sync`); ``None`` before.
    """

    link_id: str
    boot_nonce: str | None = None
    peer_nonce: str | None = None
    _peer_handler: PeerHandler | None = None

    @property
    @abstractmethod
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""

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

    @abstractmethod
    def discard_pending(self) -> int:
        """Drop every message already received but not yet read; returns how many."""

    @abstractmethod
    def interrupt(self) -> None:
        """Make the current (or else the next) receive raise :class:`ChannelInterrupted`."""

    @abstractmethod
    async def serve_peer(self, boot_nonce: str, handler: PeerHandler | None = None) -> None:
        """Start answering the peer: pings with ``boot_nonce``, other requests via ``handler``.

        Call once every inbox of this end is subscribed: from then on a ping that succeeds
        means messages sent to this end are received.
        """

    @abstractmethod
    async def request_peer(self, msg: Message, timeout_s: float = DEFAULT_PING_TIMEOUT_S
                           ) -> Message:
        """One request to the peer end's :meth:`serve_peer`.

        Raises:
            PeerNotListening: the peer end is not serving (yet, or any more).
            ClassicalChannelTimeout: no answer within ``timeout_s`` real seconds.
            ClassicalChannelError: the channel is closed or the transport failed.
        """

    async def ping(self, timeout_s: float = DEFAULT_PING_TIMEOUT_S) -> str:
        """The peer end's boot nonce (one round trip); raises as :meth:`request_peer`."""
        reply = await self.request_peer(PeerPing(link_id=self.link_id,
                                                 boot_nonce=self.boot_nonce or "-"), timeout_s)
        if not isinstance(reply, PeerPong):
            raise ClassicalChannelError(f"link {self.link_id}: {reply.KIND} answered a ping")
        return reply.boot_nonce

    async def wait_peer(self, timeout_s: float = DEFAULT_RENDEZVOUS_TIMEOUT_S, *,
                        clock: Clock, ping_timeout_s: float = DEFAULT_PING_TIMEOUT_S) -> str:
        """Wait until the peer end answers; returns its boot nonce.

        Pings; while the peer is not listening, backs off on ``clock`` (20 ms doubling to
        0.5 s). With the peer present this is one round trip.

        Args:
            timeout_s: give up after this many seconds of ``clock``.
            clock: the clock of the back-off and of the bound.
            ping_timeout_s: real seconds one ping waits for its answer.

        Raises:
            ClassicalChannelTimeout: the peer did not answer within ``timeout_s``.
            ClassicalChannelError: the channel is closed.
        """
        deadline = clock.now() + timeout_s
        backoff, backoff_max = RENDEZVOUS_BACKOFF_S
        while True:
            try:
                return await self.ping(ping_timeout_s)
            except (PeerNotListening, ClassicalChannelTimeout) as exc:
                if self.closed:
                    raise ClassicalChannelError(f"link {self.link_id}: channel closed") from exc
                not_listening = isinstance(exc, PeerNotListening)
            left = deadline - clock.now()
            if left <= 0:
                raise ClassicalChannelTimeout(self.link_id, timeout_s)
            if not_listening:  # a timed-out ping already waited; retry at once otherwise
                await clock.sleep(min(backoff, left))
                backoff = min(2 * backoff, backoff_max)

    async def _answer(self, msg: Message) -> Message | None:
        """This end's answer to a peer request (pings answered here)."""
        if isinstance(msg, PeerPing):
            return PeerPong(link_id=self.link_id, boot_nonce=self.boot_nonce or "-")
        if self._peer_handler is None:
            return None
        return await self._peer_handler(msg)

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
        if item is _INTERRUPT:
            raise ChannelInterrupted(f"link {self.link_id}: receive interrupted")
        assert isinstance(item, Message)
        return item

    @property
    def closed(self) -> bool:
        return self._closed

    def _deliver(self, item: object) -> None:
        self._inbox.put_nowait(item)

    def discard_pending(self) -> int:
        dropped = 0
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item is _CLOSED:
                self._inbox.put_nowait(_CLOSED)
                break
            dropped += isinstance(item, Message)
        return dropped

    def interrupt(self) -> None:
        if not self._closed:
            self._inbox.put_nowait(_INTERRUPT)

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
        self._serving = False

    @classmethod
    def pair(cls, link_id: str, *, roundtrip: bool = False
             ) -> tuple[InProcessChannel, InProcessChannel]:
        """Two connected ends (Alice's, Bob's)."""
        a, b = cls(link_id, roundtrip), cls(link_id, roundtrip)
        a._peer, b._peer = b, a
        return a, b

    def _copy(self, msg: Message) -> Message:
        return decode(encode(msg)) if self._roundtrip else msg

    async def send(self, msg: Message) -> None:
        if self._closed or self._peer is None or self._peer._closed:
            raise ClassicalChannelError(f"link {self.link_id}: channel closed")
        self._peer._deliver(self._copy(msg))

    async def serve_peer(self, boot_nonce: str, handler: PeerHandler | None = None) -> None:
        self.boot_nonce = boot_nonce
        self._peer_handler = handler
        self._serving = True

    async def request_peer(self, msg: Message, timeout_s: float = DEFAULT_PING_TIMEOUT_S
                           ) -> Message:
        """The peer's answer, by a direct call (both ends live in this process)."""
        peer = self._peer
        if self._closed or peer is None or peer._closed:
            raise ClassicalChannelError(f"link {self.link_id}: channel closed")
        if not peer._serving:
            raise PeerNotListening(f"link {self.link_id}: the peer end is not serving")
        try:
            async with asyncio.timeout(timeout_s):
                reply = await peer._answer(self._copy(msg))
        except TimeoutError as exc:
            raise ClassicalChannelTimeout(self.link_id, timeout_s) from exc
        if reply is None:
            raise ClassicalChannelTimeout(self.link_id, timeout_s)
        return self._copy(reply)


class BusChannel(_QueueEnd):
    """One end of a link's channel over the bus; create with :meth:`open`."""

    def __init__(self, bus: Bus, link_id: str, local: str, remote: str,
                 end: Literal["alice", "bob"] | None = None,
                 keepalive_s: float = DEFAULT_KEEPALIVE_S) -> None:
        super().__init__(link_id)
        self._bus = bus
        self._local_topic = local
        self._remote_topic = remote
        self._end = end  # None: the quantum pipe, which has no rendezvous
        self.keepalive_s = keepalive_s
        self._sub: Subscription | None = None
        self._peer_sub: Subscription | None = None

    @classmethod
    async def open(cls, bus: Bus, link_id: str, end: Literal["alice", "bob"], *,
                   quantum: bool = False,
                   keepalive_s: float = DEFAULT_KEEPALIVE_S) -> BusChannel:
        """Subscribe this end's inbox topic.

        Args:
            bus: the bus both processes are connected to.
            link_id: the link.
            end: which end this is.
            quantum: the quantum-frame pipe (Alice's emulator → Bob) instead of the
                classical channel.
            keepalive_s: real seconds of silence after which a receive pings the peer
                (classical channel, once ``peer_nonce`` is known).
        """
        if quantum:
            local = qkd_topic(link_id, "quantum") if end == "bob" else \
                qkd_topic(link_id, "quantum") + ".ack"
            remote = qkd_topic(link_id, "quantum") if end == "alice" else \
                qkd_topic(link_id, "quantum") + ".ack"
        else:
            peer: Literal["alice", "bob"] = "bob" if end == "alice" else "alice"
            local, remote = qkd_topic(link_id, end), qkd_topic(link_id, peer)
        channel = cls(bus, link_id, local, remote, None if quantum else end, keepalive_s)

        async def handler(topic: str, msg: Message) -> None:
            channel._deliver(msg)
            return None

        channel._sub = await bus.subscribe(local, handler)
        return channel

    def _rendezvous_end(self) -> Literal["alice", "bob"]:
        if self._end is None:
            raise ClassicalChannelError(f"link {self.link_id}: the quantum pipe has no "
                                        "rendezvous")
        return self._end

    async def send(self, msg: Message) -> None:
        if self._closed:
            raise ClassicalChannelError(f"link {self.link_id}: channel closed")
        try:
            await self._bus.publish(self._remote_topic, msg)
        except Exception as exc:  # bus errors end the exchange, not the process
            raise ClassicalChannelError(f"link {self.link_id}: bus send failed: {exc}") from exc

    async def receive(self, timeout_s: float | None = DEFAULT_PEER_TIMEOUT_S) -> Message:
        """As :meth:`ClassicalChannel.receive`; once synchronized with a peer incarnation,
        checks every ``keepalive_s`` of silence that it is still there.

        Raises:
            PeerGone: the peer's subscription vanished or it restarted meanwhile.
            ClassicalChannelTimeout: nothing arrived within ``timeout_s`` real seconds.
            ClassicalChannelError: the channel was closed.
        """
        if timeout_s is None or self._end is None or self.peer_nonce is None \
                or timeout_s <= self.keepalive_s:
            return await super().receive(timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise ClassicalChannelTimeout(self.link_id, timeout_s)
            try:
                return await super().receive(min(self.keepalive_s, left))
            except ClassicalChannelTimeout:
                pass
            await self._check_peer(min(self.keepalive_s, max(deadline - loop.time(), 0.001)))

    async def _check_peer(self, timeout_s: float) -> None:
        """Raise :class:`PeerGone` if the synchronized peer left or restarted.

        A ping that merely times out proves nothing (a busy peer): the caller keeps
        waiting until its own deadline.
        """
        try:
            nonce = await self.ping(timeout_s)
        except PeerNotListening as exc:
            raise PeerGone(f"link {self.link_id}: the peer end left") from exc
        except ClassicalChannelTimeout:
            return
        if self.peer_nonce is not None and nonce != self.peer_nonce:
            raise PeerGone(f"link {self.link_id}: the peer end restarted")

    async def serve_peer(self, boot_nonce: str, handler: PeerHandler | None = None) -> None:
        """Subscribe ``keyplane.qkd.<link>.<end>.peer`` (after this end's inboxes)."""
        end = self._rendezvous_end()
        if self._closed:
            raise ClassicalChannelError(f"link {self.link_id}: channel closed")
        self.boot_nonce = boot_nonce
        self._peer_handler = handler

        async def answer(topic: str, msg: Message) -> Message | None:
            if self._closed:
                return None
            return await self._answer(msg)

        if self._peer_sub is None:
            self._peer_sub = await self._bus.subscribe(peer_topic(self.link_id, end), answer)

    async def request_peer(self, msg: Message, timeout_s: float = DEFAULT_PING_TIMEOUT_S
                           ) -> Message:
        end = self._rendezvous_end()
        if self._closed:
            raise ClassicalChannelError(f"link {self.link_id}: channel closed")
        peer: Literal["alice", "bob"] = "bob" if end == "alice" else "alice"
        topic = peer_topic(self.link_id, peer)
        try:
            return await self._bus.request(topic, msg, timeout_s=timeout_s)
        except NoResponders as exc:
            raise PeerNotListening(f"link {self.link_id}: nobody answers on {topic}") from exc
        except BusTimeout as exc:
            raise ClassicalChannelTimeout(self.link_id, timeout_s) from exc
        except KeyplaneError as exc:
            raise ClassicalChannelError(f"link {self.link_id}: bus request failed: {exc}"
                                        ) from exc

    async def close(self) -> None:
        if self._closed:
            return
        await super().close()
        for sub in (self._peer_sub, self._sub):
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except KeyplaneError:  # the bus closed first: nothing left to release
                    pass
        self._sub = self._peer_sub = None

"""Link key from a QKD device over ETSI GS QKD 014: the KM is the device's SAE.

One :class:`Etsi014LinkEnd` per KM per device link. Each end is the master of its own
direction (so the whole stream is used and the ends never ask for the same key):

1. while its link key store has room, it asks its end of the device for Status and takes
   up to ``keys_per_request`` keys with ``enc_keys`` (slave: the peer KM's SAE id);
2. it names a block id (:func:`~keyplane.physical.runner.block_id_base` of the wall
   clock, even for Alice's KM, odd for Bob's, so the two masters never collide and a
   restart never reuses an id) and hands ``(block id, key_IDs)`` to the peer KM over the
   bus (:class:`~keyplane.keymanager.sources.wire.DeviceKeyIds` on
   ``keyplane.km.<peer>.keysource``), retrying with back-off within ``request_timeout_s``;
3. the peer fetches the same keys from its end with ``dec_keys``, stores them as that block
   and answers; only then does the master store the block too. From there on the link key
   store's usual rule holds: each end sends only with blocks its peer said it holds
   (``LinkBlocksHeld``).

A peer that answers "stored" twice for one block (a retry after a lost answer) is normal:
the receiver remembers the blocks it stored recently and acknowledges a repeat without
asking the device again. Keys a master took but could not hand over are lost, never used:
the device destroys unclaimed keys after its own timeout.

Alice's end publishes :class:`~keyplane.messages.LinkTelemetry` once per
``telemetry_interval_s`` (bits stored per second, ``down`` while the device does not
answer) and ``link_block`` events, as an emulated link does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from pathlib import Path

from keyplane.api.client import AsyncEtsi014Client, ClientError
from keyplane.bus import Bus, topics
from keyplane.certs import CertPaths
from keyplane.clock import Clock
from keyplane.config import Etsi014Source, QuantumLink
from keyplane.errors import BusError, KeyplaneError
from keyplane.events import EventStream, EventType
from keyplane.keymanager.sources.wire import DeviceKeyIds, DeviceKeyIdsAck, keysource_topic
from keyplane.lifecycle import Service
from keyplane.messages import LinkState, LinkTelemetry
from keyplane.physical.frames import block_id_base
from keyplane.physical.reporting import DEFAULT_TELEMETRY_INTERVAL_S
from keyplane.physical.sink import LinkKeySink, sink_has_room

__all__ = ["Etsi014LinkEnd"]

logger = logging.getLogger(__name__)

_RECENT_BLOCKS = 1024


class Etsi014LinkEnd(Service):
    """One KM's end of a device link (module docstring).

    Args:
        link: a link whose ``source`` is :class:`~keyplane.config.Etsi014Source`.
        node: this KM's node (an endpoint of ``link``).
        sink: this KM's link key store for ``link``.
        bus: to the peer KM.
        clock: pacing and telemetry.
        credentials: the KM's certificate (used unless the link names its own).
        ca: the CA that signed the device's certificate (unless the link names its own).
        events: ``link_block`` events (Alice's end).
        telemetry_interval_s: clock seconds between telemetry messages.

    Raises:
        ValueError: the link's source is not ETSI 014 or ``node`` is not one of its ends.
    """

    def __init__(self, link: QuantumLink, node: str, sink: LinkKeySink, bus: Bus, clock: Clock,
                 *, credentials: CertPaths, ca: Path, events: EventStream | None = None,
                 telemetry_interval_s: float = DEFAULT_TELEMETRY_INTERVAL_S) -> None:
        src = link.source
        if not isinstance(src, Etsi014Source) or node not in link.endpoints:
            raise ValueError(f"{node} has no ETSI 014 device end on link {link.link_id}")
        self.link = link
        self.link_id = link.link_id
        self.node = node
        self.peer = link.endpoints[1] if node == link.endpoints[0] else link.endpoints[0]
        self.source = src
        mine, theirs = src.ends[node], src.ends[self.peer]
        self.sae_id = mine.sae_id or node
        self.peer_sae_id = theirs.sae_id or self.peer
        self.url = mine.url
        self._cert = Path(mine.cert) if mine.cert else credentials.cert
        self._key = Path(mine.key) if mine.key else credentials.key
        self._ca = Path(mine.ca) if mine.ca else ca
        self._sink = sink
        self._bus = bus
        self._clock = clock
        self._events = events
        self._telemetry_interval_s = telemetry_interval_s
        self._alice = node == link.endpoints[0]
        self._client: AsyncEtsi014Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._next_block = 0
        self._recent: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._window_bits = 0
        self._rate_bps = 0.0
        self.reachable = True
        self.blocks_stored = 0
        self.last_error: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Etsi014LinkEnd({self.link_id!r}, node={self.node!r}, url={self.url!r})"

    async def start(self) -> None:
        """Open the device client and start this end's master loop (and telemetry)."""
        self._client = AsyncEtsi014Client(self.url, cert=self._cert, key=self._key, ca=self._ca,
                                          timeout_s=self.source.request_timeout_s)
        base = block_id_base(self._clock.wall()) & ~1
        self._next_block = base + (0 if self._alice else 1)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._master_loop(), name=f"device-{self.link_id}"))
        if self._alice:
            self._tasks.append(loop.create_task(self._telemetry_loop()))

    async def close(self) -> None:
        """Stop the loops and close the client (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # ---- master side ---------------------------------------------------------------------
    def _down(self, why: str) -> None:
        if self.reachable or why != self.last_error:
            logger.warning("link %s: device end of %s at %s: %s", self.link_id, self.node,
                           self.url, why)
        self.reachable = False
        self.last_error = why

    async def _master_loop(self) -> None:
        poll = self.source.poll_interval_s
        while not self._closed:
            if not sink_has_room(self._sink):
                await self._clock.sleep(poll)
                continue
            try:
                got = await self._take_block()
            except (ClientError, KeyplaneError) as exc:
                self._down(f"{type(exc).__name__}: {exc}")
                got = False
            if not got:
                await self._clock.sleep(poll)

    async def _take_block(self) -> bool:
        """One master round; whether a block was stored at both ends."""
        assert self._client is not None
        size = self.source.key_size_bits
        status = await self._client.status(self.peer_sae_id)
        self.reachable = True
        n = min(status.stored_key_count, self.source.keys_per_request)
        if n <= 0:
            return False
        keys = await self._client.enc_keys(self.peer_sae_id, number=n, size=size)
        block_id = self._next_block
        self._next_block += 2
        if not await self._hand_over(block_id, [k.key_id for k in keys]):
            return False
        await self._store(block_id, b"".join(k.key for k in keys))
        return True

    async def _hand_over(self, block_id: int, key_ids: list[str]) -> bool:
        msg = DeviceKeyIds(sender=self.node, link_id=self.link_id, block_id=block_id,
                           key_ids=key_ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.source.request_timeout_s
        delay = 0.05
        while True:
            try:
                reply = await self._bus.request(keysource_topic(self.peer), msg,
                                                timeout_s=max(0.01, deadline - loop.time()))
            except BusError as exc:
                if loop.time() + delay >= deadline:
                    logger.warning("link %s: peer KM %s did not take block %d: %s",
                                   self.link_id, self.peer, block_id, exc)
                    return False
                await asyncio.sleep(delay)  # back-off between retries, bounded by the deadline
                delay = min(1.0, 2 * delay)
                continue
            if isinstance(reply, DeviceKeyIdsAck) and reply.ok:
                return True
            reason = reply.reason if isinstance(reply, DeviceKeyIdsAck) else reply.KIND
            logger.warning("link %s: peer KM %s refused block %d: %s", self.link_id,
                           self.peer, block_id, reason)
            return False

    async def _store(self, block_id: int, material: bytes) -> None:
        await self._sink.put_block(self.link_id, block_id, material)
        self.blocks_stored += 1
        self._window_bits += 8 * len(material)
        if self._alice and self._events is not None:
            self._events.emit(EventType.link_block, "qkd", node=self.node, link=self.link_id,
                              block_id=block_id, status="delivered", qber=None,
                              secret_bits=8 * len(material), source="etsi014")

    # ---- slave side ----------------------------------------------------------------------
    async def on_key_ids(self, msg: DeviceKeyIds) -> DeviceKeyIdsAck:
        """The peer KM took ``msg.key_ids`` at its end: fetch them here and store them."""
        def ack(ok: bool, reason: str = "") -> DeviceKeyIdsAck:
            return DeviceKeyIdsAck(link_id=self.link_id, block_id=msg.block_id, ok=ok,
                                   reason=reason)

        if msg.sender != self.peer:
            return ack(False, f"{msg.sender} is not the other end of {self.link_id}")
        if msg.block_id in self._recent:
            return ack(True)  # a retry after a lost answer: stored already
        if self._client is None or self._closed:
            return ack(False, "not running")
        if (msg.block_id & 1) == (0 if self._alice else 1):
            return ack(False, "block id of this end's own direction")
        try:
            keys = await self._client.dec_keys(self.peer_sae_id, msg.key_ids)
        except ClientError as exc:
            self._down(f"dec_keys: {exc}")
            return ack(False, f"dec_keys failed: {exc}")
        if [k.key_id for k in keys] != msg.key_ids or any(
                len(k.key) * 8 != self.source.key_size_bits for k in keys):
            return ack(False, "the device answered with other keys than asked")
        try:
            await self._store(msg.block_id, b"".join(k.key for k in keys))
        except KeyplaneError as exc:
            return ack(False, str(exc))
        self._recent[msg.block_id] = None
        while len(self._recent) > _RECENT_BLOCKS:
            self._recent.popitem(last=False)
        return ack(True)

    # ---- telemetry -------------------------------------------------------------------------
    async def _telemetry_loop(self) -> None:
        interval = self._telemetry_interval_s
        while not self._closed:
            await self._clock.sleep(interval)
            bits, self._window_bits = self._window_bits, 0
            if not (bits or self.blocks_stored or not self.reachable):
                continue  # no figures yet: a rate of 0 would make routing see a dead link
            if bits or sink_has_room(self._sink):
                self._rate_bps = bits / interval  # a full store keeps the last rate
            msg = LinkTelemetry(link_id=self.link_id, node=self.node,
                                state=LinkState.up if self.reachable else LinkState.down,
                                secret_bits=bits, skr_bps=self._rate_bps, t=self._clock.now())
            with contextlib.suppress(KeyplaneError):
                await self._bus.publish(topics.link_telemetry(self.link_id), msg)

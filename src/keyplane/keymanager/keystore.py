"""Link key stores: the key stream of one QKD link, at one end, consumed exactly once.

The physical layer pushes identical blocks (same ``block_id``, same bytes) into the stores
at both ends of a link through the sink method :meth:`LinkKeyStore.put_block` (the
``LinkKeySink`` protocol of :mod:`keyplane.physical`).

Direction convention (so the two directions of a link never take the same bytes): every
block of ``n`` bytes is split in two halves; the end whose node id sorts first
(``min(a, b)``) *sends* with bytes ``[0, n // 2)`` and the other end sends with
``[n // 2, 2 * (n // 2))`` (an odd last byte is never used). A sender takes its half in
ascending ``block_id`` order, from the start, and names the exact segments it used —
``(block_id, offset, length)`` with absolute offsets — in every frame. The receiver
consumes exactly the named segments of the *sender's* half and refuses a segment that is
outside that half or already consumed (a replay). Both ends thus consume the same ids in the
same order, and each byte is used once, by one direction.

Both ends hold it (peer acknowledgement): the two ends store a verified block moments
apart, and an end that crashes in between never stores it. So an end *sends* only with
blocks its peer has said it holds (:meth:`LinkKeyStore.peer_holds`, fed by the KM from
``LinkBlocksHeld`` messages: one per stored block, and a full inventory when a KM starts);
a block only one end holds is never named in a frame. Receiving needs no acknowledgement:
a frame names only blocks its sender holds. :meth:`LinkKeyStore.wait_sendable` lets a
sender wait (bounded) for the acknowledgement of a block that would cover its frame.

Durability ("used once, then destroyed"): a send reservation copies the bytes out of the
block into memory and zeroes them in the block; the new reservation offset is written in
the journal's next transaction, which the caller awaits before any byte leaves the KM.
Reservations are taken ``link_reserve_bytes`` at a time so one write covers many frames, but
never more than half of what the store holds beyond the frame (a crash forfeits the rest of
a reservation: a scarce store keeps at least half its key); after a restart the unused rest
of a reservation is gone from the store and therefore never reused. A received segment is
zeroed and recorded as consumed the same way. A block whose two halves are both used up is
deleted.

What is durable before a byte is used is the *offsets* (``tx_reserved_bytes``,
``rx_consumed``): a restarted end zeroes every range they name in the bytes it reads back,
so no byte is used twice whatever the stored bytes hold. The stored bytes themselves (the
sealed block) are rewritten with the spent ranges zeroed ``link_block_rewrite_s`` after
the first use they do not reflect (a timer; with the next write if that comes later), or
when the block is used up and its row deleted, whichever is first: a block used up
within that time (the usual case under load) costs an update of two small columns per use
instead of re-sealing and rewriting its 16 KiB each time (issue #15; about 50 against 9 µs
of SQLite per write, and a fifth of the WAL). Spent link key thus stays in the database,
sealed, for at most about that long, like the WAL's old pages until the writer's next
truncation.

Events: ``keystore_low`` when the sendable bits drop below ``keystore_low_water_bits``
(again only after having risen above it), ``keystore_full`` when stored bits reach
``keystore_capacity_bits`` (advisory: the block is kept so both ends stay identical).
Events carry sizes and ids only.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from keyplane.clock import Clock
from keyplane.errors import CommitFailed, InsufficientKeyMaterial, KeyStoreError
from keyplane.events import EventStream, EventType
from keyplane.keymanager.indexranges import add_range, overlaps
from keyplane.keymanager.journal import Journal
from keyplane.keymanager.settings import KmSettings
from keyplane.store import Database
from keyplane.store.kmstate import BlockRecord, BlockWrites, KmStateStore

__all__ = ["LinkKeyStore", "Segment", "send_half"]

logger = logging.getLogger(__name__)

Segment = tuple[int, int, int]
"""``(block_id, offset, length)``: ``length`` bytes of a block from absolute ``offset``."""


def _loop_time() -> float:
    """The running loop's clock (what the rewrite timer runs on); infinite without a loop,
    so a snapshot taken outside one rewrites every stale block's material."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return float("inf")


def send_half(size_bytes: int, sender: str, receiver: str) -> tuple[int, int]:
    """The absolute ``[start, end)`` byte range of a block that ``sender`` sends with."""
    half = size_bytes // 2
    return (0, half) if sender < receiver else (half, 2 * half)


@dataclass
class _Block:
    block_id: int
    material: bytearray = field(repr=False)
    tx_start: int
    tx_end: int
    tx_reserved: int  # bytes of the send half taken, from tx_start
    rx_start: int
    rx_end: int
    rx_consumed: list[list[int]]  # merged, sorted [start, end) ranges of the receive half
    rx_used: int = -1  # bytes of the receive half consumed (the sum over rx_consumed)
    persisted: bool = True
    peer_holds: bool = False  # the peer said it holds this block: this end may send with it
    orphan: bool = False  # missing from the peer's last inventory: not worth waiting for
    stale: bool = False  # the stored material needs rewriting (spent bytes, or a reseal)
    material_due: float = 0.0  # loop time by which it is to be rewritten (if stale)

    def __post_init__(self) -> None:
        if self.rx_used < 0:
            self.rx_used = sum(e - s for s, e in self.rx_consumed)

    @property
    def tx_left(self) -> int:
        return self.tx_end - self.tx_start - self.tx_reserved

    @property
    def rx_left(self) -> int:
        return (self.rx_end - self.rx_start) - self.rx_used

    @property
    def used_up(self) -> bool:
        return self.tx_left == 0 and self.rx_left == 0


class LinkKeyStore:
    """One end of one QKD link's key stream, as seen by the KM of ``node_id``.

    Args:
        node_id: this KM's node.
        link_id: the quantum link's id.
        peer_id: the node at the other end.
        journal: the KM's group-commit journal (this store registers itself).
        events, clock, settings: the KM's.
    """

    def __init__(self, node_id: str, link_id: str, peer_id: str, journal: Journal,
                 events: EventStream, clock: Clock, settings: KmSettings) -> None:
        self.node_id = node_id
        self.link_id = link_id
        self.peer_id = peer_id
        self._journal = journal
        self._events = events
        self._clock = clock
        self._settings = settings
        self._blocks: dict[int, _Block] = {}
        self._order: list[int] = []  # block ids ascending
        # blocks before this position of _order have no send byte left (tx_left only
        # falls): a reservation starts its walk here, not at the oldest block (a link used
        # one way keeps every block whose other half is unused)
        self._tx_from = 0
        # reserved send bytes not yet used: (block_id, absolute offset, bytes)
        self._reserved: list[tuple[int, int, bytearray]] = []
        self._reserved_gen = 0
        # running totals, so the figures read on every frame cost O(1), not O(blocks):
        # bytes in ``_reserved``, tx_left over blocks the peer holds, unused bytes of all
        # blocks (tx_left + rx_left); :meth:`_recount` is the slow reference
        self._reserved_bytes = 0
        self._held_tx_bytes = 0
        self._block_bytes = 0
        self._dirty: set[int] = set()
        self._deleted: set[int] = set()
        self._low = False
        self._last: tuple[set[int], list[int], list[int]] = (set(), [], [])
        self._stale: set[int] = set()  # blocks whose stored material holds spent bytes
        self._rewrite_timer: asyncio.TimerHandle | None = None
        self._rewrite_at = 0.0  # the loop time the timer is set for
        # ids the peer announced before this end stored them (bounded; oldest dropped)
        self._peer_ahead: set[int] = set()
        self._acked = asyncio.Event()
        self._announce: Callable[[list[int]], None] | None = None
        self.on_supply: Callable[[], None] | None = None
        """Called whenever the sendable key rises (the KM's shares of scarce key)."""
        self.blocks_received = 0
        journal.register(self)

    def __repr__(self) -> str:
        return (f"LinkKeyStore(node={self.node_id!r}, link={self.link_id!r}, "
                f"blocks={len(self._blocks)}, sendable_bits={self.sendable_bits})")

    # ---- figures -----------------------------------------------------------------------
    @property
    def sendable_bytes(self) -> int:
        """Bytes this end can still send with (reserved, and in blocks the peer holds)."""
        return self._reserved_bytes + self._held_tx_bytes

    @property
    def unconfirmed_bytes(self) -> int:
        """Send-half bytes of blocks the peer has not (yet) said it holds."""
        return sum(blk.tx_left for blk in self._blocks.values()
                   if not blk.peer_holds and not blk.orphan)

    @property
    def sendable_bits(self) -> int:
        """:attr:`sendable_bytes` in bits."""
        return 8 * self.sendable_bytes

    @property
    def stored_bits(self) -> int:
        """Unused bits held for this link (both directions)."""
        return 8 * (self._reserved_bytes + self._block_bytes)

    def has_room(self) -> bool:
        """Whether the link should deliver more key (``LinkKeySink.has_room``): stored bits
        below ``keystore_capacity_bits``. The key source pauses while this is False."""
        return self.stored_bits < self._settings.keystore_capacity_bits

    def _recount(self) -> tuple[int, int, int]:
        """``(reserved, held tx, block bytes)`` summed from scratch (the reference for the
        running totals; tests compare the two)."""
        return (sum(len(b) for _, _, b in self._reserved),
                sum(blk.tx_left for blk in self._blocks.values() if blk.peer_holds),
                sum(blk.tx_left + blk.rx_left for blk in self._blocks.values()))

    def _totals(self) -> tuple[int, int, int]:
        """The running totals, in :meth:`_recount`'s order."""
        return self._reserved_bytes, self._held_tx_bytes, self._block_bytes

    # ---- the physical layer's sink -----------------------------------------------------
    async def put_block(self, link_id: str, block_id: int, material: bytes) -> None:
        """Store a new block of link key (``LinkKeySink``); durable when this returns.

        Raises:
            KeyStoreError: ``link_id`` is not this store's link, or ``block_id`` is known.
        """
        if link_id != self.link_id:
            raise KeyStoreError(f"block for link {link_id!r} sent to the store of {self.link_id!r}")
        if block_id in self._blocks or block_id in self._deleted:
            raise KeyStoreError(f"link {self.link_id}: block {block_id} already received")
        size = len(material)
        tx = send_half(size, self.node_id, self.peer_id)
        rx = send_half(size, self.peer_id, self.node_id)
        blk = _Block(block_id, bytearray(material), tx[0], tx[1], 0, rx[0], rx[1], [],
                     persisted=False)
        self._blocks[block_id] = blk
        at = bisect.bisect_left(self._order, block_id)
        self._order.insert(at, block_id)
        self._tx_from = min(self._tx_from, at)
        self._block_bytes += blk.tx_left + blk.rx_left
        self._dirty.add(block_id)
        self.blocks_received += 1
        gen = self._journal.mark()
        try:
            await self._journal.flushed(gen)
        except CommitFailed as exc:
            # the database is away: the block stays here and the journal retries on its own;
            # wait for that commit (the link pauses) rather than fail the link's loop, which
            # stopped the link for good (a 10 s PostgreSQL outage, issue #14)
            logger.warning("link %s: block %d not stored yet (%s); waiting for the journal's "
                           "retry", self.link_id, block_id, exc)
            while True:
                try:
                    await self._journal.flushed(gen, wake=False)
                    break
                except CommitFailed:
                    continue
        if block_id in self._peer_ahead:
            self._peer_ahead.discard(block_id)
            self._mark_held(blk)
        if self._announce is not None:
            self._announce([block_id])  # durable here: the peer may send with it now
        if self.stored_bits >= self._settings.keystore_capacity_bits:
            self._events.emit(EventType.keystore_full, "km", node=self.node_id,
                              link_id=self.link_id, stored_bits=self.stored_bits,
                              capacity_bits=self._settings.keystore_capacity_bits)

    # ---- what the peer holds -----------------------------------------------------------
    def set_announcer(self, announce: Callable[[list[int]], None] | None) -> None:
        """Call ``announce(block_ids)`` whenever blocks are durably stored here (the KM
        sends them to the peer as ``LinkBlocksHeld``)."""
        self._announce = announce

    def inventory(self) -> list[int]:
        """Ids of every block held here, ascending (for a ``LinkBlocksHeld`` inventory)."""
        return list(self._order)

    def peer_holds(self, block_ids: list[int], *, inventory: bool = False) -> None:
        """The peer holds ``block_ids`` durably: this end may send with them.

        Args:
            inventory: ``block_ids`` is everything the peer holds (it just started): blocks
                missing from it are no longer sent with (the peer lost them in a crash
                before storing them, or never had them).
        """
        ids = set(block_ids)
        for block_id in ids:
            blk = self._blocks.get(block_id)
            if blk is not None:
                self._mark_held(blk)
            elif block_id not in self._deleted:
                self._peer_ahead.add(block_id)  # stored there first; ours is on its way
        if inventory:
            for blk in self._blocks.values():
                if blk.block_id not in ids:
                    if blk.peer_holds:
                        logger.info("link %s: peer %s no longer holds block %d", self.link_id,
                                    self.peer_id, blk.block_id)
                        self._held_tx_bytes -= blk.tx_left
                    blk.peer_holds = False
                    blk.orphan = True
        while len(self._peer_ahead) > self._settings.peer_ahead_limit:
            self._peer_ahead.discard(min(self._peer_ahead))

    def _mark_held(self, blk: _Block) -> None:
        blk.orphan = False
        if not blk.peer_holds:
            blk.peer_holds = True
            self._held_tx_bytes += blk.tx_left
            self._acked.set()
            if self.on_supply is not None:
                self.on_supply()
            if self._low and self.sendable_bits >= self._settings.keystore_low_water_bits:
                self._low = False

    async def wait_sendable(self, nbytes: int, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s`` on the clock) until ``nbytes`` are sendable, if blocks
        awaiting the peer's acknowledgement could make them so; whether they are."""
        deadline = self._clock.now() + timeout_s
        while self.sendable_bytes < nbytes:
            left = deadline - self._clock.now()
            if left <= 0 or self.sendable_bytes + self.unconfirmed_bytes < nbytes:
                return False
            self._acked.clear()
            try:
                await self._clock.wait_for(self._acked.wait(), left)
            except TimeoutError:
                return self.sendable_bytes >= nbytes
        return True

    # ---- sending -----------------------------------------------------------------------
    def take_send(self, nbytes: int) -> tuple[list[Segment], bytes, int]:
        """Take ``nbytes`` of this end's send half for one frame.

        Returns:
            ``(segments, pad, gen)``: the segments to name in the frame, their bytes, and
            the journal generation to await before the frame is sent.

        Raises:
            InsufficientKeyMaterial: fewer than ``nbytes`` sendable bytes (nothing taken).
        """
        have = self._reserved_bytes
        if have < nbytes:
            need = nbytes - have
            if need > self._held_tx_bytes:
                raise InsufficientKeyMaterial(
                    f"link {self.link_id}: {nbytes} bytes wanted, {self.sendable_bytes} sendable")
            # more than this frame needs saves writes, but a crash forfeits it: take at
            # most half of what the store holds beyond the frame, so a restarted KM of a
            # scarce link still has key to send with (a fixed 4,096 bytes was a whole
            # block's half at 5 km: the fault matrix's restarts waited for a new block)
            spare = (self._held_tx_bytes - need) // 2
            self._reserve(need + max(0, min(self._settings.link_reserve_bytes - need, spare)))
        segments: list[Segment] = []
        out = bytearray()
        left = nbytes
        while left:
            block_id, offset, buf = self._reserved[0]
            n = min(left, len(buf))
            segments.append((block_id, offset, n))
            out += buf[:n]
            buf[:n] = bytes(n)  # destroy the in-memory copy
            if n == len(buf):
                self._reserved.pop(0)
            else:
                self._reserved[0] = (block_id, offset + n, buf[n:])
            left -= n
        self._reserved_bytes -= nbytes
        self._check_low()
        return segments, bytes(out), self._reserved_gen

    def _reserve(self, nbytes: int) -> None:
        order, blocks = self._order, self._blocks
        touched: list[_Block] = []  # touched after the walk: _touch may delete from _order
        at = self._tx_from
        while nbytes > 0 and at < len(order):
            blk = blocks[order[at]]
            at += 1
            n = min(nbytes, blk.tx_left) if blk.peer_holds else 0
            if n <= 0:
                continue
            start = blk.tx_start + blk.tx_reserved
            self._reserved.append((blk.block_id, start, bytearray(blk.material[start:start + n])))
            blk.material[start:start + n] = bytes(n)
            blk.tx_reserved += n
            self._reserved_bytes += n
            self._held_tx_bytes -= n
            self._block_bytes -= n
            nbytes -= n
            touched.append(blk)
        for blk in touched:
            self._touch(blk)
        at = self._tx_from
        while at < len(order) and blocks[order[at]].tx_left == 0:
            at += 1
        self._tx_from = at
        self._reserved_gen = self._journal.mark()

    # ---- receiving ---------------------------------------------------------------------
    def take_received(self, segments: list[Segment]) -> tuple[bytes, int]:
        """Consume the segments a frame from the peer names (its send half).

        Returns:
            ``(pad, gen)``: the bytes and the journal generation that makes it durable.

        Raises:
            KeyStoreError: a segment is unknown, outside the peer's half, or already
                consumed (a replayed or forged frame). Nothing is consumed then.
        """
        named: dict[int, list[list[int]]] = {}  # ranges this frame names, per block
        for block_id, offset, length in segments:
            blk = self._blocks.get(block_id)
            if blk is None:
                if block_id in self._deleted:
                    raise KeyStoreError(f"link {self.link_id}: block {block_id} already used up")
                raise KeyStoreError(f"link {self.link_id}: frame names unknown block {block_id}")
            if length <= 0 or offset < blk.rx_start or offset + length > blk.rx_end:
                raise KeyStoreError(
                    f"link {self.link_id}: segment outside the sender's half of block {block_id}")
            mine = named.setdefault(block_id, [])
            if overlaps(blk.rx_consumed, offset, offset + length) or overlaps(
                    mine, offset, offset + length):
                raise KeyStoreError(
                    f"link {self.link_id}: block {block_id} bytes {offset}+{length} already used")
            add_range(mine, offset, offset + length)
        out = bytearray()
        for block_id, offset, length in segments:
            blk = self._blocks[block_id]
            out += blk.material[offset:offset + length]
            blk.material[offset:offset + length] = bytes(length)
            add_range(blk.rx_consumed, offset, offset + length)
            blk.rx_used += length  # segments were checked not to overlap anything consumed
            self._block_bytes -= length
            self._touch(blk)
        return bytes(out), self._journal.mark()

    def _touch(self, blk: _Block) -> None:
        if not blk.used_up:
            self._dirty.add(blk.block_id)
            if not blk.stale:  # its first spent bytes the stored ones still hold
                blk.stale = True
                blk.material_due = _loop_time() + self._settings.link_block_rewrite_s
            return
        self._stale.discard(blk.block_id)
        del self._blocks[blk.block_id]
        at = bisect.bisect_left(self._order, blk.block_id)
        del self._order[at]
        if at < self._tx_from:
            self._tx_from -= 1
        self._deleted.add(blk.block_id)
        if blk.persisted:
            self._dirty.add(blk.block_id)  # the snapshot deletes its row
        else:
            self._dirty.discard(blk.block_id)  # never written: nothing to delete

    def _check_low(self) -> None:
        bits = self.sendable_bits
        if not self._low and bits < self._settings.keystore_low_water_bits:
            self._low = True
            self._events.emit(EventType.keystore_low, "km", node=self.node_id,
                              link_id=self.link_id, sendable_bits=bits,
                              low_water_bits=self._settings.keystore_low_water_bits)

    # ---- persistence -------------------------------------------------------------------
    def snapshot(self) -> BlockWrites | None:
        """Journal hook: the dirty blocks as one write operation (a block's material only
        when it is new, or its stored bytes have held spent ones for
        ``link_block_rewrite_s``; else its offsets only)."""
        if not self._dirty:
            return None
        out = BlockWrites(self.node_id, self.link_id)
        inserted: list[int] = []
        rewritten: list[int] = []
        now = self._clock.now()
        loop_now = _loop_time()
        for block_id in self._dirty:
            blk = self._blocks.get(block_id)
            if blk is None:
                out.deletes.append(block_id)
                continue
            material: bytes | None = None
            if not blk.persisted or (blk.stale and loop_now >= blk.material_due):
                material = bytes(blk.material)
                blk.stale = False
                self._stale.discard(block_id)
                rewritten.append(block_id)
            elif blk.stale:
                self._stale.add(block_id)
            out.blocks.append(BlockRecord(
                block_id, len(blk.material), blk.tx_reserved,
                [list(r) for r in blk.rx_consumed], material, now, new=not blk.persisted))
            if not blk.persisted:
                inserted.append(block_id)
                blk.persisted = True
        taken = set(self._dirty)
        self._dirty.clear()
        self._last = (taken, inserted, rewritten)
        if self._stale:
            self._arm_rewrite()
        return out

    def _arm_rewrite(self) -> None:
        """Make sure the stale blocks' material is written once it is due, even if no
        further use of the link writes them (a timer on the running loop; none: the
        next write of this store does it)."""
        if self._rewrite_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        due = min((self._blocks[b].material_due for b in self._stale if b in self._blocks),
                  default=loop.time())
        self._rewrite_at = due
        self._rewrite_timer = loop.call_at(due, self._rewrite_due)

    def write_spent(self) -> None:
        """Write every block's stored bytes that still hold spent ones with the next commit,
        whether due or not (a KM's close: a clean stop leaves no spent link key at rest)."""
        if self._rewrite_timer is not None:
            self._rewrite_timer.cancel()
            self._rewrite_timer = None
        for block_id in self._stale:
            blk = self._blocks.get(block_id)
            if blk is not None:
                blk.material_due = 0.0
                self._dirty.add(block_id)
        if self._dirty:
            self._journal.mark()

    def _rewrite_due(self) -> None:
        """Timer: mark the stale blocks now due (only those: the others' offsets are
        written already) for the next commit, and wait for the next one due."""
        self._rewrite_timer = None
        self._stale = {b for b in self._stale if b in self._blocks}
        # due by the time it was set for (a loop may fire a timer a little early)
        limit = max(_loop_time(), self._rewrite_at)
        due = [b for b in self._stale if self._blocks[b].material_due <= limit]
        for b in due:
            self._blocks[b].material_due = 0.0  # the next snapshot writes their material
        if due:
            self._dirty.update(due)
            self._journal.mark()
        elif self._stale:
            self._arm_rewrite()

    def snapshot_failed(self) -> None:
        """Journal hook: re-mark the blocks of the failed transaction."""
        taken, inserted, rewritten = self._last
        for block_id in inserted:
            blk = self._blocks.get(block_id)
            if blk is not None:
                blk.persisted = False
        for block_id in rewritten:  # the stored bytes were not replaced: still stale
            blk = self._blocks.get(block_id)
            if blk is not None:
                blk.stale = True
                blk.material_due = 0.0
        self._dirty |= taken

    async def load(self, db: Database) -> None:
        """Restore this store's blocks from the database (KM start).

        Blocks stored in plaintext by an older version, or sealed under a retired
        key-encryption key, are written again, sealed under the current one.

        Raises:
            StoreError: the database failed. SealedDataError: a block did not open.
        """
        store = self._journal.store if self._journal.database is db else KmStateStore(db)
        self.restore(await store.load_blocks(self.node_id, self.link_id))

    def restore(self, records: Iterable[BlockRecord]) -> None:
        """Restore this store's blocks from records read from the store (:meth:`load`, or
        one query for all of a KM's links at its start)."""
        for r in records:
            size = r.size_bytes
            tx = send_half(size, self.node_id, self.peer_id)
            rx = send_half(size, self.peer_id, self.node_id)
            if r.material is None:
                raise KeyStoreError(f"link {self.link_id}: block {r.block_id} read without "
                                    "its material")
            blk = _Block(r.block_id, bytearray(r.material), tx[0], tx[1], r.tx_reserved_bytes,
                         rx[0], rx[1], r.rx_consumed, persisted=True)
            # the stored bytes may still hold what the offsets say was spent (written
            # within link_block_rewrite_s before a crash): zero it here, rewrite it now
            spent = [(tx[0], tx[0] + r.tx_reserved_bytes), *((a, b) for a, b in r.rx_consumed)]
            for a, b in spent:
                if any(blk.material[a:b]):
                    blk.material[a:b] = bytes(b - a)
                    blk.stale = True
            blk.stale = blk.stale or r.reseal  # plaintext or an old KEK: write it sealed
            self._blocks[r.block_id] = blk
            if blk.stale:
                self._dirty.add(r.block_id)
        self._order = sorted(self._blocks)
        self._tx_from = 0
        self._reserved_bytes, self._held_tx_bytes, self._block_bytes = self._recount()
        if self._dirty:
            self._journal.mark()

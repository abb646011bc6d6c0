"""Link key stores: direction halves, consume-once, durability across restarts, events."""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.deadlines import eventually

from keyplane.clock import VirtualClock
from keyplane.errors import InsufficientKeyMaterial, KeyStoreError
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.keymanager import KmSettings, LinkKeyStore, send_half
from keyplane.keymanager.journal import Journal
from keyplane.store import Database, sqlite_url
from keyplane.store.kmstate import KmStateStore


def pair(db: Database, settings: KmSettings) -> tuple[LinkKeyStore, LinkKeyStore, Journal,
                                                      Journal, MemorySink]:
    clock = VirtualClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    ja, jb = Journal(db), Journal(db)
    a = LinkKeyStore("na", "l1", "nb", ja, events, clock, settings)
    b = LinkKeyStore("nb", "l1", "na", jb, events, clock, settings)
    # what the two KMs do over the bus (LinkBlocksHeld): each end tells the other
    a.set_announcer(b.peer_holds)
    b.set_announcer(a.peer_holds)
    ja.start()
    jb.start()
    return a, b, ja, jb, sink


async def reopened(db: Database, settings: KmSettings, node: str = "na", peer: str = "nb"
                   ) -> tuple[LinkKeyStore, Journal]:
    """The store of a restarted KM on the same database (new clock, events and journal; the
    journal not started yet), loaded from what the first one left."""
    clock = VirtualClock()
    journal = Journal(db)
    store = LinkKeyStore(node, "l1", peer, journal, EventStream(clock), clock, settings)
    await store.load(db)
    return store, journal


def test_send_halves_of_a_block_are_disjoint_and_cover_it() -> None:
    assert send_half(100, "a", "b") == (0, 50)
    assert send_half(100, "b", "a") == (50, 100)
    assert send_half(101, "b", "a") == (50, 100)


async def test_keystore_both_directions_never_take_the_same_bytes(db: Database) -> None:
    a, b, ja, jb, _ = pair(db, KmSettings(link_reserve_bytes=64))
    rng = random.Random(61)
    blocks = {i: rng.randbytes(512) for i in range(3)}
    for i, m in blocks.items():
        await a.put_block("l1", i, m)
        await b.put_block("l1", i, m)
    seg_a, pad_a, _ = a.take_send(300)
    seg_b, pad_b, _ = b.take_send(300)
    assert b.take_received(seg_a)[0] == pad_a
    assert a.take_received(seg_b)[0] == pad_b
    bytes_a = {(blk, o) for blk, off, n in seg_a for o in range(off, off + n)}
    bytes_b = {(blk, o) for blk, off, n in seg_b for o in range(off, off + n)}
    assert not bytes_a & bytes_b
    with pytest.raises(KeyStoreError, match="already used"):
        b.take_received(seg_a)  # a replay
    with pytest.raises(KeyStoreError, match="outside"):
        a.take_received([seg_a[-1]])  # our own half (block 1) is never accepted from the peer
    await ja.close()
    await jb.close()


async def test_keystore_restart_never_reuses_and_loses_no_unreserved_key(db: Database) -> None:
    settings = KmSettings(link_reserve_bytes=128)
    a, _, ja, jb, _ = pair(db, settings)
    await a.put_block("l1", 0, bytes(range(256)) * 4)  # 1024 bytes; a sends with [0, 512)
    a.peer_holds([0])
    seg, _, gen = a.take_send(40)
    await ja.flushed(gen)
    before = a.sendable_bytes
    await ja.close()
    await jb.close()
    # a new store on the same database: the reservation (128 bytes) is gone, never reused
    a2, j2 = await reopened(db, settings)
    assert a2.sendable_bytes == 0  # until the peer says again what it holds
    a2.peer_holds([0], inventory=True)
    assert a2.sendable_bytes == 512 - 128 == before - (128 - 40)
    seg2, _, _ = a2.take_send(10)
    assert seg2[0][1] >= seg[0][1] + 128
    # the stored bytes may still hold the reservation (written within
    # link_block_rewrite_s): the restarted store zeroed them and rewrites them at once
    j2.start()
    await j2.sync()
    (row,) = await KmStateStore(db).load_blocks("na", "l1")
    assert row.material[:138] == bytes(138)  # reserved bytes destroyed in the store
    await j2.close()


async def _stored(db: Database) -> bytes:
    (row,) = await KmStateStore(db).load_blocks("na", "l1")
    assert row.material is not None
    return row.material


async def test_partial_use_writes_offsets_then_the_bytes_within_the_rewrite_interval(
        db: Database) -> None:
    """A use of a stored block writes its offsets only; its stored bytes are rewritten with
    the spent range zeroed once ``link_block_rewrite_s`` has passed (a timer, no further
    use needed); a use while a rewrite is not due writes the offsets only again."""
    settings = KmSettings(link_reserve_bytes=0, link_block_rewrite_s=3600.0)
    a, _, ja, jb, _ = pair(db, settings)
    block = bytes(range(1, 256)) * 4 + b"\x01"  # 1021 bytes, no zero
    await a.put_block("l1", 0, block)
    a.peer_holds([0])
    _, pad, gen = a.take_send(40)
    await ja.flushed(gen)
    assert pad == block[:40]
    assert await _stored(db) == block  # offsets only: the stored bytes are untouched
    assert a._stale == {0}
    # due now: the timer fires on the loop and the next commit writes the bytes
    a._blocks[0].material_due = 0.0
    if a._rewrite_timer is not None:
        a._rewrite_timer.cancel()
        a._rewrite_timer = None
    a._arm_rewrite()
    await eventually(lambda: not a._stale, "the stale block's bytes written")
    await ja.sync()
    assert await _stored(db) == bytes(40) + block[40:]
    _, _, gen = a.take_send(10)  # not due again for an hour: offsets only
    await ja.flushed(gen)
    assert await _stored(db) == bytes(40) + block[40:]
    await ja.close()
    await jb.close()


async def test_reservation_walk_skips_spent_send_halves_and_sees_a_late_lower_block(
        db: Database) -> None:
    """A reservation starts past the blocks whose send half is spent (their other half
    keeps them), and a block stored late with a lower id is still taken first."""
    a, _, ja, jb, _ = pair(db, KmSettings(link_reserve_bytes=0))
    for block_id in (5, 6):
        await a.put_block("l1", block_id, bytes(range(1, 65)))
    a.peer_holds([5, 6])
    seg, _, _ = a.take_send(40)  # block 5's send half (32 bytes), 8 of block 6's
    assert seg == [(5, 0, 32), (6, 0, 8)] and a._tx_from == 1
    await a.put_block("l1", 3, bytes(range(1, 65)))
    a.peer_holds([3])
    assert a._tx_from == 0
    seg, _, _ = a.take_send(40)
    assert seg == [(3, 0, 32), (6, 8, 8)]
    assert a._totals() == a._recount()
    await ja.close()
    await jb.close()


async def test_rewrite_timer_marks_only_the_blocks_due(db: Database) -> None:
    """The timer writes the material of the stale blocks now due, and nothing of the others
    (their offsets are written already): a busy link's many stale blocks, due at different
    times, are not rewritten at every firing."""
    settings = KmSettings(link_reserve_bytes=0, link_block_rewrite_s=3600.0)
    a, _, ja, jb, _ = pair(db, settings)
    for block_id in (0, 1):
        await a.put_block("l1", block_id, bytes(range(1, 65)))
    a.peer_holds([0, 1])
    _, _, gen = a.take_send(40)  # all of block 0's send half (32 bytes) and 8 of block 1's
    await ja.flushed(gen)
    assert a._stale == {0, 1} and not a._dirty and a._rewrite_timer is not None
    a._rewrite_timer.cancel()  # as if it had been set for block 1, due now
    a._blocks[1].material_due = a._rewrite_at = 0.0
    a._rewrite_due()
    assert a._dirty == {1} and a._rewrite_timer is None
    await ja.sync()
    assert a._stale == {0} and a._rewrite_timer is not None  # armed for block 0's due time
    await ja.close()
    await jb.close()


async def test_restart_zeroes_spent_bytes_the_store_still_held(db: Database) -> None:
    """A crash between a use (offsets durable) and the rewrite of the bytes: the restarted
    store never sends or accepts those bytes again, and writes them zeroed at once."""
    settings = KmSettings(link_reserve_bytes=0, link_block_rewrite_s=3600.0)
    a, b, ja, jb, _ = pair(db, settings)
    block = bytes(range(1, 256)) * 4 + b"\x01"
    await a.put_block("l1", 0, block)
    await b.put_block("l1", 0, block)
    a.peer_holds([0])
    b.peer_holds([0])
    seg, _, gen = a.take_send(40)
    await ja.flushed(gen)
    _, gen = b.take_received(seg)
    await jb.flushed(gen)
    assert await _stored(db) == block  # still there, sealed: the rewrite is not due
    await ja.close()
    await jb.close()
    a2, j2 = await reopened(db, settings)
    b2, j3 = await reopened(db, settings, "nb", "na")
    a2.peer_holds([0], inventory=True)
    assert a2.sendable_bytes == 510 - 40
    seg2, pad2, _ = a2.take_send(10)
    assert seg2 == [(0, 40, 10)] and pad2 == block[40:50]
    with pytest.raises(KeyStoreError, match="already used"):
        b2.take_received(seg)  # the receiver's consumed range survived too
    j2.start()
    await j2.sync()
    assert (await _stored(db))[:50] == bytes(50)
    await j2.close()
    await j3.close()


async def test_keystore_low_water_and_full_events(km_db: Database) -> None:
    settings = KmSettings(link_reserve_bytes=0, keystore_low_water_bits=8 * 100,
                          keystore_capacity_bits=8 * 400)
    a, _, ja, jb, sink = pair(km_db, settings)
    await a.put_block("l1", 0, bytes(300))
    assert not sink.of_type(EventType.keystore_full)
    await a.put_block("l1", 1, bytes(300))
    a.peer_holds([0, 1])
    (full,) = sink.of_type(EventType.keystore_full)
    assert full.data["stored_bits"] == 8 * 600
    a.take_send(150)  # the send halves hold 2 x 150 bytes
    assert not sink.of_type(EventType.keystore_low)
    a.take_send(110)  # 40 sendable bytes left
    (low,) = sink.of_type(EventType.keystore_low)
    assert low.data["sendable_bits"] == 8 * 40
    with pytest.raises(InsufficientKeyMaterial):
        a.take_send(41)
    assert a.sendable_bytes == 40  # a refused request takes nothing
    await ja.close()
    await jb.close()


async def test_keystore_refuses_foreign_link_and_repeated_block(km_db: Database) -> None:
    a, _, ja, jb, _ = pair(km_db, KmSettings())
    await a.put_block("l1", 5, bytes(64))
    with pytest.raises(KeyStoreError):
        await a.put_block("l2", 6, bytes(64))
    with pytest.raises(KeyStoreError):
        await a.put_block("l1", 5, bytes(64))
    await ja.close()
    await jb.close()


async def test_keystore_used_up_block_is_deleted_from_the_store(km_db: Database) -> None:
    a, b, ja, jb, _ = pair(km_db, KmSettings(link_reserve_bytes=0))
    await a.put_block("l1", 0, bytes(range(64)))
    await b.put_block("l1", 0, bytes(range(64)))
    seg_a, _, _ = a.take_send(32)
    seg_b, _, _ = b.take_send(32)
    a.take_received(seg_b)
    b.take_received(seg_a)
    await ja.sync()
    await jb.sync()
    store = KmStateStore(km_db)
    assert await store.load_blocks("na", "l1") == await store.load_blocks("nb", "l1") == []
    await ja.close()
    await jb.close()


async def test_keystore_sends_only_with_blocks_the_peer_holds(km_db: Database) -> None:
    clock = VirtualClock()
    j = Journal(km_db)
    j.start()
    a = LinkKeyStore("na", "l1", "nb", j, EventStream(clock), clock, KmSettings())
    await a.put_block("l1", 1, bytes(128))
    assert (a.sendable_bytes, a.unconfirmed_bytes) == (0, 64)
    with pytest.raises(InsufficientKeyMaterial):
        a.take_send(8)
    a.peer_holds([2])  # the peer stored block 2 first: remembered until ours arrives
    await a.put_block("l1", 2, bytes(128))
    assert a.sendable_bytes == 64
    a.peer_holds([1])
    assert a.sendable_bytes == 128
    seg, _, _ = a.take_send(100)
    assert [b for b, _, _ in seg] == [1, 2]
    await j.close()


async def test_keystore_inventory_stops_sending_with_blocks_the_peer_lost(
        km_db: Database) -> None:
    clock = VirtualClock()
    j = Journal(km_db)
    j.start()
    a = LinkKeyStore("na", "l1", "nb", j, EventStream(clock), clock, KmSettings())
    for i in range(3):
        await a.put_block("l1", i, bytes(64))
    a.peer_holds([0, 1, 2])
    # the peer restarted without block 1 (it crashed before storing it)
    a.peer_holds([0, 2], inventory=True)
    assert a.sendable_bytes == 64 and a.unconfirmed_bytes == 0
    seg, _, _ = a.take_send(64)
    assert {b for b, _, _ in seg} == {0, 2}
    assert not await a.wait_sendable(8, 5.0)  # nothing awaited can cover it: no wait
    await j.close()


async def test_keystore_wait_sendable_returns_when_the_peer_confirms(km_db: Database) -> None:
    clock = VirtualClock()
    j = Journal(km_db)
    j.start()
    a = LinkKeyStore("na", "l1", "nb", j, EventStream(clock), clock, KmSettings())
    await a.put_block("l1", 9, bytes(64))
    waiter = asyncio.ensure_future(a.wait_sendable(32, 5.0))
    await asyncio.sleep(0)  # the waiter's task starts (one loop turn, no real time)
    assert not waiter.done()
    a.peer_holds([9])
    assert await waiter
    late = asyncio.ensure_future(a.wait_sendable(64, 5.0))  # more than the block holds
    assert not await late
    await a.put_block("l1", 10, bytes(64))
    timed = asyncio.ensure_future(a.wait_sendable(64, 1.0))
    await asyncio.sleep(0)  # the waiter's task starts (one loop turn, no real time)
    await clock.advance(1.0)
    assert not await timed  # block 10 was never confirmed within the bound
    await j.close()


async def test_keystore_running_totals_match_a_recount_after_random_use(db: Database) -> None:
    """The O(1) figures (sendable, stored) equal a from-scratch sum after any mix of puts,
    peer acknowledgements, an inventory, sends and receives in both directions."""
    a, b, ja, jb, _ = pair(db, KmSettings(link_reserve_bytes=96))
    a.set_announcer(None)  # acknowledgements are driven by the test
    b.set_announcer(None)
    rng = random.Random(67)
    next_block = 0
    for _ in range(300):
        op = rng.randrange(5)
        if op == 0:
            m = rng.randbytes(rng.choice([64, 256, 513]))
            await a.put_block("l1", next_block, m)
            await b.put_block("l1", next_block, m)
            next_block += 1
        elif op == 1 and next_block:
            ids = rng.sample(range(next_block), k=rng.randint(1, next_block))
            (a if rng.random() < 0.5 else b).peer_holds(ids, inventory=rng.random() < 0.2)
        else:
            sender, receiver = (a, b) if rng.random() < 0.5 else (b, a)
            want = rng.randint(1, 200)
            if sender.sendable_bytes >= want:
                segments, pad, _ = sender.take_send(want)
                assert receiver.take_received(segments)[0] == pad
            else:
                with pytest.raises(InsufficientKeyMaterial):
                    sender.take_send(want)
        for store in (a, b):
            assert store._totals() == store._recount()
    await ja.close()
    await jb.close()


async def test_keystore_frame_naming_the_same_bytes_twice_is_refused(db: Database) -> None:
    a, b, ja, jb, _ = pair(db, KmSettings(link_reserve_bytes=64))
    m = random.Random(71).randbytes(512)
    await a.put_block("l1", 0, m)
    await b.put_block("l1", 0, m)
    segments, _, _ = a.take_send(40)
    blk, off, n = segments[0]
    with pytest.raises(KeyStoreError, match="already used"):
        b.take_received([(blk, off, n), (blk, off + 10, 5)])
    assert b._totals() == b._recount()
    await ja.close()
    await jb.close()


# ---- the peer acknowledgement, under any interleaving (hypothesis) ------------------------
_OPS = st.one_of(
    st.tuples(st.just("put"), st.sampled_from("ab")),  # the next block reaches this end
    st.tuples(st.just("lose"), st.sampled_from("ab")),  # ... or this end crashed before it
    st.tuples(st.just("deliver"), st.integers(0, 3)),  # one holdings message arrives
    st.tuples(st.just("send"), st.sampled_from("ab")),  # this end sends a frame
    st.tuples(st.just("restart"), st.sampled_from("ab")),  # this end restarts from its store
)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_OPS, min_size=1, max_size=40))
def test_keystore_frames_name_only_blocks_the_receiver_holds(ops: list[tuple[str, Any]]) -> None:
    """Blocks reach the two ends in any order, some never reach one end (a crash between
    the two stores), holdings messages arrive late, ends restart: every frame an end sends
    names only blocks the other end holds, and the receiver gets the same bytes."""
    async def run() -> None:
        with tempfile.TemporaryDirectory() as d:
            db = await Database.open(sqlite_url(Path(d) / "km.db"))
            try:
                await _ack_scenario(db, ops)
            finally:
                await db.close()
    asyncio.run(run())


async def _ack_scenario(db: Database, ops: list[tuple[str, Any]]) -> None:
    clock = VirtualClock()
    settings_ = KmSettings(link_reserve_bytes=0)
    inflight: list[tuple[str, list[int], bool, bool]] = []  # (to end, ids, inventory, reply)
    stores: dict[str, LinkKeyStore] = {}
    journals: dict[str, Journal] = {}
    node = {"a": "na", "b": "nb"}
    other = {"a": "b", "b": "a"}

    def make(end: str) -> LinkKeyStore:
        j = Journal(db)
        j.start()
        journals[end] = j
        st_ = LinkKeyStore(node[end], "l1", node[other[end]], j, EventStream(clock), clock,
                           settings_)
        st_.set_announcer(lambda ids, e=end: inflight.append((other[e], ids, False, False)))
        stores[end] = st_
        return st_

    for end in "ab":
        make(end)
    rng = random.Random(7)
    next_block = 0
    pending: dict[int, set[str]] = {}  # verified blocks not yet stored at some end
    material: dict[int, bytes] = {}
    for op, arg in ops:
        if op in ("put", "lose"):
            if all(arg not in v for v in pending.values()):  # a newly verified block
                material[next_block] = rng.randbytes(256)
                pending[next_block] = {"a", "b"}
                next_block += 1
            block = next(b for b in sorted(pending) if arg in pending[b])
            pending[block].discard(arg)
            if op == "put":
                await stores[arg].put_block("l1", block, material[block])
            if not pending[block]:
                del pending[block]
        elif op == "deliver" and inflight:
            to, ids, inventory, reply = inflight.pop(min(arg, len(inflight) - 1))
            stores[to].peer_holds(ids, inventory=inventory)
            if reply:
                inflight.append((other[to], stores[to].inventory(), True, False))
        elif op == "send":
            src, dst = stores[arg], stores[other[arg]]
            if src.sendable_bytes < 16:
                continue
            segments, pad, gen = src.take_send(16)
            await journals[arg].flushed(gen)
            held = set(dst.inventory())
            assert {b for b, _, _ in segments} <= held, (segments, held)
            got, _ = dst.take_received(segments)
            assert got == pad
        elif op == "restart":
            await journals[arg].close()
            inflight[:] = [m for m in inflight if m[0] != arg]  # lost with the process
            st_ = make(arg)
            await st_.load(db)
            inflight.append((other[arg], st_.inventory(), True, True))
    for j in journals.values():
        await j.close()


async def test_put_block_outlasts_a_failed_commit(tmp_path: Path) -> None:
    """A block arriving while the database refuses writes is stored once it accepts them
    again; put_block waits for that instead of failing (which stopped the link's loop for
    good: issue #14, PostgreSQL down 10 s)."""
    db = await Database.open(sqlite_url(tmp_path / "km.db"))
    journal = Journal(db, retry_s=0.01, retry_max_s=0.05)
    store = LinkKeyStore("na", "l1", "nb", journal, EventStream(VirtualClock()), VirtualClock(),
                         KmSettings())
    journal.start()
    async with db.engine.begin() as conn:  # the database refuses every new block row
        await conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON link_key_blocks "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
    put = asyncio.create_task(store.put_block("l1", 7, bytes(range(64))))
    async with asyncio.timeout(60):
        while journal.failures < 2:  # the first commit and a retry failed
            await asyncio.sleep(0.01)  # polls a counter; the deadline above bounds it
    assert not put.done()
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TRIGGER refuse")
    async with asyncio.timeout(60):
        await put  # returns once the journal's own retry committed the block
    await journal.close()
    await db.close()
    # durable: a fresh store over the same database holds the block
    db2 = await Database.open(sqlite_url(tmp_path / "km.db"))
    records = await KmStateStore(db2).load_blocks("na", "l1")
    assert [r.block_id for r in records] == [7]
    await db2.close()


async def test_keystore_reservation_that_uses_up_a_block_goes_on_to_the_next(
        db: Database) -> None:
    """A reservation that takes a block's last send bytes, when its receive half is already
    consumed, deletes the block while walking the blocks: the walk must still reach the next
    block (it skipped it, and ``take_send`` ran out of reserved bytes: an IndexError in a
    relay handler at 6-8x load)."""
    a, b, ja, jb, _ = pair(db, KmSettings(link_reserve_bytes=16))
    rng = random.Random(7)
    for i in range(2):
        m = rng.randbytes(64)  # send halves of 32 bytes
        await a.put_block("l1", i, m)
        await b.put_block("l1", i, m)
    # a consumes b's whole send half of block 0 (a's receive half)
    seg_b, pad_b, _ = b.take_send(32)
    assert {blk for blk, _, _ in seg_b} == {0}
    assert a.take_received(seg_b)[0] == pad_b
    seg, pad, _ = a.take_send(24)  # 16 reserved from block 0, 8 more from it
    assert {blk for blk, _, _ in seg} == {0}
    # the rest of block 0 (8 bytes) and 32 from block 1: block 0 is used up mid-walk
    seg, pad, _ = a.take_send(40)
    assert sum(n for _, _, n in seg) == len(pad) == 40
    assert [blk for blk, _, _ in seg] == [0, 1]
    assert a._recount() == a._totals()
    await ja.close()
    await jb.close()


async def test_keystore_reservation_leaves_a_scarce_store_half_its_key_after_a_crash(
        db: Database) -> None:
    """A reservation is forfeited by a crash; on a store holding little key it takes at
    most half of what is left beyond the frame, so a restarted KM still has key to send."""
    settings = KmSettings(link_reserve_bytes=4096)
    a, _, ja, jb, _ = pair(db, settings)
    await a.put_block("l1", 0, bytes(range(256)) * 8)  # 2,048 bytes; a sends with [0, 1024)
    a.peer_holds([0])
    _, _, gen = a.take_send(64)
    await ja.flushed(gen)
    reserved, held, _ = a._totals()
    assert reserved == 64 + (1024 - 64) // 2 - 64  # the frame's 64 + half the other 960
    assert held == 1024 - 64 - (1024 - 64) // 2
    await ja.close()
    await jb.close()
    a2, j2 = await reopened(db, settings)
    a2.peer_holds([0], inventory=True)
    assert a2.sendable_bytes == 480  # half the spare survived the "crash"
    seg, _, _ = a2.take_send(480)
    assert seg[0][1] == 64 + 480  # after everything the first store reserved: no reuse
    await j2.close()

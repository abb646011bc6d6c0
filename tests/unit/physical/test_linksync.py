"""Distributed links: peer rendezvous before every frame, resynchronization after a restart
of either end, block ids that are never reused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.deadlines import eventually

from keyplane.bus import Bus, MemoryBus, topics
from keyplane.bus.codec import Message
from keyplane.clock import Clock, RealClock, VirtualClock
from keyplane.config import PostProcessing, QuantumLink
from keyplane.errors import ClassicalChannelTimeout
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import LinkState, LinkTelemetry
from keyplane.physical import BusChannel, InProcessChannel, KeyBlock, LinkRunner, MemoryKeySink
from keyplane.physical.channel import PeerGone, PeerNotListening
from keyplane.physical.runner import BLOCK_ID_SHIFT, MAX_BLOCK_ID, block_id_base
from keyplane.physical.wire import Sync

FRAME_S = 0.02  # about 20k key bits per frame at 10 km: a 50k-bit block every 2.5 frames


def _link(**kw: object) -> QuantumLink:
    return QuantumLink(endpoints=("a", "b"), length_km=10.0,
                       postprocessing=PostProcessing(block_size_bits=50_000), **kw)


class TimedSink(MemoryKeySink):
    """A memory sink that also notes the clock time of each block."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[float] = []
        self.blocks: list[KeyBlock] = []

    async def put_block(self, link_id: str, block_id: int, material: bytes) -> None:
        self.times.append(self.clock.now())
        self.blocks.append(KeyBlock(link_id, block_id, material))
        await super().put_block(link_id, block_id, material)


def _pairs(blocks: list[KeyBlock]) -> list[tuple[int, bytes]]:
    return [(b.block_id, b.material) for b in blocks]


def _alice(link: QuantumLink, clock: Clock, sink: MemoryKeySink, bus: Bus,
           **kw: object) -> LinkRunner:
    return LinkRunner(link, clock=clock, seed=31, alice_sink=sink, bus=bus,
                      local_ends=("alice",), frame_duration_s=FRAME_S, **kw)  # type: ignore[arg-type]


def _bob(link: QuantumLink, clock: Clock, sink: MemoryKeySink, bus: Bus) -> LinkRunner:
    return LinkRunner(link, clock=clock, seed=31, bob_sink=sink, bus=bus, local_ends=("bob",),
                      frame_duration_s=FRAME_S)


async def _until(cond: Callable[[], bool]) -> None:
    """Poll ``cond`` (real time; the bound only keeps a broken run from hanging)."""
    await eventually(cond, "the link's blocks", interval_s=0.01)


# ---------------------------------------------------------------- block ids


@given(t1=st.floats(0.0, 8e9), gap_ms=st.integers(2, 10**6), frac=st.floats(0.0, 1.0))
def test_block_id_base_after_a_restart_exceeds_every_id_used_before(
        t1: float, gap_ms: int, frac: float) -> None:
    before = block_id_base(t1)
    # whatever an end delivered in the gap (under 2^20 blocks per ms, at least one block)
    # stays below the base of its next start
    delivered = max(1, int(frac * ((gap_ms - 1) << BLOCK_ID_SHIFT)))
    after = block_id_base(t1 + gap_ms / 1000)
    assert before + delivered - 1 < after <= MAX_BLOCK_ID


def test_block_id_base_fits_a_signed_64_bit_integer_for_centuries() -> None:
    year_2200 = 7_258_118_400.0
    assert block_id_base(year_2200) < 2**63
    with pytest.raises(ValueError):
        block_id_base(1e13)
    with pytest.raises(ValueError):
        LinkRunner(_link(), clock=VirtualClock(), alice_sink=MemoryKeySink(),
                   bob_sink=MemoryKeySink(), first_block_id=2**63)


async def test_link_first_block_id_option_sets_the_first_block(clock: VirtualClock) -> None:
    sa, sb = MemoryKeySink(), MemoryKeySink()
    async with LinkRunner(_link(), clock=clock, seed=3, alice_sink=sa, bob_sink=sb,
                          frame_duration_s=FRAME_S, first_block_id=1234):
        await clock.advance(3 * FRAME_S)
    a, b = sa.drain(), sb.drain()
    assert _pairs(a) == _pairs(b) and a[0].block_id == 1234


async def test_link_default_block_ids_start_at_the_wall_clock_base(clock: VirtualClock) -> None:
    sa, sb = MemoryKeySink(), MemoryKeySink()
    base = block_id_base(clock.wall())
    async with LinkRunner(_link(), clock=clock, seed=4, alice_sink=sa, bob_sink=sb,
                          frame_duration_s=FRAME_S):
        await clock.advance(3 * FRAME_S)
    ids = [b.block_id for b in sa.drain()]
    assert ids and ids[0] == base and ids == sorted(set(ids))


# ---------------------------------------------------------------- the channel


async def test_wait_peer_backs_off_on_the_clock_until_the_peer_serves(
        clock: VirtualClock) -> None:
    bus = MemoryBus()
    alice = await BusChannel.open(bus, "a-b", "alice")
    await alice.serve_peer("alice-1")
    waiter = asyncio.ensure_future(alice.wait_peer(60.0, clock=clock))
    await clock.advance(3.0)
    assert not waiter.done()  # nobody serves yet: pings back off on the clock
    bob = await BusChannel.open(bus, "a-b", "bob")
    await bob.serve_peer("bob-1")
    await clock.advance(0.5)  # at most one back-off step
    assert waiter.done() and waiter.result() == "bob-1"
    await bob.close()
    gone = asyncio.ensure_future(alice.wait_peer(1.0, clock=clock))
    await clock.advance(1.0)
    with pytest.raises(ClassicalChannelTimeout):
        await gone
    await alice.close()
    await bus.close()


async def test_request_peer_to_an_end_that_does_not_serve_raises_not_listening(
        bus: Bus) -> None:
    alice = await BusChannel.open(bus, "a-b", "alice")
    bob = await BusChannel.open(bus, "a-b", "bob")  # subscribed, but not serving yet
    with pytest.raises(PeerNotListening):
        await alice.ping()
    await bob.serve_peer("bob-1")
    assert await alice.ping() == "bob-1"
    await alice.close()
    await bob.close()


async def test_in_process_channel_rendezvous_is_immediate(clock: VirtualClock) -> None:
    a, b = InProcessChannel.pair("a-b", roundtrip=True)
    await b.serve_peer("bob-1")
    assert await a.wait_peer(clock=clock) == "bob-1"
    assert clock.now() == 0.0


@pytest.mark.parametrize("restart", [False, True], ids=["gone", "restarted"])
async def test_receive_from_a_synchronized_peer_that_left_fails_fast(
        bus: Bus, restart: bool) -> None:
    alice = await BusChannel.open(bus, "a-b", "alice", keepalive_s=0.05)
    bob = await BusChannel.open(bus, "a-b", "bob")
    await alice.serve_peer("alice-1")
    await bob.serve_peer("bob-1")
    alice.peer_nonce = await alice.ping()
    await bob.close()
    if restart:
        bob = await BusChannel.open(bus, "a-b", "bob")
        await bob.serve_peer("bob-2")
    # a dead peer is noticed at the first keep-alive, not after the whole timeout
    with pytest.raises(PeerGone):
        await alice.receive(timeout_s=20.0)
    await alice.close()
    await bob.close()


# ---------------------------------------------------------------- start-up race


async def test_bob_started_after_alice_gets_the_first_frame_promptly(
        clock: VirtualClock) -> None:
    bus = MemoryBus()
    link = _link()
    sa, sb = TimedSink(clock), TimedSink(clock)
    alice = _alice(link, clock, sa, bus)
    await alice.start()
    await clock.advance(2.0)  # Alice alone: she waits, sends nothing
    assert alice.stats.frames == 0 and alice.stats.channel_errors == 0
    async with _bob(link, clock, sb, bus):
        bob_started = clock.now()
        await clock.run_for(0.7, step_s=FRAME_S)
        await alice.close()
    assert alice.stats.channel_errors == 0  # no frame lost into the void
    assert _pairs(sa.blocks) == _pairs(sb.blocks) and len(sb.blocks) >= 5
    # the first block comes within one back-off step (0.5 s) plus a frame of Bob's start
    assert sb.times[0] - bob_started <= 0.5 + 2 * FRAME_S
    await bus.close()


async def test_alice_reports_the_link_down_while_bob_is_unreachable(
        clock: VirtualClock) -> None:
    bus = MemoryBus()
    events = MemorySink()
    telemetry: list[LinkTelemetry] = []

    async def on_telemetry(topic: str, msg: Message) -> None:
        assert isinstance(msg, LinkTelemetry)
        telemetry.append(msg)

    await bus.subscribe(topics.link_telemetry("a-b"), on_telemetry)
    link = _link()
    sa, sb = MemoryKeySink(), MemoryKeySink()
    alice = _alice(link, clock, sa, bus, events=EventStream(clock, [events]),
                   rendezvous_timeout_s=2.0)
    async with alice:
        await clock.advance(1.0)
        assert alice.state is LinkState.up  # within the grace of a starting peer
        await clock.advance(1.5)
        assert alice.state is LinkState.down
        assert telemetry and telemetry[-1].state is LinkState.down
        async with _bob(link, clock, sb, bus):
            await clock.run_for(0.6, step_s=FRAME_S)
            assert alice.state is LinkState.up
            assert telemetry[-1].state is LinkState.up
    changes = [e.data["change"] for e in events.of_type(EventType.link_state)]
    assert changes == ["peer_unreachable", "peer_reachable"]
    assert sa.delivered_blocks > 0 and alice.stats.channel_errors == 0
    await bus.close()


# ---------------------------------------------------------------- restarts (virtual clock)


async def test_bob_restarted_mid_stream_resyncs_with_fresh_ids(clock: VirtualClock) -> None:
    bus = MemoryBus()
    link = _link()
    events = MemorySink()
    sa, sb1, sb2 = MemoryKeySink(), MemoryKeySink(), MemoryKeySink()
    alice = _alice(link, clock, sa, bus, events=EventStream(clock, [events]))
    await alice.start()
    async with _bob(link, clock, sb1, bus):
        await clock.run_for(10 * FRAME_S, step_s=FRAME_S)
    await clock.run_for(0.3, step_s=FRAME_S)  # Bob's process is gone for a while
    async with _bob(link, clock, sb2, bus):
        await clock.run_for(0.6, step_s=FRAME_S)
    await alice.close()
    first, second, all_a = sb1.drain(), sb2.drain(), sa.drain()
    assert len(first) >= 3 and len(second) >= 3
    # Alice's stream is exactly Bob's before and after: nothing one-sided, nothing mixed
    assert _pairs(all_a) == _pairs(first) + _pairs(second)
    ids = [b.block_id for b in all_a]
    assert ids == sorted(set(ids))
    resyncs = [e.data for e in events.of_type(EventType.link_state)
               if e.data["change"] == "resync"]
    assert [r["reason"] for r in resyncs] == ["peer_restarted"]
    await bus.close()


async def test_alice_restarted_mid_stream_never_reuses_a_block_id(clock: VirtualClock) -> None:
    bus = MemoryBus()
    link = _link()
    sa1, sa2, sb = MemoryKeySink(), MemoryKeySink(), MemoryKeySink()
    async with _bob(link, clock, sb, bus):
        async with _alice(link, clock, sa1, bus):
            await clock.run_for(10 * FRAME_S, step_s=FRAME_S)
        await clock.run_for(0.3, step_s=FRAME_S)  # Alice's process is gone for a while
        async with _alice(link, clock, sa2, bus):  # fresh: empty buffer, new base
            await clock.run_for(0.6, step_s=FRAME_S)
    first, second, all_b = sa1.drain(), sa2.drain(), sb.drain()
    assert len(first) >= 3 and len(second) >= 3
    assert _pairs(all_b) == _pairs(first) + _pairs(second)
    assert second[0].block_id > first[-1].block_id
    ids = [b.block_id for b in all_b]
    assert ids == sorted(set(ids))
    await bus.close()


async def test_sync_discards_partial_buffers_at_both_ends(clock: VirtualClock) -> None:
    """A large block spans many frames: a restart mid-block must not splice old sifted bits
    of one end to new bits of the other (the blocks would then fail verification)."""
    bus = MemoryBus()
    link = QuantumLink(endpoints=("a", "b"), length_km=10.0,
                       postprocessing=PostProcessing(block_size_bits=200_000))
    sa, sb1, sb2 = MemoryKeySink(), MemoryKeySink(), MemoryKeySink()
    frame = 0.002  # about a quarter of a block per frame
    alice = LinkRunner(link, clock=clock, seed=33, alice_sink=sa, bus=bus,
                       local_ends=("alice",), frame_duration_s=frame)
    await alice.start()
    bob = LinkRunner(link, clock=clock, seed=33, bob_sink=sb1, bus=bus, local_ends=("bob",),
                     frame_duration_s=frame)
    async with bob:
        await clock.run_for(6 * frame, step_s=frame)  # one block and a partial one
        assert bob._bob is not None and bob._bob.buffer.size > 0
    bob2 = LinkRunner(link, clock=clock, seed=34, bob_sink=sb2, bus=bus,
                      local_ends=("bob",), frame_duration_s=frame)
    async with bob2:
        await clock.run_for(20 * frame, step_s=frame)
    await alice.close()
    assert alice.stats.discarded_blocks == 0
    assert _pairs(sa.drain()) == _pairs(sb1.drain()) + _pairs(sb2.drain())
    await bus.close()


# ---------------------------------------------------------------- over a real bus


async def test_bob_after_alice_over_the_bus_loses_no_frame(
        bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = RealClock()
    link = _link()
    sa, sb = TimedSink(clock), TimedSink(clock)
    pings = 0
    ping = BusChannel.ping

    async def counted_ping(self: BusChannel, *args: float) -> str:
        nonlocal pings
        pings += 1
        return await ping(self, *args)

    monkeypatch.setattr(BusChannel, "ping", counted_ping)
    async with _alice(link, clock, sa, bus) as alice:
        # Alice asked for Bob several times, unanswered: she sent no frame meanwhile
        await eventually(lambda: pings >= 3, "Alice's rendezvous pings")
        assert alice.stats.frames == 0
        async with _bob(link, clock, sb, bus):
            await _until(lambda: len(sa.blocks) >= 3 and len(sb.blocks) >= 3)
        assert alice.stats.channel_errors == 0
    n = min(len(sa.blocks), len(sb.blocks))
    assert _pairs(sa.blocks[:n]) == _pairs(sb.blocks[:n])


async def test_restarts_of_either_end_over_the_bus_keep_both_streams_identical(
        bus: Bus) -> None:
    clock = RealClock()
    link = _link()
    sa1, sa2 = TimedSink(clock), TimedSink(clock)
    sb1, sb2 = TimedSink(clock), TimedSink(clock)
    bob = _bob(link, clock, sb1, bus)
    await bob.start()
    alice = _alice(link, clock, sa1, bus)
    await alice.start()
    await _until(lambda: len(sb1.blocks) >= 2)
    await bob.close()  # Bob's process dies and comes back
    bob = _bob(link, clock, sb2, bus)
    await bob.start()
    await _until(lambda: len(sb2.blocks) >= 2
                 and sa1.blocks[-1].block_id >= sb2.blocks[1].block_id)
    await alice.close()  # now Alice's
    alice = _alice(link, clock, sa2, bus)
    await alice.start()
    await _until(lambda: len(sa2.blocks) >= 2)
    await alice.close()
    await bob.close()
    a = {b.block_id: b.material for b in sa1.blocks + sa2.blocks}
    b = {k.block_id: k.material for k in sb1.blocks + sb2.blocks}
    assert len(a) == len(sa1.blocks) + len(sa2.blocks)  # no id ever reused
    assert len(b) == len(sb1.blocks) + len(sb2.blocks)
    # ids in either end's stream only grow
    for stream in (sa1.blocks + sa2.blocks, sb1.blocks + sb2.blocks):
        ids = [k.block_id for k in stream]
        assert ids == sorted(ids)
    # every id both ends hold has identical material; a one-sided block can only be the
    # one in flight when an end stopped (Bob's verdict sent, the end gone before Alice
    # read it, or the reverse): at most one per stop
    shared = a.keys() & b.keys()
    assert all(a[i] == b[i] for i in shared)
    assert len(shared) >= 2 + 2 + 2 - 1  # each phase's two blocks, less one in flight
    assert len(a.keys() ^ b.keys()) <= 3
    assert sb2.blocks[0].block_id > sb1.blocks[-1].block_id
    assert sa2.blocks[0].block_id > sa1.blocks[-1].block_id
    assert {k.block_id for k in sa2.blocks} <= b.keys()


def test_sync_message_keeps_block_ids_within_signed_64_bits() -> None:
    with pytest.raises(ValueError):
        Sync(link_id="a-b", boot_nonce="n", next_frame_id=0, next_block_id=2**63)


def test_restarted_link_never_replays_the_key_material_of_its_previous_start() -> None:
    """A module restarted with the same seed must not distil the same key again under new
    block ids (the run seed is salted with the start's first block id)."""
    from keyplane.clock import VirtualClock
    from keyplane.config import PostProcessing, QuantumLink
    from keyplane.physical import LinkRunner, MemoryKeySink

    link = QuantumLink(endpoints=("a", "b"), length_km=5.0,
                       postprocessing=PostProcessing(block_size_bits=50_000))

    async def one_start(first_block_id: int) -> list[bytes]:
        clock = VirtualClock()
        sa, sb = MemoryKeySink(), MemoryKeySink()
        async with LinkRunner(link, clock=clock, seed=7, alice_sink=sa, bob_sink=sb,
                              first_block_id=first_block_id) as r:
            for _ in range(16):
                await clock.advance(r.frame_duration_s)
                if min(sa.qsize(), sb.qsize()) >= 2:
                    break
        a, b = sa.drain(), sb.drain()
        assert [x.material for x in a] == [x.material for x in b]
        return [x.material for x in a]

    before = asyncio.run(one_start(1 << 20))
    after = asyncio.run(one_start(2 << 20))
    assert before and after
    assert not set(before) & set(after)

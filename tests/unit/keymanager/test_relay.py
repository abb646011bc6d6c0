"""Key relay over 1, 2 and 4 hops: identical keys at both ends, each link key byte used once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.km_net import CALLER_A, CALLER_B, KmNet, line_topology, open_pair, start_net

from keyplane.api.errors import map_exception
from keyplane.api.etsi004.status import Etsi004Status
from keyplane.bus import Bus, MemoryBus, Message
from keyplane.clock import RealClock, VirtualClock
from keyplane.errors import (
    InsufficientKeyMaterial,
    KeyplaneError,
    KeyWaitExpired,
    RelayError,
    RelayTimeout,
)
from keyplane.events import EventType
from keyplane.keymanager import KmSettings, send_half
from keyplane.keymanager.heldkey import HeldKey
from keyplane.keymanager.keyids import new_key_ids
from keyplane.keymanager.wire import ConfirmFrame, DemandFrame, KeyFrame, LinkBlocksHeld
from keyplane.messages import Qos
from keyplane.store import Database, sqlite_url
from keyplane.store.kmstate import KmStateStore


class FrameLog:
    """Records every relay frame on the bus (a plain subscriber)."""

    def __init__(self) -> None:
        self.frames: list[KeyFrame | ConfirmFrame | DemandFrame] = []
        self.topics: list[str] = []

    async def __call__(self, topic: str, msg: Message) -> None:
        if isinstance(msg, LinkBlocksHeld):  # block ids only: not a relay frame
            return
        assert isinstance(msg, KeyFrame | ConfirmFrame | DemandFrame)
        self.frames.append(msg)
        self.topics.append(topic)


@contextlib.asynccontextmanager
async def logged_line(db: Database, n_nodes: int, seed: int
                      ) -> AsyncIterator[tuple[KmNet, FrameLog]]:
    """A line of ``n_nodes`` KMs on a memory bus, every relay frame on it logged."""
    bus = MemoryBus()
    log = FrameLog()
    await bus.subscribe("keyplane.km.*.relay", log)
    net = await start_net(line_topology(n_nodes), bus, db, RealClock(), seed=seed)
    try:
        yield net, log
    finally:
        await net.close()
        await bus.close()


async def check_link_keys_used_once(net: KmNet, log: FrameLog) -> None:
    """Every named byte lies in its sender's half, no byte is named twice, and each
    receiver consumed (and zeroed in the store) exactly what was named to it."""
    for km in net.kms.values():
        for store in km.link_stores.values():
            store.write_spent()  # else within link_block_rewrite_s of their last use
        await km.journal.sync()
    named: dict[tuple[str, str, int], list[tuple[int, int]]] = {}
    for frame, topic in zip(log.frames, log.topics, strict=True):
        receiver = topic.split(".")[2]
        for block, off, n in frame.segments:
            size = len(net.fed[frame.link_id][block])
            lo, hi = send_half(size, frame.sender, receiver)
            assert lo <= off and off + n <= hi, "segment outside the sender's half"
            named.setdefault((frame.link_id, receiver, block), []).append((off, off + n))
    for ranges in named.values():
        ranges.sort()
        for (_, e1), (s2, _) in itertools.pairwise(ranges):
            assert e1 <= s2, "a link key byte was used twice"
    store = KmStateStore(net.db)
    rows = [(link.link_id, node, r) for link in net.topology.links for node in link.endpoints
            for r in await store.load_blocks(node, link.link_id)]
    for link_id, node, row in rows:
        got = [tuple(r) for r in row.rx_consumed]
        want = _merge(named.get((link_id, node, row.block_id), []))
        assert got == want
        for lo, hi in got:
            assert row.material[lo:hi] == bytes(hi - lo), "consumed bytes not destroyed"


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(ranges):
        if out and out[-1][1] >= s:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


async def relay_scenario(db: Database, n_nodes: int, chunk: int, plan: list[tuple[str, int]],
                         seed: int) -> None:
    bus = MemoryBus(seed=seed)
    log = FrameLog()
    await bus.subscribe("keyplane.km.*.relay", log)
    net = await start_net(line_topology(n_nodes), bus, db, RealClock(), seed=seed,
                          blocks=3, block_bytes=8192, key_chunk_size=chunk)
    last = f"km{n_nodes - 1}"
    try:
        sid = await open_pair(net)
        a, b = net.kms["km0"], net.kms[last]
        got_a: dict[int, tuple[bytes, str]] = {}
        got_b: dict[int, tuple[bytes, str]] = {}
        next_index = 0
        enc: list[tuple[str, bytes]] = []
        for op, n in plan:
            if op == "source-first":
                ra = await a.get_key(CALLER_A, sid, None)
                rb = await b.get_key(CALLER_B, sid, ra.index)
            elif op == "destination-first":
                rb = await b.get_key(CALLER_B, sid, next_index)
                ra = await a.get_key(CALLER_A, sid, next_index)
            else:
                keys = await a.enc_keys(CALLER_A, "sc", "sd", n, 8 * chunk)
                back = await b.dec_keys(CALLER_B, "sd", "sc", [k.key_id for k in keys])
                assert [(k.key_id, k.key) for k in keys] == [(k.key_id, k.key) for k in back]
                enc += [(k.key_id, k.key) for k in keys]
                continue
            assert ra.index == rb.index == next_index
            got_a[ra.index] = (ra.key, ra.metadata["key_ID"])
            got_b[rb.index] = (rb.key, rb.metadata["key_ID"])
            next_index += 1
        assert got_a == got_b
        assert all(len(k) == chunk for k, _ in got_a.values())
        assert len({k for k, _ in got_a.values()} | {k for _, k in enc}) == len(got_a) + len(enc)
        await check_link_keys_used_once(net, log)
        relayed = net.sink.of_type(EventType.key_relayed)
        assert relayed and all("key" not in e.data for e in relayed)
    finally:
        await net.close()
        await bus.close()


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(hops=st.sampled_from([1, 2, 4]), chunk=st.sampled_from([16, 32, 64]),
       plan=st.lists(st.tuples(st.sampled_from(["source-first", "destination-first", "enc"]),
                               st.integers(1, 4)), min_size=1, max_size=5),
       seed=st.integers(0, 2**16))
def test_relay_over_hops_gives_identical_keys_and_uses_each_link_key_once(
        hops: int, chunk: int, plan: list[tuple[str, int]], seed: int) -> None:
    async def run() -> None:
        with tempfile.TemporaryDirectory() as d:
            db = await Database.open(sqlite_url(Path(d) / "km.db"))
            try:
                await relay_scenario(db, hops + 1, chunk, plan, seed)
            finally:
                await db.close()
    asyncio.run(run())


@pytest.mark.parametrize("hops", [1, 2, 4])
async def test_relay_on_both_buses_delivers_same_key_both_ends(bus: Bus, km_db: Database,
                                                               hops: int) -> None:
    net = await start_net(line_topology(hops + 1), bus, km_db, RealClock(), seed=100 + hops)
    try:
        sid = await open_pair(net)
        last = net.kms[f"km{hops}"]
        for i in range(3):
            ra = await net.kms["km0"].get_key(CALLER_A, sid, None)
            rb = await last.get_key(CALLER_B, sid, None)
            assert (ra.index, ra.key, ra.metadata) == (i, rb.key, rb.metadata)
        keys = await net.kms["km0"].enc_keys(CALLER_A, "sc", "sd", 5, 256)
        back = await last.dec_keys(CALLER_B, "sd", "sc", [k.key_id for k in keys])
        assert [k.key for k in keys] == [k.key for k in back]
    finally:
        await net.close()


async def test_relay_adjacent_endpoints_use_the_link_key_directly(km_db: Database) -> None:
    async with logged_line(km_db, 2, seed=7) as (net, log):
        keys = await net.kms["km0"].enc_keys(CALLER_A, "sc", "sd", 2, 128)
        (frame,) = [f for f in log.frames if isinstance(f, KeyFrame)]
        assert frame.direct and frame.ciphertext == ""
        block, off, n = frame.segments[0]
        link_bytes = net.fed["km0-km1"][block][off:off + n]
        assert link_bytes[32:64] == keys[0].key + keys[1].key


async def test_relay_without_link_key_on_a_hop_delivers_to_neither_end(km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(3), bus, km_db, RealClock(), seed=9, blocks=1,
                          block_bytes=1024,
                          settings=KmSettings(link_reserve_bytes=0, relay_attempts=1,
                                              forward_key_wait_s=0.01))
    try:
        sid = await open_pair(net, qos=Qos(timeout_ms=1000))
        # drain the km1 -> km2 direction so the intermediate cannot re-pad
        store = net.kms["km1"].link_store("km2")
        store.take_send(store.sendable_bytes)
        # the intermediate waits for key up to forward_key_wait_s, then refuses naming its
        # cause: the source raises the same error, the timeout status on the wire
        with pytest.raises(KeyWaitExpired, match="hop km1"):
            await net.kms["km0"].get_key(CALLER_A, sid, 0)
        assert net.kms["km2"].vault.get(sid, 0) is None
        pending = net.kms["km0"].vault.get(sid, 0)
        assert pending is not None and pending.state == "pending"
        with pytest.raises(RelayError):
            await net.kms["km2"].get_key(CALLER_B, sid, 0)
    finally:
        await net.close()
        await bus.close()


async def test_relay_source_without_link_key_waits_its_timeout_then_answers_timeout(
        km_db: Database) -> None:
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(line_topology(2), bus, km_db, clock, seed=3, blocks=1,
                          block_bytes=128, settings=KmSettings(link_reserve_bytes=0))
    try:
        request = asyncio.create_task(net.kms["km0"].enc_keys(CALLER_A, "sc", "sd", 4, 256))
        await net.kms["km0"].links_acknowledged()
        shares = net.kms["km0"].core.shares["km1"]
        while not shares.waiting:  # the batch waits for key instead of failing at once
            await clock.advance(0.001)
            assert not request.done()
        await clock.advance(KmSettings().etsi014_qos_timeout_ms / 1000)
        with pytest.raises((KeyWaitExpired, RelayTimeout)) as info:
            await request
        mapping = map_exception(info.value)
        assert mapping is not None and mapping.etsi004 is Etsi004Status.TIMEOUT_ERROR
        assert mapping.http_status == 503
        assert not shares.waiting
        assert net.kms["km1"].held_for("sd", "sc") == 0
    finally:
        await net.close()
        await bus.close()


async def test_relay_forged_frame_is_dropped_and_its_link_key_burnt(km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(2), bus, km_db, RealClock(), seed=11)
    try:
        sid = await open_pair(net)
        km1 = net.kms["km1"]
        forged = KeyFrame(session_id=sid, epoch=0, sender="km0", link_id="km0-km1",
                          segments=[(0, 0, 64)], batch_id="x", key_ids=["k"], indexes=[5],
                          key_size_bytes=32, direct=True, tag="00" * 32)
        await km1.relay.handle("t", forged)
        assert km1.relay.frames_dropped == 1
        assert km1.vault.get(sid, 5) is None
        # replaying the same segment is refused too (already consumed)
        await km1.relay.handle("t", forged)
        assert km1.relay.frames_dropped == 2
    finally:
        await net.close()
        await bus.close()


async def test_relay_random_blocks_are_identical_at_both_ends(km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(2), bus, km_db, RealClock(), seed=5, blocks=2)
    try:
        await net.feed(random.Random(99), 1, 2048, first_block=10)
        a = net.kms["km0"].link_store("km1")
        b = net.kms["km1"].link_store("km0")
        assert a.stored_bits == b.stored_bits == 8 * (2 * 4096 + 2048)
    finally:
        await net.close()
        await bus.close()


class _ReconnectingBus(MemoryBus):
    """A MemoryBus whose connection can be down, as a NatsBus that is reconnecting tells it
    (``connected``, ``wait_connected``); its messages still flow (the outage is the flag)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = asyncio.Event()
        self.up.set()

    @property
    def connected(self) -> bool:
        return self.up.is_set()

    async def wait_connected(self) -> None:
        await self.up.wait()


async def test_relay_spends_no_link_key_while_the_bus_is_down(km_db: Database) -> None:
    # a frame sent into an outage waits in the client's buffer and its attempt times out,
    # the next spending fresh key: the source waits for the bus instead, within its deadline
    bus = _ReconnectingBus()
    log = FrameLog()
    await bus.subscribe("keyplane.km.*.relay", log)
    clock = VirtualClock()
    net = await start_net(line_topology(2), bus, km_db, clock, seed=8,
                          settings=KmSettings(link_reserve_bytes=0))
    try:
        km0 = net.kms["km0"]
        await km0.enc_keys(CALLER_A, "sc", "sd", 1, 256)  # the pair's session
        store = km0.link_store("km1")
        held, frames = store.sendable_bytes, len(log.frames)
        bus.up.clear()
        timeout_s = KmSettings().etsi014_qos_timeout_ms / 1000
        late = asyncio.create_task(km0.enc_keys(CALLER_A, "sc", "sd", 4, 256))
        back = asyncio.create_task(km0.enc_keys(CALLER_A, "sc", "sd", 4, 256))
        await clock.advance(timeout_s / 2)
        assert not late.done() and not back.done()
        assert store.sendable_bytes == held and len(log.frames) == frames
        bus.up.set()  # the bus is back within the requests' deadline: both relayed
        until = clock.now() + timeout_s
        while not (late.done() and back.done()) and clock.now() < until:
            await clock.advance(0.01)
        assert len(late.result()) == len(back.result()) == 4
        sent = [f for f in log.frames[frames:] if isinstance(f, KeyFrame)]
        assert sum(len(f.key_ids) for f in sent) == 8  # one attempt per key: nothing wasted
        assert store.sendable_bytes == held - sum(32 + 32 * len(f.key_ids) for f in sent)
        bus.up.clear()  # down past the deadline: a 503, and no key spent
        held = store.sendable_bytes
        lost = asyncio.create_task(km0.enc_keys(CALLER_A, "sc", "sd", 4, 256))
        await clock.advance(2 * timeout_s)
        with pytest.raises(KeyplaneError) as info:  # the mapping is asserted
            await lost
        mapping = map_exception(info.value)
        assert mapping is not None and mapping.http_status == 503
        assert store.sendable_bytes == held
    finally:
        bus.up.set()
        await net.close()
        await bus.close()


async def _request_with_a_km_gone(km_db: Database, gone: str, owner: str, peer: str
                                  ) -> tuple[int, int, list[KeyFrame]]:
    """On a 3-KM line, relay one batch, close ``gone``, then ask km0 for 4 more keys: the
    request must end in a 503. Returns ``owner``'s store towards ``peer``: sendable bytes
    before and after, and the key frames sent meanwhile."""
    bus = MemoryBus()
    log = FrameLog()
    await bus.subscribe("keyplane.km.*.relay", log)
    clock = VirtualClock()
    settings = KmSettings(link_reserve_bytes=0, relay_attempts=3)
    net = await start_net(line_topology(3), bus, km_db, clock, seed=9, settings=settings)
    try:
        km0 = net.kms["km0"]
        await km0.enc_keys(CALLER_A, "sc", "sd", 1, 256)  # the pair's session, relayed
        store = net.kms[owner].link_store(peer)
        held, frames = store.sendable_bytes, len(log.frames)
        await net.kms[gone].close()  # gone from the bus
        timeout_s = KmSettings().etsi014_qos_timeout_ms / 1000
        lost = asyncio.create_task(km0.enc_keys(CALLER_A, "sc", "sd", 4, 256))
        until = clock.now() + 2 * timeout_s
        while not lost.done() and clock.now() < until:
            await clock.advance(0.05)
        with pytest.raises(KeyplaneError) as info:
            await lost
        mapping = map_exception(info.value)
        assert mapping is not None and mapping.http_status == 503
        sent = [f for f in log.frames[frames:] if isinstance(f, KeyFrame)]
        return held, store.sendable_bytes, sent
    finally:
        await net.close()
        await bus.close()


async def test_relay_spends_no_link_key_on_a_next_hop_that_does_not_answer(
        km_db: Database) -> None:
    # a source used to spend fresh key on every attempt into a killed intermediate (three
    # per batch): its store was empty when the intermediate came back. After one
    # unconfirmed frame it asks the hop (a probe, no key) before spending again.
    held, left, sent = await _request_with_a_km_gone(km_db, "km1", "km0", "km1")
    # the first attempt only: the others found the hop silent
    assert len([f for f in sent if f.sender == "km0"]) == 1
    assert left == held - (32 + 4 * 32)


async def test_intermediate_spends_no_link_key_into_a_destination_that_does_not_answer(
        km_db: Database) -> None:
    # the intermediate forwards without waiting for a confirmation, so only a retry tells it
    # its forward was lost: from then on it asks the next hop (a probe) before spending key
    # on it, and refuses the batch to the source when it gets no answer
    held, left, sent = await _request_with_a_km_gone(km_db, "km2", "km1", "km2")
    assert len([f for f in sent if f.sender == "km0"]) >= 2  # the source retried ...
    # ... but only the first forward spent km1's key
    assert len([f for f in sent if f.sender == "km1"]) == 1
    assert left == held - (32 + 4 * 32)


def _made_keys(sid: str, indexes: list[int], chunk: int, material: list[bytes | None]
               ) -> list[HeldKey]:
    """Pending keys as the source's production makes them (None: for a direct frame)."""
    ids = new_key_ids(time.time(), len(indexes))
    return [HeldKey(kid, sid, i, 8 * chunk, m, "pending", "sa", "sb", 0.0, [])
            for kid, i, m in zip(ids, indexes, material, strict=True)]


async def test_keys_made_for_a_direct_frame_travel_encrypted_once_the_next_hop_is_not_their_destination(
        km_db: Database) -> None:
    """A session rerouted between making its keys (the destination was the next hop) and
    sending them: the frame goes to an intermediate, which drops a direct frame; so the keys
    get their own bytes, are held, and are relayed like any key (the demo's eavesdropper
    reroute under load lost an attempt and its confirmation wait to this)."""
    async with logged_line(km_db, 3, seed=11) as (net, log):
        sid = await open_pair(net)
        src, dst = net.kms["km0"], net.kms["km2"]
        keys = _made_keys(sid, [0, 1], 32, [None, None])
        # as if made while km2 was the next hop: it is km1 now
        await src.relay.send_batch(sid, keys, 32, direct_to="km2")
        sent = [f for f in log.frames if isinstance(f, KeyFrame) and f.sender == "km0"]
        assert sent and all(not f.direct and f.ciphertext for f in sent)
        for k in keys:
            assert k.material is not None and len(k.material) == 32
            held_src, held_dst = src.vault.get(sid, k.index), dst.vault.get(sid, k.index)
            assert held_src is not None and held_src.material == k.material  # held at the source
            assert held_dst is not None and held_dst.material == k.material
        assert keys[0].material != keys[1].material


async def test_a_resent_key_keeps_its_bytes_beside_keys_made_for_a_direct_frame(
        km_db: Database) -> None:
    """A batch of a resent key (bytes held at the source, perhaps at the destination too)
    and new keys made for a direct frame: a direct frame would give every key the link's
    bytes, changing the resent one's; so the batch travels encrypted, the resent key as it
    was, the new ones with fresh bytes."""
    async with logged_line(km_db, 2, seed=12) as (net, log):
        sid = await open_pair(net)
        src, dst = net.kms["km0"], net.kms["km1"]
        old = bytes(range(32))
        [resent] = _made_keys(sid, [0], 32, [old])
        await src.journal.flushed(src.hold_keys([resent]))
        fresh = _made_keys(sid, [1], 32, [None])
        await src.relay.send_batch(sid, [resent, *fresh], 32, direct_to="km1")
        sent = [f for f in log.frames if isinstance(f, KeyFrame)]
        assert sent and all(not f.direct for f in sent)
        held = dst.vault.get(sid, 0)
        assert resent.material == old and held is not None and held.material == old
        got = dst.vault.get(sid, 1)
        assert got is not None and got.material == fresh[0].material is not None
        assert fresh[0].material != old


async def test_keys_given_fresh_bytes_are_durable_before_the_attempt_spends_link_key(
        km_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay holds them and waits for their commit before it takes the hop's key: an
    attempt that fails after that (here the link key wait, as a reroute's withdraw ends it)
    leaves them held and durable, and the next attempt, which finds them with bytes, sends
    them without waiting for their commit again (a PQC hop's key names no commit)."""
    async with logged_line(km_db, 3, seed=13) as (net, _log):
        sid = await open_pair(net)
        src = net.kms["km0"]
        held: list[int] = []
        hold = src.hold_keys
        monkeypatch.setattr(src, "hold_keys", lambda keys: held.append(hold(keys)) or held[-1])
        take = src.relay.hop_keys.take
        at_take: list[int] = []

        async def failing_once(*a: Any, **k: Any) -> Any:
            at_take.append(src.journal._done)  # what is committed when link key is taken
            if len(at_take) == 1:
                raise InsufficientKeyMaterial("rerouted off the link (test)")
            return await take(*a, **k)

        monkeypatch.setattr(src.relay.hop_keys, "take", failing_once)
        keys = _made_keys(sid, [0], 32, [None])
        await src.relay.send_batch(sid, keys, 32, direct_to="km2")
        assert len(held) == 1 and len(at_take) >= 2
        assert at_take[0] >= held[0], "the held keys were not durable when link key was taken"
        got = net.kms["km2"].vault.get(sid, 0)
        assert got is not None and got.material == keys[0].material

"""The ETSI 014 key stock against real KMs: a refill never competes with requests for link
key, never drains a link below its low-water mark, leaves nothing behind a session that ended,
and a restarted master hands out its old stock first (each test failed on the first version
of the stock, wave 11 review)."""

from __future__ import annotations

import asyncio

import pytest
from tests.support.deadlines import DEADLINE_S, eventually
from tests.support.km_net import CALLER_A, KmNet, line_topology, start_net

from keyplane.bus.memory import MemoryBus
from keyplane.clock import Clock, RealClock, VirtualClock
from keyplane.events import EventType
from keyplane.keymanager import KmSettings, stock
from keyplane.keymanager.core import Stream
from keyplane.keymanager.interface import DeliveredKey
from keyplane.store import Database

CAP, MIN = 8, 4


async def _net(km_db: Database, blocks: int = 8, block_bytes: int = 4096,
               clock: Clock | None = None, **fields: object) -> KmNet:
    base: dict[str, object] = {"link_reserve_bytes": 512, "etsi014_stock_keys": CAP,
                               "etsi014_stock_min_requests": MIN,
                               "keystore_low_water_bits": 8192}
    base.update(fields)
    return await start_net(line_topology(2), MemoryBus(), km_db, clock or VirtualClock(),
                           settings=KmSettings.model_validate(base), seed=15, blocks=blocks,
                           block_bytes=block_bytes)


def _stream(net: KmNet) -> Stream:
    km0 = net.kms["km0"]
    return km0.core.streams[km0.core.pairs[("sa", "sb")]]


async def _enc(net: KmNet, number: int = 1) -> list[DeliveredKey]:
    async with asyncio.timeout(DEADLINE_S):
        return list(await net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", number, 256))


def _relayed(net: KmNet) -> list[int]:
    return [e.data.get("key_count", -1) for e in net.sink.events
            if e.type == EventType.key_relayed and e.node == "km0"]


@pytest.mark.parametrize("stock_keys", [CAP, 0], ids=["stock-on", "stock-off"])
async def test_a_refill_does_not_starve_the_request_that_starts_it(km_db: Database,
                                                                   stock_keys: int) -> None:
    """The MIN-th request relays its own 8 keys (288 bytes of link key with the MAC) and
    then may start a refill of 8. A request that alone fits the link is served at once,
    stock on or off (the first stock joined the request's batch: a frame of 544 bytes
    that waited for link key until the request's QoS timeout)."""
    # one block: 592 bytes to send with; 3 one-key requests take 3 * 64, leaving 400
    net = await _net(km_db, blocks=1, block_bytes=2 * 592, keystore_low_water_bits=0,
                     link_reserve_bytes=0, etsi014_stock_keys=stock_keys)
    try:
        for _ in range(MIN - 1):
            await _enc(net)
        store = net.kms["km0"].link_store("km1")
        assert store.sendable_bytes == 400
        # on the virtual clock a request that waited for link key would never time out:
        # a real-time bound (long on a busy machine) turns that into a failure
        keys = await asyncio.wait_for(
            net.kms["km0"].enc_keys(CALLER_A, "sa", "sb", 8, 256), DEADLINE_S)
        assert len(keys) == 8
    finally:
        await net.close()
        await net.bus.close()


@pytest.mark.parametrize("real", [False, True], ids=["virtual-clock", "real-clock"])
async def test_a_refill_travels_in_a_frame_of_its_own(km_db: Database, real: bool) -> None:
    """docs/api/etsi014.md: a refill's frame takes link key at once or not at all; so no
    request's keys ride in it (nor it in a request's frame, under the request's deadline)."""
    net = await _net(km_db, clock=RealClock() if real else None,
                     etsi014_stock_window_s=60.0)
    try:
        for _ in range(MIN):
            await _enc(net)
        s = _stream(net)
        await eventually(lambda: not s.demand.inflight, "refill")
        assert _relayed(net) == [1, 1, 1, 1, MIN]  # the first stock sent [1, 1, 1, 1 + MIN]
    finally:
        await net.close()
        await net.bus.close()


async def test_a_refill_starting_after_its_session_ended_leaves_no_keys(
        km_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refill task whose session ends before its first step (a SessionDelete handled in
    the same loop turn, so _free_io cannot cancel it) makes no keys: the first stock wrote
    the batch's pending keys for the dropped session, held and persisted for nobody."""
    net = await _net(km_db)
    try:
        km0 = net.kms["km0"]
        for _ in range(MIN):
            await _enc(net)
        s = _stream(net)
        await eventually(lambda: not s.demand.inflight, "refill")
        spawned: list[object] = []
        real_spawn = km0._spawn
        monkeypatch.setattr(km0, "_spawn", lambda coro, name: (
            spawned.append(coro) if name.startswith("km-stock") else real_spawn(coro, name)))
        while not spawned:  # stocked requests until one starts a refill
            await _enc(net)
        await net.control.delete(s.session_id)  # handled before the refill task's first step
        assert not s.live and km0.vault.of_session(s.session_id) == []
        await spawned[0]  # the refill task's first step, now
        assert km0.vault.of_session(s.session_id) == []
    finally:
        await net.close()
        await net.bus.close()


async def test_concurrent_refills_keep_the_link_above_its_low_water_mark(
        km_db: Database) -> None:
    """Two busy pairs (sa->sb, sc->sd) whose refills start in the same loop turn: the first
    refill's bytes count against the link while it is in flight, so the second is refused
    and together they never take the link below its low-water mark (the first stock checked
    each refill alone, both ran, and the link ended below the mark)."""
    low = 1000  # bytes
    n = MIN + 1  # each pair's refill: the keys it asked for in the window
    room = n * 32 + 64 + 100  # sendable beyond the mark: one refill fits, two do not
    # one block: one one-key request per pair (2 * 64 bytes), then low + room left
    net = await _net(km_db, blocks=1, block_bytes=2 * (2 * 64 + low + room),
                     keystore_low_water_bits=8 * low, link_reserve_bytes=0)
    try:
        km0 = net.kms["km0"]
        for master, slave in (("sa", "sb"), ("sc", "sd")):
            async with asyncio.timeout(DEADLINE_S):
                await km0.enc_keys(CALLER_A, master, slave, 1, 256)
        store = km0.link_store("km1")
        assert store.sendable_bytes == low + room
        streams = [km0.core.streams[km0.core.pairs[p]] for p in (("sa", "sb"), ("sc", "sd"))]
        now = km0._clock.now()
        for s in streams:  # busy pairs: enough requests in the window for a stock of n
            for _ in range(MIN):
                stock.note_request(s.demand, 1, CAP, now, km0.settings.etsi014_stock_window_s)
        for s in streams:  # one loop turn: neither refill has taken its key yet
            km0._refill_stock(s)
        assert [s.demand.inflight for s in streams] == [True, False]
        await eventually(lambda: not any(s.demand.inflight for s in streams), "refills")
        assert len(streams[0].stock) == n and streams[1].stock == []
        assert store.sendable_bytes >= low
    finally:
        await net.close()
        await net.bus.close()


async def test_after_a_master_restart_its_old_stock_is_handed_out_first(
        km_db: Database) -> None:
    """docs: after a master restart its stock keys are spares and join the stock at its next
    refill, so they are handed out before fresh keys relayed ahead. The MIN-th request after
    the restart starts a refill; once it is done, the next requests get every old stock key
    (the first stock relayed fresh keys and left the old ones waiting, link key spent,
    until the session ended)."""
    net = await _net(km_db)
    try:
        km0 = net.kms["km0"]
        for _ in range(2 * CAP):
            await _enc(net)
        s = _stream(net)
        await eventually(lambda: not s.demand.inflight, "refill")
        old = {km0.vault.get(s.session_id, i).key_id for i in s.stock}  # type: ignore[union-attr]
        assert len(old) > MIN
        await net.restart("km0")
        got = [k.key_id for _ in range(MIN) for k in await _enc(net)]  # demand again
        s = _stream(net)
        await eventually(lambda: not s.demand.inflight, "the refill after the restart")
        left = old - set(got)
        assert left  # the MIN requests took MIN of the old keys; a refill came after
        got += [k.key_id for _ in range(len(left)) for k in await _enc(net)]
        assert old <= set(got)
    finally:
        await net.close()
        await net.bus.close()

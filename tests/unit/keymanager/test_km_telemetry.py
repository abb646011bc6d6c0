"""A KM's telemetry: store levels, sessions per link, token buckets, keys handed out."""

from __future__ import annotations

import asyncio
import random

from tests.support.deadlines import DEADLINE_S, eventually
from tests.support.km_net import CALLER_A, CALLER_B, line_topology, open_pair, start_net

from keyplane.bus import MemoryBus, Message, topics
from keyplane.clock import RealClock, VirtualClock
from keyplane.keymanager.telemetry import KmTelemetryPublisher, KmTelemetrySettings
from keyplane.messages import KmTelemetry
from keyplane.store import Database


async def test_telemetry_reports_stores_paths_buckets_and_delivered_keys(km_db: Database
                                                                         ) -> None:
    bus = MemoryBus()
    clock = RealClock()
    net = await start_net(line_topology(3), bus, km_db, clock, seed=31)
    got: list[KmTelemetry] = []

    async def on(topic: str, msg: Message) -> None:
        assert isinstance(msg, KmTelemetry)
        got.append(msg)

    await bus.subscribe(topics.km_telemetry("*"), on)
    pubs = {n: KmTelemetryPublisher(km, bus, clock, net.events, KmTelemetrySettings())
            for n, km in net.kms.items()}
    try:
        for p in pubs.values():
            await p.start()
        idle = await pubs["km1"].publish_now()
        store = net.kms["km1"].link_stores
        assert idle.buffer_bits == {lid: s.stored_bits for lid, s in store.items()}
        assert all(bits > 0 for bits in idle.buffer_bits.values())
        assert idle.sessions == {"km0-km1": 0, "km1-km2": 0} and idle.streams == {}

        sid = await open_pair(net)
        for i in range(3):
            a = await net.kms["km0"].get_key(CALLER_A, sid, i)
            b = await net.kms["km2"].get_key(CALLER_B, sid, i)
            assert a.key == b.key
        src = await pubs["km0"].publish_now()
        mid = await pubs["km1"].publish_now()
        # the intermediate relays the session over both its links but serves no application
        assert mid.sessions == {"km0-km1": 1, "km1-km2": 1} and mid.streams == {}
        assert src.sessions == {"km0-km1": 1}
        fig = src.streams[sid]
        assert fig.keys_delivered == 3 and fig.keys_per_s > 0
        assert fig.bucket_size_bits is not None and fig.bucket_bits is not None
        assert fig.bucket_bits <= fig.bucket_size_bits and fig.pending_requests == 0
        # the relay used link key: the intermediate's stores went down
        assert sum(mid.buffer_bits.values()) < sum(idle.buffer_bits.values())
        async with asyncio.timeout(DEADLINE_S):
            while not any(m.node == "km0" and sid in m.streams for m in got):
                await asyncio.sleep(0.01)  # poll interval; the timeout above bounds it

        await net.kms["km0"].close_stream(CALLER_A, sid)
        await net.kms["km2"].close_stream(CALLER_B, sid)
        after = await pubs["km0"].publish_now()
        assert after.streams == {} and after.sessions == {"km0-km1": 0}
    finally:
        for p in pubs.values():
            await p.close()
        await net.close()
        await bus.close()


async def test_publisher_reports_changes_and_heartbeats_only(km_db: Database) -> None:
    """On the virtual clock: every tick of the loop is one clock step, so "nothing was
    published" is checked over ticks that surely ran, not over a stretch of real time."""
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(line_topology(2), bus, km_db, clock, seed=32)
    got: list[KmTelemetry] = []

    async def on(topic: str, msg: Message) -> None:
        assert isinstance(msg, KmTelemetry)
        got.append(msg)

    await bus.subscribe(topics.km_telemetry("km0"), on)
    pub = KmTelemetryPublisher(net.kms["km0"], bus, clock, net.events,
                               KmTelemetrySettings(interval_s=0.01, heartbeat_s=3600.0))
    try:
        await pub.start()
        await eventually(lambda: bool(got), "the first report")
        first = pub.published
        # nothing changes: the loop keeps running (re-arming its timer) without publishing
        for _ in range(20):
            tick = clock.now() + 0.01
            await eventually(lambda tick=tick: tick in clock.deadlines(), "the loop's timer")
            await clock.advance(0.01)
        assert pub.published == first
        await net.feed(random.Random(5), 1, 4096, first_block=100)
        tick = clock.now() + 0.01
        await eventually(lambda: tick in clock.deadlines(), "the loop's timer")
        await clock.advance(0.01)  # the next tick reports the new block
        await eventually(lambda: pub.published == first + 1, "the report of the new block")
        assert got[-1].buffer_bits["km0-km1"] > got[0].buffer_bits["km0-km1"]
    finally:
        await pub.close()
        await net.close()
        await bus.close()


async def test_publishers_of_one_stream_share_one_sink_routed_by_node(km_db: Database
                                                                      ) -> None:
    """Each event reaches only its node's publisher, through one sink, however many KMs
    (a sink per publisher made 1,000 calls per event in a 1,000-node process)."""
    bus = MemoryBus()
    clock = RealClock()
    net = await start_net(line_topology(3), bus, km_db, clock, seed=32)
    before = len(net.events.sinks)
    pubs = {n: KmTelemetryPublisher(km, bus, clock, net.events, KmTelemetrySettings())
            for n, km in net.kms.items()}
    try:
        for p in pubs.values():
            await p.start()
        assert len(net.events.sinks) == before + 1
        net.events.emit("key_delivered", "km", node="km1", session="s1", key_count=3)
        assert dict(pubs["km1"]._delivered) == {"s1": 3}
        assert not pubs["km0"]._delivered and not pubs["km2"]._delivered
        await pubs["km1"].close()
        net.events.emit("key_delivered", "km", node="km1", session="s1", key_count=3)
        assert dict(pubs["km1"]._delivered) == {"s1": 3}  # closed: no longer counted
        assert len(net.events.sinks) == before + 1
    finally:
        for p in pubs.values():
            await p.close()
        await net.close()
        await bus.close()
    assert len(net.events.sinks) == before

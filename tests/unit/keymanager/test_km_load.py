"""Priority order under load, token-bucket pacing on the virtual clock, busy answers.

The key managers' store commits run in a worker thread, which the virtual clock's
``settle()`` cannot see: before each clock step a test waits (bounded by DEADLINE_S) for the
state the step must act on (a request queued, a timer armed, deliveries made), never for a
fixed time.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.support.deadlines import DEADLINE_S, eventually, timer_armed
from tests.support.km_net import CALLER_A, KmNet, line_topology, open_pair, start_net

from keyplane.bus import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.config import parse_topology
from keyplane.errors import ExceedsTokenBucket, KmBusy, RateLimited
from keyplane.events import EventType
from keyplane.keymanager import KmSettings
from keyplane.store import Database

HUB = parse_topology("""
version: 1
nodes: [{id: km0}, {id: km1}, {id: km2}]
links:
  - {endpoints: [km0, km1], length_km: 10}
  - {endpoints: [km0, km2], length_km: 10}
users: [{id: u, certificate_subject: "CN=a"}]
applications:
  - {sae_id: pb, owner: u, node: km0}
  - {sae_id: p1, owner: u, node: km0}
  - {sae_id: p3, owner: u, node: km0}
  - {sae_id: p5, owner: u, node: km0}
  - {sae_id: q, owner: u, node: km1}
  - {sae_id: r1, owner: u, node: km2}
  - {sae_id: r3, owner: u, node: km2}
  - {sae_id: r5, owner: u, node: km2}
""")


async def start_blocked(km_db: Database, settings: KmSettings) -> tuple[KmNet, VirtualClock,
                                                                         asyncio.Task[object]]:
    """A hub KM with one exchange slot, held by a relay whose next hop (km1) is down: it
    returns once the blocker waits for the confirmation (relay_confirm_timeout_s)."""
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(HUB, bus, km_db, clock, seed=41, settings=settings,
                          priority_of={"pb": 0, "p1": 1, "p3": 3, "p5": 5})
    km0 = net.kms["km0"]
    for src, dst in [("pb", "q"), ("p1", "r1"), ("p3", "r3"), ("p5", "r5")]:
        await km0.enc_keys(CALLER_A, src, dst, 1, 256)  # opens the implicit sessions
    await net.kms["km1"].close()
    blocker = asyncio.create_task(km0.enc_keys(CALLER_A, "pb", "q", 1, 256))
    await timer_armed(clock, clock.now() + settings.relay_confirm_timeout_s)
    assert km0.core.active == 1
    return net, clock, blocker


SLOW = KmSettings(max_concurrent_exchanges=1, relay_confirm_timeout_s=1.0, relay_attempts=1,
                  etsi014_qos_timeout_ms=100_000, aging_interval_s=1000.0,
                  link_reserve_bytes=256)


async def test_priority_queues_serve_higher_sla_priority_first_under_load(
        km_db: Database) -> None:
    net, clock, blocker = await start_blocked(km_db, SLOW)
    km0 = net.kms["km0"]
    try:
        sessions = {km0.core.pairs[(p, r)]: p for p, r in [("p1", "r1"), ("p3", "r3"), ("p5", "r5")]}
        mark = len(net.sink.of_type(EventType.key_delivered))
        waiting = [asyncio.create_task(km0.enc_keys(CALLER_A, p, r, 1, 256))
                   for p, r in [("p1", "r1"), ("p5", "r5"), ("p3", "r3")]]
        await eventually(lambda: len(km0.core.queues) == 3, "three requests queued")
        assert not any(t.done() for t in waiting)  # queued behind the blocker
        await clock.advance(1.0)  # the blocker's relay times out and frees the slot
        await asyncio.wait_for(asyncio.gather(*waiting), DEADLINE_S)
        with pytest.raises(Exception, match="confirmation"):
            await blocker
        served = [sessions[e.session] for e in net.sink.of_type(EventType.key_delivered)[mark:]
                  if e.node == "km0" and e.session in sessions]
        assert served == ["p5", "p3", "p1"]
    finally:
        await net.close()


async def test_priority_queue_limit_gives_a_busy_answer(km_db: Database) -> None:
    net, clock, blocker = await start_blocked(km_db, SLOW.model_copy(update={"queue_limit": 1}))
    km0 = net.kms["km0"]
    try:
        queued = asyncio.create_task(km0.enc_keys(CALLER_A, "p1", "r1", 1, 256))
        await eventually(lambda: len(km0.core.queues) == 1, "the first request queued")
        with pytest.raises(KmBusy, match="busy"):
            await km0.enc_keys(CALLER_A, "p3", "r3", 1, 256)
        await clock.advance(1.0)
        assert len(await asyncio.wait_for(queued, DEADLINE_S)) == 1
        blocker.cancel()
    finally:
        await net.close()


async def test_token_bucket_paces_requests_at_the_configured_rate(km_db: Database) -> None:
    bus = MemoryBus()
    clock = VirtualClock()
    # burst 512 bits, 256 bit/s, 256-bit chunks: 2 at once, then one per second
    net = await start_net(line_topology(2), bus, km_db, clock, seed=42, bucket_size_bits=512,
                          token_rate_bps=256.0, key_chunk_size=32)
    try:
        sid = await open_pair(net)
        km0 = net.kms["km0"]
        mark = len(net.sink.of_type(EventType.key_requested))
        tasks = [asyncio.create_task(km0.get_key(CALLER_A, sid, i)) for i in range(6)]
        # all six admitted at t=0: the bucket's waits are 0, 0, 1, 2, 3, 4 s
        await eventually(lambda: len(net.sink.of_type(EventType.key_requested)) - mark == 6,
                         "six requests admitted")
        seen = []
        for _ in range(12):
            due = min(6, 2 + int(clock.now()))
            await eventually(lambda due=due: sum(t.done() for t in tasks) >= due,
                             f"{due} requests served at t={clock.now():g}")
            seen.append((clock.now(), sum(t.done() for t in tasks)))
            await clock.advance(0.5)
        assert all(t.done() and t.exception() is None for t in tasks)
        for now, done in seen:
            assert done == min(6, 2 + int(now)), seen
        # each request was served at the clock time its tokens were due, not earlier
        served_at = [e.t for e in net.sink.of_type(EventType.key_delivered)
                     if e.node == "km0" and e.session == sid]
        assert served_at == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0], served_at
    finally:
        await net.close()
        await bus.close()


async def test_a_chunk_larger_than_the_bucket_is_refused_as_a_client_error(
        km_db: Database) -> None:
    """No wait can serve 512 bits from a 256-bit bucket: refused at once, nothing spent."""
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(line_topology(2), bus, km_db, clock, seed=44, bucket_size_bits=256,
                          token_rate_bps=1e6, key_chunk_size=64)
    try:
        sid = await open_pair(net)
        with pytest.raises(ExceedsTokenBucket, match="512 bits in one request exceed"):
            await net.kms["km0"].get_key(CALLER_A, sid, None)
        assert net.sink.of_type(EventType.key_request_refused)[-1].data["bits"] == 512
        assert not net.sink.of_type(EventType.key_delivered)
    finally:
        await net.close()
        await bus.close()


async def test_token_bucket_refuses_a_request_it_cannot_serve_within_the_timeout(
        km_db: Database) -> None:
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(line_topology(2), bus, km_db, clock, seed=43, bucket_size_bits=256,
                          token_rate_bps=1.0, key_chunk_size=32)
    try:
        sid = await open_pair(net)
        km0 = net.kms["km0"]
        await km0.get_key(CALLER_A, sid, None)
        with pytest.raises(RateLimited, match="timeout"):
            await km0.get_key(CALLER_A, sid, None)  # needs 256 s, QoS timeout is 5 s
        refused = net.sink.of_type(EventType.key_request_refused)
        assert refused and refused[-1].data["reason"] == "token bucket"
        # a new SessionConfig (same session) reconfigures the bucket
        await net.control.reconfigure(sid, token_rate_bps=1e6)
        await clock.advance(0.001)
        assert (await km0.get_key(CALLER_A, sid, None)).index == 1
    finally:
        await net.close()
        await bus.close()

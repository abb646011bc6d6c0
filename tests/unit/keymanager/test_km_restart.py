"""KM restarts mid-stream (no key lost, none delivered twice) and reroutes (no key lost)."""

from __future__ import annotations

import asyncio

import pytest
from tests.support.deadlines import DEADLINE_S, timer_armed
from tests.support.km_net import CALLER_A, CALLER_B, line_topology, open_pair, start_net
from tests.unit.keymanager.test_relay import FrameLog, check_link_keys_used_once

from keyplane.bus import MemoryBus
from keyplane.clock import RealClock, VirtualClock
from keyplane.config import parse_topology
from keyplane.errors import KeyNotFound
from keyplane.keymanager import KmSettings
from keyplane.messages import Qos
from keyplane.store import Database


async def test_km_restarted_mid_stream_loses_no_key_and_delivers_none_twice(
        db: Database) -> None:
    bus = MemoryBus()
    log = FrameLog()
    await bus.subscribe("keyplane.km.*.relay", log)
    net = await start_net(line_topology(3), bus, db, RealClock(), seed=51,
                          settings=KmSettings(link_reserve_bytes=1024))
    try:
        # the real clock: the stream's Timeout is the suite's deadline (ETSI 004's default
        # 5 s expired on the relay of index 0 under PostgreSQL at load 30)
        sid = await open_pair(net, qos=Qos(timeout_ms=int(DEADLINE_S * 1000)))
        a = [await net.kms["km0"].get_key(CALLER_A, sid, None) for _ in range(3)]
        b0 = await net.kms["km2"].get_key(CALLER_B, sid, 0)
        keys014 = await net.kms["km0"].enc_keys(CALLER_A, "sc", "sd", 4, 256)
        # restart every KM of the path: source, intermediate, destination
        for node in ("km2", "km1", "km0"):
            await net.restart(node)
        km0, km2 = net.kms["km0"], net.kms["km2"]
        # indexes 1 and 2 were delivered at km0 before the restart; km2 still holds them
        b1 = await km2.get_key(CALLER_B, sid, None)
        b2 = await km2.get_key(CALLER_B, sid, None)
        assert [(k.index, k.key) for k in (b0, b1, b2)] == [(k.index, k.key) for k in a]
        with pytest.raises(KeyNotFound):  # index 0 was delivered at km0 before the restart
            await km0.get_key(CALLER_A, sid, 0)
        with pytest.raises(KeyNotFound):
            await km2.get_key(CALLER_B, sid, 1)
        # the stream goes on through the restarted intermediate
        a3 = await km0.get_key(CALLER_A, sid, None)
        b3 = await km2.get_key(CALLER_B, sid, None)
        assert (a3.index, a3.key) == (b3.index, b3.key) == (3, b3.key)
        got = await km2.dec_keys(CALLER_B, "sd", "sc", [k.key_id for k in keys014])
        assert [k.key for k in got] == [k.key for k in keys014]
        with pytest.raises(KeyNotFound):
            await km2.dec_keys(CALLER_B, "sd", "sc", [keys014[0].key_id])
        # the ETSI 014 stream goes on after the indexes delivered before the restart
        more = await km0.enc_keys(CALLER_A, "sc", "sd", 3, 256)
        assert not {k.key_id for k in more} & {k.key_id for k in keys014}
        got = await km2.dec_keys(CALLER_B, "sd", "sc", [k.key_id for k in more])
        assert [k.key for k in got] == [k.key for k in more]
        await check_link_keys_used_once(net, log)
    finally:
        await net.close()
        await bus.close()


async def test_pending_key_at_source_is_resent_after_restart_with_same_id(
        km_db: Database) -> None:
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(line_topology(2), bus, km_db, clock, seed=52,
                          settings=KmSettings(relay_confirm_timeout_s=1.0, relay_attempts=1))
    try:
        sid = await open_pair(net)
        await net.kms["km1"].close()  # the destination is down: the key stays pending
        confirm_by = clock.now() + 1.0
        attempt = asyncio.create_task(net.kms["km0"].get_key(CALLER_A, sid, 0))
        await timer_armed(clock, confirm_by)  # the key went out; its confirmation is awaited
        await clock.advance(1.0)
        with pytest.raises(Exception, match="confirmation"):
            await asyncio.wait_for(attempt, DEADLINE_S)
        pending = net.kms["km0"].vault.get(sid, 0)
        assert pending is not None and pending.state == "pending"
        await net.restart("km1")
        await net.restart("km0")
        a = await net.kms["km0"].get_key(CALLER_A, sid, 0)
        b = await net.kms["km1"].get_key(CALLER_B, sid, 0)
        assert a.metadata["key_ID"] == b.metadata["key_ID"] == pending.key_id
        assert a.key == b.key
    finally:
        await net.close()
        await bus.close()


DIAMOND = parse_topology("""
version: 1
nodes: [{id: km0}, {id: km1}, {id: km2}, {id: km3}]
links:
  - {endpoints: [km0, km1], length_km: 10}
  - {endpoints: [km1, km3], length_km: 10}
  - {endpoints: [km0, km2], length_km: 10}
  - {endpoints: [km2, km3], length_km: 10}
users:
  - {id: ua, certificate_subject: "CN=a"}
  - {id: ub, certificate_subject: "CN=b"}
applications:
  - {sae_id: sa, owner: ua, node: km0}
  - {sae_id: sb, owner: ub, node: km3}
""")


async def test_reroute_moves_the_session_without_losing_an_in_flight_key(
        km_db: Database) -> None:
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(DIAMOND, bus, km_db, clock, seed=53,
                          settings=KmSettings(relay_confirm_timeout_s=1.0, relay_attempts=3))
    try:
        sid = await open_pair(net)
        fs = net.control.sessions[sid]
        old_mid = fs.path[1]
        new_mid = "km2" if old_mid == "km1" else "km1"
        a0 = await net.kms["km0"].get_key(CALLER_A, sid, None)
        b0 = await net.kms["km3"].get_key(CALLER_B, sid, None)
        assert a0.key == b0.key
        await net.kms[old_mid].close()  # the old path fails with a key in flight
        confirm_by = clock.now() + 1.0
        in_flight = asyncio.create_task(net.kms["km0"].get_key(CALLER_A, sid, None))
        await timer_armed(clock, confirm_by)  # the key is in flight on the old path
        await net.control.reroute(sid, ["km0", new_mid, "km3"])
        assert net.kms["km0"].forwarding.current(sid).epoch == 1  # type: ignore[union-attr]
        assert net.kms["km0"].forwarding.at(sid, 0) is None  # old epoch retired
        await clock.advance(1.0)  # the attempt on the old path times out; retry on the new
        a1 = await asyncio.wait_for(in_flight, DEADLINE_S)
        b1 = await net.kms["km3"].get_key(CALLER_B, sid, None)
        assert (a1.index, a1.key, a1.metadata) == (b1.index, b1.key, b1.metadata) == (
            1, b1.key, b1.metadata)
        a2 = await net.kms["km0"].get_key(CALLER_A, sid, None)
        b2 = await net.kms["km3"].get_key(CALLER_B, sid, 2)
        assert a2.key == b2.key
        assert net.kms[new_mid].forwarding.current(sid).epoch == 1  # type: ignore[union-attr]
    finally:
        await net.close()
        await bus.close()


async def test_destination_crashed_after_storing_a_batch_offers_it_after_restart(
        km_db: Database) -> None:
    """The destination stores a batch, sends the confirmation, then crashes before its
    "offered" write: the source has the key ready and never resends it, so the restarted
    destination must offer the key it stored (the same bytes), not wait for a resend."""
    bus = MemoryBus()
    net = await start_net(line_topology(3), bus, km_db, RealClock(), seed=57)
    try:
        sid = await open_pair(net)
        a = await net.kms["km0"].get_key(CALLER_A, sid, 0)
        km2 = net.kms["km2"]
        held = km2.vault.get(sid, 0)
        assert held is not None and held.state == "ready"
        km2.vault.set_state(held, "pending")  # the state the crash leaves in the store
        await km2.journal.sync()
        km2 = await net.restart("km2")
        b = await km2.get_key(CALLER_B, sid, 0)
        assert (b.key, b.metadata["key_ID"]) == (a.key, a.metadata["key_ID"])
    finally:
        await net.close()
        await bus.close()


async def test_block_held_at_one_end_only_is_never_named_in_a_frame(km_db: Database) -> None:
    """A KM that crashed before storing a verified block leaves it at the other end only;
    that end must not send with it (the frame could not be opened), the stream goes on."""
    bus = MemoryBus()
    log = FrameLog()
    await bus.subscribe("keyplane.km.*.relay", log)
    net = await start_net(line_topology(3), bus, km_db, RealClock(), seed=58)
    try:
        # block -1 sorts first, so without the peer's acknowledgement it would be sent with
        await net.kms["km1"].link_key_sink("km1-km2").put_block("km1-km2", -1, bytes(4096))
        await net.restart("km2")  # its inventory tells km1 what it holds after the restart
        sid = await open_pair(net)
        for i in range(4):
            a = await net.kms["km0"].get_key(CALLER_A, sid, i)
            b = await net.kms["km2"].get_key(CALLER_B, sid, i)
            assert a.key == b.key
        assert -1 in net.kms["km1"].link_store("km2").inventory()
        assert -1 not in net.kms["km2"].link_store("km1").inventory()
        named = {seg[0] for frame in log.frames for seg in frame.segments}
        assert named and -1 not in named
    finally:
        await net.close()
        await bus.close()

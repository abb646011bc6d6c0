"""KeyManager session cycle over the bus: open, refuse, wait, idle timer, close, delete."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from tests.support.deadlines import DEADLINE_S, eventually, timer_armed
from tests.support.km_net import CALLER_A, CALLER_B, line_topology, open_pair, start_net

from keyplane.bus import Bus, MemoryBus, topics
from keyplane.clock import RealClock, VirtualClock
from keyplane.errors import (
    AuthenticationFailed,
    KeyNotFound,
    PeerNotConnected,
    QosNotMet,
    SessionIdInUse,
    SessionNotFound,
)
from keyplane.events import EventType
from keyplane.keymanager import KmSettings, SessionState
from keyplane.keymanager.interface import Caller
from keyplane.messages import DeleteConfirm, KeepAlive, Qos, SessionConfig, SessionDelete
from keyplane.store import Database

T = TypeVar("T")


async def past_timeout(clock: VirtualClock, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
    """Run ``coro``, a request that waits on ``clock`` for its QoS Timeout of ``timeout_s``:
    once that timer is armed, move the clock past it, then return what the request answers.

    Waiting for the timer (not for a fixed time) matters: the request first crosses the bus
    and the store (a worker thread), and the clock must not move before it waits.
    """
    task = asyncio.ensure_future(coro)
    await timer_armed(clock, clock.now() + timeout_s)
    await clock.advance(timeout_s)
    return await asyncio.wait_for(task, DEADLINE_S)


async def test_open_connect_returns_stream_id_once_configured_on_both_buses(
        bus: Bus, km_db: Database) -> None:
    net = await start_net(line_topology(3), bus, km_db, RealClock(), seed=21, priority_of={"sa": 4})
    try:
        sid = await open_pair(net)
        uuid.UUID(sid)  # the KM assigned a UUID Key_stream_ID
        for node in ("km0", "km2"):
            assert net.kms[node].session_state(sid) is SessionState.operative
            assert [h[1:] for h in net.kms[node].session_history(sid)][:2] == [
                ("authenticating", "auth_ok", "user_accepted"),
                ("user_accepted", "config_received", "operative")]
        # the intermediate knows only its own hop
        entry = net.kms["km1"].forwarding.current(sid)
        assert entry is not None and (entry.prev_km, entry.next_km) == ("km0", "km2")
        assert net.kms["km1"].session_state(sid) is None
    finally:
        await net.close()


async def test_open_connect_served_qos_carries_the_sla_priority_not_the_apps(
        km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(2), bus, km_db, RealClock(), seed=22, priority_of={"sa": 2})
    try:
        sid = str(uuid.uuid4())
        opener = asyncio.create_task(net.kms["km0"].open_connect(
            CALLER_A, "sa", "sb", Qos(priority=7), sid))
        async with asyncio.timeout(DEADLINE_S):
            await net.sink.wait_for(lambda e: e.type == EventType.admission_requested)
        await net.kms["km1"].open_connect(CALLER_B, "sb", "sa", Qos(), sid)
        res = await opener
        assert res.qos.priority == 2
    finally:
        await net.close()
        await bus.close()


async def test_open_connect_refused_by_admission_raises_qos_not_met(km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(2), bus, km_db, RealClock(), seed=23, refuse={"sa"})
    try:
        with pytest.raises(QosNotMet, match="exceeds the SLA"):
            await net.kms["km0"].open_connect(CALLER_A, "sa", "sb", Qos(), None)
        (sid,) = net.control.sessions
        assert net.kms["km0"].session_state(sid) is SessionState.terminated
    finally:
        await net.close()
        await bus.close()


async def test_open_connect_denied_identity_raises_authentication_failed(
        km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(2), bus, km_db, RealClock(), seed=24, deny={"CN=a"})
    try:
        with pytest.raises(AuthenticationFailed):
            await net.kms["km0"].open_connect(CALLER_A, "sa", "sb", Qos(), None)
        assert net.sink.of_type(EventType.auth_refused)
        with pytest.raises(AuthenticationFailed):  # sb is not attached to km0
            await net.kms["km0"].open_connect(CALLER_B, "sb", "sa", Qos(), None)
    finally:
        await net.close()
        await bus.close()


async def test_open_connect_before_peer_returns_not_connected_then_becomes_operative(
        km_db: Database) -> None:
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(line_topology(2), bus, km_db, clock, seed=25, hold_config=True)
    try:
        km0 = net.kms["km0"]
        res = await past_timeout(clock, km0.open_connect(CALLER_A, "sa", "sb",
                                                          Qos(timeout_ms=1000), None), 1.0)
        assert not res.peer_connected
        sid = res.key_stream_id
        assert km0.session_state(sid) is SessionState.user_accepted
        # GET_KEY waits for the peer up to the stream's Timeout (1 s), then status 3
        with pytest.raises(PeerNotConnected):
            await past_timeout(clock, km0.get_key(CALLER_A, sid, None), 1.0)
        # the opener asking again for its stream learns it is still waiting; another
        # pair of SAEs cannot take the id
        again = await km0.open_connect(CALLER_A, "sa", "sb", Qos(), sid)
        assert (again.key_stream_id, again.peer_connected) == (sid, False)
        with pytest.raises(SessionIdInUse):
            await km0.open_connect(CALLER_A, "sc", "sb", Qos(), sid)
        await past_timeout(clock, net.kms["km1"].open_connect(CALLER_B, "sb", "sa",
                                                              Qos(timeout_ms=1), sid), 0.001)
        await net.control.configure(sid)
        assert km0.session_state(sid) is SessionState.operative
        assert (await km0.get_key(CALLER_A, sid, None)).index == 0
    finally:
        await net.close()
        await bus.close()


async def test_session_without_configuration_gives_up_after_config_wait(
        km_db: Database) -> None:
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(line_topology(2), bus, km_db, clock, seed=26, hold_config=True,
                          settings=KmSettings(config_wait_s=30.0))
    try:
        sid = (await past_timeout(clock, net.kms["km0"].open_connect(
            CALLER_A, "sa", "sb", Qos(timeout_ms=100), None), 0.1)).key_stream_id
        await timer_armed(clock, clock.now() + 30.0)  # the configuration watchdog
        await clock.advance(30.0)
        assert net.kms["km0"].session_state(sid) is SessionState.terminated
        await eventually(lambda: net.control.closes, "the KM's close signal")
        assert [c.reason for c in net.control.closes] == ["error"]
    finally:
        await net.close()
        await bus.close()


async def test_idle_timer_expiry_terminates_and_reports_idle_timeout(km_db: Database) -> None:
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(line_topology(2), bus, km_db, clock, seed=27, idle_timeout_s=10.0)
    try:
        sid = await open_pair(net)
        km0 = net.kms["km0"]
        await clock.advance(6.0)
        await km0.get_key(CALLER_A, sid, None)  # resets km0's timer to t=16
        await clock.advance(3.0)
        await net.kms["km1"].get_key(CALLER_B, sid, 0)  # resets km1's timer to t=19
        await clock.advance(6.5)
        assert km0.session_state(sid) is SessionState.operative
        await clock.advance(1.0)  # t = 16.5: km0 idle, but km1 was used at 9 (it asks km1)
        await eventually(lambda: km0.session_state(sid) is SessionState.operative
                         and sid in km0._io_of and km0._io_of[sid].idle_task is not None,
                         "km0 re-armed from km1's answer")
        await clock.advance(3.0)  # t = 19.5: both idle for the timeout
        await eventually(lambda: km0.session_state(sid) is SessionState.terminated,
                         "km0's idle close")
        assert km0.forwarding.current(sid) is None
        await eventually(lambda: net.control.closes, "the close signal")
        assert {c.reason for c in net.control.closes} == {"idle_timeout"}
        # Admission Control deleted the rest of the path on that signal
        await eventually(lambda: net.kms["km1"].session_state(sid) is SessionState.terminated,
                         "km1's deletion")
        with pytest.raises(PeerNotConnected):  # ETSI 004 status 3: the stream ended
            await km0.get_key(CALLER_A, sid, None)
    finally:
        await net.close()
        await bus.close()


async def test_each_key_request_sends_a_keepalive_without_coalescing(
        km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(2), bus, km_db, RealClock(), seed=28,
                          settings=KmSettings(link_reserve_bytes=512,
                                              keepalive_min_interval_s=0.0))
    try:
        sid = await open_pair(net)
        for _ in range(3):
            await net.kms["km0"].get_key(CALLER_A, sid, None)
        await eventually(lambda: len(net.control.keepalives) >= 3, "three keep-alives")
        assert [k.session_id for k in net.control.keepalives] == [sid] * 3
    finally:
        await net.close()
        await bus.close()


async def test_keepalives_coalesce_and_a_trailing_one_follows_the_last_request(
        km_db: Database) -> None:
    """Requests inside the interval share one KeepAlive; one more comes at the end of the
    interval, so Admission Control's timer is reset no earlier than the last request."""
    bus = MemoryBus()
    clock = RealClock()
    net = await start_net(line_topology(2), bus, km_db, clock, seed=30,
                          settings=KmSettings(link_reserve_bytes=512,
                                              keepalive_min_interval_s=0.5))
    try:
        sid = await open_pair(net)
        seen: list[float] = []

        async def on_admission(topic: str, msg: object) -> None:
            if isinstance(msg, KeepAlive):
                seen.append(clock.now())
        await bus.subscribe(topics.ADMISSION, on_admission)  # type: ignore[arg-type]
        last_request = 0.0
        for _ in range(5):
            last_request = clock.now()
            await net.kms["km0"].get_key(CALLER_A, sid, None)
        # the trailing KeepAlive comes after the last request
        await eventually(lambda: bool(seen) and seen[-1] >= last_request, "the last keep-alive")
        assert 2 <= len(seen) < 5
    finally:
        await net.close()
        await bus.close()


async def test_application_close_frees_everything_and_admission_deletes_the_path(
        km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(3), bus, km_db, RealClock(), seed=29)
    try:
        sid = await open_pair(net)
        await net.kms["km2"].get_key(CALLER_B, sid, 0)
        await net.kms["km2"].get_key(CALLER_B, sid, 1)  # index 1 held at km0, undelivered
        await net.kms["km0"].close_stream(CALLER_A, sid)
        assert net.kms["km0"].session_state(sid) is SessionState.terminated
        assert net.kms["km0"].vault.of_session(sid) == []
        async with asyncio.timeout(DEADLINE_S):
            await net.sink.wait_for(lambda e: e.type == EventType.session_deleted
                                    and e.node == "km2")
        assert net.kms["km2"].session_state(sid) is SessionState.terminated
        assert net.kms["km1"].forwarding.current(sid) is None
        assert [c.reason for c in net.control.closes] == ["close"]
    finally:
        await net.close()
        await bus.close()


async def test_deletion_during_key_exchanging_fails_the_request_and_confirms(
        km_db: Database) -> None:
    bus = MemoryBus()
    clock = VirtualClock()
    # 256-bit bucket at 256 bit/s: the second request waits 1 s in key_exchanging
    net = await start_net(line_topology(2), bus, km_db, clock, seed=30, bucket_size_bits=256,
                          token_rate_bps=256.0)
    try:
        sid = await open_pair(net)
        km0 = net.kms["km0"]
        await km0.get_key(CALLER_A, sid, None)
        waiting = asyncio.create_task(km0.get_key(CALLER_A, sid, None))
        await timer_armed(clock, clock.now() + 1.0)  # it waits for its tokens
        await clock.advance(0.5)
        assert km0.session_state(sid) is SessionState.key_exchanging
        reply = await bus.request(topics.km_config("km0"), SessionDelete(
            session_id=sid, node="km0", reason="operator"), timeout_s=DEADLINE_S)
        assert isinstance(reply, DeleteConfirm) and reply.session_id == sid
        assert km0.session_state(sid) is SessionState.terminated
        history = [h[1:] for h in km0.session_history(sid)]
        assert ("key_exchanging", "deleted", "terminated") in history
        with pytest.raises(SessionNotFound):  # at once, without waiting out the bucket
            await asyncio.wait_for(waiting, DEADLINE_S)
    finally:
        await net.close()
        await bus.close()


async def test_stale_configuration_and_foreign_node_are_refused(km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(3), bus, km_db, RealClock(), seed=31)
    try:
        sid = await open_pair(net)
        fs = net.control.sessions[sid]
        cfg = net.control.configs(fs, fs.path, 0)[1]
        newer = cfg.model_copy(update={"epoch": 3})
        assert (await bus.request(topics.km_config("km1"), newer)).ok  # type: ignore[attr-defined]
        stale = await bus.request(topics.km_config("km1"), cfg)
        assert not stale.ok and "stale" in stale.reason  # type: ignore[attr-defined]
        wrong = await bus.request(topics.km_config("km1"), cfg.model_copy(update={"node": "km0"}))
        assert not wrong.ok  # type: ignore[attr-defined]
        no_link = SessionConfig(session_id="x", node="km0", role="source", next_km="km2",
                                source_sae="sa", destination_sae="sb", local_sae="sa",
                                bucket_size_bits=8, token_rate_bps=1, idle_timeout_s=1)
        assert not (await bus.request(topics.km_config("km0"), no_link)).ok  # type: ignore[attr-defined]
    finally:
        await net.close()
        await bus.close()


async def test_get_key_index_is_delivered_once_per_end_and_only_to_its_owner(
        km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(2), bus, km_db, RealClock(), seed=32)
    try:
        sid = await open_pair(net)
        await net.kms["km0"].get_key(CALLER_A, sid, 0)
        with pytest.raises(KeyNotFound):
            await net.kms["km0"].get_key(CALLER_A, sid, 0)
        with pytest.raises(SessionNotFound):
            await net.kms["km0"].get_key(Caller("CN=mallory"), sid, 1)
    finally:
        await net.close()
        await bus.close()


async def test_etsi014_dec_keys_asks_access_control_once_per_session_and_identity(
        km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(2), bus, km_db, RealClock(), seed=34, deny={"CN=eve"})
    try:
        km1 = net.kms["km1"]

        def asked() -> list[tuple[str, str]]:
            return [(r.node, r.identity) for r in net.control.auth_requests
                    if r.node == "km1"]
        for _ in range(3):
            keys = await net.kms["km0"].enc_keys(CALLER_A, "sc", "sd", 2, 256)
            got = await km1.dec_keys(CALLER_B, "sd", "sc", [k.key_id for k in keys])
            assert [k.key for k in got] == [k.key for k in keys]
        assert asked() == [("km1", "CN=b")]
        # another identity is asked about (and refused) on its own, before any key lookup
        keys = await net.kms["km0"].enc_keys(CALLER_A, "sc", "sd", 1, 256)
        with pytest.raises(AuthenticationFailed):
            await km1.dec_keys(Caller("CN=eve"), "sd", "sc", [keys[0].key_id])
        assert asked() == [("km1", "CN=b"), ("km1", "CN=eve")]
        # a key asked for as another slave is still refused (401)
        with pytest.raises(AuthenticationFailed):
            await km1.dec_keys(CALLER_B, "sb", "sc", [keys[0].key_id])
        got = await km1.dec_keys(CALLER_B, "sd", "sc", [keys[0].key_id])
        assert got[0].key == keys[0].key
    finally:
        await net.close()
        await bus.close()


async def test_etsi014_dec_keys_only_for_the_named_slave_and_once(km_db: Database) -> None:
    bus = MemoryBus()
    net = await start_net(line_topology(3), bus, km_db, RealClock(), seed=33)
    try:
        keys = await net.kms["km0"].enc_keys(CALLER_A, "sc", "sd", 2, 256)
        ids = [k.key_id for k in keys]
        km2 = net.kms["km2"]
        with pytest.raises(AuthenticationFailed):  # sb was not named as slave (014: 401)
            await km2.dec_keys(CALLER_B, "sb", "sc", ids)
        with pytest.raises(AuthenticationFailed):  # wrong master: not this pair's keys
            await km2.dec_keys(CALLER_B, "sd", "sa", ids)
        got = await km2.dec_keys(CALLER_B, "sd", "sc", ids[:1])
        assert got[0].key == keys[0].key
        with pytest.raises(KeyNotFound):  # all or nothing: ids[0] is gone
            await km2.dec_keys(CALLER_B, "sd", "sc", ids)
        assert km2.held_for("sd", "sc") == 1
        st = await net.kms["km0"].status(CALLER_A, "sc", "sd")
        assert (st.source_kme_id, st.target_kme_id, st.key_size) == ("km0", "km2", 256)
        assert st.stored_key_count == net.kms["km0"].link_store("km1").sendable_bits // 256 - 1
        with pytest.raises(QosNotMet):
            await net.kms["km0"].enc_keys(CALLER_A, "sc", "sd", 1, 257)
        with pytest.raises(QosNotMet):
            await net.kms["km0"].enc_keys(CALLER_A, "sc", "sd", 1, 256, additional_slaves=["sb"])
    finally:
        await net.close()
        await bus.close()

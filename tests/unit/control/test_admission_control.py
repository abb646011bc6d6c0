"""Admission Control (paper Fig. 2b) on the bus, with KM responders and the virtual clock.

Each test runs on the in-memory bus and on a real nats-server (the ``bus`` fixture). The
assertions are on the fake KMs' forwarding tables and on the Routing Element's
reservations, i.e. on what the network would do, not on message order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keyplane.bus import Bus, topics
from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.control import (
    AdmissionSettings,
    AdmissionState,
    ControlPlane,
    ControlSettings,
    RoutingSettings,
)
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import HopRole, KeepAlive, SessionClose
from keyplane.store import Database
from tests.support.control import NODES, open_request
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_kms import FakeKms, wait_until

SETTINGS = ControlSettings(admission=AdmissionSettings(peer_wait_timeout_s=10.0,
                                                       config_ack_timeout_s=1.0,
                                                       delete_confirm_timeout_s=1.0,
                                                       session_timer_grace_s=1.0))


@pytest.fixture
async def kms(bus: Bus) -> AsyncIterator[FakeKms]:
    async with FakeKms(bus, NODES) as fake:
        yield fake


@pytest.fixture
async def plane(topology: Topology, bus: Bus, sqlite_db: Database, clock: VirtualClock,
                events: EventStream, kms: FakeKms) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(topology, bus, sqlite_db, clock, events, SETTINGS,
                            elements=["sdn", "routing", "admission"]) as cp:
        yield cp


async def _open(bus: Bus, req) -> None:  # type: ignore[no-untyped-def]
    ack = await bus.request(topics.ADMISSION, req, timeout_s=DEADLINE_S)
    assert ack.session_id == req.session_id and ack.accepted_for_review  # type: ignore[attr-defined]


async def _open_pair(bus: Bus, sid: str = "s1", **qos: int) -> None:
    await _open(bus, open_request(sid, "a", "alice", "sae_a", "sae_d", **qos))
    await _open(bus, open_request(sid, "d", "dave", "sae_d", "sae_a", **qos))


def _state(plane: ControlPlane, sid: str) -> AdmissionState | None:
    assert plane.admission is not None
    s = plane.admission.core.session(sid)
    return s.state if s is not None else None


async def test_admission_qos_above_sla_sends_refusal_and_configures_nothing(
        bus: Bus, plane: ControlPlane, kms: FakeKms, sink: MemorySink) -> None:
    await _open(bus, open_request("s1", "a", "alice", "sae_a", "sae_d", max_bps=20_000))
    await wait_until(lambda: kms.deletes["a"], what="refusal at a")
    refusal = kms.deletes["a"][0]
    assert refusal.refused and refusal.session_id == "s1"
    assert "max_bps 20000 above the SLA's 10000" in refusal.reason
    assert all(not c for c in kms.configs.values())
    assert _state(plane, "s1") is None
    assert sink.of_type(EventType.admission_refused)[0].data["reason"] == refusal.reason


async def test_admission_first_open_waits_for_peer_without_reserving(
        bus: Bus, plane: ControlPlane, kms: FakeKms, sink: MemorySink) -> None:
    # the open waits for its peer until its own QoS Timeout (ETSI 004 V2.1.1 clause 6.3)
    await _open(bus, open_request("s1", "a", "alice", "sae_a", "sae_d", timeout_ms=10_000))
    await wait_until(lambda: sink.of_type(EventType.peer_waiting), what="peer_waiting")
    assert _state(plane, "s1") is AdmissionState.requested
    assert plane.routing is not None and plane.routing.core.reservations() == []
    assert all(not c for c in kms.configs.values())


async def test_admission_both_peers_open_pushes_each_hop_its_configuration(
        bus: Bus, plane: ControlPlane, kms: FakeKms) -> None:
    await _open(bus, open_request("s1", "a", "alice", "sae_a", "sae_d", max_bps=4000,
                                  min_bps=100, priority=5))
    await _open(bus, open_request("s1", "d", "dave", "sae_d", "sae_a", max_bps=4000,
                                  min_bps=100, priority=3, timeout_ms=700))
    await wait_until(lambda: _state(plane, "s1") is AdmissionState.active, what="active")
    assert kms.holders("s1") == ["a", "d", "e"]
    src, mid, dst = kms.entry("a", "s1"), kms.entry("e", "s1"), kms.entry("d", "s1")
    assert src and mid and dst
    assert (src.role, src.prev_km, src.next_km, src.local_sae) == (HopRole.source, None, "e",
                                                                   "sae_a")
    assert (mid.role, mid.prev_km, mid.next_km, mid.local_sae) == (HopRole.intermediate, "a",
                                                                   "d", None)
    assert (dst.role, dst.prev_km, dst.next_km, dst.local_sae) == (HopRole.destination, "e",
                                                                   None, "sae_d")
    for cfg in (src, mid, dst):
        assert (cfg.source_sae, cfg.destination_sae, cfg.epoch) == ("sae_a", "sae_d", 0)
        assert cfg.priority == 3  # the lower of the two OPEN_CONNECTs' (each within its SLA)
        assert cfg.min_bps == 100
        assert cfg.token_rate_bps == 4000 and cfg.bucket_size_bits == 4000
        assert cfg.idle_timeout_s == 20  # the lower SLA idle timeout
    # each endpoint waits for key as long as its own application asked; relays: the KM's own
    assert (src.timeout_ms, mid.timeout_ms, dst.timeout_ms) == (5000, None, 700)
    assert plane.routing is not None
    (res,) = plane.routing.core.reservations()
    assert res.route.nodes == ("a", "e", "d") and res.min_bps == 100


async def test_admission_peer_that_never_opens_is_refused_at_the_timeout(
        bus: Bus, plane: ControlPlane, kms: FakeKms, clock: VirtualClock,
        sink: MemorySink) -> None:
    # the open waits for its peer until its own QoS Timeout (ETSI 004 V2.1.1 clause 6.3)
    await _open(bus, open_request("s1", "a", "alice", "sae_a", "sae_d", timeout_ms=10_000))
    await wait_until(lambda: sink.of_type(EventType.peer_waiting), what="peer_waiting")
    await clock.advance(9.0)
    assert not kms.deletes["a"]
    await clock.advance(1.5)
    await wait_until(lambda: kms.deletes["a"], what="refusal after the peer wait")
    assert kms.deletes["a"][0].refused
    assert "did not open s1 within 10 s" in kms.deletes["a"][0].reason
    assert all(not c for c in kms.configs.values())
    await wait_until(lambda: _state(plane, "s1") is None, what="session forgotten")


async def test_admission_never_pairs_opens_of_other_stream_ids_even_for_mirrored_saes(
        bus: Bus, plane: ControlPlane, kms: FakeKms) -> None:
    """ETSI 004 pairs by Key_stream_ID: s-a and s-d are two pending streams (#16.1)."""
    await _open(bus, open_request("s-a", "a", "alice", "sae_a", "sae_d", timeout_ms=60_000))
    await _open(bus, open_request("s-d", "d", "dave", "sae_d", "sae_a", timeout_ms=60_000))
    assert _state(plane, "s-a") is AdmissionState.requested
    assert _state(plane, "s-d") is AdmissionState.requested
    assert all(not c for c in kms.configs.values())
    await _open(bus, open_request("s-a", "d", "dave", "sae_d", "sae_a", timeout_ms=60_000))
    await wait_until(lambda: _state(plane, "s-a") is AdmissionState.active, what="active")
    assert kms.entry("d", "s-a") is not None and kms.entry("d", "s-a").opened_as is None  # type: ignore[union-attr]
    assert _state(plane, "s-d") is AdmissionState.requested


async def test_admission_etsi014_configures_without_the_slave_opening(
        bus: Bus, plane: ControlPlane, kms: FakeKms) -> None:
    await _open(bus, open_request("s14", "a", "alice", "sae_a", "sae_d", interface="etsi014"))
    await wait_until(lambda: _state(plane, "s14") is AdmissionState.active, what="active")
    assert kms.holders("s14") == ["a", "d", "e"]


async def test_admission_key_stream_id_in_use_is_refused_in_the_open_ack(
        bus: Bus, plane: ControlPlane, kms: FakeKms) -> None:
    await _open_pair(bus)
    await wait_until(lambda: _state(plane, "s1") is AdmissionState.active, what="active")
    ack = await bus.request(topics.ADMISSION,
                            open_request("s1", "a", "alice", "sae_a", "sae_d"), timeout_s=DEADLINE_S)
    assert not ack.accepted_for_review and "in use" in ack.reason  # type: ignore[attr-defined]
    assert not kms.deletes["a"]  # the live session was not touched
    assert kms.holders("s1") == ["a", "d", "e"]


async def test_admission_km_that_does_not_acknowledge_rolls_the_path_back(
        bus: Bus, plane: ControlPlane, kms: FakeKms, clock: VirtualClock,
        sink: MemorySink) -> None:
    kms.silent.add("e")
    await _open_pair(bus)
    await wait_until(lambda: kms.configs["e"] and kms.holders("s1") == ["a", "d"],
                     what="configs pushed")
    await clock.advance(1.5)  # the ConfigAck bound
    await wait_until(lambda: kms.holders("s1") == [] and kms.deletes["e"], what="rollback")
    # every KM the configuration went to is rolled back, the silent one too (it may have
    # applied it and only its acknowledgement be lost)
    assert all(kms.deletes[n][0].refused for n in ("a", "d", "e"))
    assert "e: no ConfigAck within 1 s" in kms.deletes["a"][0].reason
    assert plane.routing is not None
    await wait_until(lambda: plane.routing.core.reservations() == [],  # type: ignore[union-attr]
                     what="reservation released")
    assert "e" in sink.of_type(EventType.config_refused)[0].data["failed"]
    assert not sink.of_type(EventType.session_operative)


async def test_admission_km_refusing_its_configuration_rolls_back_at_once(
        bus: Bus, plane: ControlPlane, kms: FakeKms) -> None:
    kms.refusing["d"] = "forwarding table full"
    await _open_pair(bus)
    await wait_until(lambda: kms.deletes["a"] and kms.deletes["e"], what="rollback")
    assert kms.holders("s1") == []
    assert "d: forwarding table full" in kms.deletes["e"][0].reason


async def test_admission_close_deletes_every_hop_and_releases_capacity(
        bus: Bus, plane: ControlPlane, kms: FakeKms, sink: MemorySink) -> None:
    await _open_pair(bus, min_bps=500)
    await wait_until(lambda: _state(plane, "s1") is AdmissionState.active, what="active")
    await bus.publish(topics.ADMISSION, SessionClose(session_id="s1", node="d"))
    await wait_until(lambda: sink.of_type(EventType.session_deleted), what="deleted")
    assert kms.holders("s1") == []
    assert sorted(n for n in NODES if kms.deletes[n]) == ["a", "d", "e"]
    deleted = sink.of_type(EventType.session_deleted)[0]
    assert sorted(deleted.data["confirmed"]) == ["a", "d", "e"] and deleted.data["missing"] == []
    assert plane.routing is not None
    await wait_until(lambda: plane.routing.core.reservations() == [],  # type: ignore[union-attr]
                     what="capacity released")
    assert plane.routing.core.reserved_bps("a-e") == 0


async def test_admission_session_timer_reset_by_keepalive_then_expires(
        bus: Bus, plane: ControlPlane, kms: FakeKms, clock: VirtualClock) -> None:
    await _open_pair(bus)
    await wait_until(lambda: _state(plane, "s1") is AdmissionState.active, what="active")
    await clock.advance(15.0)  # idle timeout 20 s + 1 s grace
    await bus.publish(topics.ADMISSION, KeepAlive(session_id="s1", node="a", delivered_bits=256))
    await wait_until(lambda: (s := plane.admission.core.session("s1")) is not None  # type: ignore[union-attr]
                     and s.timer_deadline == pytest.approx(36.0), what="timer reset")
    await clock.advance(15.0)  # t = 30 < 36
    assert kms.holders("s1") == ["a", "d", "e"]
    await clock.advance(7.0)
    await wait_until(lambda: kms.holders("s1") == [], what="expiry deletes")
    assert "session timer expired" in kms.deletes["e"][0].reason


async def test_admission_capacity_exhausted_refuses_the_next_session(
        topology: Topology, bus: Bus, sqlite_db: Database, clock: VirtualClock,
        events: EventStream, kms: FakeKms) -> None:
    settings = SETTINGS.model_copy(update={"routing": RoutingSettings(default_capacity_bps=1000)})
    async with ControlPlane(topology, bus, sqlite_db, clock, events, settings,
                            elements=["sdn", "routing", "admission"]) as plane:
        for sid in ("s1", "s2", "s3"):
            await _open(bus, open_request(sid, "a", "alice", "sae_a", "sae_d",
                                          interface="etsi014", min_bps=600))
            await wait_until(lambda sid=sid: _state(plane, sid) is AdmissionState.active
                             or any(d.session_id == sid for d in kms.deletes["a"]),
                             what=f"{sid} decided")
        assert kms.holders("s1") == ["a", "d", "e"]  # the shortest path
        assert kms.holders("s2") == ["a", "b", "c", "d"]  # the only one with 600 bps free
        assert kms.holders("s3") == []
        refusal = kms.deletes["a"][-1]
        assert refusal.session_id == "s3" and refusal.refused and "no route" in refusal.reason


async def test_admission_max_sessions_refuses_beyond_the_sla(
        bus: Bus, plane: ControlPlane, kms: FakeKms) -> None:
    for i in range(3):
        await _open(bus, open_request(f"s{i}", "a", "alice", "sae_a", "sae_d",
                                      interface="etsi014"))
    await wait_until(lambda: all(_state(plane, f"s{i}") is AdmissionState.active
                                 for i in range(3)), what="three active")
    await _open(bus, open_request("s3", "a", "alice", "sae_a", "sae_d", interface="etsi014"))
    await wait_until(lambda: kms.deletes["a"], what="refusal")
    assert kms.deletes["a"][0].session_id == "s3"
    assert "max_sessions 3 reached" in kms.deletes["a"][0].reason

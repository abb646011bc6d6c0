"""A restarted control plane takes back its live sessions (docs/control.md, "Controller
restart").

Each test admits sessions with one :class:`ControlPlane`, closes it (the KMs, here fake
ones, keep their forwarding entries) and starts a new one on the same store, bus and clock.
Assertions are on the fake KMs' forwarding tables, the Routing Element's reservations and
the store, on SQLite and on a real PostgreSQL (the ``db`` fixture).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from keyplane.bus import Bus, MemoryBus, topics
from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.control import (
    AdmissionSettings,
    AdmissionState,
    ControlPlane,
    ControlSettings,
    RoutingElement,
    RoutingSettings,
)
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import KeepAlive, SessionClose
from keyplane.store import Database
from keyplane.store.admitted import AdmittedSession, load_admitted_sessions
from tests.support.control import NODES, open_request
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_kms import FakeKms, wait_until

# every link carries 1000 bps: one 600 bps session fills a path
SETTINGS = ControlSettings(
    admission=AdmissionSettings(peer_wait_timeout_s=10.0, config_ack_timeout_s=1.0,
                                delete_confirm_timeout_s=1.0, session_timer_grace_s=1.0,
                                keepalive_store_interval_s=0.0),
    routing=RoutingSettings(default_capacity_bps=1000))
ELEMENTS = ["sdn", "routing", "admission"]


@pytest.fixture
def bus(memory_bus: MemoryBus) -> Bus:
    """The in-memory bus only (the root ``bus`` fixture also runs each test on NATS)."""
    return memory_bus


@pytest.fixture
async def kms(bus: Bus) -> AsyncIterator[FakeKms]:
    async with FakeKms(bus, NODES) as fake:
        yield fake


def _plane(topology: Topology, bus: Bus, db: Database, clock: VirtualClock,
           events: EventStream, elements: list[str] | None = None) -> ControlPlane:
    return ControlPlane(topology, bus, db, clock, events, SETTINGS,
                        elements=ELEMENTS if elements is None else elements)


async def _open(bus: Bus, req) -> None:  # type: ignore[no-untyped-def]
    ack = await bus.request(topics.ADMISSION, req, timeout_s=DEADLINE_S)
    assert ack.accepted_for_review  # type: ignore[attr-defined]


async def _admit_pair(bus: Bus, plane: ControlPlane, sid: str = "s1", **qos: int) -> None:
    """An ETSI 004 session a (sae_a) ↔ d (sae_d): path a-e-d, idle timeout 20 s."""
    await _open(bus, open_request(sid, "a", "alice", "sae_a", "sae_d", **qos))
    await _open(bus, open_request(sid, "d", "dave", "sae_d", "sae_a", **qos))
    assert plane.admission is not None
    await wait_until(lambda: (s := plane.admission.core.session(sid)) is not None  # type: ignore[union-attr]
                     and s.state is AdmissionState.active, what=f"{sid} active")


async def _stored(db: Database, what: str,
                  pred: Callable[[list[AdmittedSession]], bool]) -> list[AdmittedSession]:
    """Wait (real time, bounded) until the stored sessions satisfy ``pred``."""
    rows: list[AdmittedSession] = []
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not pred(rows := await load_admitted_sessions(db)):
                await asyncio.sleep(0.005)  # poll interval; the timeout above bounds it
    except TimeoutError:
        raise AssertionError(f"store never showed {what}: {rows}") from None
    return rows


def _reserved(plane: ControlPlane) -> dict[str, tuple[tuple[str, ...], float]]:
    assert plane.routing is not None
    return {r.session_id: (r.route.nodes, r.min_bps) for r in plane.routing.core.reservations()}


async def test_admitted_session_is_stored_with_its_path_and_figures(
        topology: Topology, bus: Bus, db: Database, clock: VirtualClock,
        events: EventStream, kms: FakeKms) -> None:
    async with _plane(topology, bus, db, clock, events) as plane:
        await _admit_pair(bus, plane, min_bps=600, max_bps=4000, priority=3)
        (rec,) = await _stored(db, "s1", lambda rows: len(rows) == 1)
    assert (rec.session_id, rec.state, rec.interface) == ("s1", "active", "etsi004")
    assert (rec.source_sae, rec.destination_sae) == ("sae_a", "sae_d")
    assert (rec.source_node, rec.destination_node, rec.path) == ("a", "d", ("a", "e", "d"))
    assert (rec.epoch, rec.route_epoch, rec.min_bps, rec.rate_bps) == (0, 0, 600, 4000)
    assert (rec.priority, rec.idle_timeout_s, rec.hybrid_policy) == (3, 20, "qkd-only")
    assert rec.initiator["user_id"] == "alice" and rec.responder is not None
    assert rec.responder["user_id"] == "dave" and rec.responder["qos"]["min_bps"] == 600
    assert rec.created_wall > 0 and rec.last_keepalive_wall >= rec.created_wall


async def test_restarted_plane_keeps_a_kept_alive_session_and_its_capacity(
        topology: Topology, bus: Bus, db: Database, clock: VirtualClock,
        events: EventStream, sink: MemorySink, kms: FakeKms) -> None:
    async with _plane(topology, bus, db, clock, events) as first:
        await _admit_pair(bus, first, min_bps=600)
        await _stored(db, "s1", lambda rows: len(rows) == 1)
    assert kms.holders("s1") == ["a", "d", "e"]  # the KMs keep running

    async with _plane(topology, bus, db, clock, events) as plane:
        assert plane.admission is not None
        sess = plane.admission.core.session("s1")
        assert sess is not None and sess.state is AdmissionState.active
        assert sess.path == ("a", "e", "d")
        assert _reserved(plane) == {"s1": (("a", "e", "d"), 600)}
        restored = sink.of_type(EventType.session_restored)
        assert {e.element for e in restored} == {"admission", "routing"}

        # keep-alives keep it alive well past its idle timeout (20 s + 1 s grace)
        for _ in range(4):
            await clock.advance(15.0)
            await bus.publish(topics.ADMISSION, KeepAlive(session_id="s1", node="a"))
            await wait_until(lambda: sess.timer_deadline == pytest.approx(clock.now() + 21),
                             what="timer reset")
        assert kms.holders("s1") == ["a", "d", "e"] and not kms.deletes["e"]
        await _stored(db, "the last keep-alive stamped",
                      lambda rows: rows[0].last_keepalive_wall == clock.wall())

        # the restored capacity still counts: a second 600 bps session cannot use a-e-d
        await _open(bus, open_request("s2", "a", "alice", "sae_a", "sae_d",
                                      interface="etsi014", min_bps=600))
        await wait_until(lambda: kms.holders("s2") == ["a", "b", "c", "d"], what="s2 detour")
        await _open(bus, open_request("s3", "a", "alice", "sae_a", "sae_d",
                                      interface="etsi014", min_bps=600))
        await wait_until(lambda: any(d.session_id == "s3" for d in kms.deletes["a"]),
                         what="s3 refused")
        assert "no route" in kms.deletes["a"][-1].reason
        assert plane.routing is not None and plane.routing.core.overbooked() == []


async def test_restarted_plane_close_releases_capacity_and_forgets_the_session(
        topology: Topology, bus: Bus, db: Database, clock: VirtualClock,
        events: EventStream, sink: MemorySink, kms: FakeKms) -> None:
    async with _plane(topology, bus, db, clock, events) as first:
        await _admit_pair(bus, first, min_bps=600)
        await _stored(db, "s1", lambda rows: len(rows) == 1)

    async with _plane(topology, bus, db, clock, events) as plane:
        await bus.publish(topics.ADMISSION, SessionClose(session_id="s1", node="d"))
        await wait_until(lambda: sink.of_type(EventType.session_deleted), what="deleted")
        assert kms.holders("s1") == []
        await wait_until(lambda: _reserved(plane) == {}, what="capacity released")
        await _stored(db, "no session", lambda rows: rows == [])
        # the capacity is free again: a new 600 bps session takes the shortest path
        await _open(bus, open_request("s2", "a", "alice", "sae_a", "sae_d",
                                      interface="etsi014", min_bps=600))
        await wait_until(lambda: kms.holders("s2") == ["a", "d", "e"], what="s2 shortest")


async def test_restarted_plane_expires_a_silent_session_on_its_idle_timer(
        topology: Topology, bus: Bus, db: Database, clock: VirtualClock,
        events: EventStream, kms: FakeKms) -> None:
    async with _plane(topology, bus, db, clock, events) as first:
        await _admit_pair(bus, first, min_bps=600)
        await _stored(db, "s1", lambda rows: len(rows) == 1)
    await clock.advance(100.0)  # the controller was down longer than the idle timeout

    async with _plane(topology, bus, db, clock, events) as plane:
        # re-armed from the restart: a full idle timeout (20 s) + grace (1 s)
        await clock.advance(20.0)
        assert kms.holders("s1") == ["a", "d", "e"]
        await clock.advance(1.5)
        await wait_until(lambda: kms.holders("s1") == [], what="expiry deletes")
        assert "session timer expired" in kms.deletes["e"][0].reason
        await wait_until(lambda: _reserved(plane) == {}, what="capacity released")
        await _stored(db, "no session", lambda rows: rows == [])


async def test_restarted_plane_resends_deletions_that_were_never_confirmed(
        topology: Topology, bus: Bus, db: Database, clock: VirtualClock,
        events: EventStream, kms: FakeKms) -> None:
    async with _plane(topology, bus, db, clock, events) as first:
        await _admit_pair(bus, first, min_bps=600)
        kms.silent.add("e")  # e does not confirm; the controller stops before the bound
        await bus.publish(topics.ADMISSION, SessionClose(session_id="s1", node="a"))
        await _stored(db, "s1 terminated",
                      lambda rows: [r.state for r in rows] == ["terminated"])
    assert kms.entry("e", "s1") is not None
    kms.silent.clear()

    async with _plane(topology, bus, db, clock, events) as plane:
        await wait_until(lambda: kms.holders("s1") == [], what="deletions resent")
        await wait_until(lambda: _reserved(plane) == {}, what="capacity released")
        await _stored(db, "no session", lambda rows: rows == [])


async def test_restarted_plane_reannounces_a_relayed_session_virtual_link(
        topology: Topology, bus: Bus, db: Database, clock: VirtualClock,
        events: EventStream, kms: FakeKms) -> None:
    async with _plane(topology, bus, db, clock, events) as first:
        await _admit_pair(bus, first)
        assert first.sdn is not None
        await wait_until(lambda: "virt-s1" in first.sdn.model.links,  # type: ignore[union-attr]
                         what="VIRT link")
        await _stored(db, "s1", lambda rows: len(rows) == 1)

    async with _plane(topology, bus, db, clock, events) as plane:
        assert plane.sdn is not None
        await wait_until(lambda: "virt-s1" in plane.sdn.model.links,  # type: ignore[union-attr]
                         what="VIRT link again")
        link = plane.sdn.model.links["virt-s1"]
        assert (link.path, link.session_id, link.source_sae) == (("a", "e", "d"), "s1",
                                                                 "sae_a")


async def test_restarted_routing_element_asks_admission_for_the_capacity_to_hold(
        topology: Topology, bus: Bus, db: Database, clock: VirtualClock,
        events: EventStream, kms: FakeKms) -> None:
    """The Routing Element restarts alone (its own process): Admission keeps running."""
    routing = RoutingElement(topology, bus, clock, events, db=db, settings=SETTINGS.routing)
    await routing.start()
    async with _plane(topology, bus, db, clock, events, ["sdn", "admission"]) as plane:
        await _admit_pair(bus, plane, min_bps=600)
        await routing.close()
        async with RoutingElement(topology, bus, clock, events, db=db,
                                  settings=SETTINGS.routing) as again:
            (res,) = again.core.reservations()
            assert (res.session_id, res.route.nodes, res.min_bps) == ("s1", ("a", "e", "d"),
                                                                      600)


async def test_restarted_admission_frees_reservations_of_sessions_it_never_stored(
        topology: Topology, bus: Bus, db: Database, clock: VirtualClock,
        events: EventStream, kms: FakeKms) -> None:
    """Admission restarts alone while a session was being set up: the Routing Element's
    reservation for it has no owner any more and is freed."""
    async with RoutingElement(topology, bus, clock, events, db=db,
                              settings=SETTINGS.routing) as routing:
        async with _plane(topology, bus, db, clock, events, ["sdn", "admission"]) as plane:
            await _admit_pair(bus, plane, min_bps=600)
        routing.core.route_and_reserve("half-open", 0, "a", "d", 300)  # the lost setup
        assert {r.session_id for r in routing.core.reservations()} == {"s1", "half-open"}
        async with _plane(topology, bus, db, clock, events, ["sdn", "admission"]):
            assert {r.session_id for r in routing.core.reservations()} == {"s1"}
            assert routing.core.reserved_bps("a-e") == 600

"""Idle expiry agreed by both ends (keymanager/liveness.py, issue #14 wave 5).

A stream idle at one end is closed only when the other end is idle too; while the other
end cannot be reached (the path in a fault) it is held, up to ``idle_hold_max_s``. The pure
decisions first, then the core, then three KMs on the in-memory bus with a virtual clock:
an application that waits (lockstep) keeps its silent peer's end open, and a path whose
intermediate KM is down holds the session until the KM is back.
"""

from __future__ import annotations

from tests.support.deadlines import eventually
from tests.support.km_net import CALLER_A, CALLER_B, line_topology, open_pair, start_net

from keyplane.bus.memory import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.events import EventType
from keyplane.keymanager import liveness
from keyplane.keymanager.core import KmCore, Stream
from keyplane.keymanager.effects import ArmIdle, Emit, ProbePeer, SendAdmission, digest
from keyplane.keymanager.session import SessionEvent, SessionMachine, SessionState
from keyplane.keymanager.settings import KmSettings
from keyplane.messages import HopRole, KeepAlive, Qos, SessionClose, SessionConfig
from keyplane.store import Database

OWNER = digest("CN=a")


def cfg(sid: str = "s1", *, role: HopRole = HopRole.source, prev_km: str | None = None,
        next_km: str | None = "km1", node: str = "km0", idle_s: float = 10.0,
        epoch: int = 0) -> SessionConfig:
    return SessionConfig(session_id=sid, node=node, epoch=epoch, role=role, prev_km=prev_km,
                         next_km=next_km, source_sae="sa", destination_sae="sb",
                         local_sae=None if role is HopRole.intermediate else
                         ("sa" if role is HopRole.source else "sb"),
                         bucket_size_bits=1024, token_rate_bps=1024.0, idle_timeout_s=idle_s,
                         key_chunk_size=32)


def opened(c: KmCore, now: float = 0.0, **kw: object) -> Stream:
    s, _ = c.claim_open(OWNER, "sa", "sb", Qos(), "s1", "etsi004")
    c.apply(s, SessionEvent.auth_ok, now)
    ack, _ = c.session_config(cfg(**kw), now)  # type: ignore[arg-type]
    assert ack.ok
    return s


def stream(idle_s: float = 10.0) -> Stream:
    return Stream("s1", SessionMachine("s1", SessionState.operative, idle_timeout_s=idle_s),
                  local_sae="sa", peer_sae="sb")


# ---- the pure decisions ------------------------------------------------------------------
def test_the_peer_active_or_recently_used_keeps_the_stream() -> None:
    s = stream()
    assert liveness.next_idle_deadline(s, "active", 0.0, 100.0, 600.0) == \
        liveness.ProbeVerdict(close=False, deadline=110.0)
    # idle 4 s at the peer: a full idle period after the peer's last request
    assert liveness.next_idle_deadline(s, "idle", 4.0, 100.0, 600.0).deadline == 106.0
    # never sooner than a quarter of the timeout: two ends do not probe in a tight loop
    assert liveness.next_idle_deadline(s, "idle", 9.99, 100.0, 600.0).deadline == 102.5


def test_both_ends_idle_or_the_peer_gone_closes() -> None:
    assert liveness.next_idle_deadline(stream(), "idle", 10.0, 100.0, 600.0).close
    assert liveness.next_idle_deadline(stream(), "ended", 0.0, 100.0, 600.0).close


def test_an_unreachable_peer_holds_the_stream_up_to_the_cap() -> None:
    s = stream()
    v = liveness.next_idle_deadline(s, "unknown", 0.0, 100.0, 60.0)
    assert v == liveness.ProbeVerdict(close=False, deadline=105.0, hold=True)
    assert s.held_since == 100.0
    assert liveness.next_idle_deadline(s, "unknown", 0.0, 159.0, 60.0).hold
    assert liveness.next_idle_deadline(s, "unknown", 0.0, 160.0, 60.0).close
    # an answer ends the hold: the cap counts from the next time the peer goes silent
    s2 = stream()
    liveness.next_idle_deadline(s2, "unknown", 0.0, 100.0, 60.0)
    liveness.next_idle_deadline(s2, "active", 0.0, 150.0, 60.0)
    assert s2.held_since is None
    assert liveness.next_idle_deadline(s2, "unknown", 0.0, 200.0, 60.0).hold


def test_an_intermediate_forwards_a_probe_toward_the_other_end() -> None:
    mid = HopRole.intermediate
    assert liveness.route("km1", "km2", "km0", "km0", "km2", mid) == liveness.Forward("km2")
    assert liveness.route("km1", "km0", "km2", "km0", "km2", mid) == liveness.Forward("km0")
    # the target answers from its stream; a KM that cannot route says nothing
    assert liveness.route("km2", "km2", "km1", "km1", None, HopRole.destination) is None
    assert liveness.route("km1", "km2", "km9", "km0", "km2", mid) == liveness.Answer("unknown")
    assert liveness.route("km1", "km2", "km0", None, None, None) == liveness.Answer("unknown")


# ---- the core ----------------------------------------------------------------------------
def test_an_idle_stream_asks_its_peer_and_signals_admission_meanwhile() -> None:
    c = KmCore("km0", {"km1"}, KmSettings())
    s = opened(c)
    assert c.idle_due("s1", 10.0) == (None, [
        ProbePeer("s1", 1, "km1", 0, "sb"),
        SendAdmission(KeepAlive(session_id="s1", node="km0"))])
    assert s.machine.state is SessionState.operative
    # the peer's application asked 3 s ago: the stream lives a full period after that
    assert c.probe_result("s1", 1, "idle", 3.0, 10.5) == [ArmIdle("s1", 17.5)]
    # no answer: held, Admission Control told the session is in use, asked again later
    nxt, effects = c.idle_due("s1", 17.5)
    assert nxt is None and effects[0] == ProbePeer("s1", 2, "km1", 0, "sb")
    effects = c.probe_result("s1", 2, "unknown", 0.0, 20.0)
    assert effects[:2] == [ArmIdle("s1", 25.0),
                           SendAdmission(KeepAlive(session_id="s1", node="km0"))]
    assert [e.type for e in effects if isinstance(e, Emit)] == [EventType.session_held]
    assert s.machine.state is SessionState.operative
    c.idle_due("s1", 25.0)
    closing = c.probe_result("s1", 3, "idle", 12.0, 25.1)
    assert s.machine.state is SessionState.terminated
    assert SendAdmission(SessionClose(session_id="s1", node="km0",
                                      reason="idle_timeout")) in closing


def test_a_stale_answer_or_one_after_new_use_changes_nothing() -> None:
    c = KmCore("km0", {"km1"}, KmSettings())
    s = opened(c)
    c.idle_due("s1", 10.0)
    assert c.probe_result("s1", 0, "ended", 0.0, 10.1) == []  # not the probe in flight
    c.apply(s, SessionEvent.key_request, 10.2)  # used again while the probe was out
    assert c.probe_result("s1", 1, "ended", 0.0, 10.3) == []
    assert s.live


def test_without_a_path_or_with_probes_off_idle_closes_at_once() -> None:
    c = KmCore("km0", {"km1"}, KmSettings(idle_probe=False))
    s = opened(c)
    c.idle_due("s1", 10.0)
    assert s.machine.state is SessionState.terminated


def test_the_target_answers_from_its_stream() -> None:
    c = KmCore("km2", {"km1"}, KmSettings())
    s, _ = c.claim_open(OWNER, "sb", "sa", Qos(), "s1", "etsi004")
    c.apply(s, SessionEvent.auth_ok, 0.0)
    c.session_config(cfg(role=HopRole.destination, prev_km="km1", next_km=None, node="km2"),
                     0.0)
    assert c.probe_step("s1", 0, "km1", "km2", 4.0) == liveness.Answer("idle", 4.0)
    c.apply(s, SessionEvent.key_request, 5.0)
    assert c.probe_step("s1", 0, "km1", "km2", 9.0) == liveness.Answer("active")
    c.apply(s, SessionEvent.close, 9.5)
    assert c.probe_step("s1", 0, "km1", "km2", 10.0) == liveness.Answer("ended")
    assert c.probe_step("s9", 0, "km1", "km2", 10.0) == liveness.Answer("ended")


def test_an_intermediate_core_routes_by_the_probes_epoch() -> None:
    c = KmCore("km1", {"km0", "km2"}, KmSettings())
    ack, _ = c.session_config(cfg(role=HopRole.intermediate, prev_km="km0", next_km="km2",
                                  node="km1"), 0.0)
    assert ack.ok
    assert c.probe_step("s1", 0, "km0", "km2", 1.0) == liveness.Forward("km2")
    assert c.probe_step("s1", 0, "km2", "km0", 1.0) == liveness.Forward("km0")
    assert c.probe_step("s1", 7, "km0", "km2", 1.0) == liveness.Answer("unknown")


# ---- three KMs on the in-memory bus --------------------------------------------------------
async def advance(clock: VirtualClock, seconds: float, step: float = 0.5) -> None:
    """Move the clock in small steps, letting the probes (bus requests) run between."""
    t = 0.0
    while t < seconds:
        await clock.advance(step)
        t += step


async def test_an_application_waiting_keeps_its_silent_peers_end_open(
        km_db: Database) -> None:
    """The lockstep defect: one application got its key and waits for the other, which
    keeps asking; the silent end must not close the session for idleness."""
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(line_topology(3), bus, km_db, clock, seed=51, idle_timeout_s=10.0)
    try:
        sid = await open_pair(net)
        km0, km2 = net.kms["km0"], net.kms["km2"]
        await km0.get_key(CALLER_A, sid, 0)
        for i in range(8):  # km2's application asks every 4 s for 32 s; km0's is silent
            await km2.get_key(CALLER_B, sid, i)
            await advance(clock, 4.0)
        assert km0.session_state(sid) is SessionState.operative
        assert not net.control.closes
        # now both are silent: the session ends, for idleness, at both ends
        await advance(clock, 25.0)
        await eventually(lambda: km0.session_state(sid) is SessionState.terminated
                         and km2.session_state(sid) is SessionState.terminated,
                         "the idle close once both ends are idle")
        assert {c.reason for c in net.control.closes} == {"idle_timeout"}
    finally:
        await net.close()
        await bus.close()


async def test_a_path_in_a_fault_holds_the_session_until_it_is_back(
        km_db: Database) -> None:
    """The intermediate KM is down: neither end can hear the other; both hold the session
    (and keep Admission Control's timer going) instead of closing it, and once the KM is
    back the ends agree that the session is idle and close it."""
    bus = MemoryBus()
    clock = VirtualClock()
    net = await start_net(line_topology(3), bus, km_db, clock, seed=52, idle_timeout_s=10.0)
    try:
        sid = await open_pair(net)
        await net.kms["km1"].close()  # the path's only intermediate is down
        keepalives = len(net.control.keepalives)
        await advance(clock, 40.0)
        for node in ("km0", "km2"):
            assert net.kms[node].session_state(sid) is SessionState.operative, node
        assert not net.control.closes
        held = [e for e in net.sink.events if e.type is EventType.session_held]
        assert {e.node for e in held} == {"km0", "km2"}
        assert len(net.control.keepalives) > keepalives  # Admission Control was told
        await net.restart("km1")  # back, with its forwarding entry from the store
        await advance(clock, 15.0)
        await eventually(lambda: all(net.kms[n].session_state(sid) is SessionState.terminated
                                     for n in ("km0", "km2")), "the idle close after the fault")
        assert {c.reason for c in net.control.closes} == {"idle_timeout"}
    finally:
        await net.close()
        await bus.close()


async def test_a_peer_that_never_answers_is_held_at_most_idle_hold_max_s(
        km_db: Database) -> None:
    hold_max_s = 12.0
    bus = MemoryBus()
    clock = VirtualClock()
    settings = KmSettings(link_reserve_bytes=512, idle_hold_max_s=hold_max_s)
    net = await start_net(line_topology(3), bus, km_db, clock, seed=53, idle_timeout_s=10.0,
                          settings=settings)
    try:
        sid = await open_pair(net)
        await net.kms["km1"].close()
        await advance(clock, 10.0 + hold_max_s - 1.0)
        assert not net.control.closes  # held: the peer might come back
        await advance(clock, 10.0)
        await eventually(lambda: net.kms["km0"].session_state(sid) is SessionState.terminated,
                         "the close after idle_hold_max_s")
        # either end (both held since the same time) closed it for idleness
        assert net.control.closes
        assert {c.reason for c in net.control.closes} == {"idle_timeout"}
    finally:
        await net.close()
        await bus.close()

"""The key manager's pure core, without a bus, a store, a clock or asyncio: events and
``now`` in, effects out (keymanager/core.py)."""

from __future__ import annotations

import pytest

from keyplane.errors import (
    ExceedsTokenBucket,
    PeerNotConnected,
    RateLimited,
    SessionIdInUse,
    SessionNotFound,
)
from keyplane.events import EventType
from keyplane.keymanager.core import KmCore, Stream
from keyplane.keymanager.effects import (
    ArmIdle,
    Decide,
    Effect,
    Emit,
    FreeStream,
    KeepAliveAt,
    PersistRow,
    ProbePeer,
    Renamed,
    SendAdmission,
    digest,
)
from keyplane.keymanager.session import SessionEvent, SessionState
from keyplane.keymanager.settings import KmSettings
from keyplane.messages import (
    HopRole,
    KeepAlive,
    Qos,
    SessionClose,
    SessionConfig,
    SessionDelete,
)

OWNER = digest("CN=a")


def core(**settings: object) -> KmCore:
    return KmCore("km0", {"km1"}, KmSettings(**settings))  # type: ignore[arg-type]


def config(sid: str = "s1", *, epoch: int = 0, role: HopRole = HopRole.source,
           next_km: str | None = "km1", prev_km: str | None = None, priority: int = 3,
           bucket: int = 1024, rate: float = 1024.0, opened_as: str | None = None,
           node: str = "km0", idle_s: float = 10.0) -> SessionConfig:
    return SessionConfig(session_id=sid, node=node, epoch=epoch, role=role, prev_km=prev_km,
                         next_km=next_km, source_sae="sa", destination_sae="sb",
                         local_sae="sa" if role is HopRole.source else "sb",
                         priority=priority, bucket_size_bits=bucket, token_rate_bps=rate,
                         idle_timeout_s=idle_s, key_chunk_size=32, opened_as=opened_as)


def opened(c: KmCore, sid: str = "s1", now: float = 0.0) -> Stream:
    """An application's stream through authentication and configuration."""
    s, joined = c.claim_open(OWNER, "sa", "sb", Qos(), sid, "etsi004")
    assert not joined and s.machine.state is SessionState.authenticating
    c.apply(s, SessionEvent.auth_ok, now)
    ack, _ = c.session_config(config(sid), now)
    assert ack.ok
    return s


def of(effects: list[Effect], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in effects if isinstance(e, kind)]


def events(effects: list[Effect]) -> list[EventType]:
    return [e.type for e in effects if isinstance(e, Emit)]


def test_configuration_makes_the_stream_operative_and_settles_its_opener() -> None:
    c = core()
    s, _ = c.claim_open(OWNER, "sa", "sb", Qos(), "s1", "etsi004")
    c.apply(s, SessionEvent.auth_ok, 0.0)
    ack, effects = c.session_config(config(), 5.0)
    assert ack.ok and ack.node == "km0"
    assert s.machine.state is SessionState.operative
    assert ArmIdle("s1", 15.0) in effects and Decide("s1") in effects
    assert of(effects, PersistRow)[-1].state == "operative"
    assert EventType.session_operative in events(effects)
    assert c.forwarding.current("s1") is not None and s.bucket is not None
    assert c.served_qos(s).priority == 3


@pytest.mark.parametrize(("cfg", "reason"), [
    (config(node="km9"), "sent to km0"),
    (config(next_km="km7"), "no quantum link"),
    (config(role=HopRole.intermediate, prev_km=None), "needs prev_km and next_km"),
])
def test_a_configuration_that_cannot_apply_is_refused_and_changes_nothing(
        cfg: SessionConfig, reason: str) -> None:
    c = core()
    ack, effects = c.session_config(cfg, 0.0)
    assert not ack.ok and reason in ack.reason
    assert events(effects) == [EventType.config_refused]
    assert not c.streams and c.forwarding.current(cfg.session_id) is None


def test_a_stale_epoch_is_refused_and_a_newer_one_reroutes() -> None:
    c = core()
    opened(c)
    ack, effects = c.session_config(config(epoch=2), 1.0)
    assert ack.ok and EventType.session_rerouted in events(effects)
    ack, _ = c.session_config(config(epoch=1), 2.0)
    assert not ack.ok and "stale epoch" in ack.reason
    entry = c.forwarding.current("s1")
    assert entry is not None and entry.epoch == 2


def test_an_intermediate_hop_keeps_only_a_forwarding_row() -> None:
    c = KmCore("km1", {"km0", "km2"}, KmSettings())
    ack, effects = c.session_config(config(node="km1", role=HopRole.intermediate,
                                           prev_km="km0", next_km="km2"), 0.0)
    assert ack.ok and not c.streams
    (row,) = of(effects, PersistRow)
    assert row.state == "forwarding" and row.data["intermediate"]["0"]["next_km"] == "km2"


def test_the_same_configuration_again_is_acknowledged_and_changes_nothing() -> None:
    """Admission Control pushes a restarted KM what it may have lost (KmReady); a KM that
    holds it already acknowledges it: no transition, no row written, no timer re-armed."""
    c = core()
    s = opened(c)
    history = list(s.machine.history)
    ack, effects = c.session_config(config(), 2.0)
    assert ack.ok and effects == []
    assert s.machine.state is SessionState.operative and list(s.machine.history) == history
    hop = config("s2", node="km1", role=HopRole.intermediate, prev_km="km0", next_km="km2")
    mid = KmCore("km1", {"km0", "km2"}, KmSettings())
    assert mid.session_config(hop, 0.0)[0].ok
    ack, effects = mid.session_config(hop, 1.0)
    assert ack.ok and effects == []
    # a different configuration of the same epoch still applies (and is written)
    ack, effects = c.session_config(config(priority=1), 3.0)
    assert ack.ok and of(effects, PersistRow)


def test_a_stream_merged_into_the_peers_takes_its_id_and_keeps_an_alias() -> None:
    c = core()
    s, _ = c.claim_open(OWNER, "sa", "sb", Qos(), "mine", "etsi004")
    c.apply(s, SessionEvent.auth_ok, 0.0)
    ack, effects = c.session_config(config("theirs", opened_as="mine"), 1.0)
    assert ack.ok and Renamed("mine", "theirs") in effects
    assert c.stream("mine") is c.stream("theirs") is s and s.session_id == "theirs"
    assert c.app_stream(OWNER, "mine") is s


def test_refusal_settles_the_opener_with_refused_and_frees_the_stream() -> None:
    c = core()
    s, _ = c.claim_open(OWNER, "sa", "sb", Qos(), "s1", "etsi004")
    c.apply(s, SessionEvent.auth_ok, 0.0)
    ended, effects = c.session_delete(SessionDelete(
        session_id="s1", node="km0", refused=True, reason="over the SLA"), 1.0)
    assert ended is s and s.machine.state is SessionState.terminated
    assert effects[0] == Decide("s1", "refused", "over the SLA")
    assert FreeStream("s1") in effects
    assert EventType.admission_refused in events(effects)


def test_deleting_one_epoch_keeps_the_session() -> None:
    c = core()
    s = opened(c)
    c.session_config(config(epoch=1), 1.0)
    ended, _ = c.session_delete(SessionDelete(session_id="s1", node="km0", epoch=0), 2.0)
    assert ended is None and s.live and set(s.configs) == {1}


def test_keepalives_are_coalesced_with_one_trailing_signal() -> None:
    c = core(keepalive_min_interval_s=1.0)
    s = opened(c)
    first = c.apply(s, SessionEvent.key_request, 10.0)
    assert of(first, SendAdmission) == [SendAdmission(KeepAlive(session_id="s1", node="km0"))]
    c.apply(s, SessionEvent.key_done, 10.1)
    second = c.apply(s, SessionEvent.key_request, 10.2)
    assert of(second, SendAdmission) == [] and of(second, KeepAliveAt) == [
        KeepAliveAt("s1", 11.0)]
    c.apply(s, SessionEvent.key_done, 10.3)
    third = c.apply(s, SessionEvent.key_request, 10.4)  # already owed: nothing more
    assert not of(third, KeepAliveAt) and not of(third, SendAdmission)
    assert of(c.keepalive_due("s1", 11.0), SendAdmission)
    assert not s.keepalive_owed and s.last_keepalive == 11.0


def test_a_busy_stream_is_not_idle_and_an_idle_one_closes() -> None:
    c = core()
    s = opened(c, now=0.0)  # idle deadline 10
    c.apply(s, SessionEvent.key_request, 1.0)  # deadline 11, exchange in flight
    # busy: each wake sends a KeepAlive (coalesced) and looks again an interval later
    assert c.idle_due("s1", 5.0) == (5.25, [SendAdmission(KeepAlive(session_id="s1",
                                                                    node="km0"))])
    nxt, effects = c.idle_due("s1", 11.0)
    # busy (e.g. waiting for scarce key): not idle, and it keeps Admission Control's timer
    # going with a KeepAlive each keep-alive interval while it waits
    assert nxt == 11.25 and effects == [SendAdmission(KeepAlive(session_id="s1", node="km0"))]
    c.apply(s, SessionEvent.key_done, 11.1)
    assert c.idle_due("s1", 11.25) == (21.0, [])  # idle again: a full period from 11
    nxt, effects = c.idle_due("s1", 21.0)
    # idle here: the other end is asked first (keymanager/liveness.py); it is idle too
    assert nxt is None and s.machine.state is SessionState.operative
    assert of(effects, ProbePeer) == [ProbePeer("s1", 1, "km1", 0, "sb")]
    effects = c.probe_result("s1", 1, "idle", 10.0, 21.1)
    assert s.machine.state is SessionState.terminated
    assert SendAdmission(SessionClose(session_id="s1", node="km0",
                                      reason="idle_timeout")) in effects
    assert FreeStream("s1") in effects and c.forwarding.current("s1") is None


def test_admission_checks_state_then_the_token_bucket() -> None:
    c = core()
    s, _ = c.claim_open(OWNER, "sa", "sb", Qos(), "s1", "etsi004")
    with pytest.raises(PeerNotConnected):
        c.admit(s, 256, 1.0, 0.0)
    c.apply(s, SessionEvent.auth_ok, 0.0)
    c.session_config(config(bucket=1024, rate=256.0), 0.0)
    assert c.admit(s, 1024, 1.0, 0.0) == 0.0  # the burst
    assert c.admit(s, 128, 1.0, 0.0) == 0.5  # paced: half a second of tokens
    with pytest.raises(RateLimited):
        c.admit(s, 512, 1.0, 0.0)  # would wait 2.5 s > 1 s
    c.refund(s, 128, 0.0)
    assert c.admit(s, 256, 1.0, 0.0) == 1.0
    c.apply(s, SessionEvent.close, 1.0)
    with pytest.raises(SessionNotFound):
        c.admit(s, 8, 1.0, 2.0)


def test_a_request_larger_than_the_bucket_is_a_client_error_and_takes_nothing() -> None:
    c = core()
    s = opened(c)  # bucket 1024 bits
    with pytest.raises(ExceedsTokenBucket, match="exceed the session's token bucket of 1024"):
        c.admit(s, 1025, 1e9, 0.0)  # no patience makes it fit
    assert c.admit(s, 1024, 0.0, 0.0) == 0.0  # the bucket is untouched


def test_slots_pass_to_the_highest_priority_waiter() -> None:
    c = core(max_concurrent_exchanges=1)
    assert c.take_slot() and not c.take_slot()
    low, high = object(), object()
    assert c.wait_slot(low, 0, 0.0) and c.wait_slot(high, 7, 0.1)
    assert c.release_slot(0.2) is high  # the slot passes on, still taken
    assert c.release_slot(0.3) is low
    assert c.release_slot(0.4) is None and c.active == 0 and c.take_slot()


def test_failed_enc_keys_indexes_are_claimed_again_first_and_never_when_delivered() -> None:
    c = core()
    s = opened(c)
    held: dict[int, tuple[str, int]] = {}

    def key(_sid: str, i: int) -> tuple[str, int] | None:
        return held.get(i)
    assert c.claim_indexes(s, 3, 256, key) == [0, 1, 2]
    held.update({0: ("ready", 256), 1: ("delivered", 256)})
    c.release_indexes(s, [0, 1, 2], key)  # 1 was delivered: not a spare
    assert s.spare == [0, 2]
    # index 0 holds a 256-bit key: a batch of another size leaves it; 2 holds none yet
    assert c.claim_indexes(s, 2, 512, key) == [2, 3]
    assert s.spare == [0]
    assert c.claim_indexes(s, 2, 256, key) == [0, 4]


def test_get_key_index_moves_only_after_a_delivery() -> None:
    c = core()
    s = opened(c)
    assert c.next_get_index(s, None) == 0
    assert c.next_get_index(s, None) == 0  # nothing delivered yet: the same index again
    c.delivered_index(s, 0)
    assert c.next_get_index(s, None) == 1 and c.next_get_index(s, 7) == 7


def test_an_id_in_use_is_refused_and_an_implicit_stream_is_joined() -> None:
    c = core()
    opened(c)
    with pytest.raises(SessionIdInUse):
        c.claim_open(digest("CN=other"), "sa", "sb", Qos(), "s1", "etsi004")
    ack, _ = c.session_config(config("s2"), 0.0)  # configured before the app opened it
    assert ack.ok and c.streams["s2"].implicit
    s2, joined = c.claim_open(OWNER, "sa", "sb", Qos(), "s2", "etsi004")
    assert joined and s2.owner == OWNER


def test_restore_takes_back_streams_and_counts_from_what_was_delivered() -> None:
    c = core()
    s = opened(c)
    s.interface = "etsi014"
    row = c.persist(s)
    fresh = core()
    # indexes 0 and 1 were handed out; 2 (ready) and 3 (pending) are still held
    effects = fresh.restore({"s1": (row.state, row.data, 0.0)},
                            lambda sid: 2 if sid == "s1" else 0,
                            lambda sid: [3, 2] if sid == "s1" else [], 100.0)
    r = fresh.streams["s1"]
    assert r.machine.state is SessionState.operative and r.role is HopRole.source
    assert (r.next_index, r.next_gen, r.spare) == (2, 4, [2, 3])
    assert fresh.pairs[("sa", "sb")] == "s1"
    assert effects == [ArmIdle("s1", 110.0)]


# ---- per-application QoS at every KM of the path (#17.2) ----------------------------------
def test_an_endpoint_waits_for_key_up_to_the_timeout_admission_control_pushed() -> None:
    c = core()
    s, _ = c.claim_open(OWNER, "sa", "sb", Qos(timeout_ms=5000), "s1", "etsi004")
    assert s.wait_s == 5.0  # not configured yet: the opener's own
    c.apply(s, SessionEvent.auth_ok, 0.0)
    cfg = config("s1", priority=6).model_copy(update={"timeout_ms": 750})
    ack, _ = c.session_config(cfg, 0.0)
    assert ack.ok and s.wait_s == 0.75  # e.g. an ETSI 014 application's profile
    assert c.flow_priority("s1") == 6


def test_an_intermediate_weights_the_session_by_its_pushed_priority_even_after_restart(
) -> None:
    c = KmCore("km1", {"km0", "km2"}, KmSettings())
    ack, effects = c.session_config(config(node="km1", role=HopRole.intermediate,
                                           prev_km="km0", next_km="km2", priority=7), 0.0)
    assert ack.ok and c.flow_priority("s1") == 7 and c.flow_priority("other") == 0
    (row,) = of(effects, PersistRow)
    fresh = KmCore("km1", {"km0", "km2"}, KmSettings())
    fresh.restore({"s1": (row.state, row.data, 0.0)}, lambda sid: 0, lambda sid: [], 1.0)
    assert fresh.flow_priority("s1") == 7


def test_a_session_ending_gives_its_share_of_link_key_back() -> None:
    c = core()
    s = opened(c)
    shares = c.shares["km1"]
    assert shares.request("t", "s1", s.priority, 1000, 10.0, 0.0) == []
    shares.supply(600, 0.0)
    assert shares.credit("s1") == 600
    shares.cancel("t")
    c.apply(s, SessionEvent.close, 1.0)
    assert "s1" not in shares.flows and shares.pool == 600

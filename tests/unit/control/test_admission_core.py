"""The pure Admission Control core: events in, effects out (no bus, no clock)."""

from __future__ import annotations

import dataclasses

import pytest

from keyplane.config import SlaProfile, Topology
from keyplane.control import AdmissionCore, AdmissionSettings, AdmissionState, check_qos
from keyplane.control.admission import (
    AnnounceVirtualLink,
    ForgetStored,
    Notify,
    PushConfigs,
    RepushConfig,
    RequestRoute,
    SendDeletes,
)
from keyplane.control.wire import RerouteOrder
from keyplane.events import EventType
from keyplane.messages import HopRole, Qos
from tests.support.control import open_request

SLA = SlaProfile(max_sessions=2, max_bps=10_000, min_bps=0, priority=4)


@pytest.mark.parametrize(("qos", "fragment"), [
    (Qos(max_bps=10_001), "max_bps 10001 above"),
    (Qos(min_bps=10_001), "min_bps 10001 above the SLA"),
    (Qos(max_bps=500, min_bps=600), "min_bps 600 above max_bps 500"),
    (Qos(priority=5), "priority 5 above"),
    (Qos(key_chunk_size=8192), "key_chunk_size 8192"),
    (Qos(ttl_s=100_000), "ttl_s 100000"),
    (Qos(max_bps=100, jitter=101), "jitter 101 larger"),
])
def test_check_qos_names_the_violated_bound(qos: Qos, fragment: str) -> None:
    reason = check_qos(qos, SLA, AdmissionSettings())
    assert reason is not None and fragment in reason


def test_check_qos_accepts_within_the_sla() -> None:
    assert check_qos(Qos(max_bps=10_000, min_bps=500, priority=4, jitter=10), SLA,
                     AdmissionSettings()) is None


def test_core_requests_a_route_only_once_both_peers_opened(topology: Topology) -> None:
    core = AdmissionCore(AdmissionSettings(peer_wait_timeout_s=5.0))
    alice, dave = topology.user("alice"), topology.user("dave")
    ack, effects = core.open(open_request("s", "a", "alice", "sae_a", "sae_d", min_bps=50),
                             alice, "d", 0.0, source_node="a")
    assert ack.accepted_for_review
    assert not [e for e in effects if isinstance(e, RequestRoute | PushConfigs | SendDeletes)]
    assert core.next_deadline() == 5.0
    _, effects = core.open(open_request("s", "d", "dave", "sae_d", "sae_a", min_bps=80),
                           dave, "a", 1.0, source_node="d")
    (route,) = [e for e in effects if isinstance(e, RequestRoute)]
    assert (route.source_node, route.destination_node, route.min_bps) == ("a", "d", 80.0)
    assert core.next_deadline() is None  # the peer wait is over, no session timer yet
    (push,) = [e for e in core.route_found("s", 0, ["a", "e", "d"], 1.1)
               if isinstance(e, PushConfigs)]
    assert [c.node for c in push.configs] == ["a", "e", "d"]
    core.configs_applied("s", 0, ("a", "e", "d"), {}, 1.2)
    sess = core.session("s")
    assert sess is not None and sess.state is AdmissionState.active
    assert sess.timer_deadline == pytest.approx(1.2 + 20 + 1.0)


def active_session(core: AdmissionCore, topology: Topology, sid: str,
                   path: list[str]) -> None:
    core.open(open_request(sid, "a", "alice", "sae_a", "sae_d"), topology.user("alice"), "d",
              0.0, source_node="a")
    core.open(open_request(sid, "d", "dave", "sae_d", "sae_a"), topology.user("dave"), "a",
              0.0, source_node="d")
    core.route_found(sid, 0, path, 0.1)
    core.configs_applied(sid, 0, tuple(path), {}, 0.2)


def test_core_pushes_a_restarted_km_its_hop_of_each_active_session_again(
        topology: Topology) -> None:
    core = AdmissionCore()
    active_session(core, topology, "s", ["a", "e", "d"])
    active_session(core, topology, "t", ["a", "d"])
    (hop,) = core.km_ready("e")
    assert isinstance(hop, RepushConfig)
    assert (hop.config.session_id, hop.config.node, hop.config.epoch, hop.config.role,
            hop.config.prev_km, hop.config.next_km) == ("s", "e", 0, HopRole.intermediate,
                                                        "a", "d")
    assert sorted(e.config.session_id for e in core.km_ready("a")  # type: ignore[union-attr]
                  ) == ["s", "t"]
    assert core.km_ready("b") == []
    # the answer changes no state, it is only reported
    (ok,) = core.config_repushed(hop.config, None)
    (bad,) = core.config_repushed(hop.config, "not durable")
    assert isinstance(ok, Notify) and ok.type is EventType.configured
    assert isinstance(bad, Notify) and bad.type is EventType.config_refused
    assert all(s.state is AdmissionState.active for s in core.sessions.values())
    # a session being moved to a new epoch gets that epoch's push, not the old one again
    _, effects = core.reroute(RerouteOrder(session_id="s", old_epoch=0, new_epoch=1,
                                           path=["a", "b", "d"]), 1.0)
    assert [e for e in effects if isinstance(e, PushConfigs)]
    assert [e.config.session_id for e in core.km_ready("a")] == ["t"]  # type: ignore[union-attr]


def test_core_peer_wait_expiry_refuses_only_the_waiting_km(topology: Topology) -> None:
    core = AdmissionCore(AdmissionSettings(peer_wait_timeout_s=5.0))
    core.open(open_request("s", "a", "alice", "sae_a", "sae_d"), topology.user("alice"), "d",
              0.0)
    assert core.tick(4.9) == []
    (delete,) = [e for e in core.tick(5.0) if isinstance(e, SendDeletes)]
    assert [(d.node, d.refused) for d in delete.deletes] == [("a", True)]
    assert core.session("s") is not None  # kept until the refusal is confirmed
    core.deletes_done("s", delete.purpose, None, ("a",), (), 5.1)
    assert core.session("s") is None


def test_core_refuses_a_request_from_a_km_that_does_not_serve_the_sae(
        topology: Topology) -> None:
    core = AdmissionCore()
    _, effects = core.open(open_request("s", "b", "alice", "sae_a", "sae_d"),
                           topology.user("alice"), "d", 0.0, source_node="a")
    (delete,) = [e for e in effects if isinstance(e, SendDeletes)]
    assert delete.deletes[0].node == "b" and "not served by b" in delete.deletes[0].reason


def _active_pair(topology: Topology, core: AdmissionCore, sid: str, opened_as: str) -> None:
    """``sid`` a → d (the responder opened it as ``opened_as``), active on a-e-d at t=1."""
    core.open(open_request(sid, "a", "alice", "sae_a", "sae_d", min_bps=50),
              topology.user("alice"), "d", 0.0, source_node="a")
    core.open(open_request(opened_as, "d", "dave", "sae_d", "sae_a", min_bps=50),
              topology.user("dave"), "a", 0.5, source_node="d")
    core.route_found(sid, 0, ["a", "e", "d"], 0.6)
    core.configs_applied(sid, 0, ("a", "e", "d"), {}, 1.0)


def test_core_record_restores_into_an_equal_session_with_a_fresh_timer(
        topology: Topology) -> None:
    first = AdmissionCore()
    _active_pair(topology, first, "s", "s")
    old = first.session("s")
    assert old is not None
    rec = old.record()
    assert (rec.state, rec.path, rec.min_bps) == ("active", ("a", "e", "d"), 50.0)

    core = AdmissionCore()
    effects = core.restore(rec, 500.0)
    sess = core.session("s")
    assert sess is not None and sess.state is AdmissionState.active
    assert (sess.initiator, sess.responder) == (old.initiator, old.responder)
    assert (sess.path, sess.epoch, sess.rate_bps, sess.bucket_size_bits) == (
        old.path, old.epoch, old.rate_bps, old.bucket_size_bits)
    assert sess.timer_deadline == pytest.approx(500.0 + 20 + 1.0)  # from the restart
    assert core.live_sessions_of("alice") == 1 and core.live_sessions_of("dave") == 1
    (live,) = core.live_sessions()
    assert (live.session_id, live.epoch, live.path, live.min_bps) == ("s", 0,
                                                                      ["a", "e", "d"], 50.0)
    assert [e.active for e in effects if isinstance(e, AnnounceVirtualLink)] == [True]
    assert core.restore(rec, 501.0) == []  # once only


def test_core_unreadable_record_is_deleted_on_its_path_and_forgotten(
        topology: Topology) -> None:
    first = AdmissionCore()
    _active_pair(topology, first, "s", "s")
    old = first.session("s")
    assert old is not None
    rec = dataclasses.replace(old.record(), initiator={"node": "a"})
    core = AdmissionCore()
    effects = core.restore(rec, 10.0)
    assert core.session("s") is None and core.live_sessions() == []
    (delete,) = [e for e in effects if isinstance(e, SendDeletes)]
    assert [d.node for d in delete.deletes] == ["a", "e", "d"]
    assert "stored session unreadable" in delete.deletes[0].reason
    assert [e.session_id for e in effects if isinstance(e, ForgetStored)] == ["s"]

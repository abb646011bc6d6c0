"""Per-application QoS at Admission Control (issue #17.2): OPEN_CONNECT's priority and
rates, the ETSI 014 application's profile, both capped by the owner's SLA, pushed to every
KM on the path."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from keyplane.config import ApplicationQos, SlaProfile, Topology, User, parse_topology
from keyplane.control import AdmissionCore, AdmissionSettings
from keyplane.control.admission import PushConfigs, RequestRoute, SendDeletes
from keyplane.control.admission.qos import qos_offer
from keyplane.errors import ConfigError
from keyplane.messages import Qos, SessionConfig
from tests.support.control import TOPOLOGY, open_request

# alice (SLA priority 5, 10,000 bps) runs a critical and a background application at a
BACKGROUND = {"sae_a": {"priority": 1, "max_bps": 2000, "min_bps": 500, "timeout_ms": 250}}


def _topology(profiles: dict[str, object] | None = None) -> Topology:
    text = TOPOLOGY
    if profiles is not None:
        text = text.replace("allowed_peers: [sae_d, sae_c]}",
                            f"allowed_peers: [sae_d, sae_c], applications: {profiles}}}")
    return parse_topology(text)


def _configs(core: AdmissionCore, effects: list[object], sid: str,
             path: list[str]) -> tuple[SessionConfig, ...]:
    (route,) = [e for e in effects if isinstance(e, RequestRoute)]
    assert route.session_id == sid
    (push,) = [e for e in core.route_found(sid, route.epoch, path, 1.0)
               if isinstance(e, PushConfigs)]
    return push.configs


def test_etsi004_open_connect_priority_and_rates_apply_the_lower_of_both_ends() -> None:
    topo = _topology()
    core = AdmissionCore()
    core.open(open_request("s", "a", "alice", "sae_a", "sae_d", priority=5, max_bps=6000,
                           min_bps=300, timeout_ms=900),
              topo.user("alice"), "d", 0.0, source_node="a")
    _, effects = core.open(open_request("s", "d", "dave", "sae_d", "sae_a", priority=2,
                                        max_bps=0, timeout_ms=400),
                           topo.user("dave"), "a", 0.5, source_node="d")
    src, mid, dst = _configs(core, effects, "s", ["a", "e", "d"])
    for cfg in (src, mid, dst):
        assert cfg.priority == 2  # what dave's application asked (alice's asked 5)
        assert cfg.token_rate_bps == 6000  # alice's 6000; dave's 0 = his SLA's 8000
        assert cfg.min_bps == 300
    assert (src.timeout_ms, mid.timeout_ms, dst.timeout_ms) == (900, None, 400)


def test_etsi004_request_above_the_sla_is_refused_with_a_capped_offer() -> None:
    topo = _topology()
    core = AdmissionCore()
    _, effects = core.open(open_request("s", "d", "dave", "sae_d", "sae_a", priority=6,
                                        max_bps=9000),
                           topo.user("dave"), "a", 0.0, source_node="d")
    (deletes,) = [e for e in effects if isinstance(e, SendDeletes)]
    (refusal,) = deletes.deletes
    assert refusal.refused and "max_bps 9000 above the SLA's 8000" in refusal.reason
    assert refusal.qos_offer is not None
    assert (refusal.qos_offer.priority, refusal.qos_offer.max_bps) == (3, 8000)
    assert core.session("s") is None  # nothing changed


def test_etsi014_session_runs_with_the_application_profile_capped_by_the_sla() -> None:
    topo = _topology(BACKGROUND)
    core = AdmissionCore()
    _, effects = core.open(open_request("k", "a", "alice", "sae_a", "sae_c",
                                        interface="etsi014", key_chunk_size=32),
                           topo.user("alice"), "c", 0.0, source_node="a")
    src, mid, dst = _configs(core, effects, "k", ["a", "b", "c"])
    for cfg in (src, mid, dst):
        assert (cfg.priority, cfg.token_rate_bps, cfg.min_bps) == (1, 2000, 500)
    assert (src.timeout_ms, mid.timeout_ms, dst.timeout_ms) == (250, None, 250)
    (route,) = [e for e in effects if isinstance(e, RequestRoute)]
    assert route.min_bps == 500  # the profile's reservation goes to the Routing Element


def test_etsi014_without_a_profile_gets_the_sla() -> None:
    topo = _topology()
    core = AdmissionCore()
    _, effects = core.open(open_request("k", "a", "alice", "sae_a", "sae_c",
                                        interface="etsi014"),
                           topo.user("alice"), "c", 0.0, source_node="a")
    src, _, dst = _configs(core, effects, "k", ["a", "b", "c"])
    assert (src.priority, src.token_rate_bps, src.min_bps) == (5, 10_000, 0)
    assert (src.timeout_ms, dst.timeout_ms) == (None, None)


def test_etsi004_rates_left_at_zero_take_the_application_profile() -> None:
    topo = _topology(BACKGROUND)
    core = AdmissionCore()
    _, effects = core.open(open_request("k", "a", "alice", "sae_a", "sae_c",
                                        interface="etsi014"),
                           topo.user("alice"), "c", 0.0, source_node="a")
    assert _configs(core, effects, "k", ["a", "b", "c"])[0].token_rate_bps == 2000
    core = AdmissionCore()
    core.open(open_request("s", "a", "alice", "sae_a", "sae_d", priority=4),
              topo.user("alice"), "d", 0.0, source_node="a")
    _, effects = core.open(open_request("s", "d", "dave", "sae_d", "sae_a", priority=3),
                           topo.user("dave"), "a", 0.5, source_node="d")
    src = _configs(core, effects, "s", ["a", "e", "d"])[0]
    assert (src.priority, src.token_rate_bps, src.min_bps) == (3, 2000, 500)


@pytest.mark.parametrize(("profile", "fragment"), [
    ({"priority": 6}, "applications.sae_a.priority 6 above the SLA's 5"),
    ({"max_bps": 20_000}, "applications.sae_a.max_bps 20000 above the SLA's 10000"),
    ({"max_bps": 100, "min_bps": 200}, "applications.sae_a.min_bps 200 above its max_bps 100"),
])
def test_application_profile_above_the_sla_is_refused_on_load(
        profile: dict[str, int], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        _topology({"sae_a": profile})


def test_application_profile_of_another_users_application_is_refused_on_load() -> None:
    with pytest.raises(ConfigError, match="'sae_d' is not an application of 'alice'"):
        _topology({"sae_d": {"priority": 1}})


def test_application_profile_survives_the_user_database_round_trip() -> None:
    """Profiles live in the SLA document the store keeps (``users.sla``, JSON)."""
    sla = SlaProfile(priority=5, applications={"x": ApplicationQos(priority=2, max_bps=10)})
    again = SlaProfile.model_validate(sla.model_dump(mode="json"))
    assert again == sla and again.application("x").priority == 2
    assert again.application("y") == ApplicationQos()
    with pytest.raises(ValidationError):
        User(id="u", sla={"applications": {"x": {"priority": 9}}})  # type: ignore[arg-type]


def test_qos_offer_caps_every_field() -> None:
    sla = SlaProfile(max_bps=1000, priority=2)
    offer = qos_offer(Qos(max_bps=5000, min_bps=3000, priority=7, jitter=2000,
                          key_chunk_size=10_000, ttl_s=10**6), sla, AdmissionSettings())
    assert (offer.max_bps, offer.min_bps, offer.priority, offer.jitter) == (1000, 1000, 2, 1000)
    assert (offer.key_chunk_size, offer.ttl_s) == (4096, 86_400)

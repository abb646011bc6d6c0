"""Admission Control and the Routing Element under hybrid policies, alone and end to end."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.bus import Bus, MemoryBus, topics
from keyplane.certs import ensure_network_certs
from keyplane.clock import VirtualClock
from keyplane.config import HybridPolicy, Topology, parse_topology
from keyplane.control import ControlPlane, ControlSettings
from keyplane.control.admission import AdmissionCore, RequestRoute
from keyplane.control.routing import NoRoute, RoutingCore
from keyplane.errors import QosNotMet, RelayTimeout
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.keymanager import KeyManager, KmIdentity, KmSettings
from keyplane.keymanager.hybrid import PROVENANCE_EXTENSION, allowed_sources, meet
from keyplane.keymanager.interface import Caller
from keyplane.messages import LinkAlarm, SessionOpenRequest
from keyplane.store import Database
from keyplane.store.topology import LinkMetrics
from tests.support.fake_kms import wait_until

TOPOLOGY = """
version: 1
name: hybrid-test
nodes: [{id: km0}, {id: km1}, {id: km2}, {id: km3}]
links:
  - {endpoints: [km0, km1], length_km: 10}
  - {endpoints: [km1, km2], length_km: 10}
  - {endpoints: [km0, km3], length_km: 10}
  - {endpoints: [km3, km2], length_km: 10}
users:
  - {id: uq, certificate_subject: "CN=q", sla: {hybrid_policy: qkd-only}}
  - {id: ue, certificate_subject: "CN=e", sla: {hybrid_policy: either}}
  - {id: uc, certificate_subject: "CN=c", sla: {hybrid_policy: qkd-and-pqc}}
  - {id: ua, certificate_subject: "CN=a", sla: {hybrid_policy: at-least-qkd}}
applications:
  - {sae_id: q0, owner: uq, node: km0}
  - {sae_id: q2, owner: uq, node: km2}
  - {sae_id: e0, owner: ue, node: km0}
  - {sae_id: e2, owner: ue, node: km2}
  - {sae_id: c2, owner: uc, node: km2}
  - {sae_id: a2, owner: ua, node: km2}
"""
# km0 - km1 - km2 and km0 - km3 - km2: two disjoint 2-hop paths from km0 to km2


@pytest.fixture(scope="module")
def topo() -> Topology:
    return parse_topology(TOPOLOGY, "hybrid-test")


# ---------------------------------------------------------------- policy algebra


@given(st.sampled_from(list(HybridPolicy)), st.sampled_from(list(HybridPolicy)))
def test_policy_meet_is_the_intersection_of_allowed_sources(a: HybridPolicy,
                                                            b: HybridPolicy) -> None:
    m = meet(a, b)
    assert m == meet(b, a)
    both = allowed_sources(a) & allowed_sources(b)
    if m is None:
        assert not both
    else:
        assert allowed_sources(m) == both
        assert meet(m, a) == m  # narrowing twice changes nothing


def test_policy_meet_table_for_the_deployed_modes() -> None:
    q, c, al, e = (HybridPolicy.qkd_only, HybridPolicy.qkd_and_pqc, HybridPolicy.at_least_qkd,
                   HybridPolicy.either)
    assert meet(q, c) is None
    assert (meet(q, al), meet(q, e), meet(c, al), meet(c, e), meet(al, e)) == (q, q, c, c, al)
    assert [p.allows_pqc_alone for p in (q, c, al, e)] == [False, False, False, True]


# ---------------------------------------------------------------- Admission Control


def _open(core: AdmissionCore, topo: Topology, sid: str, node: str, user: str, src: str,
          dst: str) -> list[object]:
    req = SessionOpenRequest(session_id=sid, node=node, user_id=user, source_sae=src,
                             destination_sae=dst)
    _, effects = core.open(req, topo.user(user), topo.application(dst).node, 0.0,
                           source_node=node)
    return list(effects)


def test_admission_routes_and_configures_under_both_users_policy(topo: Topology) -> None:
    core = AdmissionCore()
    _open(core, topo, "s1", "km0", "ue", "e0", "a2")
    effects = _open(core, topo, "s1", "km2", "ua", "a2", "e0")
    (route,) = [e for e in effects if isinstance(e, RequestRoute)]
    assert route.hybrid_policy == "at-least-qkd"  # either meets at-least-qkd
    configs = core.route_found("s1", 0, ["km0", "km1", "km2"], 0.0)[-1].configs  # type: ignore[attr-defined]
    assert {c.hybrid_policy for c in configs} == {"at-least-qkd"}


def test_admission_refuses_users_whose_policies_share_no_source(topo: Topology) -> None:
    core = AdmissionCore()
    _open(core, topo, "s2", "km0", "uq", "q0", "c2")
    effects = _open(core, topo, "s2", "km2", "uc", "c2", "q0")
    assert not any(isinstance(e, RequestRoute) for e in effects)
    refused = [e for e in effects if getattr(e, "type", None) is EventType.admission_refused]
    assert "no key source in common" in refused[0].data["reason"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- Routing Element


def test_routing_link_without_qkd_key_serves_only_fallback_sessions(topo: Topology) -> None:
    core = RoutingCore.from_topology(topo)
    core.apply_alarm(LinkAlarm(link_id="km1-km2", kind="link_down"))
    core.apply_alarm(LinkAlarm(link_id="km3-km2", kind="link_down"))
    with pytest.raises(NoRoute):
        core.compute_path("km0", "km2")  # qkd-only, at-least-qkd, qkd-and-pqc
    route = core.compute_path("km0", "km2", pqc_fallback=True)
    assert route.nodes[-1] == "km2" and len(route.nodes) == 3
    res = core.reserve("s", 0, route, 100.0, pqc_fallback=True)
    assert res.pqc_fallback
    with pytest.raises(NoRoute, match="no QKD key"):
        core.reserve("s2", 0, route, 0.0)


def test_routing_prefers_a_qkd_path_over_a_pqc_hop(topo: Topology) -> None:
    core = RoutingCore.from_topology(topo)
    # monitoring: km1-km2 produces no key and its buffers are empty (no alarm raised)
    core.set_metrics({"km1-km2": LinkMetrics("km1-km2", skr_bps=0.0, buffer_bits=0)})
    assert not core.has_qkd_key("km1-km2")
    assert core.compute_path("km0", "km2", pqc_fallback=True).nodes == ("km0", "km3", "km2")
    assert core.compute_path("km0", "km2").nodes == ("km0", "km3", "km2")
    core.set_metrics({"km1-km2": LinkMetrics("km1-km2", skr_bps=0.0, buffer_bits=4096)})
    assert core.has_qkd_key("km1-km2")  # stored key still serves while it lasts


# ---------------------------------------------------------------- end to end


@pytest.fixture
async def plane(topo: Topology, km_db: Database, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[tuple[ControlPlane, dict[str, KeyManager], MemorySink, Bus]]:
    clock = VirtualClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    bus = MemoryBus(seed=201)
    certs = ensure_network_certs(topo, tmp_path_factory.mktemp("certs"))
    async with ControlPlane(topo, bus, km_db, clock, events, ControlSettings()) as cp:
        kms = {}
        for n in topo.nodes:
            ident = KmIdentity.load(n.id, certs.kms[n.id].cert, certs.kms[n.id].key,
                                    certs.ca.cert)
            km = KeyManager(n.id, topo, bus, km_db, clock, events,
                            KmSettings(link_reserve_bytes=512, relay_attempts=1), ident)
            await km.start()
            kms[n.id] = km
        rng = random.Random(202)
        for link in topo.links:
            for b in range(4):
                block = rng.randbytes(4096)
                for end in link.endpoints:
                    await kms[end].put_block(link.link_id, b, block)
        for km in kms.values():
            assert await km.links_acknowledged()
        try:
            yield cp, kms, sink, bus
        finally:
            for km in kms.values():
                await km.close()


async def test_outage_on_every_path_either_user_keeps_keys_qkd_only_user_is_refused(
        plane: tuple[ControlPlane, dict[str, KeyManager], MemorySink, Bus]) -> None:
    """Both km0->km2 paths lose QKD (alarms from Monitoring, stores empty): the either
    user's live session stays on its path and its keys go through ML-KEM; the qkd-only
    user's live session stops with KeyWaitExpired and a new one finds no route."""
    cp, kms, sink, bus = plane
    either, qkd = Caller("CN=e"), Caller("CN=q")
    assert len(await kms["km0"].enc_keys(either, "e0", "e2", 1, 256)) == 1
    assert len(await kms["km0"].enc_keys(qkd, "q0", "q2", 1, 256)) == 1
    for link in ("km1-km2", "km3-km2"):
        await bus.publish(topics.alarm(link), LinkAlarm(link_id=link, kind="link_down"))
        for node in ("km2", "km1" if link == "km1-km2" else "km3"):
            store = kms[node].link_stores[link]
            store.take_send(store.sendable_bytes)
    assert cp.routing is not None
    await wait_until(lambda: not cp.routing.core.usable("km3-km2")  # type: ignore[union-attr]
                 and not cp.routing.core.usable("km1-km2"))  # type: ignore[union-attr]
    keys = await kms["km0"].enc_keys(either, "e0", "e2", 2, 256)
    assert {r["source"] for k in keys for r in k.extension[PROVENANCE_EXTENSION]  # type: ignore[index]
            } == {"qkd", "pqc"}
    # the qkd-only request waits for key its policy allows (on the virtual clock), none comes
    request = asyncio.create_task(kms["km0"].enc_keys(qkd, "q0", "q2", 1, 256))
    clock = kms["km0"]._clock
    assert isinstance(clock, VirtualClock)
    for _ in range(1000):
        if request.done():
            break
        await clock.advance(0.5)
    # the hop's refusal (KeyWaitExpired) or the source's own confirmation wait (RelayTimeout,
    # its base class) ends it, whichever the virtual clock reaches first: the timeout status
    with pytest.raises(RelayTimeout):
        await request
    kept = [e for e in sink.of_type(EventType.route_computed) if e.data.get("kept")]
    assert kept, "the either session was kept on its path, not moved or dropped"
    # a new session of a qkd-only user finds no route; an either user's does
    with pytest.raises(QosNotMet, match="no route"):
        await kms["km2"].enc_keys(Caller("CN=c"), "c2", "e0", 1, 256)
    assert len(await kms["km2"].enc_keys(either, "e2", "e0", 1, 256)) == 1



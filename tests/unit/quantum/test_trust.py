"""Trust in the topology and in routing (issue #19.2), alone and through real key managers.

km0 ─ km1 ─ km2 ─ km3 are joined by point-to-point links (each inner node a trusted relay);
km0 ═ km2 is a measurement-assisted link through the untrusted station ``ms02``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import AsyncIterator

import httpx
import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.api.client import AsyncEtsi004Client, Etsi004Status, Etsi004StatusError
from keyplane.api.server import create_km_app
from keyplane.api.settings import ApiSettings
from keyplane.bus import MemoryBus
from keyplane.certs import ensure_network_certs
from keyplane.clock import VirtualClock
from keyplane.config import Topology, parse_topology
from keyplane.control import ControlPlane, ControlSettings
from keyplane.control.admission import AdmissionCore, RequestRoute
from keyplane.control.routing import NoRoute, RoutingCore
from keyplane.errors import ConfigError, QosNotMet
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.keymanager import KeyManager, KmIdentity, KmSettings
from keyplane.keymanager.interface import Caller
from keyplane.messages import SessionOpenRequest
from keyplane.store import Database
from keyplane.store.topology import LinkMetrics
from keyplane.trust import exposed_nodes, trusted_relays
from tests.support.tls_scope import with_client_certificate

TOPOLOGY = """
version: 1
name: trust-test
nodes: [{id: km0}, {id: km1}, {id: km2}, {id: km3}]
untrusted_nodes:
  - {id: ms02, role: measurement-station}
links:
  - {endpoints: [km0, km1], length_km: 10}
  - {endpoints: [km1, km2], length_km: 10}
  - {endpoints: [km2, km3], length_km: 10}
  - {id: km0-km2, endpoints: [km0, km2], length_km: 60, protocol: mdi-qkd, station: ms02}
users:
  - {id: uz, certificate_subject: "CN=z", sla: {max_trusted_relays: 0}}
  - {id: u1, certificate_subject: "CN=one", sla: {max_trusted_relays: 1}}
  - {id: uf, certificate_subject: "CN=free"}
applications:
  - {sae_id: z0, owner: uz, node: km0}
  - {sae_id: z2, owner: uz, node: km2}
  - {sae_id: z3, owner: uz, node: km3}
  - {sae_id: o3, owner: u1, node: km3}
  - {sae_id: f0, owner: uf, node: km0}
"""


@pytest.fixture(scope="module")
def topo() -> Topology:
    return parse_topology(TOPOLOGY, "trust-test")


# ---------------------------------------------------------------- topology file


def test_topology_untrusted_station_is_not_a_key_manager(topo: Topology) -> None:
    assert [n.id for n in topo.nodes] == ["km0", "km1", "km2", "km3"]
    assert topo.untrusted_node("ms02").role == "measurement-station"
    assert topo.link("km0-km2").station == "ms02"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("station: ms02", "station: ms99", "links[3].station: unknown untrusted node 'ms99'"),
    ("{id: ms02, role:", "{id: km1, role:", "untrusted_nodes[0].id: 'km1' is also a trusted"),
    ("max_trusted_relays: 0", "max_trusted_relays: -1", "users[0].sla.max_trusted_relays"),
], ids=["unknown-station", "id-clash", "negative-cap"])
def test_topology_bad_trust_fields_are_refused_by_path(old: str, new: str,
                                                       message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_topology(TOPOLOGY.replace(old, new, 1))
    assert message in str(err.value)


def test_exposed_nodes_are_the_key_managers_of_the_hops_in_path_order() -> None:
    provenance = [{"hop": "km3->km2", "source": "qkd"}, {"hop": "km2->km0", "source": "pqc"},
                  {"hop": "km2->km0", "source": "qkd"}, {"bogus": "x"}]
    assert exposed_nodes(provenance) == ["km3", "km2", "km0"]
    assert trusted_relays(("km3", "km2", "km0")) == ("km2",)


# ---------------------------------------------------------------- Routing Element


def _heavy_direct(core: RoutingCore) -> None:
    """Weigh the measurement-assisted link far above the relayed path (a poor key rate)."""
    core.set_metrics({lid: LinkMetrics(link_id=lid, t=0.0, state="up",
                                       skr_bps=10.0 if lid == "km0-km2" else 1e6,
                                       qber=0.01, sessions=0, buffer_bits=1 << 20)
                      for lid in ("km0-km1", "km1-km2", "km2-km3", "km0-km2")})


def test_routing_without_a_cap_takes_the_lightest_path_through_relays(topo: Topology) -> None:
    core = RoutingCore.from_topology(topo)
    _heavy_direct(core)
    assert core.compute_path("km0", "km2").nodes == ("km0", "km1", "km2")


def test_routing_no_trusted_relays_takes_the_measurement_assisted_link(topo: Topology) -> None:
    core = RoutingCore.from_topology(topo)
    _heavy_direct(core)
    route = core.compute_path("km0", "km2", max_trusted_relays=0)
    assert route.nodes == ("km0", "km2") and route.links == ("km0-km2",)
    assert core.untrusted_on(route) == ["ms02"]
    with pytest.raises(NoRoute, match="at most 0 trusted relays"):
        core.compute_path("km0", "km3", max_trusted_relays=0)
    assert core.compute_path("km0", "km3", max_trusted_relays=1).nodes == ("km0", "km2", "km3")


def test_routing_reserve_refuses_a_route_above_the_cap(topo: Topology) -> None:
    core = RoutingCore.from_topology(topo)
    route = core.compute_path("km0", "km3")
    with pytest.raises(NoRoute, match="trusted relays"):
        core.reserve("s", 0, route, 0.0, max_trusted_relays=0)
    assert core.reservations() == []


def test_routing_reroute_keeps_the_sessions_cap(topo: Topology) -> None:
    core = RoutingCore.from_topology(topo)
    res = core.route_and_reserve("s", 0, "km0", "km2", 0.0, max_trusted_relays=0)
    core.set_enabled("km0-km2", False)
    with pytest.raises(NoRoute):  # the relayed path km0-km1-km2 is not an option
        core.plan_reroute(res)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(4, 9), st.integers(0, 3))
def test_routing_capped_path_is_the_lightest_within_the_cap(seed: int, n: int,
                                                            cap: int) -> None:
    """Against brute force over every simple path: the capped search finds one of the
    lightest paths with at most ``cap`` relays, or refuses exactly when there is none."""
    rng = random.Random(seed)
    g: nx.Graph[str] = nx.gnp_random_graph(n, 0.4, seed=seed)  # type: ignore[assignment]
    core = RoutingCore(weight_fn=lambda m: 1.0 if m is None else float(m.sessions))
    metrics: dict[str, LinkMetrics] = {}
    for u, v in g.edges:
        lid = f"n{u}-n{v}"
        core.add_link(lid, f"n{u}", f"n{v}")
        metrics[lid] = LinkMetrics(link_id=lid, t=0.0, state="up", skr_bps=1.0, qber=0.0,
                                   sessions=rng.randint(1, 9), buffer_bits=1)
    core.set_metrics(metrics)
    src, dst = "n0", f"n{n - 1}"
    for node in (src, dst):
        core.add_node(node)
    best = min((sum(core.weight(core.graph.edges[a, b]["link"].link_id)
                    for a, b in itertools.pairwise(p))
                for p in nx.all_simple_paths(core.graph, src, dst, cutoff=cap + 1)),
               default=None)
    if best is None:
        with pytest.raises(NoRoute):
            core.compute_path(src, dst, max_trusted_relays=cap)
        return
    route = core.compute_path(src, dst, max_trusted_relays=cap)
    assert len(route.nodes) - 2 <= cap
    assert route.cost == pytest.approx(best)


# ---------------------------------------------------------------- Admission Control


def _open(core: AdmissionCore, topo: Topology, sid: str, node: str, user: str, src: str,
          dst: str) -> list[object]:
    req = SessionOpenRequest(session_id=sid, node=node, user_id=user, source_sae=src,
                             destination_sae=dst)
    _, effects = core.open(req, topo.user(user), topo.application(dst).node, 0.0,
                           source_node=node)
    return list(effects)


def test_admission_asks_routing_for_the_tightest_cap_of_both_users(topo: Topology) -> None:
    core = AdmissionCore()
    _open(core, topo, "s1", "km0", "uf", "f0", "o3")
    effects = _open(core, topo, "s1", "km3", "u1", "o3", "f0")
    (route,) = [e for e in effects if isinstance(e, RequestRoute)]
    assert route.max_trusted_relays == 1
    assert [s.max_trusted_relays for s in core.live_sessions()] == []  # no path yet
    core.route_found("s1", 0, ["km0", "km2", "km3"], 0.0)
    assert [s.max_trusted_relays for s in core.live_sessions()] == [1]


# ---------------------------------------------------------------- end to end


@pytest.fixture
async def plane(topo: Topology, km_db: Database, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[tuple[dict[str, KeyManager], MemorySink]]:
    clock = VirtualClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    bus = MemoryBus(seed=1902)
    certs = ensure_network_certs(topo, tmp_path_factory.mktemp("certs"))
    async with ControlPlane(topo, bus, km_db, clock, events, ControlSettings()):
        kms = {}
        for n in topo.nodes:
            ident = KmIdentity.load(n.id, certs.kms[n.id].cert, certs.kms[n.id].key,
                                    certs.ca.cert)
            km = KeyManager(n.id, topo, bus, km_db, clock, events,
                            KmSettings(link_reserve_bytes=512, relay_attempts=1), ident)
            await km.start()
            kms[n.id] = km
        rng = random.Random(1903)
        for link in topo.links:
            for b in range(4):
                block = rng.randbytes(4096)
                for end in link.endpoints:
                    await kms[end].put_block(link.link_id, b, block)
        for km in kms.values():
            assert await km.links_acknowledged()
        try:
            yield kms, sink
        finally:
            for km in kms.values():
                await km.close()


async def test_no_trusted_relays_keys_cross_only_the_station_and_record_who_knows_them(
        plane: tuple[dict[str, KeyManager], MemorySink]) -> None:
    kms, sink = plane
    z = Caller("CN=z")
    keys = await kms["km0"].enc_keys(z, "z0", "z2", 2, 256)
    assert len(keys) == 2
    (route,) = [e for e in sink.of_type(EventType.route_computed)
                if e.data.get("ok") and e.data.get("path")]
    assert route.data["path"] == ["km0", "km2"]
    assert route.data["trusted_relays"] == [] and route.data["untrusted_nodes"] == ["ms02"]
    assert route.data["max_trusted_relays"] == 0
    delivered = sink.of_type(EventType.key_delivered)
    assert delivered and all(e.data["exposed_to"] == ["km0", "km2"] for e in delivered)


async def test_no_trusted_relays_without_such_a_path_is_refused_as_qos_not_met(
        plane: tuple[dict[str, KeyManager], MemorySink]) -> None:
    """ETSI 014: the KM's QosNotMet (503 on the wire); ETSI 004: status 7."""
    kms, sink = plane
    with pytest.raises(QosNotMet, match="trusted relays"):
        await kms["km0"].enc_keys(Caller("CN=z"), "z0", "z3", 1, 256)
    ksid = str(uuid.uuid4())

    async def open_at(node: str, source: str, destination: str) -> Etsi004Status:
        app = create_km_app(kms[node], kme_id=node,
                            settings=ApiSettings.from_topology(kms[node].topology, node))
        transport = httpx.ASGITransport(app=with_client_certificate(app, "CN=z"))
        async with AsyncEtsi004Client(f"https://{node}/etsi004", transport=transport) as c:
            try:
                opened = await c.open_connect(source, destination, key_stream_id=ksid)
            except Etsi004StatusError as err:
                return err.status
        assert not opened.peer_connected  # never status 0: no path may serve the pair
        return Etsi004Status.PEER_NOT_CONNECTED

    # the first open is pending (status 1, V2.1.1); the open that pairs the stream gets
    # Admission Control's refusal (status 7)
    statuses = await asyncio.gather(open_at("km0", "z0", "z3"), open_at("km3", "z3", "z0"))
    assert Etsi004Status.OC_QOS_NOT_SATISFIABLE in statuses
    assert set(statuses) <= {Etsi004Status.OC_QOS_NOT_SATISFIABLE,
                             Etsi004Status.PEER_NOT_CONNECTED}
    refused = sink.of_type(EventType.admission_refused)
    assert refused and all("trusted relays" in e.data["reason"] for e in refused)

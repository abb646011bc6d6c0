"""The entanglement service under the same controller (issue #19.3): the application API on
the bus, EIDs at both end nodes, alarms shared with the key streams, and key streams and
entanglement packets on one network (examples/quantum_network.yaml)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from keyplane.bus import Bus, MemoryBus, Message, topics
from keyplane.certs import ensure_network_certs
from keyplane.clock import VirtualClock
from keyplane.config import Topology, load_topology, parse_topology
from keyplane.control import ControlPlane, ControlSettings
from keyplane.control.entanglement import DemandState, EntanglementDemand
from keyplane.control.entanglement.service import (
    ENTANGLEMENT,
    EntanglementDelivery,
    EntanglementReply,
    EntanglementRequest,
    EntanglementService,
    delivery_topic,
)
from keyplane.control.settings import RoutingSettings
from keyplane.control.wire import RouteRelease
from keyplane.errors import ConfigError, QosNotMet
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.keymanager import KeyManager, KmIdentity, KmSettings
from keyplane.keymanager.interface import Caller
from keyplane.messages import LinkAlarm
from keyplane.store import Database
from tests.support.fake_kms import wait_until


@pytest.fixture(scope="module")
def topo() -> Topology:
    return load_topology("quantum_network")


def _demand(did: str, **kw: object) -> EntanglementDemand:
    fields: dict[str, object] = {"node_a": "km0", "node_b": "km3", "packets": 20,
                                 "packet_size": 2, "min_fidelity": 0.8, "deadline_s": 5.0}
    fields.update(kw)
    return EntanglementDemand(demand_id=did, **fields)  # type: ignore[arg-type]


async def _collect(bus: Bus, node: str, into: list[EntanglementDelivery]) -> None:
    async def on(_topic: str, msg: Message) -> None:
        if isinstance(msg, EntanglementDelivery):
            into.append(msg)

    await bus.subscribe(delivery_topic(node), on)


async def _run_until_done(clock: VirtualClock, service: EntanglementService, did: str,
                          limit_s: float) -> None:
    waited = service.outcome(did)
    while clock.now() < limit_s:
        await clock.advance(0.05)
        if service.engine.report.outcomes.get(did) is not None:
            break
    await waited


def test_topology_entanglement_section_names_known_nodes_only() -> None:
    text = """
nodes: [{id: a}, {id: b}]
entanglement:
  memories: {a: 2, x: 2}
  links: [{endpoints: [a, y], length_km: 5}]
"""
    with pytest.raises(ConfigError) as err:
        parse_topology(text)
    assert "entanglement.memories: unknown node 'x'" in str(err.value)
    assert "entanglement.links[0].endpoints: unknown node 'y'" in str(err.value)


async def test_demand_over_the_bus_delivers_eids_at_both_ends_in_time(topo: Topology) -> None:
    clock = VirtualClock()
    sink = MemorySink()
    async with MemoryBus() as bus, \
            EntanglementService(topo, bus, clock, EventStream(clock, [sink]), seed=3) as svc:
        at_a: list[EntanglementDelivery] = []
        at_b: list[EntanglementDelivery] = []
        await _collect(bus, "km0", at_a)
        await _collect(bus, "km3", at_b)
        reply = await bus.request(ENTANGLEMENT, EntanglementRequest(demand=_demand("d1")),
                                  timeout_s=30.0)
        assert isinstance(reply, EntanglementReply) and reply.admitted, reply
        assert reply.path[0] == "km0" and reply.path[-1] == "km3"
        await _run_until_done(clock, svc, "d1", 10.0)
        outcome = svc.engine.report.outcomes["d1"]
        assert outcome.state is DemandState.served and outcome.delivered_packets == 20
        assert svc.engine.report.finished_t["d1"] <= 5.0
        pairs_a = [p for d in at_a for p in d.pairs]
        assert [p.eid for p in pairs_a] == [p.eid for d in at_b for p in d.pairs]
        assert len(pairs_a) == 40 and len({p.eid for p in pairs_a}) == 40
        assert all(p.eid.startswith("eid-") and p.fidelity >= 0.8 for p in pairs_a)
        assert at_a[-1].state is DemandState.served and at_b[-1].state is DemandState.served
        assert sink.of_type(EventType.entanglement_admitted)
        assert sink.of_type(EventType.entanglement_delivered)
        # the same id again is refused; an unreachable fidelity is refused with a reason
        assert not svc.request(_demand("d1")).admitted
        refused = svc.request(_demand("d2", min_fidelity=0.995))
        assert not refused.admitted and refused.reason
        assert sink.of_type(EventType.entanglement_refused)


async def test_alarm_on_the_shared_fibre_moves_demands_to_the_repeater_chain(
        topo: Topology) -> None:
    clock = VirtualClock()
    async with MemoryBus() as bus, \
            EntanglementService(topo, bus, clock, EventStream(clock, []), seed=4) as svc:
        before = svc.request(_demand("direct", packets=2, packet_size=1))
        assert before.path == ["km0", "km3"]
        # the Monitoring Element's alarm on km0-km3 also stops the key link's fibre
        await bus.publish(topics.alarm("km0-km3"), LinkAlarm(link_id="km0-km3",
                                                            kind="link_down"))
        await clock.advance(0.0)
        assert "km0-km3" in svc.network.down
        after = svc.request(_demand("around", packets=2, packet_size=1))
        assert after.admitted and after.path == ["km0", "r1", "r2", "km3"]
        await bus.publish(topics.alarm("km0-km3"), LinkAlarm(link_id="km0-km3",
                                                            kind="cleared"))
        await clock.advance(0.0)
        assert "km0-km3" not in svc.network.down


@pytest.fixture
async def plane(topo: Topology, km_db: Database, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[tuple[ControlPlane, dict[str, KeyManager], VirtualClock]]:
    clock = VirtualClock()
    events = EventStream(clock, [])
    bus = MemoryBus(seed=1903)
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
        rng = random.Random(1904)
        for link in topo.links:
            for b in range(4):
                block = rng.randbytes(4096)
                for end in link.endpoints:
                    await kms[end].put_block(link.link_id, b, block)
        try:
            yield cp, kms, clock
        finally:
            for km in kms.values():
                await km.close()


async def test_key_streams_and_entanglement_packets_share_one_controller(
        plane: tuple[ControlPlane, dict[str, KeyManager], VirtualClock]) -> None:
    cp, kms, clock = plane
    assert "entanglement" in cp.elements and cp.entanglement is not None
    reply = cp.entanglement.request(_demand("shared", packets=10))
    assert reply.admitted
    alice = Caller("CN=alice,O=quantum-network")
    # no trusted relays: km0 -> km1 over the MDI-QKD link only
    keys = await kms["km0"].enc_keys(alice, "sae_a0", "sae_a1", 2, 256)
    assert len(keys) == 2
    await _run_until_done(clock, cp.entanglement, "shared", 10.0)
    assert cp.entanglement.engine.report.outcomes["shared"].state is DemandState.served
    # km0 -> km2 needs km1 as a trusted relay: refused for alice
    with pytest.raises(QosNotMet, match="trusted relays"):
        await kms["km0"].enc_keys(alice, "sae_a0", "sae_a2", 1, 256)


async def test_shared_fibre_time_flows_both_ways_between_routing_and_the_scheduler(
        topo: Topology, km_db: Database) -> None:
    """km0-km3 is one fibre for the BB84 key link and an entanglement link: what the
    schedule books lowers the key capacity Routing sees, and the key streams' reservations
    shrink the time the scheduler may book (wire flow 7)."""
    clock = VirtualClock()
    settings = ControlSettings(routing=RoutingSettings(link_capacity_bps={"km0-km3": 1000.0}))
    async with MemoryBus(seed=1905) as bus, \
            ControlPlane(topo, bus, km_db, clock, EventStream(clock, []), settings) as cp:
        ent, routing = cp.entanglement, cp.routing
        assert ent is not None and routing is not None
        assert ent.network.shared == frozenset({"km0-km3"})
        # key streams first: 400 of the fibre's 1000 bps reserved -> 40 % of its time
        routing.core.route_and_reserve("keys", 0, "km0", "km3", 400.0)
        await bus.publish(topics.ROUTING, RouteRelease(session_id="none", epoch=0))
        await wait_until(lambda: ent.network.key_share.get("km0-km3") == 0.4,
                         timeout_s=60.0, what="the scheduler learns the key share")
        period = ent.engine.scheduler.settings.period_slots
        # the keys keep max(their 40 %, the section's floor of 50 %) of every period
        assert ent.network.key_share_min == 0.5
        assert ent.network.entanglement_window("km0-km3", period) == 50
        ent.network.key_share_min = 0.0
        assert ent.network.entanglement_window("km0-km3", period) == 60
        reply = ent.request(_demand("fibre", packets=2000, packet_size=1, deadline_s=100.0))
        assert reply.admitted and reply.path == ["km0", "km3"]
        await clock.advance(0.02)
        await wait_until(lambda: routing.core.capacity_bps("km0-km3") < 1000.0,
                         timeout_s=60.0, what="Routing sees the entanglement's share")
        taken = 1.0 - routing.core.capacity_bps("km0-km3") / 1000.0
        assert 0.0 < taken <= 0.6 + 1e-9  # never more than the key streams left
        assert routing.core.capacity_bps("km0-km3") >= 400.0 - 1e-6  # keys keep theirs
        ent.engine.scheduler.cancel("fibre")
        await clock.advance(0.02)
        await wait_until(lambda: routing.core.capacity_bps("km0-km3") == 1000.0,
                         timeout_s=60.0, what="the fibre is the keys' again")

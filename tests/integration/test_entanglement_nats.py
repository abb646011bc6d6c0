"""The node-side entanglement path over a real, secured nats-server (issue #19, wave 4):
a KM's agent asks the control plane's entanglement service with a signed request, gets the
pairs the service signs, and cannot ask in another node's name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keyplane.api.entanglement import NodeEntanglementAgent
from keyplane.bus.nats import NatsBus
from keyplane.bus.settings import BusSettings
from keyplane.certs import CONTROLLER_ID
from keyplane.clock import RealClock
from keyplane.config import Topology, load_topology
from keyplane.control.entanglement import EntanglementDemand
from keyplane.control.entanglement.service import (
    ENTANGLEMENT,
    EntanglementService,
    NodeEntanglementRequest,
)
from keyplane.errors import MessageRejected
from keyplane.events import EventStream
from keyplane.services import NatsServer
from tests.support.bus import element_security, start_secured_nats
from tests.support.deadlines import DEADLINE_S

pytestmark = [pytest.mark.nats]

QUICK = BusSettings(startup_timeout_s=3.0, connect_timeout_s=5.0)


@pytest.fixture
def topo() -> Topology:
    return load_topology("quantum_network")


@pytest.fixture
async def secured(tmp_path: Path, topo: Topology) -> AsyncIterator[NatsServer]:
    srv = await asyncio.to_thread(start_secured_nats, tmp_path / "certs", topo)
    try:
        yield srv
    finally:
        srv.stop()


async def _bus(srv: NatsServer, role: str, element: str) -> NatsBus:
    return await NatsBus.connect(srv.url, security=element_security(srv, role, element),
                                 settings=QUICK)


async def test_signed_demand_and_deliveries_between_nodes_and_the_service(
        secured: NatsServer, topo: Topology) -> None:
    clock = RealClock()
    sae_nodes = {a.sae_id: a.node for a in topo.applications}
    control = await _bus(secured, "control", CONTROLLER_ID)
    km0, km3 = await _bus(secured, "km", "km0"), await _bus(secured, "km", "km3")
    try:
        async with EntanglementService(topo, control, clock, EventStream(clock, []),
                                       seed=5) as svc, \
                NodeEntanglementAgent("km0", km0, sae_nodes) as a0, \
                NodeEntanglementAgent("km3", km3, sae_nodes) as a3:
            rec = await a0.submit("sae_a0", "sae_a3", packets=3, packet_size=2,
                                  min_fidelity=0.8, deadline_s=30.0, priority=0)
            # the first packets may arrive before the admission reply (two subjects)
            assert rec.state.value in ("admitted", "served") and rec.path[-1] == "km3"
            done = await a0.wait_ended("sae_a0", rec.demand_id, DEADLINE_S)
            assert done.state.value == "served" and len(done.pairs) == 6
            async with asyncio.timeout(DEADLINE_S):  # the peer's copy, signed by control
                while rec.demand_id not in {d.demand_id for d in a3.demands_of("sae_a3")}:
                    await asyncio.sleep(0.01)  # poll interval; the timeout above bounds it
            peer = await a3.wait_ended("sae_a3", rec.demand_id, DEADLINE_S)
            assert [p.eid for p in peer.pairs] == [p.eid for p in done.pairs]
            # km3 cannot speak for km0: the service's bus layer rejects the signature
            forged = EntanglementDemand(demand_id="forged", node_a="km0", node_b="km3",
                                        app_a="sae_a0", app_b="sae_a3")
            with pytest.raises(MessageRejected):
                await km3.request(ENTANGLEMENT, NodeEntanglementRequest(node="km0",
                                                                        demand=forged),
                                  timeout_s=DEADLINE_S)
            assert "forged" not in svc.engine.report.admitted
    finally:
        for bus in (km0, km3, control):
            await bus.close()

"""The node-side entanglement API (issue #19, wave 4): an application authenticated by its
mTLS client certificate asks its node for packets of entangled pairs and reads them back
with EIDs at both end nodes; errors in the API's own ``{message, details}`` format.

Real parts: the node's HTTPS server with mutual TLS (``serve_km_api`` on port 0), the
entanglement service and its scheduler on the bus, certificates from the network CA. The
key manager behind ETSI 014/004 is the fake one (the key path is not under test here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from keyplane.api.entanglement import NodeEntanglementAgent
from keyplane.api.server import KmApiServer, serve_km_api
from keyplane.api.settings import ApiSettings
from keyplane.bus import MemoryBus
from keyplane.certs import Issued, client_ssl_context, ensure_network_certs
from keyplane.clock import VirtualClock
from keyplane.config import Topology, load_topology
from keyplane.control.entanglement import EntanglementDemand
from keyplane.control.entanglement.service import (
    ENTANGLEMENT,
    EntanglementReply,
    EntanglementService,
    NodeEntanglementRequest,
)
from keyplane.events import EventStream
from tests.support.fake_km import FakeKeyNetwork
from tests.support.fake_kms import wait_until

PATH = "/entanglement/v1/demands"


@dataclass
class Net:
    topo: Topology
    issued: Issued
    clock: VirtualClock
    service: EntanglementService
    agents: dict[str, NodeEntanglementAgent]
    servers: dict[str, KmApiServer]
    bus: MemoryBus

    def client(self, sae: str, node: str) -> httpx.AsyncClient:
        ctx = client_ssl_context(self.issued.saes[sae], self.issued.ca.cert)
        return httpx.AsyncClient(base_url=self.servers[node].url, verify=ctx, timeout=60.0)


@pytest.fixture(scope="module")
def topo() -> Topology:
    return load_topology("quantum_network")


@pytest.fixture(scope="module")
def issued(topo: Topology, tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return ensure_network_certs(topo, tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def net(topo: Topology, issued: Issued) -> AsyncIterator[Net]:
    clock = VirtualClock()
    sae_nodes = {a.sae_id: a.node for a in topo.applications}
    fake = FakeKeyNetwork(topo, seed=1919)
    async with MemoryBus() as bus, \
            EntanglementService(topo, bus, clock, EventStream(clock, []), seed=19) as svc:
        agents: dict[str, NodeEntanglementAgent] = {}
        servers: dict[str, KmApiServer] = {}
        try:
            for node in ("km0", "km3"):
                agents[node] = NodeEntanglementAgent(node, bus, sae_nodes)
                await agents[node].start()
                servers[node] = await serve_km_api(
                    fake.km(node), kme_id=node, server_cert=issued.kms[node],
                    ca_file=issued.ca.cert, settings=ApiSettings.from_topology(topo, node),
                    entanglement=agents[node])
            yield Net(topo, issued, clock, svc, agents, servers, bus)
        finally:
            for s in servers.values():
                await s.close()
            for a in agents.values():
                await a.close()


def _body(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"peer_sae_id": "sae_a3", "packets": 6, "packet_size": 2,
                            "min_fidelity": 0.8, "deadline_s": 5.0}
    body.update(kw)
    return body


async def _serve(net: Net, demand_id: str, limit_s: float = 10.0) -> None:
    """Drive the virtual clock until the service ends ``demand_id``."""
    waited = net.service.outcome(demand_id)
    while net.clock.now() < limit_s and demand_id not in net.service.engine.report.outcomes:
        await net.clock.advance(0.05)
    await waited


async def test_application_gets_its_pairs_with_eids_at_both_end_nodes(net: Net) -> None:
    async with net.client("sae_a0", "km0") as alice0, net.client("sae_a3", "km3") as alice3:
        r = await alice0.post(PATH, json=_body())
        assert r.status_code == 201, r.text
        demand = r.json()
        did = demand["demand_id"]
        assert demand["sae_id"] == "sae_a0" and demand["peer_sae_id"] == "sae_a3"
        assert demand["state"] == "admitted" and demand["path"][0] == "km0"
        assert demand["path"][-1] == "km3" and demand["expected_fidelity"] >= 0.8
        # the service saw the identity the certificate gave, not one the body claimed
        plan = net.service.engine.report.admitted[did]
        assert (plan.demand.app_a, plan.demand.app_b) == ("sae_a0", "sae_a3")
        await _serve(net, did)
        await wait_until(lambda: all(
            did in {d.demand_id for d in a.demands_of(sae)} and
            a.view(sae, did).state.value == "served"
            for a, sae in ((net.agents["km0"], "sae_a0"), (net.agents["km3"], "sae_a3"))),
            timeout_s=60.0, what="both nodes hold the served demand")
        at_a = (await alice0.get(f"{PATH}/{did}")).json()
        at_b = (await alice3.get(f"{PATH}/{did}")).json()
        assert at_a["state"] == at_b["state"] == "served"
        assert at_a["delivered_packets"] == at_b["delivered_packets"] == 6
        assert at_a["role"] == "requester" and at_b["role"] == "peer"
        eids = [p["eid"] for p in at_a["pairs"]]
        assert len(eids) == 12 and len(set(eids)) == 12
        assert eids == [p["eid"] for p in at_b["pairs"]]
        assert all(e.startswith("eid-") for e in eids)
        assert all(p["fidelity"] >= 0.8 for p in at_a["pairs"])
        listed = (await alice0.get(PATH)).json()["demands"]
        assert [d["demand_id"] for d in listed] == [did] and "pairs" not in listed[0]


async def test_other_applications_cannot_see_a_demand(net: Net) -> None:
    async with net.client("sae_a0", "km0") as alice0, net.client("sae_b3", "km3") as bob3, \
            net.client("sae_b1", "km0") as bob_at_km0:
        did = (await alice0.post(PATH, json=_body(packets=1))).json()["demand_id"]
        await _serve(net, did)
        await wait_until(lambda: did in {d.demand_id for d in
                                         net.agents["km3"].demands_of("sae_a3")},
                         timeout_s=60.0, what="the peer node holds the demand")
        r = await bob3.get(f"{PATH}/{did}")  # same node as the peer, another application
        assert r.status_code == 404
        assert r.json() == {"message": "no such entanglement demand for this SAE"}
        assert (await bob3.get(PATH)).json() == {"demands": []}
        # bob's certificate owns no SAE on km0: no identity there
        r = await bob_at_km0.get(f"{PATH}/{did}")
        assert r.status_code == 401 and "not authenticated" in r.json()["message"]
        # a header cannot pick another owner's SAE
        r = await bob3.get(f"{PATH}/{did}", headers={"X-SAE-ID": "sae_a3"})
        assert r.status_code == 401
        r = await alice0.get(PATH, headers={"Authorization": "Bearer x"})
        assert r.status_code == 401


async def test_bad_requests_get_the_apis_error_format_and_change_nothing(net: Net) -> None:
    async with net.client("sae_a0", "km0") as alice0:
        cases = [
            (_body(packets=0), 400, "bad request format"),
            (_body(min_fidelity=1.5), 400, "bad request format"),
            ({**_body(), "app_a": "sae_b3"}, 400, "bad request format"),  # no identity field
            (_body(peer_sae_id="nobody"), 400, "unknown peer application"),
            (_body(peer_sae_id="sae_a0"), 400, "the peer application is on this node"),
        ]
        for body, status, message in cases:
            r = await alice0.post(PATH, json=body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["message"] == message
        r = await alice0.post(PATH, json=_body(min_fidelity=0.995))
        assert r.status_code == 503
        assert r.json()["message"].startswith("entanglement demand refused")
        assert r.json()["details"][0]["reason"]
        assert (await alice0.get(PATH)).json() == {"demands": []}
        assert not net.service.engine.report.admitted
        r = await alice0.get(f"{PATH}/nope")
        assert r.status_code == 404


async def test_a_node_may_only_ask_for_demands_that_start_at_itself(net: Net) -> None:
    demand = EntanglementDemand(demand_id="forged", node_a="km0", node_b="km3",
                                app_a="sae_a0", app_b="sae_a3")
    reply = await net.bus.request(ENTANGLEMENT, NodeEntanglementRequest(node="km3",
                                                                        demand=demand),
                                  timeout_s=30.0)
    assert isinstance(reply, EntanglementReply) and not reply.admitted
    assert "start at itself" in reply.reason
    assert "forged" not in net.service.engine.report.admitted

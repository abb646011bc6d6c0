"""ControlRuntime with real mutual-TLS servers in one process: the SDN Controller registers
nodes, discovers their agents with the controller certificate and serves the northbound view;
without the SDN Controller the fallback registry still answers."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyplane.api.etsi015 import (
    NETWORK_MEMBER,
    PROVENANCE_MEMBER,
    ROOT_MEMBER,
    qkdl_id,
    qkdn_id,
    validate_node,
)
from keyplane.bus import MemoryBus, topics
from keyplane.certs import client_ssl_context
from keyplane.clock import RealClock
from keyplane.config import Topology, load_topology
from keyplane.demo.run import apply_overrides
from keyplane.demo.scenario import ServiceEndpoint
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.keymanager.interface import Caller
from keyplane.messages import NodeAnnouncement, NodeWelcome, Qos
from keyplane.runtime import ControlRuntime, Embedded, NodeRuntime, RuntimeContext
from keyplane.store import Database, sqlite_url
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_kms import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paper() -> Topology:
    return load_topology(ROOT / "examples" / "paper_poc.yaml")


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
async def ctx(paper: Topology, tmp_path: Path, sink: MemorySink
              ) -> AsyncIterator[RuntimeContext]:
    bus = MemoryBus()
    db = await Database.open(sqlite_url(tmp_path / "runtime.db"))
    clock = RealClock()
    context = RuntimeContext(topology=paper, bus=bus, db=db, clock=clock,
                             events=EventStream(clock, [sink]), state_dir=tmp_path / "state")
    try:
        yield context
    finally:
        await bus.close()
        await db.close()


async def test_control_runtime_drives_nodes_and_serves_the_northbound_view_over_mtls(
        ctx: RuntimeContext, sink: MemorySink) -> None:
    async with ControlRuntime(ctx) as control, NodeRuntime(ctx, "km1"), NodeRuntime(ctx, "km2"):
        sdn = control.plane.sdn
        assert sdn is not None and sdn.southbound is not None
        await sdn.southbound.settle()
        assert set(control.endpoints) == {"km1", "km2"}
        for node in ("km1", "km2"):  # read over HTTPS with the controller certificate
            found = sdn.model.nodes[node].discovery
            assert found is not None and found.reachable and found.qkdn_id == qkdn_id(node)
            assert found.url == control.endpoints[node]["etsi015"]
        doc = json.loads((ctx.state_dir / "endpoints.json").read_text())
        northbound = doc["controller"]["etsi015_northbound"]
        assert control.northbound is not None and northbound == control.northbound.url
        assert set(doc["kms"]) == {"km1", "km2"}

        certs = ctx.ensure_certs()
        tls = client_ssl_context(certs.controller, certs.ca.cert)
        async with httpx.AsyncClient(verify=tls) as client:
            r = await client.get(f"{northbound}/restconf/data/{NETWORK_MEMBER}")
        assert r.status_code == 200, r.text
        nodes = {n["node-id"]: n for n in r.json()[NETWORK_MEMBER]["node"]}
        assert set(nodes) == {"km1", "km2"}
        assert all(n["reachable"] and n[ROOT_MEMBER]["qkdn_id"] == qkdn_id(i)
                   for i, n in nodes.items())
        anonymous_tls = ssl.create_default_context(cafile=str(certs.ca.cert))
        async with httpx.AsyncClient(verify=anonymous_tls) as anonymous:
            with pytest.raises(httpx.HTTPError):  # no client certificate: refused
                await anonymous.get(f"{northbound}/restconf/data/{NETWORK_MEMBER}")
    assert not sink.of_type(EventType.sdn_agent_failed)


async def test_control_runtime_without_sdn_still_answers_node_announcements(
        ctx: RuntimeContext) -> None:
    ctx.ensure_certs()
    async with ControlRuntime(ctx, elements=["routing"]) as control:
        assert control.plane.sdn is None and control.northbound is None
        reply = await ctx.bus.request(topics.SDN_NODES, NodeAnnouncement(
            node="km3", endpoints={"etsi015": "https://127.0.0.1:1"}), timeout_s=DEADLINE_S)
        assert isinstance(reply, NodeWelcome) and reply.known
        refused = await ctx.bus.request(topics.SDN_NODES, NodeAnnouncement(node="km99"),
                                        timeout_s=DEADLINE_S)
        assert isinstance(refused, NodeWelcome) and not refused.known
        doc = json.loads((ctx.state_dir / "endpoints.json").read_text())
        assert doc["kms"] == {"km3": {"etsi015": "https://127.0.0.1:1"}}
        assert "etsi015_northbound" not in doc["controller"]


async def test_embedded_relayed_stream_shows_virt_links_on_every_agent_over_mtls(
        paper: Topology, tmp_path: Path, sink: MemorySink) -> None:
    """The real KMs and agents of the paper's network: the ETSI 004 stream sae2 → sae3 is
    relayed through km0, and the SDN Controller (over mutual TLS) puts its VIRT link on
    km2, km0 and km3, and removes it when the stream closes."""
    topology = apply_overrides(paper, protocol="analytic")
    clock = RealClock()
    db = await Database.open(sqlite_url(tmp_path / "embedded.db"))
    bus = MemoryBus()
    ctx = RuntimeContext(topology=topology, bus=bus, db=db, clock=clock,
                         events=EventStream(clock, [sink]), state_dir=tmp_path / "state")
    try:
        async with Embedded(ctx) as emb:
            ends = [ServiceEndpoint(sae, emb.km(topology.application(sae).node),
                                    Caller(topology.user(topology.application(sae).owner)
                                           .certificate_subject or ""))
                    for sae in ("sae2", "sae3")]
            sid = "6d1f5a3e-0c61-4b7e-9f55-5a0d2b8b9c11"
            qos = Qos(key_chunk_size=32, min_bps=64)
            await asyncio.gather(ends[0].open("sae3", qos, sid), ends[1].open("sae2", qos, sid))
            uid = qkdl_id(f"session:{sid}")

            def virt(node: str) -> list[dict[str, object]]:
                agent = emb.nodes[node].agent
                assert agent is not None
                links = agent.get(f"{ROOT_MEMBER}/qkd_links")[
                    "etsi-qkd-sdn-node:qkd_links"].get("qkd_link", [])
                return [x for x in links if x["qkdl_id"] == uid]

            def apps(node: str) -> list[dict[str, Any]]:
                agent = emb.nodes[node].agent
                assert agent is not None
                doc = agent.get(f"{ROOT_MEMBER}/qkd_applications")
                return list(doc["etsi-qkd-sdn-node:qkd_applications"].get("qkd_app", []))

            await wait_until(lambda: all(virt(n) for n in ("km2", "km0", "km3")),
                             what="VIRT links on the relayed path")
            (middle,) = virt("km0")  # the path runs from whichever end Admission paired first
            hops = [middle["virt_prev_hop"], *middle["virt_next_hop"]]  # type: ignore[misc]
            assert sorted(hops) == sorted([qkdn_id("km2"), qkdn_id("km3")])
            # the rate the session was admitted at (the users' SLA cap, 100 kb/s; the QoS
            # asked no max), not the 64 b/s Routing reserved (issue 17.5)
            assert middle["virt_bandwidth"] == 100_000
            by_uuid = {qkdn_id("km2"): "km2", qkdn_id("km3"): "km3"}
            middle_prev = by_uuid[str(middle["virt_prev_hop"])]
            middle_next = by_uuid[str(middle["virt_next_hop"][0])]  # type: ignore[index]
            assert not virt("km1") and not virt("km4")
            # a key fetched at both ends shows up in the endpoints' ETSI 015 app_statistics
            await wait_until(lambda: all(apps(n) for n in ("km2", "km3")), what="qkd_apps")

            def keyed(node: str) -> bool:  # the path's links hold key at this node
                return all(st.sendable_bits >= 8 * 32
                           for lid, st in emb.km(node).link_stores.items()
                           if set(lid.split("-")) <= {"km2", "km0", "km3"})

            # until GET_KEY waits for key by itself (issue #17.1), fetch once the path has key
            await wait_until(lambda: all(keyed(n) for n in ("km2", "km0", "km3")),
                             what="link key on the relayed path")
            (ka, _), (kb, _) = await asyncio.gather(ends[0].get_key(sid, 0),
                                                    ends[1].get_key(sid, 0))
            assert ka == kb
            for node in ("km2", "km3"):
                agent = emb.nodes[node].agent
                assert agent is not None
                agent.datastore.close_statistics_period(clock.wall() + 1.0)
                (app,) = apps(node)
                stats = app["app_statistics"]["statistics"]
                assert sum(int(p["consumed_bits"]) for p in stats) == 256
                # and in its key provenance (keyplane-qkd-provenance): both hops QKD
                provenance = app[PROVENANCE_MEMBER]
                assert provenance["hybrid_policy"] == "qkd-only"
                assert sorted(h["hop"] for h in provenance["hop"]) == sorted(
                    [f"{middle_prev}->km0", f"km0->{middle_next}"])
                assert all((h["qkd_keys"], h["pqc_keys"], h["combined_keys"], h["last_source"])
                           == ("1", "0", "0", "qkd") for h in provenance["hop"])
                validate_node(agent.get(""))
            (middle,) = virt("km0")  # km0 relayed the key on towards the path's end
            assert middle[PROVENANCE_MEMBER] == {"hop": [{"hop": f"km0->{middle_next}",
                                                          "last_source": "qkd"}]}
            for end in ends:
                await end.close(sid)
            await wait_until(lambda: not any(virt(n) for n in ("km2", "km0", "km3")),
                             what="VIRT links removed")
        assert not sink.of_type(EventType.sdn_agent_failed)
    finally:
        await bus.close()
        await db.close()

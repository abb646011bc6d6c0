"""Real HTTPS with mutual TLS (uvicorn on port 0): identities, the driver, the event stream."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from etsi015_support import assert_valid
from tests.support.deadlines import DEADLINE_S

from keyplane.api.etsi015 import (
    ROOT_MEMBER,
    Etsi015Driver,
    Etsi015Unreachable,
    NetworkView,
    RestconfServer,
    SdnAgent,
    VirtualLink,
    create_northbound_app,
    qkdl_id,
    qkdn_id,
    serve_agent,
    serve_app,
    validate_notification,
)
from keyplane.bus import MemoryBus, topics
from keyplane.certs import Issued, client_ssl_context, ensure_network_certs
from keyplane.clock import RealClock
from keyplane.config import Topology
from keyplane.events import EventStream
from keyplane.messages import LinkState, LinkTelemetry

LINKS = f"/restconf/data/{ROOT_MEMBER}/qkd_links"


@pytest.fixture(scope="module")
def certs(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return ensure_network_certs(topology, tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def served(topology: Topology, certs: Issued
                 ) -> AsyncIterator[tuple[SdnAgent, RestconfServer]]:
    clock = RealClock()
    async with MemoryBus() as bus, SdnAgent("km0", topology, bus, clock,
                                            EventStream(clock)) as agent:
        server = await serve_agent(agent, port=0, server_cert=certs.kms["km0"],
                                   ca_file=certs.ca.cert)
        try:
            yield agent, server
        finally:
            await server.close()


def client(certs: Issued, who: str, server: RestconfServer) -> httpx.AsyncClient:
    paths = certs.controller if who == "controller" else certs.saes[who]
    return httpx.AsyncClient(base_url=server.url, timeout=5.0,
                             verify=client_ssl_context(paths, certs.ca.cert))


def virt_body(name: str) -> dict:  # type: ignore[type-arg]
    return {"etsi-qkd-sdn-node:qkd_link": [{
        "qkdl_id": qkdl_id(name), "qkdl_type": "etsi-qkd-node-types:VIRT",
        "qkdl_local": {"qkdn_id": qkdn_id("km0")}, "qkdl_remote": {"qkdn_id": qkdn_id("km3")},
        "virt_prev_hop": qkdn_id("km2"), "virt_next_hop": [qkdn_id("km3")],
        "virt_bandwidth": 100}]}


async def test_only_the_controller_certificate_may_write(served, certs: Issued) -> None:
    _, server = served
    assert server.port != 0 and server.url.startswith("https://")
    async with client(certs, "controller", server) as c:
        r = await c.post(LINKS, json=virt_body("a"))
        assert r.status_code == 201, r.text
    async with client(certs, "sae0", server) as c:
        r = await c.get(f"/restconf/data/{ROOT_MEMBER}")
        assert r.status_code == 200
        assert_valid(r.json())
        r = await c.post(LINKS, json=virt_body("b"))
        assert r.status_code == 403
        assert r.json()["ietf-restconf:errors"]["error"][0]["error-tag"] == "access-denied"


async def test_client_without_certificate_is_refused(served, certs: Issued) -> None:
    _, server = served
    bare = ssl.create_default_context(cafile=str(certs.ca.cert))
    async with httpx.AsyncClient(base_url=server.url, verify=bare, timeout=5.0) as c:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await c.get(f"/restconf/data/{ROOT_MEMBER}")


async def test_driver_over_mtls_discovers_and_registers(served, certs: Issued) -> None:
    _, server = served
    async with Etsi015Driver.from_certs(certs.controller, certs.ca.cert) as driver:
        desc = await driver.discover(server.url)
        assert desc.qkdn_id == qkdn_id("km0")
        link = VirtualLink(qkdl_id("x"), qkdn_id("km3"), qkdn_id("km2"), (qkdn_id("km3"),), 10)
        await driver.register_virtual_link(server.url, link, local_qkdn_id=desc.qkdn_id)
        assert len((await driver.discover(server.url)).virt_links) == 1
        await driver.remove_virtual_link(server.url, qkdl_id("x"))
        assert (await driver.discover(server.url)).virt_links == []


async def test_driver_with_wrong_ca_is_unreachable(served, certs: Issued, tmp_path: Path,
                                                   topology: Topology) -> None:
    _, server = served
    other = ensure_network_certs(topology, tmp_path / "other")
    async with Etsi015Driver.from_certs(other.controller, other.ca.cert) as driver:
        with pytest.raises(Etsi015Unreachable):
            await driver.discover(server.url)


async def test_event_stream_delivers_notifications_as_sse(served, certs: Issued) -> None:
    agent, server = served
    async with client(certs, "controller", server) as c:
        streams = (await c.get(
            "/restconf/data/ietf-restconf-monitoring:restconf-state/streams")).json()
        location = streams["ietf-restconf-monitoring:restconf-state"]["streams"]["stream"][0][
            "access"][0]["location"]
        async with c.stream("GET", location) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            async with asyncio.timeout(DEADLINE_S):  # the stream's feed is registered
                while not agent._feeds:
                    await asyncio.sleep(0.005)  # poll interval; the timeout above bounds it
            await agent.bus.publish(topics.link_telemetry("km0-km1"), LinkTelemetry(
                link_id="km0-km1", node="km1", state=LinkState.up, skr_bps=10.0, qber=0.01))
            async with asyncio.timeout(DEADLINE_S):
                line = await anext(lines)
                while not line.startswith("data: "):
                    line = await anext(lines)
    note = json.loads(line.removeprefix("data: "))["ietf-restconf:notification"]
    assert "eventTime" in note
    (name,) = [k for k in note if k != "eventTime"]
    validate_notification(name.split(":", 1)[1], note[name])


async def test_northbound_served_over_mtls(served, certs: Issued) -> None:
    _, server = served
    clock = RealClock()
    async with Etsi015Driver.from_certs(certs.controller, certs.ca.cert) as driver, \
            NetworkView(driver, {"km0": server.url}, clock) as view:
        north = await serve_app(create_northbound_app(view), server_cert=certs.controller,
                                ca_file=certs.ca.cert)
        try:
            async with client(certs, "sae1", north) as c:
                r = await c.get("/restconf/data/keyplane-network:network/node=km0")
                assert r.status_code == 200
                (entry,) = r.json()["keyplane-network:node"]
                assert entry["reachable"] is True
                assert_valid({ROOT_MEMBER: entry[ROOT_MEMBER]})
        finally:
            await north.close()

"""Controller side in process: driver discovery, path provisioning with rollback, northbound."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from etsi015_support import MultiAppTransport, assert_valid, with_subject

from keyplane.api.etsi015 import (
    DEFAULT_CONTROLLER_SUBJECT,
    NETWORK_MEMBER,
    ROOT_MEMBER,
    Etsi015ClientError,
    Etsi015Driver,
    Etsi015Unreachable,
    NetworkView,
    PathHop,
    QkdApplication,
    SdnAgent,
    VirtualLink,
    app_id,
    create_agent_app,
    create_northbound_app,
    qkdl_id,
    qkdn_id,
)
from keyplane.api.etsi015.model import identity
from keyplane.bus import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.events import EventStream


@pytest.fixture
async def network(topology: Topology, clock: VirtualClock
                  ) -> AsyncIterator[tuple[dict[str, SdnAgent], Etsi015Driver, MemoryBus]]:
    bus = MemoryBus()
    agents = {n.id: SdnAgent(n.id, topology, bus, clock, EventStream(clock))
              for n in topology.nodes}
    for a in agents.values():
        await a.start()
    transport = MultiAppTransport({
        node: with_subject(create_agent_app(a), DEFAULT_CONTROLLER_SUBJECT)
        for node, a in agents.items()})
    driver = Etsi015Driver(transport=transport)
    try:
        yield agents, driver, bus
    finally:
        await driver.close()
        for a in agents.values():
            await a.close()
        await bus.close()


def url(node: str) -> str:
    return f"https://{node}"


def hop(node: str) -> PathHop:
    return PathHop(url(node), qkdn_id(node))


async def test_discover_reads_capabilities_interfaces_and_links(network) -> None:
    _, driver, _ = network
    km0 = await driver.discover(url("km0"))
    assert km0.qkdn_id == qkdn_id("km0") and km0.status == "OPERATING"
    assert km0.capabilities["key_relay_mode_enable"] is True
    assert len(km0.interfaces) == 5 and km0.virt_links == []
    assert km0.neighbours == {qkdn_id(n) for n in ("km1", "km2", "km3", "km4", "km5")}
    assert_valid({ROOT_MEMBER: km0.tree})


async def test_relayed_session_shows_up_as_virt_links_on_every_node_of_its_path(network) -> None:
    agents, driver, _ = network
    path = [hop("km2"), hop("km0"), hop("km3")]
    uid = await driver.provision_path("s-2-3", path, 5000)
    assert uid == qkdl_id("session:s-2-3")
    for i, node in enumerate(("km2", "km0", "km3")):
        desc = await driver.discover(url(node))
        (virt,) = desc.virt_links
        assert virt["qkdl_id"] == uid and virt["virt_bandwidth"] == 5000
        assert virt["qkdl_status"] == identity("ACTIVE")
        assert virt["virt_prev_hop"] == path[max(i - 1, 0)].qkdn_id
        assert virt["virt_next_hop"] == [path[min(i + 1, 2)].qkdn_id]
        assert_valid({ROOT_MEMBER: desc.tree})
    assert await driver.release_path("s-2-3", path) == []
    for node in ("km2", "km0", "km3"):
        assert (await driver.discover(url(node))).virt_links == []


async def test_failed_hop_rolls_back_the_hops_already_configured(network) -> None:
    agents, driver, _ = network
    uid = qkdl_id("session:s-x")
    # km3 already holds a link with that id: the third hop answers 409
    await agents["km3"].register_virtual_link(VirtualLink(
        uid, qkdn_id("km2"), qkdn_id("km3"), (qkdn_id("km3"),), 1))
    with pytest.raises(Etsi015ClientError) as info:
        await driver.provision_path("s-x", [hop("km2"), hop("km0"), hop("km3")], 5000)
    assert info.value.status == 409 and info.value.error_tag == "data-exists"
    assert (await driver.discover(url("km2"))).virt_links == []
    assert (await driver.discover(url("km0"))).virt_links == []
    assert len((await driver.discover(url("km3"))).virt_links) == 1


async def test_unknown_node_is_unreachable(network) -> None:
    _, driver, _ = network
    with pytest.raises(Etsi015Unreachable):
        await driver.discover("https://km9")


async def test_northbound_view_aggregates_nodes_and_links(network, clock: VirtualClock) -> None:
    agents, driver, bus = network
    await driver.provision_path("s-2-3", [hop("km2"), hop("km0"), hop("km3")], 5000)
    nodes = {n: url(n) for n in agents} | {"km9": "https://km9"}
    async with NetworkView(driver, nodes, clock, bus=bus) as view:
        app = create_northbound_app(view)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="https://controller") as c:
            base = f"/restconf/data/{NETWORK_MEMBER}"
            doc = (await c.get(base)).json()[NETWORK_MEMBER]
            by_id = {n["node-id"]: n for n in doc["node"]}
            assert by_id["km9"]["reachable"] is False
            assert by_id["km9"][ROOT_MEMBER]["qkdn_status"] == identity("FAILURE")
            for entry in doc["node"]:
                assert_valid({ROOT_MEMBER: entry[ROOT_MEMBER]})
            phys = [x for x in doc["link"] if x["qkdl_type"] == identity("PHYS")]
            assert len(phys) == 6
            assert {tuple(x["nodes"]) for x in phys} >= {("km0", "km1"), ("km4", "km5")}
            (virt,) = [x for x in doc["link"] if x["qkdl_type"] == identity("VIRT")]
            assert virt["nodes"] == ["km2", "km0", "km3"]
            r = await c.get(base + f"/node=km0/{ROOT_MEMBER}/qkd_links/qkd_link="
                            + qkdl_id("km0-km1"))
            assert r.status_code == 200
            assert r.json()["etsi-qkd-sdn-node:qkd_link"][0]["qkdl_id"] == qkdl_id("km0-km1")
            assert (await c.get(base + "/node=nope")).status_code == 404
            assert (await c.delete(base)).status_code == 405
            # cached while fresh; an ETSI 015 notification on the bus makes the next read refetch
            app = QkdApplication(app_id("s-1"), "urn:keyplane:sae:sae1")
            agents["km1"].datastore.add_application(app, clock.wall())  # silent: no bus message
            doc = (await c.get(base)).json()[NETWORK_MEMBER]
            km1 = next(n for n in doc["node"] if n["node-id"] == "km1")[ROOT_MEMBER]
            assert km1["qkd_applications"] == {}
            await agents["km1"].remove_application(app_id("s-1"))
            await agents["km1"].register_application(app)  # publishes sdqkdn_application_new
            await bus.flush()
            await clock.advance(0)
            doc = (await c.get(base)).json()[NETWORK_MEMBER]
            km1 = next(n for n in doc["node"] if n["node-id"] == "km1")[ROOT_MEMBER]
            assert [a["app_id"] for a in km1["qkd_applications"]["qkd_app"]] == [app_id("s-1")]

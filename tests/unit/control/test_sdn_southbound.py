"""SDN Controller ↔ node agents over ETSI 015 (in process): registry, discovery, VIRT links.

Every node runs a real :class:`~keyplane.api.etsi015.SdnAgent`; the controller's driver
reaches them through an in-process transport (tests/support/etsi015.py). Assertions read
the agents' datastores (the "fake data plane"), not the requests sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from keyplane.api.etsi015 import app_id, validate_node
from keyplane.bus import Bus, MemoryBus, topics
from keyplane.clock import VirtualClock
from keyplane.config import Topology, parse_topology
from keyplane.control import ControlPlane, ControlSettings, SdnController, qkd_uuid
from keyplane.control.wire import RegisterLink
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import LinkTelemetry, NodeAnnouncement, NodeWelcome, SessionClose
from keyplane.store import Database
from tests.support.control import NODES, TOPOLOGY, open_request
from tests.support.deadlines import DEADLINE_S
from tests.support.etsi015 import AgentNetwork, agent_url
from tests.support.fake_kms import FakeKms, wait_until

SESSION_LINK = qkd_uuid("link", "session:s1")


@pytest.fixture
async def net(topology: Topology, memory_bus: MemoryBus, clock: VirtualClock
              ) -> AsyncIterator[AgentNetwork]:
    async with AgentNetwork(topology, NODES, memory_bus, clock, EventStream(clock)) as network:
        yield network


async def announce(bus: Bus, node: str, **extra: str) -> NodeWelcome:
    reply = await bus.request(topics.SDN_NODES, NodeAnnouncement(
        node=node, endpoints={"etsi015": agent_url(node), **extra}), timeout_s=DEADLINE_S)
    assert isinstance(reply, NodeWelcome)
    return reply


def hops(net: AgentNetwork, node: str) -> tuple[str, list[str], int] | None:
    """``node``'s VIRT link of session s1 as (virt_prev_hop, virt_next_hop, virt_bandwidth)."""
    links = [x for x in net.virt_links(node) if x["qkdl_id"] == SESSION_LINK]
    if not links:
        return None
    (link,) = links
    return link["virt_prev_hop"], link["virt_next_hop"], link["virt_bandwidth"]


def along(path: str) -> dict[str, tuple[str, list[str], int]]:
    """Expected per-node VIRT entries of a path "a-e-d" carrying the session's admitted 5,000
    bps (ETSI 015 convention: the source is its own previous hop, the destination its own
    next hop)."""
    nodes = path.split("-")
    u = {n: qkd_uuid("node", n) for n in nodes}
    return {n: (u[nodes[max(i - 1, 0)]], [u[nodes[min(i + 1, len(nodes) - 1)]]], 5000)
            for i, n in enumerate(nodes)}


def virt_state(net: AgentNetwork) -> dict[str, tuple[str, list[str], int]]:
    return {n: h for n in NODES if (h := hops(net, n)) is not None}


async def test_sdn_node_announcement_triggers_discovery_recorded_in_the_model(
        topology: Topology, memory_bus: MemoryBus, clock: VirtualClock, net: AgentNetwork
        ) -> None:
    sink = MemorySink()
    seen: list[tuple[str, dict[str, str]]] = []
    async with SdnController(topology, memory_bus, clock, EventStream(clock, [sink]),
                             driver=net.driver) as sdn:
        sdn.add_registry_listener(lambda node, urls: seen.append((node, dict(urls))))
        assert sdn.southbound is not None
        welcome = await announce(memory_bus, "a", etsi014="https://a:8014")
        assert welcome.known
        assert seen == [("a", {"etsi015": "https://a", "etsi014": "https://a:8014"})]
        assert sdn.endpoints == {"a": {"etsi015": "https://a", "etsi014": "https://a:8014"}}
        await sdn.southbound.settle()

        found = sdn.model.nodes["a"].discovery
        assert found is not None and found.reachable and found.error == ""
        assert found.qkdn_id == qkd_uuid("node", "a") and found.status == "OPERATING"
        assert found.capabilities["key_relay_mode_enable"] is True
        assert len(found.interfaces) == 2  # a-b and a-e
        assert set(found.phys_links) == {qkd_uuid("link", "a-b"), qkd_uuid("link", "a-e")}
        assert found.missing_links == () and found.unknown_links == ()
        (event,) = sink.of_type(EventType.node_discovered)
        assert event.node == "a" and event.data["phys_links"] == 2
        assert (await announce(memory_bus, "zz")).known is False

        # on change: a PHYS link registered at run time makes both ends be read again;
        # their agents (built from the topology file) do not know it, and the model says so
        await announce(memory_bus, "b")
        await announce(memory_bus, "e")
        await sdn.southbound.settle()
        await sdn.register_link(RegisterLink(link_id="b-e", endpoints=("b", "e")))
        await sdn.southbound.settle()
        for node in ("b", "e"):
            record = sdn.model.nodes[node].discovery
            assert record is not None and record.missing_links == ("b-e",)
        assert len(sink.of_type(EventType.node_discovered)) == 5

        # a re-announcement (a restarted node, maybe elsewhere) is read again
        await clock.advance(7.0)
        await announce(memory_bus, "a")
        await sdn.southbound.settle()
        again = sdn.model.nodes["a"].discovery
        assert again is not None and again.t == found.t + 7.0


async def test_relayed_session_puts_virt_links_on_its_path_moves_them_and_removes_them(
        topology: Topology, memory_bus: MemoryBus, sqlite_db: Database, clock: VirtualClock,
        net: AgentNetwork) -> None:
    """A 3-node session a-e-d: VIRT links with the right hops on a, e and d and its
    qkd_app on a and d; a reroute to a-b-c-d moves them; the close removes them."""
    sink = MemorySink()
    events = EventStream(clock, [sink])
    async with FakeKms(memory_bus, NODES) as kms, \
            ControlPlane(topology, memory_bus, sqlite_db, clock, events, ControlSettings(),
                         sdn_driver=net.driver) as plane:
        for node in NODES:
            await announce(memory_bus, node)
        for node, user, src, dst in (("a", "alice", "sae_a", "sae_d"),
                                     ("d", "dave", "sae_d", "sae_a")):
            await memory_bus.request(topics.ADMISSION, open_request(
                "s1", node, user, src, dst, min_bps=100, max_bps=5000), timeout_s=DEADLINE_S)
        await wait_until(lambda: kms.holders("s1") == ["a", "d", "e"], what="operative")
        await wait_until(lambda: virt_state(net) == along("a-e-d"), what="VIRT links a-e-d")
        for node in ("a", "d"):
            (app,) = net.apps(node)
            assert app["app_id"] == app_id("s1")
            assert app["server_app_id"] == "urn:keyplane:sae:sae_a"
            assert app["client_app_id"] == ["urn:keyplane:sae:sae_d"]
            assert app["backing_qkdl_id"] == [SESSION_LINK]
            assert app["app_qos"]["min_bandwidth"] == 100  # reserved by Routing
            assert app["app_qos"]["max_bandwidth"] == 5000  # admitted
        assert net.apps("e") == []
        for node in NODES:  # everything the controller wrote conforms to the YANG model
            validate_node(net.agents[node].get(""))

        for qber in (0.02, 0.26):  # an eavesdropper on a-e: the session moves to a-b-c-d
            await memory_bus.publish(topics.link_telemetry("a-e"), LinkTelemetry(
                link_id="a-e", node="a", qber=qber, skr_bps=900.0))
        await wait_until(lambda: virt_state(net) == along("a-b-c-d"), what="VIRT links moved")
        assert [a["app_id"] for a in net.apps("a")] == [app_id("s1")]

        await memory_bus.publish(topics.ADMISSION, SessionClose(session_id="s1", node="a"))
        await wait_until(lambda: virt_state(net) == {} and not net.apps("a")
                         and not net.apps("d"), what="VIRT links removed")
        assert plane.sdn is not None and plane.sdn.southbound is not None
        await plane.sdn.southbound.settle()
        released = sink.of_type(EventType.virtual_link_released)
        assert [e.data["path"] for e in released] == [["a", "e", "d"], ["a", "b", "c", "d"]]
        assert all(e.data["failed"] == [] for e in released)
        assert not sink.of_type(EventType.sdn_agent_failed)


ADJACENT = TOPOLOGY.replace("""applications:
""", """  - id: erin
    certificate_subject: "CN=erin,O=test"
    sla: {max_sessions: 1, max_bps: 10000, priority: 2, allowed_peers: ["*"]}
applications:
  - {sae_id: sae_b, owner: erin, node: b}
""")


async def test_adjacent_session_gets_a_qkd_app_backed_by_the_phys_link_and_no_virt_link(
        memory_bus: MemoryBus, sqlite_db: Database, clock: VirtualClock) -> None:
    """ETSI 015 wants one qkd_app per session: an adjacent session b-c has its qkd_app on b
    and c, backed by the b-c PHYS link; no VIRT link is made; the close removes the apps
    and leaves the PHYS link."""
    topology = parse_topology(ADJACENT, "control-test")
    sink = MemorySink()
    events = EventStream(clock, [sink])
    phys = qkd_uuid("link", "b-c")
    async with AgentNetwork(topology, NODES, memory_bus, clock, EventStream(clock)) as net, \
            FakeKms(memory_bus, NODES) as kms, \
            ControlPlane(topology, memory_bus, sqlite_db, clock, events, ControlSettings(),
                         sdn_driver=net.driver) as plane:
        for node in NODES:
            await announce(memory_bus, node)
        for node, user, src, dst in (("b", "erin", "sae_b", "sae_c"),
                                     ("c", "carol", "sae_c", "sae_b")):
            await memory_bus.request(topics.ADMISSION, open_request(
                "s2", node, user, src, dst, min_bps=100, max_bps=5000), timeout_s=DEADLINE_S)
        await wait_until(lambda: kms.holders("s2") == ["b", "c"], what="operative")
        await wait_until(lambda: bool(net.apps("b") and net.apps("c")), what="qkd_apps")
        for node in ("b", "c"):
            (app,) = net.apps(node)
            assert app["app_id"] == app_id("s2")
            assert app["server_app_id"] == "urn:keyplane:sae:sae_b"
            assert app["client_app_id"] == ["urn:keyplane:sae:sae_c"]
            assert app["backing_qkdl_id"] == [phys]
        assert all(net.virt_links(n) == [] for n in NODES)
        for node in NODES:
            validate_node(net.agents[node].get(""))
        await memory_bus.publish(topics.ADMISSION, SessionClose(session_id="s2", node="b"))
        await wait_until(lambda: not net.apps("b") and not net.apps("c"), what="apps removed")
        assert plane.sdn is not None and plane.sdn.southbound is not None
        await plane.sdn.southbound.settle()
        links = net.agents["b"].get("etsi-qkd-sdn-node:qkd_node/qkd_links")
        assert phys in {x["qkdl_id"] for x in links["etsi-qkd-sdn-node:qkd_links"]["qkd_link"]}
        (released,) = sink.of_type(EventType.virtual_link_released)
        assert released.data["virtual"] is False and released.data["failed"] == []
        assert not sink.of_type(EventType.sdn_agent_failed)


async def test_unreachable_agent_is_evented_and_never_blocks_session_setup(
        topology: Topology, memory_bus: MemoryBus, sqlite_db: Database, clock: VirtualClock,
        net: AgentNetwork) -> None:
    sink = MemorySink()
    events = EventStream(clock, [sink])
    gate = asyncio.Event()
    net.transport.hold["e"] = gate  # e's agent does not answer (yet)
    async with FakeKms(memory_bus, NODES) as kms, \
            ControlPlane(topology, memory_bus, sqlite_db, clock, events, ControlSettings(),
                         sdn_driver=net.driver) as plane:
        for node in NODES:
            assert (await announce(memory_bus, node)).known  # answered while e hangs
        for node, user, src, dst in (("a", "alice", "sae_a", "sae_d"),
                                     ("d", "dave", "sae_d", "sae_a")):
            await memory_bus.request(topics.ADMISSION, open_request(
                "s1", node, user, src, dst, min_bps=100, max_bps=5000), timeout_s=DEADLINE_S)
        await wait_until(lambda: bool(sink.of_type(EventType.session_operative)),
                         what="operative")
        assert kms.holders("s1") == ["a", "d", "e"]
        await wait_until(lambda: hops(net, "a") is not None, what="a provisioned")
        assert hops(net, "e") is None  # still waiting on e, session already operative

        net.transport.down.add("e")  # ... and then e turns out to be unreachable
        gate.set()
        assert plane.sdn is not None and plane.sdn.southbound is not None
        await plane.sdn.southbound.settle()
        failed = sink.of_type(EventType.sdn_agent_failed)
        assert {(e.node, e.data["operation"], e.data["unreachable"]) for e in failed} == {
            ("e", "discover", True), ("e", "provision_path", True)}
        assert next(e for e in failed if e.data["operation"] == "provision_path"
                    ).session == "s1"
        assert virt_state(net) == {}  # the hops already done were rolled back
        assert plane.sdn.model.nodes["e"].status == "FAILURE"
        found = plane.sdn.model.nodes["e"].discovery
        assert found is not None and not found.reachable
        sess = plane.admission.core.session("s1")  # type: ignore[union-attr]
        assert sess is not None and sess.path == ("a", "e", "d")

        # e comes back and announces itself again: discovered, and the session's VIRT
        # link is put on the whole path
        net.transport.down.discard("e")
        await announce(memory_bus, "e")
        await plane.sdn.southbound.settle()
        assert virt_state(net) == along("a-e-d")
        assert plane.sdn.model.nodes["e"].status == "OPERATING"


async def test_restarted_controller_reprovisions_virt_links_without_nodes_reannouncing(
        topology: Topology, memory_bus: MemoryBus, db: Database, clock: VirtualClock,
        net: AgentNetwork) -> None:
    """The controller restarts; the nodes keep running with the previous run's VIRT links
    and qkd_apps and do not announce themselves again. The new controller takes their
    URLs from the store and puts the live session's entries on them again (the entries
    that already exist are replaced, not refused); the close then removes them."""
    sink = MemorySink()
    events = EventStream(clock, [sink])
    async with FakeKms(memory_bus, NODES) as kms:
        async with ControlPlane(topology, memory_bus, db, clock, events, ControlSettings(),
                                sdn_driver=net.driver) as first:
            for node in NODES:
                await announce(memory_bus, node)
            for node, user, src, dst in (("a", "alice", "sae_a", "sae_d"),
                                         ("d", "dave", "sae_d", "sae_a")):
                await memory_bus.request(topics.ADMISSION, open_request(
                    "s1", node, user, src, dst, min_bps=100, max_bps=5000), timeout_s=DEADLINE_S)
            await wait_until(lambda: virt_state(net) == along("a-e-d"), what="VIRT links")
            assert first.sdn is not None and first.sdn.southbound is not None
            await first.sdn.southbound.settle()
        sink.events.clear()

        async with ControlPlane(topology, memory_bus, db, clock, events, ControlSettings(),
                                sdn_driver=net.driver) as plane:
            assert plane.sdn is not None and plane.sdn.southbound is not None
            assert plane.sdn.endpoints["e"] == {"etsi015": agent_url("e")}
            await wait_until(lambda: sink.of_type(EventType.virtual_link_provisioned),
                             what="re-provisioned")
            await plane.sdn.southbound.settle()
            assert virt_state(net) == along("a-e-d")
            assert [a["app_id"] for a in net.apps("a")] == [app_id("s1")]
            assert not sink.of_type(EventType.sdn_agent_failed)
            assert {e.node for e in sink.of_type(EventType.node_discovered)} == set(NODES)

            await memory_bus.publish(topics.ADMISSION, SessionClose(session_id="s1", node="a"))
            await wait_until(lambda: kms.holders("s1") == [], what="closed")
            await wait_until(lambda: virt_state(net) == {} and not net.apps("a")
                             and not net.apps("d"), what="VIRT links removed")

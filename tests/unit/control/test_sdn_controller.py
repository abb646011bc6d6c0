"""SDN Controller: ETSI 015 identities, PHYS/VIRT registration, distribution, persistence."""

from __future__ import annotations

import uuid

import pytest

from keyplane.bus import MemoryBus, Message, topics
from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.control import RoutingElement, SdnController, SdnModel, qkd_uuid
from keyplane.control.wire import (
    SDN_REGISTER,
    SDN_SNAPSHOT,
    RegisterLink,
    RegisterLinkReply,
    TopologySnapshot,
    TopologySnapshotRequest,
    UnregisterLink,
)
from keyplane.events import EventStream
from keyplane.messages import LinkAlarm, TopologyChange
from keyplane.store import Database
from tests.support.fake_kms import wait_until


def test_sdn_model_gives_stable_uuids_to_nodes_and_links(topology: Topology) -> None:
    m1, m2 = SdnModel.from_topology(topology), SdnModel.from_topology(topology)
    assert m1.links["a-e"].qkdl_id == m2.links["a-e"].qkdl_id == qkd_uuid("link", "a-e")
    assert uuid.UUID(m1.nodes["a"].qkdn_id).version == 5
    assert len({n.qkdn_id for n in m1.nodes.values()}) == 5
    assert all(link.type == "PHYS" and link.status == "ACTIVE" for link in m1.links.values())


def test_sdn_uuids_match_the_etsi015_agents() -> None:
    from keyplane.api.etsi015 import model as etsi015

    assert qkd_uuid("node", "km0") == etsi015.qkdn_id("km0")
    assert qkd_uuid("link", "km0-km1") == etsi015.qkdl_id("km0-km1")


def test_sdn_virtual_link_reports_hops_per_node(topology: Topology) -> None:
    model = SdnModel.from_topology(topology)
    link, (change,) = model.register(RegisterLink(link_id="virt-s1", type="VIRT",
                                                  endpoints=("a", "d"), path=["a", "b", "c", "d"],
                                                  bandwidth_bps=300, session_id="s1"))
    assert change.change == "virtual_link_added" and change.attributes["bandwidth_bps"] == 300
    assert link.qkdl_id == qkd_uuid("link", "session:s1")  # as keyplane.api.etsi015 names it
    assert link.virt_prev_hop("a") is None and link.virt_next_hop("a") == [qkd_uuid("node", "b")]
    assert link.virt_prev_hop("c") == qkd_uuid("node", "b")
    assert link.virt_next_hop("d") == []
    with pytest.raises(ValueError, match="no PHYS link between a and c"):
        model.register(RegisterLink(link_id="virt-x", type="VIRT", endpoints=("a", "d"),
                                    path=["a", "c", "d"]))
    with pytest.raises(ValueError, match="already joined"):
        model.register(RegisterLink(link_id="dup", endpoints=("e", "a")))
    assert [c.change for c in model.unregister("virt-s1")] == ["virtual_link_removed"]


def test_sdn_alarm_makes_link_passive_and_cleared_active(topology: Topology) -> None:
    model = SdnModel.from_topology(topology)
    (change,) = model.apply_alarm(LinkAlarm(link_id="b-c", kind="qber_high"))
    assert change.change == "link_updated" and change.attributes["status"] == "PASSIVE"
    assert model.apply_alarm(LinkAlarm(link_id="b-c", kind="link_down")) == []
    (back,) = model.apply_alarm(LinkAlarm(link_id="b-c", kind="cleared"))
    assert back.attributes["status"] == "ACTIVE"
    (off,) = model.set_enable("b-c", False)
    assert off.attributes["status"] == "OFF"


async def test_sdn_registered_link_reaches_routing_and_survives_restart(
        topology: Topology, db: Database, clock: VirtualClock, events: EventStream) -> None:
    """On SQLite and PostgreSQL."""
    changes: list[TopologyChange] = []

    async def on_change(_t: str, msg: Message) -> None:
        if isinstance(msg, TopologyChange):
            changes.append(msg)

    async with MemoryBus() as bus:
        await bus.subscribe(topics.SDN, on_change)
        async with SdnController(topology, bus, clock, events, db=db) as sdn, \
                RoutingElement(topology, bus, clock, events) as routing:
            assert routing.core.compute_path("b", "e").nodes == ("b", "a", "e")
            reply = await bus.request(SDN_REGISTER, RegisterLink(link_id="b-e",
                                                                 endpoints=("b", "e")))
            assert isinstance(reply, RegisterLinkReply) and reply.ok
            assert reply.qkdl_id == qkd_uuid("link", "b-e")
            await wait_until(lambda: routing.core.has_link("b-e"), what="routing update")
            assert routing.core.compute_path("b", "e").nodes == ("b", "e")
            bad = await bus.request(SDN_REGISTER, RegisterLink(link_id="b-zz",
                                                               endpoints=("b", "zz")))
            assert isinstance(bad, RegisterLinkReply) and not bad.ok
            virt = await bus.request(SDN_REGISTER, RegisterLink(
                link_id="virt-s9", type="VIRT", endpoints=("a", "d"), path=["a", "e", "d"],
                bandwidth_bps=10, session_id="s9"))
            assert isinstance(virt, RegisterLinkReply) and virt.ok
            assert sdn.model.links["virt-s9"].type == "VIRT"
            assert not routing.core.has_link("virt-s9")  # VIRT links are not routed over
            gone = await bus.request(SDN_REGISTER, UnregisterLink(link_id="virt-s9"))
            assert isinstance(gone, RegisterLinkReply) and gone.ok
        await wait_until(lambda: [c.change for c in changes] == [
            "link_added", "virtual_link_added", "virtual_link_removed"], what="announcements")
        # a new controller on the same database keeps the registered PHYS link
        async with SdnController(topology, bus, clock, events, db=db):
            snap = await bus.request(SDN_SNAPSHOT, TopologySnapshotRequest())
            assert isinstance(snap, TopologySnapshot)
            assert "b-e" in {link.link_id for link in snap.links}
            async with RoutingElement(topology, bus, clock, events) as routing:
                assert routing.core.compute_path("b", "e").nodes == ("b", "e")

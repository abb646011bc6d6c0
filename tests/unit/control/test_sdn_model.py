"""The SDN model's session records (issue 17.5): a VIRT link carries the bandwidth its session
was admitted at; a session between adjacent nodes adds no link to the topology."""

from __future__ import annotations

from keyplane.bus import MemoryBus, Message, topics
from keyplane.clock import VirtualClock
from keyplane.config import Topology
from keyplane.control import SdnController, SdnModel, qkd_uuid
from keyplane.control.wire import (
    SDN_REGISTER,
    SDN_SNAPSHOT,
    RegisterLink,
    RegisterLinkReply,
    TopologySnapshot,
    TopologySnapshotRequest,
    UnregisterLink,
)
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import TopologyChange
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_kms import wait_until


def session(path: list[str], *, sid: str = "s1", reserved: float = 0.0,
            admitted: float = 100_000.0) -> RegisterLink:
    """What Admission Control registers for a session (wire.RegisterLink: ``bandwidth_bps``
    is Routing's reservation, ``max_bps`` the admitted rate)."""
    return RegisterLink(link_id=f"virt-{sid}", type="VIRT", endpoints=(path[0], path[-1]),
                        path=path, bandwidth_bps=reserved, session_id=sid,
                        source_sae="sae_a", destination_sae="sae_d", max_bps=admitted)


def test_virtual_link_carries_the_admitted_bandwidth(topology: Topology) -> None:
    model = SdnModel.from_topology(topology)
    link, (change,) = model.register(session(["a", "b", "c", "d"]))
    assert link.bandwidth_bps == 100_000 and link.reserved_bps == 0
    assert change.change == "virtual_link_added"
    assert change.attributes["bandwidth_bps"] == 100_000
    assert model.snapshot().links[-1].bandwidth_bps == 100_000
    # without a rate (an old Admission message) the reservation stands in
    link, _ = model.register(session(["a", "b", "c", "d"], sid="s2", reserved=300, admitted=0))
    assert link.bandwidth_bps == 300


def test_direct_session_adds_no_link(topology: Topology) -> None:
    model = SdnModel.from_topology(topology)
    before = model.snapshot()
    link, changes = model.register(session(["b", "c"]))
    assert changes == []
    assert link.qkdl_id == qkd_uuid("link", "b-c")  # the PHYS link carries its key
    assert "virt-s1" not in model.links and model.record("virt-s1") is link
    assert model.snapshot() == before
    assert [s.session_id for s in model.sessions()] == ["s1"]
    assert model.unregister("virt-s1") == [] and model.sessions() == []


def test_reroute_between_direct_and_relayed_paths(topology: Topology) -> None:
    model = SdnModel.from_topology(topology)
    _, changes = model.register(session(["a", "b", "c", "d"]))
    assert [c.change for c in changes] == ["virtual_link_added"]
    _, changes = model.register(session(["a", "e"]))  # now adjacent: the VIRT link goes
    assert [c.change for c in changes] == ["virtual_link_removed"]
    assert "virt-s1" not in model.links and "virt-s1" in model.direct
    _, changes = model.register(session(["a", "b", "c", "d"]))  # and back
    assert [c.change for c in changes] == ["virtual_link_added"]
    assert "virt-s1" in model.links and "virt-s1" not in model.direct


async def test_controller_registers_a_direct_session_without_announcing_a_link(
        topology: Topology, memory_bus: MemoryBus, clock: VirtualClock) -> None:
    sink = MemorySink()
    seen: list[Message] = []

    async def collect(_topic: str, msg: Message) -> None:
        seen.append(msg)

    await memory_bus.subscribe(topics.SDN, collect)
    async with SdnController(topology, memory_bus, clock, EventStream(clock, [sink])):
        reply = await memory_bus.request(SDN_REGISTER, session(["b", "c"]), timeout_s=DEADLINE_S)
        assert isinstance(reply, RegisterLinkReply) and reply.ok
        assert reply.qkdl_id == qkd_uuid("link", "b-c")
        snap = await memory_bus.request(SDN_SNAPSHOT, TopologySnapshotRequest(), timeout_s=DEADLINE_S)
        assert isinstance(snap, TopologySnapshot)
        assert all(link.type == "PHYS" for link in snap.links)
        reply = await memory_bus.request(SDN_REGISTER, UnregisterLink(link_id="virt-s1"),
                                         timeout_s=DEADLINE_S)
        assert isinstance(reply, RegisterLinkReply) and reply.ok
        # a relayed session's announcement comes through the same way, after them
        await memory_bus.request(SDN_REGISTER, session(["a", "b", "c", "d"], sid="s2"),
                                 timeout_s=DEADLINE_S)
        await wait_until(lambda: any(isinstance(m, TopologyChange) for m in seen),
                         what="the relayed session's announcement")
    assert [(m.change, m.link_id) for m in seen if isinstance(m, TopologyChange)] == [
        ("virtual_link_added", "virt-s2")]
    assert [e.data["link"] for e in sink.of_type(EventType.topology_changed)
            if e.data.get("change") in ("virtual_link_added", "virtual_link_removed")] == [
        "virt-s2"]

"""Several nodes per process (keyplane.nodegroup) in one test process: the id list's checks,
events routed to each node's own sink, and two node groups with the control plane on one
in-memory bus relaying an ETSI 004 stream across the groups (the multi-process test with a
real nats-server and PostgreSQL is tests/integration/test_node_group.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keyplane.bus import MemoryBus
from keyplane.clock import RealClock
from keyplane.cluster import LocalCluster
from keyplane.config import Topology, load_topology
from keyplane.demo.run import apply_overrides
from keyplane.demo.scenario import ServiceEndpoint
from keyplane.errors import ConfigError
from keyplane.events import EventStream, MemorySink
from keyplane.keymanager.interface import Caller
from keyplane.messages import Qos
from keyplane.nodegroup import NodeGroup, NodeRoutedSink, parse_node_ids
from keyplane.runtime import ControlRuntime, RuntimeContext
from keyplane.store import Database, sqlite_url
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_kms import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paper() -> Topology:
    return load_topology(ROOT / "examples" / "paper_poc.yaml")


def test_node_id_lists_are_checked_with_a_clear_reason(paper: Topology) -> None:
    assert parse_node_ids("km1, km2 ,km0", paper) == ["km1", "km2", "km0"]
    for text, says in [("km1,km9", "'km9' not in the topology"),
                       ("km1,km2,km1", "'km1' given more than once"),
                       ("km1,,km2", "none empty"), (" ", "none empty")]:
        with pytest.raises(ConfigError, match=says):
            parse_node_ids(text, paper)


def test_each_event_goes_to_its_own_nodes_sink(paper: Topology) -> None:
    km1, km2, rest = MemorySink(), MemorySink(), MemorySink()
    stream = EventStream(RealClock(), [NodeRoutedSink({"km1": km1, "km2": km2}, rest)])
    stream.emit("element_started", "node", node="km2")
    stream.emit("element_started", "node", node="km1")
    stream.emit("element_started", "qkd", node="km0")
    stream.emit("element_started", "process")
    assert [e.node for e in km1.events] == ["km1"]
    assert [e.node for e in km2.events] == ["km2"]
    assert [e.node for e in rest.events] == ["km0", None]


def test_a_cluster_names_a_group_process_by_its_nodes(paper: Topology, tmp_path: Path
                                                     ) -> None:
    cluster = LocalCluster(paper, tmp_path, groups=[["km1", "km2"], ["km3", "km4", "km5"]])
    assert cluster.elements == ["controller", "km1,km2", "km3,km4,km5", "km0"]
    assert cluster.process_of("km4") == "km3,km4,km5" and cluster.process_of("km0") == "km0"
    with pytest.raises(ConfigError):
        LocalCluster(paper, tmp_path, groups=[["km1", "km2"], ["km2"]])
    with pytest.raises(ConfigError):
        LocalCluster(paper, tmp_path, groups=[["km1", "km7"]])


async def test_two_node_groups_relay_a_stream_across_them(paper: Topology, tmp_path: Path
                                                          ) -> None:
    """sae2 (km2) <-> sae3 (km3) relayed through km0: km2 and km0 in one group, km3 with the
    other nodes in another; each group's links run only its own ends (one end of km0-km3 in
    each group) and both ends of a link inside the group."""
    topology = apply_overrides(paper, protocol="analytic")
    clock = RealClock()
    db = await Database.open(sqlite_url(tmp_path / "groups.db"))
    bus = MemoryBus()
    sink = MemorySink()
    ctx = RuntimeContext(topology=topology, bus=bus, db=db, clock=clock,
                         events=EventStream(clock, [sink]), state_dir=tmp_path / "state")
    first, second = ["km2", "km0"], ["km3", "km1", "km4", "km5"]
    try:
        async with ControlRuntime(ctx) as control, \
                NodeGroup(ctx, first, dict.fromkeys(first, bus)) as one, \
                NodeGroup(ctx, second, dict.fromkeys(second, bus)) as two:
            assert set(control.endpoints) == {n.id for n in topology.nodes}
            assert one.sources is not None and two.sources is not None
            runners = {g: g.sources.emulated.runners for g in (one, two)}  # type: ignore[union-attr]
            assert runners[one]["km0-km2"].local_ends == ("alice", "bob")
            assert len(runners[one]["km0-km3"].local_ends) == 1
            assert len(runners[two]["km0-km3"].local_ends) == 1
            kms = {**{n: rt.km for n, rt in one.nodes.items()},
                   **{n: rt.km for n, rt in two.nodes.items()}}
            ends = [ServiceEndpoint(sae, kms[topology.application(sae).node],
                                    Caller(topology.user(topology.application(sae).owner)
                                           .certificate_subject or ""))
                    for sae in ("sae2", "sae3")]
            sid = "0b9f4f8e-7a55-4d0e-8c1b-2f3c4d5e6f70"
            qos = Qos(key_chunk_size=32, min_bps=64)
            async with asyncio.timeout(DEADLINE_S):
                await asyncio.gather(ends[0].open("sae3", qos, sid),
                                     ends[1].open("sae2", qos, sid))

            def keyed(node: str) -> bool:  # the path's links hold key at this node
                return all(st.sendable_bits >= 8 * 32
                           for lid, st in kms[node].link_stores.items()
                           if set(lid.split("-")) <= {"km2", "km0", "km3"})

            await wait_until(lambda: all(keyed(n) for n in ("km2", "km0", "km3")),
                             what="link key on the relayed path")
            async with asyncio.timeout(DEADLINE_S):
                (ka, _), (kb, _) = await asyncio.gather(ends[0].get_key(sid, 0),
                                                        ends[1].get_key(sid, 0))
            assert ka == kb and len(ka) == 32
    finally:
        await bus.close()
        await db.close()

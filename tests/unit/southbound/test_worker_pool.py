"""Emulated links in worker processes: real child processes, real links, real sinks.

The pool stands where PhysicalNetwork stood (both ends local): both ends receive the same
blocks, a full sink pauses the link in its worker, link commands and telemetry go through
the parent's bus, workers run at a lower priority, and a killed worker comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from keyplane.bus import MemoryBus, Message, encode, topics
from keyplane.clock import RealClock
from keyplane.config import QuantumLink, Topology, load_topology, parse_topology
from keyplane.errors import MessageDecodeError
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.messages import LinkTelemetry
from keyplane.physical import LinkCommand, LinkCommandReply, MemoryKeySink
from keyplane.physical.pool import EmulationSettings, LinkWorkerPool, plan_workers
from keyplane.physical.wire import control_topic
from keyplane.physical.workerwire import (
    Ack,
    BlockOut,
    EventOut,
    StartWorker,
    TelemetryOut,
    decode_frame,
    encode_frame,
    read_frame,
    split_telemetry,
    telemetry_frame,
)
from tests.support.deadlines import DEADLINE_S

ROOT = Path(__file__).resolve().parents[3]

TWO_ANALYTIC = """
nodes: [{id: a}, {id: b}, {id: c}]
links:
  - {endpoints: [a, b], length_km: 10, protocol: analytic}
  - {endpoints: [b, c], length_km: 20, protocol: analytic}
"""


def _link(i: int, protocol: str) -> QuantumLink:
    return QuantumLink(id=f"l{i}", endpoints=("a", "b"), length_km=10, protocol=protocol)  # type: ignore[arg-type]


def test_plan_spreads_bb84_links_over_cores_and_packs_analytic_links() -> None:
    bb84 = [_link(i, "bb84-decoy") for i in range(25)]
    plan = plan_workers(bb84, cores=2)
    assert len(plan) == 2 and sorted(len(p) for p in plan) == [12, 13]
    analytic = [_link(i, "analytic") for i in range(1000)]
    assert [len(p) for p in plan_workers(analytic, cores=2)] == [1000]
    mixed = plan_workers([*bb84[:1], *analytic[:10]], cores=2)
    assert len(mixed) == 1  # one BB84 link: one worker is enough
    assert plan_workers([], cores=2) == []
    assert len(plan_workers(bb84, workers=5, cores=2)) == 5


def test_frames_round_trip_and_carry_material_only_as_payload() -> None:
    raw = encode_frame(BlockOut(seq=3, link_id="a-b", end="bob", block_id=7), b"\x01\x02")
    hlen = int.from_bytes(raw[:4], "big")
    head, payload = raw[8:8 + hlen], raw[8 + hlen:]
    assert b"\x01\x02" not in head
    frame, body = decode_frame(head, payload)
    assert frame == BlockOut(seq=3, link_id="a-b", end="bob", block_id=7) and body == b"\x01\x02"
    assert decode_frame(encode_frame(Ack(seq=1))[8:])[0] == Ack(seq=1)


async def test_telemetry_frames_carry_a_batch_of_envelopes_published_as_sent() -> None:
    msgs = [LinkTelemetry(link_id="a-b", node="a", secret_bits=5),
            LinkTelemetry(link_id="c-d", node="d", qber=0.02)]
    items = [(topics.link_telemetry(m.link_id), encode(m)) for m in msgs]
    reader = asyncio.StreamReader()
    reader.feed_data(telemetry_frame(items))
    reader.feed_eof()
    got = await read_frame(reader)
    assert got is not None and isinstance(got[0], TelemetryOut)
    assert split_telemetry(*got) == items
    with pytest.raises(ValueError, match="sizes"):
        split_telemetry(got[0], got[1][:-1])
    bus = MemoryBus()
    seen: list[tuple[str, Message]] = []

    async def on(topic: str, msg: Message) -> None:
        seen.append((topic, msg))

    await bus.subscribe(topics.link_telemetry("*"), on)
    for topic, envelope in items:
        await bus.publish_encoded(topic, envelope)
    await _until(lambda: len(seen) == 2, "both published")
    assert seen == [(t, m) for (t, _), m in zip(items, msgs, strict=True)]
    with pytest.raises(MessageDecodeError):
        await bus.publish_encoded(items[0][0], b"{}")
    await bus.close()


async def test_read_frame_refuses_a_truncated_stream() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(encode_frame(EventOut(type="link_block", element="qkd"))[:-3])
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(reader)
    empty = asyncio.StreamReader()
    empty.feed_eof()
    assert await read_frame(empty) is None
    assert StartWorker(links=[], seed=1, time_scale=1, telemetry_interval_s=1, nice=0)


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = MemoryBus()
    yield b
    await b.close()


def _sinks(topo: Topology, maxsize: int = 0) -> dict[tuple[str, str], MemoryKeySink]:
    return {(n, link.link_id): MemoryKeySink(maxsize) for link in topo.links
            for n in link.endpoints}


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def _thread_nices(pid: int) -> dict[int, int]:
    """Nice value of each thread of ``pid`` (on Linux each thread has its own)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out[int(tid)] = os.getpriority(os.PRIO_PROCESS, int(tid))
    return out


async def _until(cond: object, what: str) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.05)  # polling real child processes, bounded by DEADLINE_S


async def test_both_ends_get_identical_blocks_from_a_worker_at_lower_priority(
        bus: MemoryBus) -> None:
    topo = load_topology(ROOT / "examples" / "paper_poc.yaml")
    sinks = _sinks(topo)
    clock = RealClock()
    mem = MemorySink()
    pool = LinkWorkerPool(topo, clock=clock, sinks=sinks, seed=5, bus=bus,
                          events=EventStream(clock, [mem]),
                          settings=EmulationSettings(workers=2, nice=5, time_scale=5.0))
    async with pool:
        assert len(pool.pids) == 2 and os.getpid() not in pool.pids
        await _until(lambda: all(s.qsize() >= 2 for s in sinks.values()), "two blocks each")
        for pid in pool.pids:  # every thread of each worker: 5 above this process
            assert set(_thread_nices(pid).values()) == {_nice() + 5}
    for link in topo.links:
        a, b = (sinks[(n, link.link_id)].drain() for n in link.endpoints)
        n = min(len(a), len(b))
        assert n >= 2
        assert [(k.block_id, k.material) for k in a[:n]] == [(k.block_id, k.material)
                                                              for k in b[:n]]
    blocks = mem.of_type(EventType.link_block)
    assert {e.data["link"] for e in blocks} == {link.link_id for link in topo.links}


CUT_AND_LIVE = """
nodes: [{id: a}, {id: b}, {id: c}]
links:
  - {endpoints: [a, b], length_km: 10, protocol: analytic, enabled: false}
  - {endpoints: [b, c], length_km: 10, protocol: analytic}
"""


async def test_a_worker_keeps_its_parents_priority_until_each_link_delivered_a_block(
        bus: MemoryBus) -> None:
    topo = parse_topology(CUT_AND_LIVE)  # the cut link never delivers a block
    sinks = _sinks(topo)
    clock = RealClock()
    settings = EmulationSettings(workers=1, nice=5, time_scale=10.0,
                                 nice_after_first_blocks_s=10 * DEADLINE_S)
    async with LinkWorkerPool(topo, clock=clock, sinks=sinks, seed=3, bus=bus,
                              settings=settings) as pool:
        await _until(lambda: sinks[("b", "b-c")].qsize() >= 2, "the live link's blocks")
        assert set(_thread_nices(pool.pids[0]).values()) == {_nice()}
    bounded = settings.model_copy(update={"nice_after_first_blocks_s": 0.2})
    async with LinkWorkerPool(topo, clock=clock, sinks=_sinks(topo), seed=3, bus=bus,
                              settings=bounded) as pool:
        pid = pool.pids[0]
        await _until(lambda: set(_thread_nices(pid).values()) == {_nice() + 5},
                     "the bound lowers it")


async def test_links_start_at_prepare_and_their_blocks_wait_for_start(bus: MemoryBus) -> None:
    topo = parse_topology(TWO_ANALYTIC)
    sinks = _sinks(topo)
    clock = RealClock()
    mem = MemorySink()
    pool = LinkWorkerPool(topo, clock=clock, sinks=sinks, seed=4, bus=bus,
                          events=EventStream(clock, [mem]),
                          settings=EmulationSettings(time_scale=10.0))
    try:
        await pool.prepare()
        await _until(lambda: {e.data["link"] for e in mem.of_type(EventType.link_block)}
                     == {"a-b", "b-c"}, "a block of each link before start")
        assert all(s.qsize() == 0 for s in sinks.values())  # nothing stored before start
        await pool.start()
        await _until(lambda: all(s.qsize() >= 1 for s in sinks.values()), "stored after start")
    finally:
        await pool.close()
    for link in topo.links:
        a, b = (sinks[(n, link.link_id)].drain() for n in link.endpoints)
        n = min(len(a), len(b))
        assert [(k.block_id, k.material) for k in a[:n]] == [(k.block_id, k.material)
                                                              for k in b[:n]]


async def test_full_sink_pauses_the_link_in_its_worker_and_draining_resumes_it(
        bus: MemoryBus) -> None:
    topo = parse_topology(TWO_ANALYTIC)
    sinks = _sinks(topo, maxsize=3)
    clock = RealClock()
    mem = MemorySink()
    settings = EmulationSettings(time_scale=20.0, room_check_interval_s=0.05)
    async with LinkWorkerPool(topo, clock=clock, sinks=sinks, seed=6, bus=bus,
                              events=EventStream(clock, [mem]), settings=settings) as pool:
        await _until(lambda: all(s.qsize() == 3 for s in sinks.values()), "full")
        await _until(lambda: len([e for e in mem.of_type(EventType.link_state)
                                  if e.data["change"] == "store_full"]) == 2, "paused")
        stored = pool.blocks_stored
        assert stored == 12  # 2 links x 2 ends x 3 blocks, then nothing
        for s in sinks.values():
            s.drain()
        await _until(lambda: pool.blocks_stored > stored, "resumed")
    changes = [e.data["change"] for e in mem.of_type(EventType.link_state)]
    assert "store_room" in changes


async def test_commands_and_bounded_telemetry_go_through_the_parents_bus(
        bus: MemoryBus) -> None:
    topo = parse_topology(TWO_ANALYTIC)
    telemetry: list[LinkTelemetry] = []

    async def on_telemetry(topic: str, msg: Message) -> None:
        assert isinstance(msg, LinkTelemetry)
        telemetry.append(msg)

    await bus.subscribe(topics.link_telemetry("a-b"), on_telemetry)
    settings = EmulationSettings(telemetry_interval_s=0.2, time_scale=10.0)
    async with LinkWorkerPool(topo, clock=RealClock(), sinks=_sinks(topo), seed=7, bus=bus,
                              settings=settings):
        reply = await bus.request(control_topic("a-b"),
                                  LinkCommand(link_id="a-b", action="cut"), timeout_s=DEADLINE_S)
        assert isinstance(reply, LinkCommandReply) and reply.ok and reply.state == "down"
        await _until(lambda: any(t.state.value == "down" for t in telemetry), "down reported")
        reply = await bus.request(control_topic("a-b"), LinkCommand(
            link_id="a-b", action="degrade", extra_loss_db=3.0), timeout_s=DEADLINE_S)
        assert isinstance(reply, LinkCommandReply) and reply.state == "down"  # still cut
        bad = await bus.request(control_topic("a-b"), LinkCommand(
            link_id="a-b", action="eve", position_km=99.0), timeout_s=DEADLINE_S)
        assert isinstance(bad, LinkCommandReply) and not bad.ok and "beyond" in bad.message


async def test_a_killed_worker_is_restarted_and_its_links_deliver_again(
        bus: MemoryBus) -> None:
    topo = parse_topology(TWO_ANALYTIC)
    sinks = _sinks(topo)
    settings = EmulationSettings(time_scale=10.0, workers=1)
    async with LinkWorkerPool(topo, clock=RealClock(), sinks=sinks, seed=8, bus=bus,
                              settings=settings) as pool:
        await _until(lambda: pool.blocks_stored >= 4, "first blocks")
        (pid,) = pool.pids
        os.kill(pid, 9)
        await _until(lambda: pool.pids and pool.pids != [pid], "restarted")
        before = pool.blocks_stored
        await _until(lambda: pool.blocks_stored >= before + 4, "delivering again")
    for link in topo.links:  # ids only grow across the restart, and both ends agree
        a, b = (sinks[(n, link.link_id)].drain() for n in link.endpoints)
        ids_a = [k.block_id for k in a]
        assert ids_a == sorted(set(ids_a))
        common = set(ids_a) & {k.block_id for k in b}
        assert {k.block_id: k.material for k in a if k.block_id in common} == {
            k.block_id: k.material for k in b if k.block_id in common}


def _same_blocks_at_both_ends(topo: Any, sinks: Any) -> None:
    """Every link's two ends delivered at least two blocks with the same ids, and the same
    material under each."""
    for link in topo.links:
        a, b = (sinks[(n, link.link_id)].drain() for n in link.endpoints)
        common = {k.block_id for k in a} & {k.block_id for k in b}
        assert len(common) >= 2
        assert {k.block_id: k.material for k in a if k.block_id in common} == {
            k.block_id: k.material for k in b if k.block_id in common}


@pytest.mark.nats
async def test_each_nodes_worker_joins_the_bus_and_the_two_ends_agree(nats_server: Any) -> None:
    from keyplane.bus.nats import NatsBus
    from tests.support.bus import harness_security

    topo = parse_topology(TWO_ANALYTIC)
    sinks = _sinks(topo)
    security = harness_security(nats_server)  # the workers load the same credentials
    buses = [await NatsBus.connect(nats_server.url, security=security) for _ in range(3)]
    settings = EmulationSettings(time_scale=10.0)
    pools = [LinkWorkerPool(topo, clock=RealClock(), sinks=sinks, seed=9, bus=bus,
                            settings=settings, node=node, bus_url=nats_server.url,
                            bus_security=security)
             for node, bus in zip(("a", "b", "c"), buses, strict=True)]
    try:
        for pool in pools:
            await pool.start()
        assert [len(p.links) for p in pools] == [1, 2, 1]
        await _until(lambda: all(s.qsize() >= 2 for s in sinks.values()), "two blocks each")
        reply = await buses[2].request(control_topic("b-c"),  # answered by b's worker
                                       LinkCommand(link_id="b-c", action="status"),
                                       timeout_s=DEADLINE_S)
        assert isinstance(reply, LinkCommandReply) and reply.ok and reply.delivered_blocks >= 2
    finally:
        for pool in pools:
            await pool.close()
        for bus in buses:
            await bus.close()
    _same_blocks_at_both_ends(topo, sinks)


@pytest.mark.nats
async def test_one_pool_runs_several_nodes_ends_each_on_the_bus_as_its_own_node(
        topology_nats: Any, tmp_path: Path) -> None:
    """A process of nodes a and b (``keyplane node --id a,b``) and one of c: the a-b link runs
    both ends in the first process's worker; b-c runs b's end there, joined to the secured
    bus as b (nats-server would refuse a's identity on b-c's topics), c's in the other."""
    from keyplane.bus.nats import NatsBus
    from keyplane.certs import OPERATOR_ID
    from tests.support.bus import element_security

    topo = parse_topology(TWO_ANALYTIC)
    srv = topology_nats(topo, tmp_path / "certs")
    sinks = _sinks(topo)
    sec = {n: element_security(srv, "km", n) for n in ("a", "b", "c")}
    buses = {n: await NatsBus.connect(srv.url, security=sec[n]) for n in ("a", "b", "c")}
    settings = EmulationSettings(time_scale=10.0)
    group = LinkWorkerPool(topo, clock=RealClock(), sinks=sinks, seed=9, bus=buses["a"],
                           settings=settings, nodes=["a", "b"], bus_url=srv.url,
                           bus_securities={"a": sec["a"], "b": sec["b"]})
    single = LinkWorkerPool(topo, clock=RealClock(), sinks=sinks, seed=9, bus=buses["c"],
                            settings=settings, node="c", bus_url=srv.url,
                            bus_security=sec["c"])
    try:
        await group.start()
        await single.start()
        assert len(group.workers) == 1 and sorted(group.links) == ["a-b", "b-c"]
        await _until(lambda: all(s.qsize() >= 2 for s in sinks.values()), "two blocks each")
        # an operator's link command is answered by the runner of the link's Alice end, on
        # the connection of that end's node
        operator = await NatsBus.connect(srv.url, security=element_security(
            srv, "operator", OPERATOR_ID))
        try:
            for lid in ("a-b", "b-c"):
                reply = await operator.request(control_topic(lid),
                                               LinkCommand(link_id=lid, action="status"),
                                               timeout_s=DEADLINE_S)
                assert isinstance(reply, LinkCommandReply) and reply.ok, reply
                assert reply.delivered_blocks >= 2
        finally:
            await operator.close()
    finally:
        await group.close()
        await single.close()
        for bus in buses.values():
            await bus.close()
    _same_blocks_at_both_ends(topo, sinks)

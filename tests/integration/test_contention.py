"""Scarce key goes by priority (#17.1, #17.2), through real key managers and the real control
plane: two ETSI 004 sessions on one link, four GET_KEY workers each, and a link that gets key
only when the test gives it.

The ratio is a property of the scheduling, not of timing, so the test paces the link's supply
by the KMs' own state instead of by a clock: each round it waits until every worker's request
is waiting for link key at the source (all four indexes of each session are in relay batches
and every such batch waits in the link's shares), then stores one more block at both ends.
No request can time out (the QoS Timeout is far beyond the test's deadline), so what each
session gets is decided by the shares alone, however slow the machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from keyplane.bus import MemoryBus
from keyplane.clock import RealClock
from keyplane.config import parse_topology
from keyplane.control import ControlPlane, ControlSettings
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.keymanager.interface import Caller
from keyplane.messages import Qos
from keyplane.store import Database, sqlite_url
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_kms import wait_until

CALLER_A, CALLER_B = Caller("CN=a"), Caller("CN=b")
WORKERS = 4
ROUNDS = 25
CHUNK = 224  # bytes per key: the frame's 32-byte MAC key is a small part of its cost
BLOCK = 4608  # per round; each direction's half (2304 bytes) is about nine keys
TOPOLOGY = parse_topology("""
version: 1
nodes: [{id: km0}, {id: km1}]
links: [{endpoints: [km0, km1], length_km: 70}]
users:
  - {id: a, certificate_subject: "CN=a",
     sla: {max_sessions: 10, max_bps: 1000000000000, priority: 7, idle_timeout_s: 3600}}
  - {id: b, certificate_subject: "CN=b",
     sla: {max_sessions: 10, max_bps: 1000000000000, priority: 7, idle_timeout_s: 3600}}
applications:
  - {sae_id: sa, owner: a, node: km0}
  - {sae_id: sc, owner: a, node: km0}
  - {sae_id: sb, owner: b, node: km1}
  - {sae_id: sd, owner: b, node: km1}
""")


async def until(cond: Callable[[], bool]) -> None:
    """Wait (bounded by the tests' deadline setting) until ``cond()`` holds."""
    await wait_until(cond, timeout_s=DEADLINE_S, what="the workers' state")


async def contend(db: Database, priorities: tuple[int, int]) -> Counter[str]:
    """Keys each session got over ``ROUNDS`` rounds of scarce key (see the module docstring)."""
    bus = MemoryBus()
    clock = RealClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    settings = KmSettings(link_reserve_bytes=0)
    link = TOPOLOGY.links[0].link_id
    got: Counter[str] = Counter()
    async with ControlPlane(TOPOLOGY, bus, db, clock, events, ControlSettings()):
        kms = {n: KeyManager(n, TOPOLOGY, bus, db, clock, events, settings) for n in ("km0", "km1")}
        for km in kms.values():
            await km.start()
        workers: list[asyncio.Task[None]] = []
        try:
            sids = {}
            for (src, dst), prio in zip((("sa", "sb"), ("sc", "sd")), priorities, strict=True):
                # both applications ask for the priority; their SLA allows up to 7
                qos = Qos(key_chunk_size=CHUNK, priority=prio, timeout_ms=10 * 3_600_000)
                sid = str(uuid.uuid4())
                opener = asyncio.create_task(kms["km0"].open_connect(CALLER_A, src, dst, qos, sid))
                # km0 asked Admission Control first: it is the source, making keys on request
                async with asyncio.timeout(DEADLINE_S):
                    await sink.wait_for(lambda e: e.type == EventType.admission_requested
                                        and e.session == sid)  # noqa: B023
                joined = await kms["km1"].open_connect(CALLER_B, dst, src, qos, sid)
                # V2.1.1: the first open answers at once (status 1, pending); the peer's
                # open pairs the stream and is answered connected
                await opener
                assert joined.peer_connected
                sids[src] = sid
            src_km = kms["km0"]
            shares = src_km.core.shares["km1"]

            async def worker(sid: str, indexes: Iterator[int]) -> None:
                while True:  # concurrent callers of one stream name their indexes
                    await src_km.get_key(CALLER_A, sid, next(indexes))
                    got[sid] += 1

            counters = {sid: itertools.count() for sid in sids.values()}
            workers = [asyncio.create_task(worker(sid, counters[sid])) for sid in sids.values()
                       for _ in range(WORKERS)]

            def all_waiting() -> bool:
                for sid in sids.values():
                    producing = src_km._io(sid).producing
                    if len(producing) != WORKERS or \
                            shares.waiting_of(sid) != len(set(producing.values())):
                        return False
                return True

            def supplied() -> int:
                return shares.stock + sum(f.granted for f in shares.flows.values())

            rng = random.Random(17)
            for block in range(ROUNDS):
                await until(all_waiting)
                before = supplied()
                material = rng.randbytes(BLOCK)
                for km in kms.values():
                    await km.put_block(link, block, material)
                await until(lambda: supplied() >= before + BLOCK // 2)  # noqa: B023
            await until(all_waiting)
            assert shares.flows[sids["sa"]].weight == priorities[0] + 1
            assert shares.flows[sids["sc"]].weight == priorities[1] + 1
            return Counter({src: got[sid] for src, sid in sids.items()})
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for km in kms.values():
                await km.close()
            await bus.close()


async def test_under_scarcity_priority_7_gets_at_least_three_times_the_keys_of_priority_0(
        km_db: Database) -> None:
    got = await contend(km_db, (7, 0))
    assert got["sa"] >= 3 * got["sc"] > 0, got


async def test_under_scarcity_equal_priorities_get_shares_within_20_percent(
        km_db: Database) -> None:
    got = await contend(km_db, (3, 3))
    assert min(got.values()) > 0
    assert abs(got["sa"] - got["sc"]) <= 0.2 * max(got.values()), got


@pytest.fixture
async def km_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await Database.open(sqlite_url(tmp_path / "km.db"))
    try:
        yield db
    finally:
        await db.close()

"""A KM's hop of a session survives a crash between its acknowledgement and its write
(issue #14.6, fault matrix): the KM acknowledges a SessionConfig only once the forwarding
row is durable, and Admission Control pushes every active session's hop again to a KM that
announces it (re)started (:class:`~keyplane.messages.KmReady`).

Real KMs (km0 - km1 - km2) on one in-memory bus and one SQLite file; the first test runs
keyplane's own control plane, the second the fake one (it asks a KM directly). Waits are
bounded by the suite's deadline setting, never by a short literal.
"""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import delete, select
from tests.support.deadlines import DEADLINE_S
from tests.support.km_drive import FailingStore
from tests.support.km_net import CALLER_A, CALLER_B, line_topology, start_net

from keyplane.bus import MemoryBus, topics
from keyplane.clock import RealClock
from keyplane.control import ControlPlane, ControlSettings
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.messages import ConfigAck, HopRole, SessionConfig
from keyplane.store import Database
from keyplane.store.models import SessionRow

TOPOLOGY = line_topology(3)


async def test_a_restarted_km_that_lost_its_hop_gets_it_pushed_again(km_db: Database) -> None:
    """km1 comes back without the relayed session's forwarding row (what a kill -9 between
    the acknowledgement and the write left before the KM waited for durability): the next
    keys still cross it, because Admission Control pushed km1 its hop again on KmReady."""
    clock = RealClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    bus = MemoryBus(seed=171)
    settings = KmSettings(link_reserve_bytes=512)
    async with ControlPlane(TOPOLOGY, bus, km_db, clock, events, ControlSettings()):
        kms: dict[str, KeyManager] = {}
        try:
            for n in TOPOLOGY.nodes:
                kms[n.id] = KeyManager(n.id, TOPOLOGY, bus, km_db, clock, events, settings)
                await kms[n.id].start()
            rng = random.Random(172)
            for link in TOPOLOGY.links:
                for b in range(4):
                    block = rng.randbytes(4096)
                    for end in link.endpoints:
                        await kms[end].put_block(link.link_id, b, block)
            for km in kms.values():
                assert await km.links_acknowledged(DEADLINE_S)
            async with asyncio.timeout(DEADLINE_S):
                first = await kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
            sid = next(s for s in kms["km1"].forwarding.sessions())
            await kms["km1"].close()
            async with km_db.session() as s:  # the write the crash lost
                await s.execute(delete(SessionRow).where(SessionRow.node == "km1"))
                await s.commit()
            kms["km1"] = KeyManager("km1", TOPOLOGY, bus, km_db, clock, events, settings)
            await kms["km1"].start()
            async with asyncio.timeout(DEADLINE_S):
                await sink.wait_for(lambda e: e.type == EventType.configured
                                    and e.node == "km1" and e.session == sid
                                    and e.data.get("repushed") is True)
            hop = kms["km1"].forwarding.current(sid)
            assert hop is not None and (hop.prev_km, hop.next_km) == ("km0", "km2")
            async with asyncio.timeout(DEADLINE_S):
                second = await kms["km0"].enc_keys(CALLER_A, "sa", "sb", 1, 256)
                got = await kms["km2"].dec_keys(CALLER_B, "sb", "sa",
                                                [k.key_id for k in first + second])
            assert [k.key for k in got] == [k.key for k in first + second]
            # the KMs that held the session already only acknowledged it again
            assert not [e for e in sink.events if e.type == EventType.configured
                        and e.data.get("repushed") and e.node != "km1"]
        finally:
            for km in kms.values():
                await km.close()
    await bus.close()


def hop(sid: str) -> SessionConfig:
    return SessionConfig(session_id=sid, node="km1", epoch=0, role=HopRole.intermediate,
                         prev_km="km0", next_km="km2", source_sae="sa", destination_sae="sb",
                         bucket_size_bits=256, token_rate_bps=256, idle_timeout_s=60)


async def test_a_configuration_is_acknowledged_only_once_its_row_is_durable(
        km_db: Database) -> None:
    store = FailingStore()
    bus = MemoryBus()
    with store.install():
        net = await start_net(TOPOLOGY, bus, km_db, RealClock())
        try:
            store.refuse_if = lambda writes: any(w.table.name == "sessions" for w in writes)
            async with asyncio.timeout(DEADLINE_S):
                refused = await bus.request(topics.km_config("km1"), hop("s-refused"),
                                            timeout_s=DEADLINE_S)
            assert isinstance(refused, ConfigAck)
            assert not refused.ok and "not durable" in refused.reason
            store.heal()
            async with asyncio.timeout(DEADLINE_S):
                acked = await bus.request(topics.km_config("km1"), hop("s-ok"),
                                          timeout_s=DEADLINE_S)
            assert isinstance(acked, ConfigAck) and acked.ok
            # durable when acknowledged: the row is there before anything else runs
            async with km_db.session() as s:
                rows = (await s.execute(select(SessionRow.session_id).where(
                    SessionRow.node == "km1"))).scalars().all()
            assert "s-ok" in rows
        finally:
            await net.close()
            await bus.close()

"""ETSI 004 V2.1.1 stream semantics of the real KM under the real control plane.

Three KMs in a line (km0 - km1 - km2) and keyplane's own control plane (Access Control,
Admission Control, Routing) on one in-memory bus and one SQLite file, on the real clock.
Waits that should end by themselves are bounded by the suite's deadline setting
(tests/support/deadlines.py), never by a short literal.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from tests.support.deadlines import DEADLINE_S
from tests.support.km_net import CALLER_A, CALLER_B, line_topology

from keyplane.bus import MemoryBus
from keyplane.clock import RealClock
from keyplane.control import ControlPlane, ControlSettings
from keyplane.errors import SessionIdInUse
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.keymanager.requests import NIL_KEY_STREAM_ID
from keyplane.messages import Qos
from keyplane.store import Database

# a third application, at the intermediate KM, owned by the same user as sa
TOPOLOGY = line_topology(3, extra="  - {sae_id: se, owner: ua, node: km1}")
WAIT = Qos(timeout_ms=int(DEADLINE_S * 1000))  # a call that ends as soon as it can
SHORT = Qos(timeout_ms=100)  # a call that must wait its whole Timeout


class Net:
    def __init__(self, kms: dict[str, KeyManager], sink: MemorySink) -> None:
        self.kms = kms
        self.sink = sink

    async def operative(self, node: str, sid: str) -> None:
        """Until ``node``'s KM has configured stream ``sid``."""
        async with asyncio.timeout(DEADLINE_S):
            await self.sink.wait_for(lambda e: e.type == EventType.session_operative
                                     and e.node == node and e.session == sid)


@pytest.fixture
async def net(km_db: Database) -> AsyncIterator[Net]:
    clock = RealClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    bus = MemoryBus(seed=161)
    async with ControlPlane(TOPOLOGY, bus, km_db, clock, events, ControlSettings()):
        kms: dict[str, KeyManager] = {}
        try:
            for n in TOPOLOGY.nodes:
                km = KeyManager(n.id, TOPOLOGY, bus, km_db, clock, events,
                                KmSettings(link_reserve_bytes=512))
                await km.start()
                kms[n.id] = km
            rng = random.Random(162)
            for link in TOPOLOGY.links:
                for b in range(4):
                    block = rng.randbytes(4096)
                    for end in link.endpoints:
                        await kms[end].put_block(link.link_id, b, block)
            for km in kms.values():
                assert await km.links_acknowledged(DEADLINE_S)
            yield Net(kms, sink)
        finally:
            for km in kms.values():
                await km.close()
    await bus.close()


async def test_a_nil_key_stream_id_asks_the_km_for_a_new_one(net: Net) -> None:
    km0, km2 = net.kms["km0"], net.kms["km2"]
    # the opener's Timeout is how long Admission Control keeps its open joinable: long
    # enough for the join below on a loaded machine (with 100 ms it ran out first there)
    first = await km0.open_connect(CALLER_A, "sa", "sb", WAIT, NIL_KEY_STREAM_ID)
    second = await km0.open_connect(CALLER_A, "sc", "sd", SHORT, NIL_KEY_STREAM_ID)
    # each nil open is a new stream with its own id: no collision, the peer not yet there
    assert not first.peer_connected and not second.peer_connected
    ids = {first.key_stream_id, second.key_stream_id}
    assert len(ids) == 2 and NIL_KEY_STREAM_ID not in ids
    assert all(uuid.UUID(i).version == 4 for i in ids)
    sid = first.key_stream_id
    joined = await km2.open_connect(CALLER_B, "sb", "sa", WAIT, sid)
    assert joined.peer_connected and joined.key_stream_id == sid
    await net.operative("km0", sid)
    # the joiner first, then the opener: both get index 0, the same key
    b = await km2.get_key(CALLER_B, sid, None)
    a = await km0.get_key(CALLER_A, sid, None)
    assert (a.index, a.key) == (b.index, b.key)


async def test_a_key_stream_id_in_use_is_refused_as_in_use_not_as_qos(net: Net) -> None:
    """Status 5 (SessionIdInUse), never 7: at a KM that relays the stream (it knows the id
    from its forwarding table, and refusing must not disturb the stream), and at a KM off
    the stream's path (only Admission Control knows the id)."""
    km0, km1, km2 = net.kms["km0"], net.kms["km1"], net.kms["km2"]
    relayed, adjacent = str(uuid.uuid4()), str(uuid.uuid4())
    for sid, peer, peer_km, caller in ((relayed, "sb", km2, CALLER_B),
                                       (adjacent, "se", km1, CALLER_A)):
        # the opener is answered status 1 at once (clause 6.3); the peer joins the id
        assert not (await km0.open_connect(CALLER_A, "sa", peer, WAIT, sid)).peer_connected
        joined = await peer_km.open_connect(caller, peer, "sa", WAIT, sid)
        assert joined.peer_connected
        await net.operative("km0", sid)
    with pytest.raises(SessionIdInUse, match="already in use"):
        await km1.open_connect(CALLER_A, "se", "sb", WAIT, relayed)  # km1 relays it
    with pytest.raises(SessionIdInUse, match="already in use"):
        await km2.open_connect(CALLER_B, "sd", "sa", WAIT, adjacent)  # km2 is off its path
    # the streams that own the ids go on
    for sid, peer_km, caller in ((relayed, km2, CALLER_B), (adjacent, km1, CALLER_A)):
        a = await km0.get_key(CALLER_A, sid, None)
        b = await peer_km.get_key(caller, sid, None)
        assert (a.index, a.key) == (b.index, b.key)

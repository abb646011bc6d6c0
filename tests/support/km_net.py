"""TEST SUPPORT: build a small network of real KeyManagers on one bus and one store.

Link key stores are fed directly with known blocks (the same bytes at both ends of each
link), standing in for the physical layer.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from keyplane.bus import Bus
from keyplane.clock import Clock
from keyplane.config import Topology, parse_topology
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.keymanager.interface import Caller
from keyplane.keymanager.pqc import KmIdentity
from keyplane.messages import Qos
from keyplane.store import Database
from tests.support.deadlines import DEADLINE_S
from tests.support.fake_control import FakeControlPlane

__all__ = ["CALLER_A", "CALLER_B", "KmNet", "line_topology", "open_pair", "start_net"]


def line_topology(n_nodes: int, *, extra: str = "") -> Topology:
    """km0 - km1 - ... - km{n-1}, with SAE ``sa`` at km0 and ``sb`` at the last node."""
    nodes = "\n".join(f"  - {{id: km{i}}}" for i in range(n_nodes))
    links = "\n".join(f"  - {{endpoints: [km{i}, km{i + 1}], length_km: 10}}"
                      for i in range(n_nodes - 1))
    last = n_nodes - 1
    text = f"""
version: 1
nodes:
{nodes}
links:
{links}
users:
  - {{id: ua, certificate_subject: "CN=a"}}
  - {{id: ub, certificate_subject: "CN=b"}}
applications:
  - {{sae_id: sa, owner: ua, node: km0}}
  - {{sae_id: sb, owner: ub, node: km{last}}}
  - {{sae_id: sc, owner: ua, node: km0}}
  - {{sae_id: sd, owner: ub, node: km{last}}}
{extra}
"""
    return parse_topology(text)


CALLER_A = Caller("CN=a")
CALLER_B = Caller("CN=b")


@dataclass
class KmNet:
    """Running KMs plus the fake control plane and what the link stores were fed."""

    topology: Topology
    bus: Bus
    db: Database
    clock: Clock
    events: EventStream
    sink: MemorySink
    control: FakeControlPlane
    settings: KmSettings
    kms: dict[str, KeyManager] = field(default_factory=dict)
    fed: dict[str, dict[int, bytes]] = field(default_factory=dict)  # link -> block -> bytes
    identities: dict[str, KmIdentity] = field(default_factory=dict)  # KMs with ML-KEM hops

    async def feed(self, rng: random.Random, blocks: int, block_bytes: int,
                   first_block: int = 0, links: set[str] | None = None) -> None:
        """Push the same random blocks into both ends of every link (or of ``links``)."""
        for link in self.topology.links:
            if links is not None and link.link_id not in links:
                continue
            for b in range(first_block, first_block + blocks):
                material = rng.randbytes(block_bytes)
                self.fed.setdefault(link.link_id, {})[b] = material
                for end in link.endpoints:
                    await self.kms[end].link_key_sink(link.link_id).put_block(
                        link.link_id, b, material)
        for km in self.kms.values():  # both ends hold every block: each may send with it
            assert await km.links_acknowledged(), f"{km.node_id}: blocks not acknowledged"

    async def restart(self, node: str) -> KeyManager:
        """Close one KM and start a new one on the same store (a KM restart)."""
        await self.kms[node].close()
        km = KeyManager(node, self.topology, self.bus, self.db, self.clock, self.events,
                        self.settings, self.identities.get(node))
        await km.start()
        self.kms[node] = km
        return km

    async def close(self) -> None:
        for km in self.kms.values():
            await km.close()
        await self.control.close()


async def start_net(topology: Topology, bus: Bus, db: Database, clock: Clock, *,
                    settings: KmSettings | None = None, seed: int = 1, blocks: int = 4,
                    block_bytes: int = 4096, identities: dict[str, KmIdentity] | None = None,
                    **control: object) -> KmNet:
    """Start one KM per node, the fake control plane, and feed every link.

    ``identities``: KM certificates for ML-KEM hops (hybrid provisioning), by node.
    """
    sink = MemorySink()
    events = EventStream(clock, [sink])
    settings = settings or KmSettings(link_reserve_bytes=512)
    ctl = await FakeControlPlane(bus, topology, **control).start()  # type: ignore[arg-type]
    net = KmNet(topology, bus, db, clock, events, sink, ctl, settings,
                identities=dict(identities or {}))
    for node in topology.nodes:
        km = KeyManager(node.id, topology, bus, db, clock, events, settings,
                        net.identities.get(node.id))
        await km.start()
        net.kms[node.id] = km
    await net.feed(random.Random(seed), blocks, block_bytes)
    return net


async def open_pair(net: KmNet, src: str = "sa", dst: str = "sb", qos: Qos | None = None
                    ) -> str:
    """OPEN_CONNECT at both ends (the source first, then the peer joins with its id)."""
    last = f"km{len(net.topology.nodes) - 1}"
    qos = qos or Qos()
    opener = asyncio.create_task(net.kms["km0"].open_connect(CALLER_A, src, dst, qos, None))
    async with asyncio.timeout(DEADLINE_S):
        # the KM assigned the Key_stream_ID; the peer learns it out of band (here: events)
        arrived = await net.sink.wait_for(
            lambda e: e.type == EventType.admission_requested and e.node == "km0")
    sid = arrived.session
    assert sid is not None
    joined = await net.kms[last].open_connect(CALLER_B, dst, src, qos, sid)
    opened = await opener
    assert opened.peer_connected and joined.peer_connected
    assert opened.key_stream_id == joined.key_stream_id == sid
    return sid

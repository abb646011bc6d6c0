"""TEST SUPPORT: real KMs behind the real control plane, in one process, with their ETSI apps.

Unlike :mod:`tests.support.km_net` (whose control plane is the test double of
``fake_control.py``), every element here is the product's: :class:`~keyplane.control.ControlPlane`
(Access Control, Admission Control, Routing, Monitoring, SDN registry) and one
:class:`~keyplane.keymanager.KeyManager` per node, on one in-memory bus and one store. Only
the physical layer stands in: each link's two key stores are fed the same random blocks.
The ETSI 014 / 004 apps of each KM (:func:`keyplane.api.server.create_km_app`) are reached
in-process through httpx's ASGI transport, the caller identified by its certificate
subject (as the TLS server would after the handshake).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from keyplane.api.server import create_km_app
from keyplane.api.settings import ApiSettings, Etsi014Limits
from keyplane.bus import MemoryBus
from keyplane.clock import Clock, RealClock
from keyplane.config import Topology
from keyplane.control import ControlPlane, ControlSettings
from keyplane.events import Event, EventStream, MemorySink
from keyplane.keymanager import KeyManager, KmSettings
from keyplane.store import Database
from tests.support.tls_scope import with_client_certificate

__all__ = ["EVENT_DEADLINE_S", "RealNet", "real_net"]

EVENT_DEADLINE_S = 120.0
"""How long a test waits for an event on a loaded machine (a deadline, never a pace)."""


@dataclass
class RealNet:
    """The running network and an HTTP client per user (at the node of its application)."""

    topology: Topology
    db: Database
    clock: Clock
    sink: MemorySink
    control: ControlPlane
    settings: KmSettings
    bus: MemoryBus
    events: EventStream
    kms: dict[str, KeyManager] = field(default_factory=dict)
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    def client(self, user: str) -> httpx.AsyncClient:
        """The HTTP client of ``user`` (its certificate subject), at its application's KM."""
        return self.clients[user]

    async def wait_event(self, predicate: Any) -> Event:
        """The first event (past or future) that ``predicate`` accepts."""
        async with asyncio.timeout(EVENT_DEADLINE_S):
            event: Event = await self.sink.wait_for(predicate)
        return event

    async def restart(self, node: str) -> KeyManager:
        """Close one KM and start a new one on the same store (a KM crash and restart:
        what it had not written is gone with it)."""
        await self.kms[node].close()
        km = KeyManager(node, self.topology, self.bus, self.db, self.clock, self.events,
                        self.settings)
        await km.start()
        self.kms[node] = km
        self._serve(node)
        return km

    def _serve(self, node: str) -> None:
        topo = self.topology
        app = create_km_app(self.kms[node], kme_id=node, settings=ApiSettings.from_topology(
            topo, node, limits=Etsi014Limits.from_km_settings(self.settings)))
        for a in topo.applications:
            if a.node != node:
                continue
            subject = topo.user(a.owner).certificate_subject
            assert subject
            # a restarted KM's app replaces the closed one's (the old client is dropped;
            # its transport holds no socket)
            self.clients[a.owner] = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=with_client_certificate(app, subject)),
                base_url=f"https://{node}")

@asynccontextmanager
async def real_net(topology: Topology, db: Database, *, clock: Clock | None = None,
                   seed: int = 1, blocks: int = 8, block_bytes: int = 4096,
                   control: ControlSettings | None = None,
                   km: KmSettings | None = None) -> AsyncIterator[RealNet]:
    """Start the control plane and one KM per node, feed every link, serve the apps."""
    clock = clock or RealClock()
    sink = MemorySink()
    events = EventStream(clock, [sink])
    bus = MemoryBus(seed=seed)
    settings = km or KmSettings(link_reserve_bytes=512)
    async with ControlPlane(topology, bus, db, clock, events,
                            control or ControlSettings()) as plane:
        net = RealNet(topology, db, clock, sink, plane, settings, bus, events)
        try:
            for node in topology.nodes:
                k = KeyManager(node.id, topology, bus, db, clock, events, settings)
                await k.start()
                net.kms[node.id] = k
            rng = random.Random(seed)
            for link in topology.links:
                for b in range(blocks):
                    material = rng.randbytes(block_bytes)
                    for end in link.endpoints:
                        await net.kms[end].put_block(link.link_id, b, material)
            for k in net.kms.values():
                assert await k.links_acknowledged(), f"{k.node_id}: blocks not acknowledged"
            for node in topology.nodes:
                net._serve(node.id)
            yield net
        finally:
            for c in net.clients.values():
                await c.aclose()
            for k in net.kms.values():
                await k.close()

"""Shared support for the ETSI 015 tests: topology, agents, in-process RESTCONF clients.

``controller_client`` reaches an agent's app with no socket (httpx ASGITransport) and puts
the controller certificate subject into the ASGI scope state, as the mTLS server does per
connection; ``MultiAppTransport`` routes by host so one driver can talk to several agents.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from etsi015_support import with_subject

from keyplane.api.etsi015 import DEFAULT_CONTROLLER_SUBJECT, SdnAgent, create_agent_app
from keyplane.bus import MemoryBus
from keyplane.clock import VirtualClock
from keyplane.config import Topology, load_topology
from keyplane.events import EventStream, MemorySink

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def topology() -> Topology:
    return load_topology(ROOT / "examples" / "paper_poc.yaml")


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
async def agent(topology: Topology, memory_bus: MemoryBus, clock: VirtualClock,
                sink: MemorySink) -> AsyncIterator[SdnAgent]:
    a = SdnAgent("km0", topology, memory_bus, clock, EventStream(clock, [sink]))
    await a.start()
    try:
        yield a
    finally:
        await a.close()


@pytest.fixture
async def controller_client(agent: SdnAgent) -> AsyncIterator[httpx.AsyncClient]:
    app = with_subject(create_agent_app(agent), DEFAULT_CONTROLLER_SUBJECT)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://km0") as client:
        yield client

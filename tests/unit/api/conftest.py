"""Fixtures for the API tests: a fake key network over the line3 topology, in-process apps."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from tests.support.fake_km import FakeKeyNetwork
from tests.support.topologies import line3

from keyplane.api.server import create_km_app
from keyplane.api.settings import ApiSettings


@pytest.fixture
def network() -> FakeKeyNetwork:
    return FakeKeyNetwork(line3(), seed=7014)


@pytest.fixture
async def clients(network: FakeKeyNetwork) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """One in-process client per user, each talking to the KM its SAE is attached to."""
    topo = network.topology
    out: dict[str, httpx.AsyncClient] = {}
    for app in topo.applications:
        user = topo.user(app.owner)
        asgi = create_km_app(network.km(app.node), kme_id=app.node,
                             settings=ApiSettings.from_topology(topo, app.node))
        out[user.id] = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi), base_url=f"https://{app.node}",
            headers={"Authorization": f"Bearer {user.token}"})
    try:
        yield out
    finally:
        for c in out.values():
            await c.aclose()

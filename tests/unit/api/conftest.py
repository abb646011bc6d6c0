"""Fixtures for the API tests: a fake key network over the line3 topology, in-process apps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from tests.support.fake_km import FakeKeyNetwork
from tests.support.tls_scope import with_client_certificate
from tests.support.topologies import line3

from keyplane.api.client import AsyncEtsi004Client, AsyncEtsi014Client
from keyplane.api.server import create_km_app
from keyplane.api.settings import ApiSettings


@pytest.fixture
def network() -> FakeKeyNetwork:
    return FakeKeyNetwork(line3(), seed=7014)


@pytest.fixture
def km_app(network: FakeKeyNetwork) -> Callable[[str], FastAPI]:
    """The KM app (014 + 004) of a node of the fake network."""

    def make(node: str) -> FastAPI:
        return create_km_app(network.km(node), kme_id=node,
                             settings=ApiSettings.from_topology(network.topology, node))

    return make


def _node_and_subject(network: FakeKeyNetwork, user: str) -> tuple[str, str]:
    topo = network.topology
    app = next(a for a in topo.applications if a.owner == user)
    subject = topo.user(user).certificate_subject
    assert subject
    return app.node, subject


def _transport(app: FastAPI, subject: str) -> httpx.ASGITransport:
    """In-process transport of a client whose certificate subject is ``subject``."""
    return httpx.ASGITransport(app=with_client_certificate(app, subject))


@pytest.fixture
async def sdk014(network: FakeKeyNetwork, km_app: Callable[[str], FastAPI]
                 ) -> AsyncIterator[Callable[[str], AsyncEtsi014Client]]:
    """SDK ETSI 014 client of a user, in-process (certificate subject, no sockets)."""
    made: list[AsyncEtsi014Client] = []

    def make(user: str) -> AsyncEtsi014Client:
        node, subject = _node_and_subject(network, user)
        c = AsyncEtsi014Client(f"https://{node}", transport=_transport(km_app(node), subject))
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


@pytest.fixture
async def sdk004(network: FakeKeyNetwork, km_app: Callable[[str], FastAPI]
                 ) -> AsyncIterator[Callable[[str], AsyncEtsi004Client]]:
    """SDK ETSI 004 client of a user, in-process."""
    made: list[AsyncEtsi004Client] = []

    def make(user: str) -> AsyncEtsi004Client:
        node, subject = _node_and_subject(network, user)
        c = AsyncEtsi004Client(f"https://{node}/etsi004",
                               transport=_transport(km_app(node), subject))
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


@pytest.fixture
async def raw(network: FakeKeyNetwork, km_app: Callable[[str], FastAPI]
              ) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """Plain httpx client of a user (for malformed requests the SDK would not send)."""
    made: list[httpx.AsyncClient] = []

    def make(user: str) -> httpx.AsyncClient:
        node, subject = _node_and_subject(network, user)
        c = httpx.AsyncClient(transport=_transport(km_app(node), subject),
                              base_url=f"https://{node}")
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()

"""Test support for ETSI 015: SDN agents reached in process (no sockets, no TLS).

``with_subject`` wraps an agent's app so requests carry a TLS peer subject in the ASGI scope
state, as the mTLS server does per connection; ``MultiAppTransport`` routes by host so one
driver can talk to several agents (``https://<node>``); ``AgentNetwork`` starts a real
:class:`~keyplane.api.etsi015.SdnAgent` per node and gives a driver reaching all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import httpx

from keyplane.api.etsi015 import (
    DEFAULT_CONTROLLER_SUBJECT,
    PEER_SUBJECT_STATE_KEY,
    Etsi015Driver,
    SdnAgent,
    create_agent_app,
)
from keyplane.bus import Bus
from keyplane.clock import Clock
from keyplane.config import Topology
from keyplane.events import EventStream

__all__ = ["AgentNetwork", "MultiAppTransport", "agent_url", "with_subject"]


def with_subject(app: Any, subject: str | None) -> Any:
    """Wrap an ASGI app so every request carries ``subject`` as its TLS peer."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and subject is not None:
            scope = {**scope, "state": {**scope.get("state", {}),
                                        PEER_SUBJECT_STATE_KEY: subject}}
        await app(scope, receive, send)

    return wrapped


class MultiAppTransport(httpx.AsyncBaseTransport):
    """Routes each request to the ASGI app registered for its host (several nodes, no sockets).

    A host in ``down`` (or not registered) fails like a node that does not answer; a request
    to a host in ``hold`` waits until that event is set (a node that is slow to answer).
    """

    def __init__(self, apps: dict[str, Any]) -> None:
        self._transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}
        self.down: set[str] = set()
        self.hold: dict[str, asyncio.Event] = {}
        self.requests: list[tuple[str, str, str]] = []  # (host, method, path)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.url.host, request.method, request.url.path))
        gate = self.hold.get(request.url.host)
        if gate is not None:
            await gate.wait()
        transport = self._transports.get(request.url.host)
        if transport is None or request.url.host in self.down:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await transport.handle_async_request(request)


def agent_url(node: str) -> str:
    """The in-process URL of ``node``'s agent."""
    return f"https://{node}"


class AgentNetwork:
    """A started SDN agent per node and a driver (controller identity) reaching them."""

    def __init__(self, topology: Topology, nodes: Iterable[str], bus: Bus, clock: Clock,
                 events: EventStream) -> None:
        self.agents = {n: SdnAgent(n, topology, bus, clock, events) for n in nodes}
        self.transport = MultiAppTransport({
            n: with_subject(create_agent_app(a), DEFAULT_CONTROLLER_SUBJECT)
            for n, a in self.agents.items()})
        self.driver = Etsi015Driver(transport=self.transport)

    def virt_links(self, node: str) -> list[dict[str, Any]]:
        """The VIRT ``qkd_link`` entries ``node``'s agent serves."""
        links = self.agents[node].get("etsi-qkd-sdn-node:qkd_node/qkd_links")
        return [x for x in links["etsi-qkd-sdn-node:qkd_links"].get("qkd_link", [])
                if x["qkdl_type"].endswith(":VIRT")]

    def apps(self, node: str) -> list[dict[str, Any]]:
        """The ``qkd_app`` entries of ``node``'s agent."""
        body = self.agents[node].get("etsi-qkd-sdn-node:qkd_node/qkd_applications")
        return list(body["etsi-qkd-sdn-node:qkd_applications"].get("qkd_app", []))

    async def __aenter__(self) -> AgentNetwork:
        for a in self.agents.values():
            await a.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.driver.close()
        for a in self.agents.values():
            await a.close()

"""Test support for the ETSI 015 tests (imported by conftest and the test modules).

``with_subject`` wraps an agent's app so requests carry a TLS peer subject in the ASGI scope
state, as the mTLS server does per connection; ``MultiAppTransport`` routes by host so one
driver can talk to several in-process agents; ``assert_valid`` checks a document against the
YANG model (workaround applied).
"""

from __future__ import annotations

from typing import Any

import httpx

from keyplane.api.etsi015 import PEER_SUBJECT_STATE_KEY, validate_node


def with_subject(app: Any, subject: str | None) -> Any:
    """Wrap an ASGI app so every request carries ``subject`` as its TLS peer."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and subject is not None:
            scope = {**scope, "state": {**scope.get("state", {}),
                                        PEER_SUBJECT_STATE_KEY: subject}}
        await app(scope, receive, send)

    return wrapped


class MultiAppTransport(httpx.AsyncBaseTransport):
    """Routes each request to the ASGI app registered for its host (several nodes, no sockets)."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self._transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._transports.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await transport.handle_async_request(request)


def assert_valid(document: dict[str, Any]) -> None:
    """The whole datastore document conforms to the model (workaround applied)."""
    validate_node(document)

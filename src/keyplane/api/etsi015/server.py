"""Serving RESTCONF over HTTPS with mutual TLS, with the client's identity.

The server is :class:`keyplane.api.httpserver.HttpServer`, shared by every keyplane
interface: TLS and the ASGI TLS extension, bounded requests (a body over the limit is a 413
``ietf-restconf:errors`` with error-tag ``too-big``, RFC 8040 §7), metrics per request.
The RESTCONF app reads the client certificate's RFC 4514 subject from the ASGI scope
state key :data:`~keyplane.api.etsi015.restconf.PEER_SUBJECT_STATE_KEY`;
:class:`_PeerSubject` puts it there from the TLS extension (only the server can set
either; no request header can).
"""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from keyplane.api.etsi015.agent import SdnAgent
from keyplane.api.etsi015.errors import ERROR_MEDIA_TYPE, RestconfError
from keyplane.api.etsi015.restconf import PEER_SUBJECT_STATE_KEY, create_agent_app
from keyplane.api.httpserver import HttpLimits, HttpServer, RequestObserver
from keyplane.certs import CertPaths, server_ssl_context

__all__ = ["RestconfServer", "restconf_error_body", "serve_agent", "serve_app"]

logger = logging.getLogger(__name__)

_TOO_BIG = {413: "too-big"}


def restconf_error_body(scope: Scope, status: int, message: str, details: dict[str, Any]
                        ) -> tuple[bytes, str]:
    """The server's own answers (413) as ``ietf-restconf:errors`` (RFC 8040 §7)."""
    tag = _TOO_BIG.get(status, "operation-failed")
    detail = ", ".join(f"{k}={v}" for k, v in details.items())
    err = RestconfError(status, tag, f"{message} ({detail})" if detail else message)
    return json.dumps(err.body()).encode(), ERROR_MEDIA_TYPE


class _PeerSubject:
    """ASGI wrapper: the TLS extension's client subject into the RESTCONF state key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            state = scope.setdefault("state", {})
            state.pop(PEER_SUBJECT_STATE_KEY, None)
            tls = (scope.get("extensions") or {}).get("tls") or {}
            subject = tls.get("client_cert_name")
            if isinstance(subject, str):
                state[PEER_SUBJECT_STATE_KEY] = subject
        await self.app(scope, receive, send)


class RestconfServer(HttpServer):
    """A RESTCONF app served over HTTPS (mutual TLS by default).

    Args:
        app: the ASGI application.
        host: interface to bind.
        port: TCP port; 0 picks a free one.
        ssl_context: server TLS context (None: plain HTTP, for tests only).
        limits: HTTP bounds (:class:`~keyplane.api.httpserver.HttpLimits`).
        observer: told about every request (metrics), as interface ``interface``.
        interface: the metrics label (``etsi015`` for an agent, ``etsi015_northbound``).
        startup_timeout_s: how long :meth:`start` waits for the socket.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 ssl_context: ssl.SSLContext | None = None, limits: HttpLimits | None = None,
                 observer: RequestObserver | None = None, interface: str = "etsi015",
                 startup_timeout_s: float = 30.0) -> None:
        super().__init__(_PeerSubject(app), host=host, port=port,
                         ssl_context=ssl_context, limits=limits,
                         error_body=restconf_error_body, observer=observer,
                         interface=interface, name=interface,
                         startup_timeout_s=startup_timeout_s)

    async def start(self) -> RestconfServer:
        """Bind and start serving; returns when the socket accepts connections.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: the server did not start in time or stopped during start-up.
        """
        await super().start()
        return self

    async def __aenter__(self) -> RestconfServer:
        return await self.start()


async def serve_agent(agent: SdnAgent, host: str = "127.0.0.1", port: int = 0, *,
                      server_cert: CertPaths | None, ca_file: Path | None,
                      limits: HttpLimits | None = None, observer: RequestObserver | None = None,
                      startup_timeout_s: float = 30.0) -> RestconfServer:
    """Serve ``agent``'s RESTCONF API over HTTPS with mutual TLS; returns the running server.

    Args:
        agent: the SDN agent (start it separately).
        host: interface to bind.
        port: TCP port (0: a free one; read :attr:`RestconfServer.port`).
        server_cert: the node's certificate (``Issued.kms[node]`` of keyplane.certs).
        ca_file: the CA whose client certificates are accepted. ``server_cert`` and
            ``ca_file`` both None serves plain HTTP (tests only).
        limits: HTTP bounds.
        observer: told about every request (metrics).

    Raises:
        OSError, RuntimeError: see :meth:`RestconfServer.start`.
        ValueError: only one of ``server_cert`` and ``ca_file`` was given.
    """
    if (server_cert is None) != (ca_file is None):
        raise ValueError("give both server_cert and ca_file (or neither for plain HTTP)")
    ctx = server_ssl_context(server_cert, ca_file) if server_cert and ca_file else None
    if ctx is None:
        logger.warning("SDN agent %s serves RESTCONF over plain HTTP", agent.node_id)
    server = RestconfServer(create_agent_app(agent), host, port, ssl_context=ctx,
                            limits=limits, observer=observer,
                            startup_timeout_s=startup_timeout_s)
    return await server.start()


async def serve_app(app: Any, host: str = "127.0.0.1", port: int = 0, *,
                    server_cert: CertPaths, ca_file: Path, limits: HttpLimits | None = None,
                    observer: RequestObserver | None = None,
                    interface: str = "etsi015_northbound", startup_timeout_s: float = 30.0
                    ) -> RestconfServer:
    """Serve any RESTCONF app (e.g. :func:`create_northbound_app`) with mutual TLS.

    Raises:
        OSError, RuntimeError: see :meth:`RestconfServer.start`.
    """
    server = RestconfServer(app, host, port, ssl_context=server_ssl_context(server_cert, ca_file),
                            limits=limits, observer=observer, interface=interface,
                            startup_timeout_s=startup_timeout_s)
    return await server.start()

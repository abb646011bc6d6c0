"""One HTTPS server per KM for its application interfaces, with mutual TLS.

``create_km_app`` is the ETSI 014 app (``/api/v1/keys/...`` at the root, as the standard
requires) with the ETSI 004 app mounted at ``/etsi004``; each keeps its own error handling
and its own OpenAPI document (``/openapi.json`` and ``/etsi004/openapi.json``).

``serve_km_api`` serves it with :class:`keyplane.api.httpserver.HttpServer`, the server
every keyplane interface uses:

- TLS >= 1.2 with a client certificate from the network's CA required
  (:func:`keyplane.certs.server_ssl_context`); a client without one never reaches the app;
  the verified certificate reaches the app as the ASGI TLS extension, read by
  :mod:`keyplane.api.auth`;
- bounded requests (:class:`~keyplane.api.httpserver.HttpLimits`): a body over the limit
  is a 413 ``{message, details}`` on both interfaces; slow heads and bodies are closed;
- requests, statuses and latencies per interface (``etsi014``/``etsi004``) go to an
  optional observer (the process's Prometheus metrics, :mod:`keyplane.ops`);
- the call returns once serving (port 0 picks a free port, known at once), or raises;
  the caller (``keyplane run``) owns SIGINT/SIGTERM and calls :meth:`KmApiServer.close`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

from fastapi import FastAPI
from starlette.types import Scope

from keyplane.api.entanglement import (
    ENTANGLEMENT_PREFIX,
    NodeEntanglementAgent,
    create_entanglement_app,
)
from keyplane.api.etsi004.app import ETSI004_PREFIX, create_etsi004_app
from keyplane.api.etsi014.app import create_etsi014_app
from keyplane.api.httpserver import HttpLimits, HttpServer, RequestObserver
from keyplane.api.settings import ApiSettings
from keyplane.certs import CertPaths, server_ssl_context
from keyplane.keymanager.interface import ApplicationService

__all__ = ["KmApiServer", "create_km_app", "km_interface", "serve_km_api"]

logger = logging.getLogger(__name__)


def create_km_app(km: ApplicationService, *, kme_id: str, settings: ApiSettings | None = None,
                  entanglement: NodeEntanglementAgent | None = None) -> FastAPI:
    """ETSI 014 at the root and ETSI 004 under ``/etsi004``, for one KM; with an
    ``entanglement`` agent, the node's entanglement API under ``/entanglement``."""
    app = create_etsi014_app(km, kme_id=kme_id, settings=settings)
    app.mount(ETSI004_PREFIX, create_etsi004_app(km, kme_id=kme_id, settings=settings))
    if entanglement is not None:
        app.mount(ENTANGLEMENT_PREFIX, create_entanglement_app(entanglement,
                                                               settings=settings))
    return app


def km_interface(scope: Scope) -> str:
    """Which interface a request of the KM server belongs to (a metrics label)."""
    path: str = scope.get("path", "")
    if path.startswith(ENTANGLEMENT_PREFIX + "/"):
        return "entanglement"
    return "etsi004" if path.startswith(ETSI004_PREFIX + "/") else "etsi014"


class KmApiServer:
    """A running KM application-interface server (async context manager).

    Attributes:
        host, port: where it listens.
        app: the served FastAPI app.
        http: the underlying :class:`~keyplane.api.httpserver.HttpServer`.
    """

    def __init__(self, http: HttpServer, app: FastAPI) -> None:
        self.http = http
        self.app = app
        self.host = http.host
        self.port = http.port

    @property
    def url(self) -> str:
        """Base URL, ``https://host:port``."""
        return self.http.url

    @property
    def etsi014_url(self) -> str:
        """ETSI 014 base URL (the standard's ``/api/v1/keys`` paths hang off it)."""
        return self.url

    @property
    def etsi004_url(self) -> str:
        """ETSI 004 base URL (``/v1/open_connect`` etc. hang off it)."""
        return self.url + ETSI004_PREFIX

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish for up to ``timeout_s``, then stop.

        Idempotent.
        """
        await self.http.close(timeout_s)

    async def __aenter__(self) -> KmApiServer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


async def serve_km_api(km: ApplicationService, *, kme_id: str, server_cert: CertPaths,
                       ca_file: Path, host: str = "127.0.0.1", port: int = 0,
                       settings: ApiSettings | None = None, limits: HttpLimits | None = None,
                       observer: RequestObserver | None = None,
                       startup_timeout_s: float = 30.0,
                       entanglement: NodeEntanglementAgent | None = None) -> KmApiServer:
    """Serve ``create_km_app(km, ...)`` over HTTPS with mutual TLS; return once serving.

    Args:
        km: the node's key manager.
        kme_id: the node id (KME ID in ETSI 014 terms).
        server_cert: the KM's certificate and key (``ensure_network_certs(...).kms[node]``).
        ca_file: the network CA; clients must present a certificate it issued.
        host, port: where to listen; port 0 picks a free one (see ``.port``).
        settings: ETSI limits, local SAEs, timeouts.
        limits: HTTP bounds (body size, head and body timeouts, connections).
        observer: told about every request (``keyplane.ops.Ops.http``).
        startup_timeout_s: how long the server may take to start.
        entanglement: the node's entanglement agent (serves ``/entanglement``), or None.

    Returns:
        The running :class:`KmApiServer`; ``await server.close()`` (or ``async with``) stops it.

    Raises:
        OSError: the address cannot be bound.
        RuntimeError: the server did not start in time or stopped during start-up.
    """
    app = create_km_app(km, kme_id=kme_id, settings=settings, entanglement=entanglement)
    http = HttpServer(app, host=host, port=port,
                      ssl_context=server_ssl_context(server_cert, ca_file), limits=limits,
                      observer=observer, interface=km_interface, name=f"km-api-{kme_id}",
                      startup_timeout_s=startup_timeout_s)
    await http.start()
    return KmApiServer(http, app)

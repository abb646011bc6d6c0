"""One HTTPS server per KM for its application interfaces, with mutual TLS.

``create_km_app`` is the ETSI 014 app (``/api/v1/keys/...`` at the root, as the standard
requires) with the ETSI 004 app mounted at ``/etsi004``; each keeps its own error handling
and its own OpenAPI document (``/openapi.json`` and ``/etsi004/openapi.json``).

``serve_km_api`` runs it under uvicorn in the current event loop:

- TLS >= 1.2 with a client certificate from the network's CA required
  (:func:`keyplane.certs.server_ssl_context`); a client without one never reaches the app;
- the peer certificate reaches the app through a small uvicorn protocol subclass that puts
  its DER bytes in the per-connection ASGI ``state`` (uvicorn does not implement the ASGI
  TLS extension); :mod:`keyplane.api.auth` reads it;
- the socket is bound before uvicorn starts (port 0 picks a free port, known at once), and
  the call returns only after uvicorn has started serving on it, or raises;
- uvicorn does not take over the process's signal handlers: the caller (``keyplane run``)
  owns SIGINT/SIGTERM and calls :meth:`KmApiServer.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from keyplane.api.auth import PEER_CERT_STATE_KEY
from keyplane.api.etsi004.app import ETSI004_PREFIX, create_etsi004_app
from keyplane.api.etsi014.app import create_etsi014_app
from keyplane.api.settings import ApiSettings
from keyplane.certs import CertPaths, server_ssl_context
from keyplane.keymanager.interface import ApplicationService

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _BaseProtocol
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    _BaseProtocol = H11Protocol  # type: ignore[assignment, misc]

__all__ = ["KmApiServer", "create_km_app", "serve_km_api"]

logger = logging.getLogger(__name__)


def create_km_app(km: ApplicationService, *, kme_id: str, settings: ApiSettings | None = None
                  ) -> FastAPI:
    """ETSI 014 at the root and ETSI 004 under ``/etsi004``, for one KM."""
    app = create_etsi014_app(km, kme_id=kme_id, settings=settings)
    app.mount(ETSI004_PREFIX, create_etsi004_app(km, kme_id=kme_id, settings=settings))
    return app


class _PeerCertProtocol(_BaseProtocol):
    """uvicorn's HTTP protocol, plus the TLS peer certificate in each request's state."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            # app_state is copied into every request scope's "state" of this connection.
            self.app_state = {**self.app_state, PEER_CERT_STATE_KEY: der}


class _Server(uvicorn.Server):
    """uvicorn.Server that signals readiness and leaves signal handling to its owner."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class KmApiServer:
    """A running KM application-interface server (async context manager).

    Attributes:
        host, port: where it listens.
        app: the served FastAPI app.
    """

    def __init__(self, server: _Server, task: asyncio.Task[None], sock: socket.socket,
                 app: FastAPI, host: str, port: int) -> None:
        self._server = server
        self._task = task
        self._sock = sock
        self.app = app
        self.host = host
        self.port = port
        self._closed = False

    @property
    def url(self) -> str:
        """Base URL, ``https://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

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
        if self._closed:
            return
        self._closed = True
        self._server.should_exit = True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            self._sock.close()

    async def __aenter__(self) -> KmApiServer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_km_api(km: ApplicationService, *, kme_id: str, server_cert: CertPaths,
                       ca_file: Path, host: str = "127.0.0.1", port: int = 0,
                       settings: ApiSettings | None = None, startup_timeout_s: float = 10.0,
                       **uvicorn_options: Any) -> KmApiServer:
    """Serve ``create_km_app(km, ...)`` over HTTPS with mutual TLS; return once serving.

    Args:
        km: the node's key manager.
        kme_id: the node id (KME ID in ETSI 014 terms).
        server_cert: the KM's certificate and key (``ensure_network_certs(...).kms[node]``).
        ca_file: the network CA; clients must present a certificate it issued.
        host, port: where to listen; port 0 picks a free one (see ``.port``).
        settings: ETSI limits, local SAEs, timeouts.
        startup_timeout_s: how long uvicorn may take to start.
        uvicorn_options: extra :class:`uvicorn.Config` options (e.g. ``timeout_keep_alive``).

    Returns:
        The running :class:`KmApiServer`; ``await server.close()`` (or ``async with``) stops it.

    Raises:
        OSError: the address cannot be bound.
        RuntimeError: uvicorn did not start in time or stopped during start-up.
    """
    app = create_km_app(km, kme_id=kme_id, settings=settings)
    ctx = server_ssl_context(server_cert, ca_file)
    options: dict[str, Any] = {"log_config": None, "access_log": False, "lifespan": "off",
                               "server_header": False, **uvicorn_options}
    config = uvicorn.Config(app, http=_PeerCertProtocol,
                            ssl_context_factory=lambda _cfg, _default: ctx, **options)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"km-api-{kme_id}")
    ready = asyncio.create_task(server.ready.wait())
    try:
        await asyncio.wait({task, ready}, timeout=startup_timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if not server.ready.is_set():
        server.should_exit = True
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SystemExit, Exception):
            await task
        sock.close()
        raise RuntimeError(f"KM API server for {kme_id} did not start")
    logger.info("ETSI 004/014 server of %s listening on https://%s:%d", kme_id, host,
                bound_port)
    return KmApiServer(server, task, sock, app, host, bound_port)

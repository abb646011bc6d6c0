"""Serving RESTCONF over HTTPS with mutual TLS (uvicorn), with the client's identity.

uvicorn does not put the TLS peer certificate in the ASGI scope, so :class:`_MtlsH11Protocol`
reads it once per connection (``ssl_object.getpeercert``) and adds its RFC 4514 subject to
the connection's scope state under :data:`~keyplane.api.etsi015.restconf.PEER_SUBJECT_STATE_KEY`;
handlers see it as ``request.scope["state"]``. :class:`RestconfServer` runs uvicorn inside
the caller's event loop (no signal handlers taken), signals readiness after the socket is
bound (port 0 allowed; the bound port is then in :attr:`RestconfServer.port`) and stops
cleanly on :meth:`RestconfServer.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from keyplane.api.etsi015.agent import SdnAgent
from keyplane.api.etsi015.restconf import PEER_SUBJECT_STATE_KEY, create_agent_app
from keyplane.certs import CertPaths, peer_subject, server_ssl_context

__all__ = ["RestconfServer", "serve_agent", "serve_app"]

logger = logging.getLogger(__name__)


class _MtlsH11Protocol(H11Protocol):
    """h11 protocol that exposes the client certificate subject to the application."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if der:
            # a per-connection copy: app_state itself is shared by every connection
            self.app_state = {**self.app_state, PEER_SUBJECT_STATE_KEY: peer_subject(der)}

    def shutdown(self) -> None:
        """Graceful shutdown, without waiting on idle keep-alive clients.

        uvicorn closes an idle connection with ``transport.close()``; over TLS that waits
        for the peer's close_notify, which a pooled client connection (e.g. the SDN
        Controller's driver) never sends while idle, so every server stop took the whole
        close timeout. An idle connection has nothing in flight: abort it.
        """
        idle = self.cycle is None or self.cycle.response_complete
        super().shutdown()
        if idle:
            self.transport.abort()


class _Server(uvicorn.Server):
    """uvicorn server that leaves signals to the host process and reports readiness."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


class RestconfServer:
    """An ASGI app served by uvicorn over HTTPS (mutual TLS by default).

    Args:
        app: the ASGI application.
        host: interface to bind.
        port: TCP port; 0 picks a free one.
        ssl_context: server TLS context (None: plain HTTP, for tests only).
        startup_timeout_s: how long :meth:`start` waits for the socket.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 ssl_context: ssl.SSLContext | None = None,
                 startup_timeout_s: float = 10.0) -> None:
        factory: Callable[..., ssl.SSLContext] | None = None
        if ssl_context is not None:
            def factory(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
                        ) -> ssl.SSLContext:
                return ssl_context
        config = uvicorn.Config(app, host=host, port=port, http=_MtlsH11Protocol,
                                ssl_context_factory=factory, lifespan="off", log_level="warning",
                                access_log=False, ws="none")
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self._startup_timeout_s = startup_timeout_s
        self.scheme = "https" if ssl_context is not None else "http"
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``https://127.0.0.1:45123``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    async def start(self) -> RestconfServer:
        """Bind and start serving; returns when the socket accepts connections.

        Raises:
            TimeoutError: the server did not start within ``startup_timeout_s``.
            RuntimeError: the server stopped during start-up (e.g. port in use).
        """
        if self._task is not None:
            return self
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        ready = asyncio.ensure_future(self._server.ready.wait())
        try:
            async with asyncio.timeout(self._startup_timeout_s):
                await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not self._server.ready.is_set():
            await self.close()
            raise RuntimeError("RESTCONF server failed to start")
        sock = self._server.servers[0].sockets[0]
        self.port = sock.getsockname()[1]
        return self

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, finish in-flight requests (up to ``timeout_s``); idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        self._server.should_exit = True
        try:
            async with asyncio.timeout(timeout_s):
                await task
        except TimeoutError:
            self._server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await task
        except (asyncio.CancelledError, SystemExit):
            pass

    async def __aenter__(self) -> RestconfServer:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


async def serve_agent(agent: SdnAgent, host: str = "127.0.0.1", port: int = 0, *,
                      server_cert: CertPaths | None, ca_file: Path | None,
                      startup_timeout_s: float = 10.0) -> RestconfServer:
    """Serve ``agent``'s RESTCONF API over HTTPS with mutual TLS; returns the running server.

    Args:
        agent: the SDN agent (start it separately).
        host: interface to bind.
        port: TCP port (0: a free one; read :attr:`RestconfServer.port`).
        server_cert: the node's certificate (``Issued.kms[node]`` of keyplane.certs).
        ca_file: the CA whose client certificates are accepted. ``server_cert`` and
            ``ca_file`` both None serves plain HTTP (tests only).

    Raises:
        TimeoutError, RuntimeError: see :meth:`RestconfServer.start`.
        ValueError: only one of ``server_cert`` and ``ca_file`` was given.
    """
    if (server_cert is None) != (ca_file is None):
        raise ValueError("give both server_cert and ca_file (or neither for plain HTTP)")
    ctx = server_ssl_context(server_cert, ca_file) if server_cert and ca_file else None
    if ctx is None:
        logger.warning("SDN agent %s serves RESTCONF over plain HTTP", agent.node_id)
    server = RestconfServer(create_agent_app(agent), host, port, ssl_context=ctx,
                            startup_timeout_s=startup_timeout_s)
    return await server.start()


async def serve_app(app: Any, host: str = "127.0.0.1", port: int = 0, *,
                    server_cert: CertPaths, ca_file: Path, startup_timeout_s: float = 10.0
                    ) -> RestconfServer:
    """Serve any RESTCONF app (e.g. :func:`create_northbound_app`) with mutual TLS.

    Raises:
        TimeoutError, RuntimeError: see :meth:`RestconfServer.start`.
    """
    server = RestconfServer(app, host, port, ssl_context=server_ssl_context(server_cert, ca_file),
                            startup_timeout_s=startup_timeout_s)
    return await server.start()

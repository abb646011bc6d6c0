"""The one HTTP(S) server under every keyplane interface: ETSI 014/004, ETSI 015, operations.

Map of a connection's life:

1. *TLS* (when the server has an ``ssl_context``): asyncio's own TLS layer
   (``loop.create_server(ssl=..., ssl_handshake_timeout=..., ssl_shutdown_timeout=...)``),
   the handshake bounded by :attr:`HttpLimits.header_timeout_s` and the wait for the
   peer's ``close_notify`` by :attr:`HttpLimits.tls_shutdown_timeout_s`.
2. *accept* (one :class:`~keyplane.api.httpconn.Connection`): over
   :attr:`HttpLimits.max_connections` live connections, the new one is closed at once. The
   verified peer certificate is turned once into the ASGI TLS extension
   (``scope["extensions"]["tls"]``, ASGI spec "TLS Extension" 0.2: ``client_cert_chain``,
   ``client_cert_name``, ``tls_version``...), the only place :mod:`keyplane.api.auth`
   reads an identity from. A head timer starts.
3. *HTTP*: uvicorn parses HTTP/1.1 (its HTTP protocol class, httptools or h11, created with
   uvicorn's own protocol arguments and given to uvicorn through its public
   ``Config(http=<protocol class>)`` hook; nothing of uvicorn is subclassed but
   ``uvicorn.Server``). The connection reaches the app through the ASGI lifespan ``state``
   uvicorn copies into every request scope; :class:`_Guard` takes it out again before the
   app sees the scope.
4. *request*: :class:`_Guard` stops the head timer, refuses a body over
   :attr:`HttpLimits.max_body_bytes` with 413 in the interface's own error format (from the
   declared ``Content-Length`` at once, or while streaming a chunked body, never buffering
   it), closes a connection whose body stalls for :attr:`HttpLimits.body_timeout_s`, and
   reports method, status and latency to an optional :class:`RequestObserver` (the ops
   module's Prometheus metrics). When the response is done the head timer runs again,
   so an idle or slow keep-alive connection is closed too.

Why not uvicorn's TLS: uvicorn (checked through 0.55) neither implements the ASGI TLS
extension nor exposes the peer certificate, and it passes no TLS handshake or shutdown
timeout to asyncio; the previous servers subclassed its private protocol classes to reach
the certificate. :class:`_Uvicorn` therefore opens the listening socket itself, with the
protocol factory uvicorn would use.

:class:`HttpServer` binds its socket itself (port 0 picks a free port, known at once),
returns from :meth:`HttpServer.start` only once uvicorn serves (or raises), never takes
the process's signal handlers, and stops on :meth:`HttpServer.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Protocol

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from keyplane.api.httpconn import (
    CONNECTION_KEY,
    Connection,
    ConnectionSet,
    HttpLimits,
    tls_extension,
)

__all__ = [
    "ErrorBody",
    "HttpLimits",
    "HttpServer",
    "RequestObserver",
    "json_error_body",
    "tls_extension",
]

logger = logging.getLogger(__name__)


class RequestObserver(Protocol):
    """Receives one call per finished request (e.g. :class:`keyplane.ops.HttpMetrics`)."""

    def observe(self, interface: str, method: str, status: int, seconds: float) -> None:
        """Record one request: its interface, method, HTTP status and latency."""
        ...


ErrorBody = Callable[[Scope, int, str, dict[str, Any]], tuple[bytes, str]]
"""``(scope, http status, message, details) -> (body, media type)``: an interface's own
error format for the answers the server itself gives (413)."""


def json_error_body(scope: Scope, status: int, message: str, details: dict[str, Any]
                    ) -> tuple[bytes, str]:
    """``{"message", "details"}`` (ETSI 014's Error body; the default)."""
    import json

    return (json.dumps({"message": message, "details": [details]}).encode(),
            "application/json")


class _Guard:
    """ASGI middleware: the TLS extension, body limit and timeout, request observation."""

    def __init__(self, app: ASGIApp, limits: HttpLimits, error_body: ErrorBody,
                 observer: RequestObserver | None, interface_of: Callable[[Scope], str]
                 ) -> None:
        self.app = app
        self.limits = limits
        self.error_body = error_body
        self.observer = observer
        self.interface_of = interface_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.get("state")
        conn: Connection | None = state.pop(CONNECTION_KEY, None) if state else None
        if conn is not None:
            conn.request_started()
            if conn.tls is not None:
                scope["extensions"] = {**(scope.get("extensions") or {}), "tls": conn.tls}
        started = time.perf_counter()
        status = [0, 0]  # HTTP status sent, whether the whole body was received
        try:
            await self._serve(scope, receive, send, conn, status)
        finally:
            if conn is not None:
                conn.request_finished(body_complete=bool(status[1]))
            if self.observer is not None:
                self.observer.observe(self.interface_of(scope), scope["method"], status[0],
                                      time.perf_counter() - started)

    async def _serve(self, scope: Scope, receive: Receive, send: Send,
                     conn: Connection | None, status: list[int]) -> None:
        limit = self.limits.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # refused before reading: uvicorn discards the body it did not hand over
            await self._too_large(scope, send, status)
            return
        size = 0
        body_done = declared == 0 or (declared is None and not _chunked(scope))
        status[1] = int(body_done)
        too_large = False
        timeout_s = self.limits.body_timeout_s

        async def guarded_receive() -> Message:
            nonlocal size, body_done, too_large
            if too_large:
                return {"type": "http.disconnect"}
            if body_done:  # e.g. a streaming response listening for the disconnect
                return await receive()
            try:
                async with asyncio.timeout(timeout_s):
                    message = await receive()
            except TimeoutError:
                logger.info("closing a connection whose request body stalled for %.1f s",
                            timeout_s)
                if conn is not None:
                    conn.abort()
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    too_large = True
                    return {"type": "http.disconnect"}
                body_done = not message.get("more_body", False)
                status[1] = int(body_done)
            return message

        async def tracked_send(message: Message) -> None:
            if too_large:
                return  # the app's answer to the disconnect we made up is replaced by 413
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if conn is not None and _sized(message):
                    conn.cork()  # the head leaves with the body: one write
                await send(message)
                return
            await send(message)
            if conn is not None:
                conn.uncork()

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except Exception:
            if not too_large:
                raise
        if too_large and status[0] == 0:
            await self._too_large(scope, send, status)

    async def _too_large(self, scope: Scope, send: Send, status: list[int]) -> None:
        limit = self.limits.max_body_bytes
        body, media_type = self.error_body(scope, 413, "request body too large",
                                           {"max_body_bytes": limit})
        status[0] = 413
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", media_type.encode()),
                                (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def _sized(start: Message) -> bool:
    """Whether a response declares its length: its body follows at once (a stream, e.g.
    server-sent events, is chunked and its first piece may wait: its head is not held)."""
    return any(key.lower() == b"content-length" for key, _ in start.get("headers", ()))


def _chunked(scope: Scope) -> bool:
    return any(key == b"transfer-encoding" for key, _ in scope.get("headers", ()))


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn's parser refuses it before we get here
    return None


class _Uvicorn(uvicorn.Server):
    """uvicorn.Server that listens with asyncio's TLS (with its handshake and shutdown
    timeouts), reports readiness and leaves signals to the host process."""

    def __init__(self, config: uvicorn.Config, ssl_context: ssl.SSLContext | None,
                 limits: HttpLimits) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self._ssl_context = ssl_context
        self._limits = limits

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen on ``sockets`` with uvicorn's protocol factory and our TLS settings.

        uvicorn's own startup passes neither ``ssl_handshake_timeout`` nor
        ``ssl_shutdown_timeout`` (asyncio's defaults are 60 s and 30 s), so the listening
        part is done here with the same protocol arguments uvicorn uses.
        """
        assert sockets is not None  # HttpServer always binds its own socket
        config = self.config
        if not config.loaded:
            config.load()
        await self.lifespan.startup()  # "off": nothing to do, kept for uvicorn's state

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None
                            ) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state,
                app_state=self.lifespan.state, _loop=_loop)

        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            tls = {"ssl": self._ssl_context,
                   "ssl_handshake_timeout": self._limits.header_timeout_s,
                   "ssl_shutdown_timeout": self._limits.tls_shutdown_timeout_s}
        self.servers = [await loop.create_server(create_protocol, sock=sock,
                                                 backlog=config.backlog, **tls)
                        for sock in sockets]
        self.started = True
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    # uvicorn polls should_exit every 0.1 s; its tick only refreshes the Date header (once a
    # second anyway) and checks limits. A process serving 1,000 nodes runs 2,000 servers:
    # 20,000 idle wake-ups a second took a good part of a core. Tick once a second, and wake
    # at once when told to exit.
    _exit_event: asyncio.Event | None = None
    _exit_flag = False

    @property
    def should_exit(self) -> bool:
        return self._exit_flag

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exit_flag = value
        if value and self._exit_event is not None:
            self._exit_event.set()

    async def main_loop(self) -> None:
        self._exit_event = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # on_tick counts tenths of a second
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._exit_event.wait()
            should_exit = await self.on_tick(counter)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto
    # says TCP (base_events._set_nodelay). Without it Nagle held each response's second
    # segment until the client's delayed ACK: every request took at least 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """An ASGI app served over HTTP/1.1, with mutual TLS when given an ``ssl_context``.

    Args:
        app: the ASGI application.
        host: the address to bind; port 0 picks a free port (see :attr:`port` after start).
        port: the TCP port.
        ssl_context: server context (``keyplane.certs.server_ssl_context`` requires a client
            certificate from the network CA); None serves plain HTTP (operations endpoints
            on loopback, tests).
        limits: :class:`HttpLimits` (defaults when None).
        error_body: the interface's error format for the server's own answers (413).
        observer: told about every finished request (metrics).
        interface: the interface name reported to ``observer``: a string, or a function of
            the request scope (one server may carry several interfaces).
        name: used in log lines and the serving task's name.
        startup_timeout_s: how long :meth:`start` waits for uvicorn.
        http: uvicorn's HTTP implementation, ``"auto"`` (httptools when installed),
            ``"httptools"`` or ``"h11"``.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None, limits: HttpLimits | None = None,
                 error_body: ErrorBody = json_error_body,
                 observer: RequestObserver | None = None,
                 interface: str | Callable[[Scope], str] = "http", name: str = "http",
                 startup_timeout_s: float = 30.0, http: str = "auto") -> None:
        self.limits = limits or HttpLimits()
        self.app = app
        self.host = host
        self.port = port
        self.scheme = "https" if ssl_context is not None else "http"
        self.name = name
        self._startup_timeout_s = startup_timeout_s
        interface_of = interface if callable(interface) else (lambda _s, n=interface: n)
        inner: type[asyncio.Protocol] = import_from_string(HTTP_PROTOCOLS[http])
        self._ssl_context = ssl_context
        self._connections = ConnectionSet(self.limits, inner)
        protocol = type("_ServerConnection", (Connection,),
                        {"connections": self._connections})
        self._config = uvicorn.Config(
            _Guard(app, self.limits, error_body, observer, interface_of), http=protocol,
            lifespan="off", ws="none", log_config=None, access_log=False,
            server_header=False, proxy_headers=False,  # every header is untrusted input
            timeout_keep_alive=self.limits.keep_alive_s)
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._closed = False

    @property
    def url(self) -> str:
        """Base URL, e.g. ``https://127.0.0.1:45123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def live_connections(self) -> int:
        """Connections open now (TLS handshakes under way not included)."""
        return len(self._connections.live)

    @property
    def refused_connections(self) -> int:
        """Connections closed at accept because of :attr:`HttpLimits.max_connections`."""
        return self._connections.refused

    async def start(self) -> HttpServer:
        """Bind and serve; return once uvicorn accepts connections (idempotent).

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: uvicorn did not start within ``startup_timeout_s`` or stopped
                during start-up.
        """
        if self._task is not None:
            return self
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._server = server = _Uvicorn(self._config, self._ssl_context, self.limits)
        self._task = asyncio.create_task(server.serve(sockets=[sock]),
                                         name=f"{self.name}-server")
        ready = asyncio.create_task(server.ready.wait())
        try:
            await asyncio.wait({self._task, ready}, timeout=self._startup_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not server.ready.is_set():
            await self.close(timeout_s=0)
            raise RuntimeError(f"{self.name} server did not start")
        logger.info("%s server listening on %s", self.name, self.url)
        return self

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish for up to ``timeout_s``, then stop.

        Idle keep-alive connections are closed at once (a TLS one waits at most
        :attr:`HttpLimits.tls_shutdown_timeout_s` for the peer). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        conns = self._connections
        conns.closing = True
        task, server = self._task, self._server
        try:
            if task is not None and server is not None:
                server.should_exit = True
                try:
                    async with asyncio.timeout(timeout_s):
                        await asyncio.shield(task)
                except TimeoutError:
                    server.force_exit = True
                    conns.abort_all()
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, SystemExit):
                        await task
                except SystemExit:  # uvicorn exits this way when its start-up failed
                    pass
        finally:
            conns.abort_all()
            if self._sock is not None:
                self._sock.close()

    async def __aenter__(self) -> HttpServer:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

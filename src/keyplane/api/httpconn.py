"""The connection layer of :mod:`keyplane.api.httpserver`: its bounds, and a connection's
TLS identity, connection cap and head timer (stages 1-2 of that module's map).

:class:`Connection` wraps uvicorn's HTTP protocol object for one accepted connection and
is what the server's request guard reaches through the ASGI ``state`` under
:data:`CONNECTION_KEY`. It lives apart from the server because it
is transport code (asyncio protocol callbacks), where the guard is ASGI code.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, ClassVar, cast

import uvicorn
from pydantic import BaseModel, ConfigDict, Field

from keyplane.certs import peer_subject

__all__ = ["CONNECTION_KEY", "Connection", "ConnectionSet", "HttpLimits", "tls_extension"]

logger = logging.getLogger("keyplane.api.httpserver")

CONNECTION_KEY = "keyplane.connection"
"""Key of the :class:`Connection` in uvicorn's per-request copy of the ASGI ``state``."""

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_HEAD_END = b"\r\n\r\n"


class HttpLimits(BaseModel):
    """Bounds every keyplane HTTP server enforces (issue #13, "bounded HTTP").

    The defaults hold on a busy 2-core machine: a client has seconds, not milliseconds,
    for its TLS handshake and request head.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(default=1 << 20, ge=1, description=(
        "Largest request body accepted; a larger one is answered 413 in the interface's own "
        "error format, without being buffered."))
    header_timeout_s: float = Field(default=30.0, gt=0, description=(
        "Time from accept (TLS handshake included), or from the end of the previous "
        "response, to a complete request head; then the connection is closed."))
    body_timeout_s: float = Field(default=30.0, gt=0, description=(
        "Longest wait for the next piece of a request body; then the connection is closed."))
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description=(
        "Largest request head (request line and headers); a larger one closes the "
        "connection."))
    max_connections: int = Field(default=1024, ge=1, description=(
        "Live connections per server; one more is closed once accepted (after its TLS "
        "handshake, which header_timeout_s bounds)."))
    keep_alive_s: int = Field(default=5, ge=1, description=(
        "Idle time after which uvicorn closes a keep-alive connection."))
    tls_shutdown_timeout_s: float = Field(default=2.0, gt=0, description=(
        "How long a closing TLS connection waits for the peer's close_notify."))


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension (spec version 0.2) of a completed, verified handshake.

    ``client_cert_chain`` holds the leaf only (Python < 3.13 has no verified-chain API);
    ``client_cert_name`` is its subject as RFC 4514; the chain was verified by the
    handshake (the server context requires it), so ``client_cert_error`` is None.
    """
    der = ssl_object.getpeercert(binary_form=True)
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": peer_subject(der) if der else None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": None,
    }


class ConnectionSet:
    """The live connections of one server and what they share."""

    def __init__(self, limits: HttpLimits, inner: type[asyncio.Protocol]) -> None:
        self.limits = limits
        self.inner = inner
        self.live: set[Connection] = set()
        self.closing = False
        self.refused = 0

    def abort_all(self) -> None:
        for conn in list(self.live):
            conn.abort()


class _Corked:
    """The transport uvicorn writes to: held while a response head waits for its body.

    uvicorn writes a response's head and its body separately; with TCP_NODELAY each write
    is a TLS record, a segment and a ``send`` of its own. Corked (by the request guard, for
    a response that declares its length), the head waits and leaves with the first piece
    of the body in one write. Anything else is the real transport's.
    """

    __slots__ = ("_base", "_held")

    def __init__(self, base: asyncio.Transport) -> None:
        self._base = base
        self._held: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            self._held.append(bytes(data))
        else:
            self._base.write(data)

    def cork(self) -> None:
        if self._held is None:
            self._held = []

    def uncork(self) -> None:
        held, self._held = self._held, None
        if held:
            self._base.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.uncork()
        self._base.close()

    def abort(self) -> None:
        self._held = None
        self._base.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


class Connection(asyncio.Protocol):
    """One connection: cap, head timer, TLS identity, then uvicorn's HTTP protocol (delegated).

    uvicorn's server creates it with its usual protocol arguments; :attr:`connections` is
    set on a per-server subclass (see :class:`HttpServer`). With TLS, asyncio's SSL layer
    calls :meth:`connection_made` once the handshake (bounded by the head timeout) is done.
    """

    connections: ClassVar[ConnectionSet]

    def __init__(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = _loop or asyncio.get_running_loop()
        self._inner = self.connections.inner(  # type: ignore[call-arg]
            config=config, server_state=server_state,
            app_state={**app_state, CONNECTION_KEY: self}, _loop=_loop)
        self._transport: asyncio.Transport | None = None
        self._out: _Corked | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head_deadline: float | None = None  # loop time; None: no head is awaited
        self._in_flight = 0
        self._head_bytes = 0
        self._head_tail = b""
        self._head_done = False
        self.tls: dict[str, Any] | None = None

    # ---- asyncio.Protocol --------------------------------------------------------
    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not asyncio.Transport subclasses: no isinstance)
        transport = cast(asyncio.Transport, base)
        conns = self.connections
        if conns.closing or len(conns.live) >= conns.limits.max_connections:
            conns.refused += 1
            transport.abort()
            return
        conns.live.add(self)
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.tls = tls_extension(ssl_object)
        self._arm_head_timer()
        self._out = _Corked(transport)
        self._inner.connection_made(cast(asyncio.Transport, self._out))

    def data_received(self, data: bytes) -> None:
        if not self._head_done and self._in_flight == 0:
            self._count_head(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if self._transport is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # ---- bounds ------------------------------------------------------------------
    def _count_head(self, data: bytes) -> None:
        """Count head bytes up to the blank line that ends the head; too many: close."""
        window = self._head_tail + data
        end = window.find(_HEAD_END)
        if end >= 0:
            self._head_done = True
            return
        self._head_bytes += len(data)
        self._head_tail = window[-3:]
        if self._head_bytes > self.connections.limits.max_header_bytes:
            logger.info("closing a connection whose request head exceeds %d bytes",
                        self.connections.limits.max_header_bytes)
            self.abort()

    def _arm_head_timer(self) -> None:
        """Time the next request head. One timer per connection, not one per request: a
        timer that fires before the current deadline (set by a later response) or while a
        request is in flight re-arms itself or ends, so a keep-alive connection's request
        costs no timer of its own (#15)."""
        self._head_deadline = self._loop.time() + self.connections.limits.header_timeout_s
        if self._timer is None:
            self._timer = self._loop.call_at(self._head_deadline, self._head_due)

    def _stop_head_timer(self) -> None:
        """A head arrived: nothing is timed until the response ends (the timer, if any,
        finds no deadline when it fires)."""
        self._head_deadline = None

    def _cancel_timer(self) -> None:
        self._head_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_due(self) -> None:
        self._timer = None
        deadline = self._head_deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:  # a later response moved the deadline
            self._timer = self._loop.call_at(deadline, self._head_due)
            return
        self._head_timeout()

    def _head_timeout(self) -> None:
        self._timer = None
        self._head_deadline = None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("closing a connection with no complete request head in %.1f s",
                         self.connections.limits.header_timeout_s)
        self.abort()

    def _forget(self) -> None:
        self._cancel_timer()
        self.connections.live.discard(self)

    def abort(self) -> None:
        """Close now, dropping whatever is buffered (slow or oversized clients, shutdown)."""
        self._forget()
        if self._transport is not None:
            self._transport.abort()

    # ---- called by the request guard (httpserver) ------------------------------
    def cork(self) -> None:
        """A response head is about to be written: hold it for its body."""
        if self._out is not None:
            self._out.cork()

    def uncork(self) -> None:
        """Write what is held (the head, with the body written since) in one write."""
        if self._out is not None:
            self._out.uncork()

    def request_started(self) -> None:
        """A complete request head reached the app: its timer stops."""
        self._in_flight += 1
        self._stop_head_timer()

    def request_finished(self, body_complete: bool) -> None:
        """The response is done: the next request head is timed (and counted) again.

        When the app did not read the whole body (a 413), uvicorn discards the rest of it
        first: those bytes are not a head, so they are not counted; the head timer bounds
        the discarding and the next head together.
        """
        self.uncork()  # nothing stays held past its request (a HEAD's head, an error)
        self._in_flight -= 1
        if self._in_flight == 0 and self in self.connections.live:
            self._head_bytes, self._head_tail = 0, b""
            self._head_done = not body_complete
            self._arm_head_timer()

"""A stand-in for the TLS layer in in-process API tests (httpx ``ASGITransport``).

The real server (:mod:`keyplane.api.httpserver`) puts the verified client certificate in
``scope["extensions"]["tls"]``; tests that reach an app without a socket put a subject
there themselves. Tests of the real TLS path run a real server with real certificates
(tests/unit/api/test_server_tls.py).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["with_client_certificate"]


def with_client_certificate(app: ASGIApp, subject: str | None) -> ASGIApp:
    """``app`` as reached over mutual TLS by a client whose certificate subject is
    ``subject`` (None: a connection without a client certificate)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and subject is not None:
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": {
                "server_cert": None, "client_cert_chain": [], "client_cert_name": subject,
                "client_cert_error": None, "tls_version": 0x0304, "cipher_suite": None}}}
        await app(scope, receive, send)

    return wrapped

"""What the sync and async clients share: TLS set-up, request shapes, response decoding.

Each client method is a pair (build the request, decode the response) around one httpx
call, so the sync and async classes differ only in ``await``.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from keyplane.api.client._errors import ApiError, TransportError
from keyplane.api.settings import SAE_ID_HEADER
from keyplane.certs import CertPaths, client_ssl_context

__all__ = ["AsyncPool", "SyncPool", "client_options", "decode", "ok_body",
           "translate_transport_errors"]


def client_options(base_url: str, *, cert: str | Path | None, key: str | Path | None,
                   ca: str | Path | None, sae_id: str | None,
                   timeout_s: float, transport: Any) -> dict[str, Any]:
    """Keyword arguments for ``httpx.Client``/``AsyncClient`` (mutual TLS, identity).

    ``transport`` replaces the network (tests pass ``httpx.ASGITransport``); then the
    certificate files are not needed.
    """
    headers: dict[str, str] = {}
    if sae_id:
        headers[SAE_ID_HEADER] = sae_id
    options: dict[str, Any] = {"base_url": base_url.rstrip("/"), "headers": headers,
                               "timeout": timeout_s}
    if transport is not None:
        options["transport"] = transport
    elif cert is not None and key is not None and ca is not None:
        options["verify"] = client_ssl_context(CertPaths(Path(cert), Path(key)), Path(ca))
    elif ca is not None:
        options["verify"] = ssl.create_default_context(cafile=str(ca))
    return options


@contextlib.contextmanager
def translate_transport_errors() -> Iterator[None]:
    """Re-raise httpx's network and TLS failures as :class:`TransportError`."""
    try:
        yield
    except httpx.TransportError as exc:
        raise TransportError(f"{type(exc).__name__}: {exc}") from exc


def decode(response: httpx.Response) -> Any:
    """The JSON body of a 200 answer, or the matching :class:`ApiError`."""
    try:
        body = response.json()
    except ValueError as exc:
        raise ApiError(response.status_code, "answer is not JSON") from exc
    if response.status_code != 200:
        raise ApiError.from_response(response.status_code, body)
    return body


def ok_body(response: httpx.Response) -> bytes:
    """The raw body of a 200 answer (parsed later in one pass), or the :class:`ApiError`."""
    if response.status_code != 200:
        decode(response)
    return response.content


class SyncPool:
    """A blocking client's connection pool (``self._http``), closed by :meth:`close` or
    by leaving the ``with`` block."""

    _http: httpx.Client

    def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncPool:
    """An asyncio client's connection pool (``self._http``), closed by :meth:`aclose` or
    by leaving the ``async with`` block."""

    _http: httpx.AsyncClient

    async def aclose(self) -> None:
        """Close the connection pool (idempotent)."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

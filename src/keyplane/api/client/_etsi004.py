"""ETSI GS QKD 004 clients (sync and async): OPEN_CONNECT, GET_KEY, CLOSE.

The opener calls ``open_connect`` without a Key_stream_ID and passes the returned one to
its peer out of band; the peer joins with it. Both then get the same chunk for the same
``index``. A non-success status raises :class:`~keyplane.api.client.Etsi004StatusError`,
except status 1 on OPEN_CONNECT (the peer has not joined yet), which is reported in
:attr:`StreamOpened.peer_connected`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from keyplane.api.client._config import load_sae_endpoint
from keyplane.api.client._errors import Etsi004StatusError
from keyplane.api.client._http import (
    AsyncPool,
    SyncPool,
    client_options,
    decode,
    translate_transport_errors,
)
from keyplane.api.etsi004.models import GetKeyResponse, OpenConnectResponse, QosParameters
from keyplane.api.etsi004.status import Etsi004Status

__all__ = ["AsyncEtsi004Client", "Etsi004Client", "KeyChunk", "StreamOpened"]


@dataclass(frozen=True)
class StreamOpened:
    """OPEN_CONNECT result: the stream's id, the QoS the KM serves, whether the peer joined."""

    key_stream_id: str
    qos: QosParameters
    peer_connected: bool


@dataclass(frozen=True)
class KeyChunk:
    """GET_KEY result: the chunk at ``index`` and its metadata (decoded JSON, if any)."""

    key_stream_id: str
    index: int
    key: bytes = field(repr=False)
    metadata: dict[str, Any] | None = None


def _status(body: dict[str, Any]) -> Etsi004Status:
    try:
        return Etsi004Status(body["status"])
    except (KeyError, ValueError) as exc:
        raise Etsi004StatusError(Etsi004Status.NO_QKD_CONNECTION_AVAILABLE, body) from exc


def _open_body(source: str, destination: str, qos: QosParameters | None,
               key_stream_id: str | None) -> dict[str, Any]:
    return {"source": source, "destination": destination,
            "QoS": (qos or QosParameters()).model_dump(), "Key_stream_ID": key_stream_id}


def _opened(body: dict[str, Any]) -> StreamOpened:
    status = _status(body)
    if status not in (Etsi004Status.SUCCESSFUL, Etsi004Status.PEER_NOT_CONNECTED):
        raise Etsi004StatusError(status, body)
    resp = OpenConnectResponse.model_validate(body)
    assert resp.Key_stream_ID is not None and resp.QoS is not None
    return StreamOpened(str(resp.Key_stream_ID), resp.QoS,
                        status == Etsi004Status.SUCCESSFUL)


def _get_body(key_stream_id: str, index: int | None, metadata_size: int | None,
              metadata: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"Key_stream_ID": key_stream_id, "index": index}
    if metadata_size is not None or metadata is not None:
        meta: dict[str, Any] = {"Metadata_size": metadata_size if metadata_size is not None
                                else 2**32 - 1}
        if metadata is not None:
            meta["Metadata_buffer"] = metadata
        body["Metadata"] = meta
    return body


def _chunk(key_stream_id: str, body: dict[str, Any]) -> KeyChunk:
    status = _status(body)
    if status != Etsi004Status.SUCCESSFUL:
        raise Etsi004StatusError(status, body)
    resp = GetKeyResponse.model_validate(body)
    assert resp.index is not None and resp.key_buffer is not None
    meta = resp.Metadata.Metadata_buffer if resp.Metadata is not None else None
    return KeyChunk(key_stream_id, resp.index, base64.b64decode(resp.key_buffer), meta)


def _closed(body: dict[str, Any]) -> None:
    status = _status(body)
    if status != Etsi004Status.SUCCESSFUL:
        raise Etsi004StatusError(status, body)


class _Common:
    def __init__(self, base_url: str, *, cert: str | Path | None = None,
                 key: str | Path | None = None, ca: str | Path | None = None,
                 timeout_s: float = 30.0, transport: Any = None) -> None:
        self._options = client_options(base_url, cert=cert, key=key, ca=ca, sae_id=None,
                                       timeout_s=timeout_s, transport=transport)

    @classmethod
    def from_state(cls, state_dir: str | Path, sae_id: str, **kwargs: Any) -> Self:
        """A client for ``sae_id`` from ``STATE_DIR/endpoints.json`` (``keyplane run``)."""
        ep = load_sae_endpoint(state_dir, sae_id)
        return cls(ep.etsi004_url, cert=ep.cert, key=ep.key, ca=ep.ca, **kwargs)


class Etsi004Client(_Common, SyncPool):
    """Blocking ETSI 004 client over mutual TLS.

    Args:
        base_url: the KM's ETSI 004 base URL (``https://host:port/etsi004``).
        cert, key, ca, timeout_s, transport: as for
            :class:`~keyplane.api.client.Etsi014Client`.

    Raises (every method): :class:`~keyplane.api.client.Etsi004StatusError` for a
    non-success status, :class:`~keyplane.api.client.ApiError` for an HTTP error answer,
    :class:`~keyplane.api.client.TransportError` when there is no answer.
    """

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._http = httpx.Client(**self._options)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        with translate_transport_errors():
            return decode(self._http.post(path, json=body))

    def open_connect(self, source: str, destination: str, qos: QosParameters | None = None,
                     key_stream_id: str | None = None) -> StreamOpened:
        """OPEN_CONNECT: open a stream (no ``key_stream_id``) or join the peer's."""
        return _opened(self._post("/v1/open_connect",
                                  _open_body(source, destination, qos, key_stream_id)))

    def get_key(self, key_stream_id: str, index: int | None = None, *,
                metadata_size: int | None = None, metadata: dict[str, Any] | None = None
                ) -> KeyChunk:
        """GET_KEY: the chunk at ``index`` (the next one when None)."""
        return _chunk(key_stream_id, self._post(
            "/v1/get_key", _get_body(key_stream_id, index, metadata_size, metadata)))

    def close_stream(self, key_stream_id: str) -> None:
        """CLOSE: end this application's side of the stream."""
        _closed(self._post("/v1/close", {"Key_stream_ID": key_stream_id}))


class AsyncEtsi004Client(_Common, AsyncPool):
    """The asyncio twin of :class:`Etsi004Client`."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._http = httpx.AsyncClient(**self._options)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        with translate_transport_errors():
            return decode(await self._http.post(path, json=body))

    async def open_connect(self, source: str, destination: str,
                           qos: QosParameters | None = None,
                           key_stream_id: str | None = None) -> StreamOpened:
        """OPEN_CONNECT: open a stream (no ``key_stream_id``) or join the peer's."""
        return _opened(await self._post("/v1/open_connect",
                                        _open_body(source, destination, qos, key_stream_id)))

    async def get_key(self, key_stream_id: str, index: int | None = None, *,
                      metadata_size: int | None = None,
                      metadata: dict[str, Any] | None = None) -> KeyChunk:
        """GET_KEY: the chunk at ``index`` (the next one when None)."""
        return _chunk(key_stream_id, await self._post(
            "/v1/get_key", _get_body(key_stream_id, index, metadata_size, metadata)))

    async def close_stream(self, key_stream_id: str) -> None:
        """CLOSE: end this application's side of the stream."""
        _closed(await self._post("/v1/close", {"Key_stream_ID": key_stream_id}))

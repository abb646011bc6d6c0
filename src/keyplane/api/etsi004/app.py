"""ETSI GS QKD 004 V2.1.1 server: OPEN_CONNECT, GET_KEY and CLOSE as JSON over HTTPS.

Transport (the standard leaves it open; docs/api/etsi004.md): each call is
``POST {base}/v1/{open_connect|get_key|close}`` with the JSON body of
:mod:`keyplane.api.etsi004.models`, over HTTPS with mutual TLS (the calling application
is its client certificate, or a bearer token). The call's outcome is the ``status`` member
of a 200 response, numbered as in the standard; HTTP 400/401/503 with the ETSI 014-style
``{"message", "details"}`` body are only for requests that never make a call (malformed,
unauthenticated) or for failures the standard has no status for.

Each route parses, calls one key manager method and maps the result or the domain
exception with :mod:`keyplane.api.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from keyplane.api.auth import caller_from_scope
from keyplane.api.errors import (
    Operation,
    etsi004_status,
    map_exception,
)
from keyplane.api.etsi004.models import (
    CloseRequest,
    CloseResponse,
    GetKeyRequest,
    GetKeyResponse,
    OpenConnectRequest,
    OpenConnectResponse,
    QosParameters,
)
from keyplane.api.etsi004.status import Etsi004Status
from keyplane.api.etsi014.models import Error
from keyplane.api.openapi import drop_validation_responses
from keyplane.api.routing import install_error_handlers
from keyplane.api.settings import ApiSettings
from keyplane.errors import KeyplaneError, QosNotMet
from keyplane.keymanager.interface import ApplicationService

__all__ = ["ETSI004_PREFIX", "create_etsi004_app", "metadata_bytes"]

ETSI004_PREFIX = "/etsi004"
"""Where :func:`keyplane.api.server.create_km_app` mounts the 004 app."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "Malformed request (no call was made)"},
    401: {"model": Error, "description": "Unauthenticated application"},
    503: {"model": Error, "description": "Key manager failure with no ETSI 004 status"},
}
_TAGS: list[str | Any] = ["ETSI GS QKD 004"]


class _CallFailed(Exception):
    """A key manager call ended with a non-zero 004 status (carries the response body)."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body["status"])
        self.body = body


def metadata_bytes(metadata: dict[str, Any]) -> bytes:
    """The canonical byte form of JSON metadata, whose length is ``Metadata_size``."""
    return json.dumps(metadata, separators=(",", ":"), sort_keys=True).encode()


def create_etsi004_app(km: ApplicationService, *, kme_id: str,
                       settings: ApiSettings | None = None) -> FastAPI:
    """The ETSI 004 app of one KM, serving ``/v1/open_connect``, ``/v1/get_key``, ``/v1/close``.

    Args:
        km: the node's key manager.
        kme_id: this KM's id (its node id), kept in ``app.state.kme_id``.
        settings: timeouts (the ETSI 014 limits do not apply to 004).
    """
    cfg = settings or ApiSettings()
    app = FastAPI(title="keyplane ETSI GS QKD 004 KM", version="2.1.1",
                  description="ETSI GS QKD 004 V2.1.1 calls as JSON over HTTPS with mutual TLS.")
    app.state.kme_id = kme_id

    async def call(operation: Operation, awaitable: Any, failed: dict[str, Any]) -> Any:
        """Await ``awaitable``; a mapped domain failure becomes its 004 status."""
        try:
            async with asyncio.timeout(cfg.km_timeout_s):
                return await awaitable
        except (KeyplaneError, TimeoutError) as exc:
            mapping = map_exception(exc)
            status = etsi004_status(mapping, operation) if mapping else None
            if status is None:
                raise
            raise _CallFailed({**failed, "status": int(status)}) from exc

    @app.exception_handler(_CallFailed)
    async def _failed(_: Request, exc: _CallFailed) -> JSONResponse:
        return JSONResponse(exc.body)

    install_error_handlers(app)

    @app.post("/v1/open_connect", response_model=OpenConnectResponse, responses=_ERRORS,
              summary="OPEN_CONNECT", tags=_TAGS)
    async def open_connect(request: Request, body: OpenConnectRequest) -> JSONResponse:
        """Open (null Key_stream_ID) or join (the opener's Key_stream_ID) a key stream.

        Status 0 when both applications are connected, 1 while the peer has not joined,
        5 if the Key_stream_ID is in use, 7 if the QoS cannot be met (with the KM's
        counter-proposal in QoS when it makes one).
        """
        caller = caller_from_scope(request.scope)
        ksid = str(body.Key_stream_ID) if body.Key_stream_ID else None
        failed: dict[str, Any] = {"Key_stream_ID": ksid}
        try:
            result = await call("open_connect", km.open_connect(
                caller, body.source, body.destination, body.QoS.to_domain(), ksid), failed)
        except _CallFailed as exc:
            cause = exc.__cause__
            proposal = cause.counter_proposal if isinstance(cause, QosNotMet) else None
            if proposal is not None:
                exc.body["QoS"] = QosParameters.from_domain(proposal).model_dump()
            raise
        status = (Etsi004Status.SUCCESSFUL if result.peer_connected
                  else Etsi004Status.PEER_NOT_CONNECTED)
        return JSONResponse({"status": int(status), "Key_stream_ID": result.key_stream_id,
                             "QoS": QosParameters.from_domain(result.qos).model_dump()})

    @app.post("/v1/get_key", response_model=GetKeyResponse, responses=_ERRORS,
              summary="GET_KEY", tags=_TAGS)
    async def get_key(request: Request, body: GetKeyRequest) -> JSONResponse:
        """The key chunk at ``index`` (the next one when null); the same at both ends.

        With a ``Metadata`` buffer smaller than the chunk's metadata, status 8 and
        ``Metadata_size`` = the size needed; call again with the returned ``index``.
        """
        caller = caller_from_scope(request.scope)
        metadata = body.Metadata.Metadata_buffer if body.Metadata else None
        result = await call("get_key", km.get_key(caller, str(body.Key_stream_ID), body.index,
                                                  metadata), {"index": body.index})
        meta_bytes = metadata_bytes(result.metadata) if result.metadata else b""
        capacity = body.Metadata.Metadata_size if body.Metadata else None
        mimetype = "application/json"
        if capacity is not None and len(meta_bytes) > capacity:
            return JSONResponse({
                "status": int(Etsi004Status.GK_METADATA_INSUFFICIENT_SIZE),
                "index": result.index,
                "Metadata": {"Metadata_size": len(meta_bytes), "Metadata_mimetype": mimetype}})
        out: dict[str, Any] = {"status": int(Etsi004Status.SUCCESSFUL), "index": result.index,
                               "key_buffer": base64.b64encode(result.key).decode()}
        if meta_bytes:
            out["Metadata"] = {"Metadata_size": len(meta_bytes), "Metadata_mimetype": mimetype,
                               "Metadata_buffer": result.metadata}
        return JSONResponse(out)

    @app.post("/v1/close", response_model=CloseResponse, responses=_ERRORS, summary="CLOSE",
              tags=_TAGS)
    async def close(request: Request, body: CloseRequest) -> JSONResponse:
        """End the caller's side of the stream; the KM frees what it reserved for it."""
        caller = caller_from_scope(request.scope)
        await call("close", km.close_stream(caller, str(body.Key_stream_ID)), {})
        return JSONResponse({"status": int(Etsi004Status.SUCCESSFUL)})

    drop_validation_responses(app)
    return app

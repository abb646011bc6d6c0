"""ETSI GS QKD 014 V1.1.1 server (clause 5): status, enc_keys and dec_keys of one KME.

Each route parses, checks the request against the ETSI 014 limits (before anything is
reserved), calls one :class:`~keyplane.keymanager.interface.ApplicationService` method and
writes the standard's body. Every failure goes through one path, :func:`_error_response`:
the key manager's domain exceptions via :mod:`keyplane.api.errors`, the server's own
:class:`~keyplane.api.errors.ApiRequestError`, FastAPI's validation errors (422 in FastAPI,
400 in ETSI 014) and Starlette's 404/405, all as ``{"message", "details"}``.

Deviations and choices (docs/api/etsi014.md has the full table):
- the master SAE is named by its authenticated identity (see :mod:`keyplane.api.auth`);
- ``size`` must be a multiple of 8 (keys are whole bytes);
- ``key_IDs`` may not repeat an ID within one request.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import Body, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyplane.api.auth import caller_from_scope, resolve_sae
from keyplane.api.errors import ApiRequestError, error_details, map_exception
from keyplane.api.etsi014.models import (
    Error,
    KeyContainer,
    KeyId,
    KeyIDs,
    KeyRequest,
    Status,
)
from keyplane.api.openapi import drop_validation_responses
from keyplane.api.routing import allowed_methods
from keyplane.api.settings import ApiSettings, Etsi014Limits
from keyplane.errors import KeyplaneError
from keyplane.keymanager.interface import ApplicationService, DeliveredKey, PairStatus

__all__ = ["API_PREFIX", "check_key_request", "create_etsi014_app", "document_limits"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1/keys"
T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "Bad request format"},
    401: {"model": Error, "description": "Unauthorized"},
    503: {"model": Error, "description": "Error on server side"},
}
SaePath = Annotated[str, Path(min_length=1, max_length=256)]


def _error_body(message: str, details: list[dict[str, Any]] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if details:
        body["details"] = details
    return body


def _error_response(status: int, message: str, details: list[dict[str, Any]] | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(_error_body(message, details), status_code=status, headers=headers)


def check_key_request(req: KeyRequest, limits: Etsi014Limits,
                      supported_extensions: frozenset[str]
                      ) -> tuple[int, int, list[str], dict[str, Any] | None]:
    """Validate an enc_keys request against the limits; pure, so bad input reserves nothing.

    Returns:
        ``(number, size_bits, additional_slaves, extensions)`` with defaults applied;
        ``extensions`` is ``{"extension_mandatory": [...], "extension_optional": [...]}`` as
        the SAE sent them (each key only when non-empty; None when both are absent), every
        mandatory name being one of ``supported_extensions``.

    Raises:
        ApiRequestError: (400) the first violated rule, with the limit in ``details``.
    """
    number = 1 if req.number is None else req.number
    size = limits.key_size_bits if req.size is None else req.size
    if number < 1:
        raise ApiRequestError("number shall be a positive integer", [{"number": number}])
    if number > limits.max_key_per_request:
        raise ApiRequestError("number of requested keys exceeds max_key_per_request",
                              [{"max_key_per_request": limits.max_key_per_request}])
    if size % 8:
        raise ApiRequestError("size shall be a multiple of 8", [{"size": size}])
    if not limits.min_key_size_bits <= size <= limits.max_key_size_bits:
        raise ApiRequestError("requested key size is out of range",
                              [{"min_key_size": limits.min_key_size_bits,
                                "max_key_size": limits.max_key_size_bits}])
    slaves = list(req.additional_slave_SAE_IDs or [])
    if len(slaves) > limits.max_sae_id_count:
        raise ApiRequestError("number of additional_slave_SAE_IDs exceeds max_SAE_ID_count",
                              [{"max_SAE_ID_count": limits.max_sae_id_count}])
    if len(set(slaves)) != len(slaves):
        raise ApiRequestError("additional_slave_SAE_IDs contains duplicates")
    unsupported = [{"extension_mandatory_unsupported": name}
                   for ext in req.extension_mandatory or [] for name in ext
                   if name not in supported_extensions]
    if unsupported:
        raise ApiRequestError("not all extension_mandatory parameters are supported",
                              unsupported)
    extensions: dict[str, Any] = {}
    if req.extension_mandatory:
        extensions["extension_mandatory"] = list(req.extension_mandatory)
    if req.extension_optional:
        extensions["extension_optional"] = list(req.extension_optional)
    return number, size, slaves, extensions or None


def document_limits(doc: dict[str, Any], cfg: ApiSettings) -> None:
    """Write this KME's limits into its OpenAPI document (in place).

    ETSI 014 publishes the limits at run time (Status); stating them in the schema too
    lets clients and fuzzers know which requests are valid here. They are enforced by
    :func:`check_key_request`, with the standard's messages, not by schema validation.
    """
    lim = cfg.limits
    number = {"type": "integer", "minimum": 1, "maximum": lim.max_key_per_request}
    size = {"type": "integer", "multipleOf": 8, "minimum": lim.min_key_size_bits,
            "maximum": lim.max_key_size_bits}
    for param in doc["paths"][API_PREFIX + "/{slave_SAE_ID}/enc_keys"]["get"]["parameters"]:
        if param["name"] in ("number", "size"):
            param["schema"] = {**(number if param["name"] == "number" else size),
                               "title": param["schema"].get("title", param["name"])}
    schemas = doc["components"]["schemas"]
    props = schemas["KeyRequest"]["properties"]
    props["number"]["anyOf"] = [number, {"type": "null"}]
    props["size"]["anyOf"] = [size, {"type": "null"}]
    for item in props["additional_slave_SAE_IDs"]["anyOf"]:
        if item.get("type") == "array":
            item.update(maxItems=lim.max_sae_id_count, uniqueItems=True)
    for item in props["extension_mandatory"]["anyOf"]:
        if item.get("type") == "array":
            names = sorted(cfg.supported_extensions)
            item["items"] = ({"type": "object", "propertyNames": {"enum": names}} if names
                             else {"type": "object", "maxProperties": 0})
    schemas["KeyIDs"]["properties"]["key_IDs"]["maxItems"] = lim.max_key_per_request


def _status_body(s: PairStatus) -> dict[str, Any]:
    return {
        "source_KME_ID": s.source_kme_id, "target_KME_ID": s.target_kme_id,
        "master_SAE_ID": s.master_sae_id, "slave_SAE_ID": s.slave_sae_id,
        "key_size": s.key_size, "stored_key_count": s.stored_key_count,
        "max_key_count": s.max_key_count, "max_key_per_request": s.max_key_per_request,
        "max_key_size": s.max_key_size, "min_key_size": s.min_key_size,
        "max_SAE_ID_count": s.max_sae_id_count,
    }


def _container_body(keys: list[DeliveredKey]) -> dict[str, Any]:
    out = []
    for k in keys:
        item: dict[str, Any] = {"key_ID": k.key_id, "key": base64.b64encode(k.key).decode()}
        if k.extension:
            item["key_extension"] = k.extension
        out.append(item)
    return {"keys": out}


def create_etsi014_app(km: ApplicationService, *, kme_id: str,
                       settings: ApiSettings | None = None) -> FastAPI:
    """The ETSI 014 app of one KME, serving ``/api/v1/keys/...`` exactly as the standard.

    Args:
        km: the node's key manager (the only holder of key state).
        kme_id: this KME's ID (its node id), kept in ``app.state.kme_id``.
        settings: limits, local SAEs and timeouts (defaults when None).
    """
    cfg = settings or ApiSettings()
    app = FastAPI(title="keyplane ETSI GS QKD 014 KME", version="1.1.1",
                  description="ETSI GS QKD 014 V1.1.1 key delivery over HTTPS with mutual TLS.")
    app.state.kme_id = kme_id

    async def call(awaitable: Awaitable[T]) -> T:
        async with asyncio.timeout(cfg.km_timeout_s):
            return await awaitable

    @app.exception_handler(ApiRequestError)
    async def _api_error(_: Request, exc: ApiRequestError) -> JSONResponse:
        return _error_response(exc.http_status, exc.message, exc.details)

    async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
        mapping = map_exception(exc)
        assert mapping is not None  # registered only for mapped types
        return _error_response(mapping.http_status, mapping.message, error_details(exc))

    app.add_exception_handler(KeyplaneError, _domain_error)
    app.add_exception_handler(TimeoutError, _domain_error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the input back (it could be large); name the parameter and the rule.
        details = [{"parameter": ".".join(str(p) for p in e.get("loc", ())),
                    "error": e.get("msg", "")} for e in exc.errors()]
        return _error_response(400, "bad request format", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(app.router.routes, dict(request.scope))
        return _error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.get(API_PREFIX + "/{slave_SAE_ID}/status", response_model=Status, responses=_ERRORS,
             summary="Get status", tags=["ETSI GS QKD 014"])
    async def get_status(request: Request, slave_SAE_ID: SaePath) -> JSONResponse:
        """Status of the keys from the calling master SAE to ``slave_SAE_ID`` (clause 5.1)."""
        caller = caller_from_scope(request.scope)
        master = resolve_sae(request.scope, caller, cfg)
        return JSONResponse(_status_body(await call(km.status(caller, master, slave_SAE_ID))))

    async def enc_keys(request: Request, slave: str, req: KeyRequest) -> JSONResponse:
        caller = caller_from_scope(request.scope)
        master = resolve_sae(request.scope, caller, cfg)
        number, size, slaves, ext = check_key_request(req, cfg.limits, cfg.supported_extensions)
        keys = await call(km.enc_keys(caller, master, slave, number, size, slaves or None, ext))
        return JSONResponse(_container_body(keys))

    @app.get(API_PREFIX + "/{slave_SAE_ID}/enc_keys", response_model=KeyContainer,
             responses=_ERRORS, summary="Get key", tags=["ETSI GS QKD 014"])
    async def get_enc_keys(request: Request, slave_SAE_ID: SaePath,
                           number: Annotated[int | None, Query()] = None,
                           size: Annotated[int | None, Query()] = None) -> JSONResponse:
        """``number`` keys of ``size`` bits for the master to share with the slave (5.2)."""
        return await enc_keys(request, slave_SAE_ID, KeyRequest(number=number, size=size))

    @app.post(API_PREFIX + "/{slave_SAE_ID}/enc_keys", response_model=KeyContainer,
              responses=_ERRORS, summary="Get key (POST)", tags=["ETSI GS QKD 014"])
    async def post_enc_keys(request: Request, slave_SAE_ID: SaePath,
                            body: Annotated[KeyRequest | None, Body()] = None) -> JSONResponse:
        """As GET, plus multicast (``additional_slave_SAE_IDs``) and extensions (5.2)."""
        return await enc_keys(request, slave_SAE_ID, body or KeyRequest())

    async def dec_keys(request: Request, master: str, ids: list[str]) -> JSONResponse:
        caller = caller_from_scope(request.scope)
        slave = resolve_sae(request.scope, caller, cfg)
        if len(ids) > cfg.limits.max_key_per_request:
            raise ApiRequestError("number of key_IDs exceeds max_key_per_request",
                                  [{"max_key_per_request": cfg.limits.max_key_per_request}])
        key_ids = [i.lower() for i in ids]  # canonical UUID text is lower case
        if len(set(key_ids)) != len(key_ids):
            raise ApiRequestError("key_IDs contains duplicates")
        return JSONResponse(_container_body(
            await call(km.dec_keys(caller, slave, master, key_ids))))

    @app.get(API_PREFIX + "/{master_SAE_ID}/dec_keys", response_model=KeyContainer,
             responses=_ERRORS, summary="Get key with key IDs", tags=["ETSI GS QKD 014"])
    async def get_dec_keys(request: Request, master_SAE_ID: SaePath,
                           key_ID: Annotated[KeyId, Query()]) -> JSONResponse:
        """The key ``key_ID`` that ``master_SAE_ID`` obtained for the calling slave (5.3)."""
        return await dec_keys(request, master_SAE_ID, [key_ID])

    @app.post(API_PREFIX + "/{master_SAE_ID}/dec_keys", response_model=KeyContainer,
              responses=_ERRORS, summary="Get key with key IDs (POST)",
              tags=["ETSI GS QKD 014"])
    async def post_dec_keys(request: Request, master_SAE_ID: SaePath,
                            body: Annotated[KeyIDs, Body()]) -> JSONResponse:
        """The keys ``key_IDs`` that ``master_SAE_ID`` obtained for the calling slave (5.3)."""
        return await dec_keys(request, master_SAE_ID, [k.key_ID for k in body.key_IDs])

    drop_validation_responses(app, lambda doc: document_limits(doc, cfg))
    return app

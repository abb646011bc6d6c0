"""ETSI GS QKD 014 V1.1.1 server (clause 5): status, enc_keys and dec_keys of one KME.

Each route parses, checks the request against the ETSI 014 limits (before anything is
reserved), calls one :class:`~keyplane.keymanager.interface.ApplicationService` method and
writes the standard's body. Every failure goes through one path,
:func:`~keyplane.api.routing.install_error_handlers`:
the key manager's domain exceptions via :mod:`keyplane.api.errors`, the server's own
:class:`~keyplane.api.errors.ApiRequestError`, FastAPI's validation errors (422 in FastAPI,
400 in ETSI 014) and Starlette's 404/405, all as ``{"message", "details"}``.

Deviations and choices (docs/api/etsi014.md has the full table):
- the master SAE is named by its authenticated identity (see :mod:`keyplane.api.auth`);
- ``size`` must be a multiple of 8 (keys are whole bytes);
- ``key_IDs`` may not repeat an ID within one request.

The enc_keys and dec_keys routes serve requests in the common form without FastAPI's
per-request parameter machinery (:mod:`keyplane.api.etsi014.fastpath`); both paths share
the handlers below and write the same bytes.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import inspect
import logging
import re
from collections.abc import Awaitable, Sequence
from typing import Annotated, Any, TypeVar

import pydantic_core
from fastapi import Body, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from keyplane.api.auth import caller_from_scope, resolve_sae
from keyplane.api.errors import ApiRequestError
from keyplane.api.etsi014.fastpath import (
    HotFront,
    HotRoute,
    compile_fullmatch,
    json_body,
    key_ids_body,
    query_params,
)
from keyplane.api.etsi014.models import (
    KEY_ID_PATTERN,
    Error,
    KeyContainer,
    KeyId,
    KeyIDs,
    KeyRequest,
    Status,
)
from keyplane.api.openapi import drop_validation_responses
from keyplane.api.routing import install_error_handlers
from keyplane.api.settings import ApiSettings, Etsi014Limits
from keyplane.keymanager.interface import (
    ApplicationService,
    DeliveredKey,
    DeliveredKeys,
    PairStatus,
)

__all__ = ["ACK", "API_PREFIX", "CONFIRM", "acknowledgement_options", "check_key_request",
           "create_etsi014_app", "document_limits"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1/keys"
T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "Bad request format"},
    401: {"model": Error, "description": "Unauthorized"},
    503: {"model": Error, "description": "Error on server side"},
}
SaePath = Annotated[str, Path(min_length=1, max_length=256)]
_ENC_PARAMS = frozenset({b"number", b"size"})
_DEC_PARAMS = frozenset({b"key_ID"})
ACK = "keyplane_ack"
"""``key_IDs_extension`` member (boolean): dec_keys with acknowledgement
(docs/api/etsi014.md)."""
CONFIRM = "keyplane_confirm"
"""``key_IDs_extension`` member (a list of key_IDs): the keys confirmed."""


def acknowledgement_options(extension: dict[str, Any] | None, max_keys: int
                            ) -> dict[str, Any]:
    """The dec_keys acknowledgement options in ``key_IDs_extension`` ({} when absent).

    Raises:
        ApiRequestError: (400) ``keyplane_ack`` is not a boolean, or ``keyplane_confirm``
            is not a list of at most ``max_keys`` distinct key_IDs.
    """
    if not extension or (ACK not in extension and CONFIRM not in extension):
        return {}
    ack = extension.get(ACK, False)
    if not isinstance(ack, bool):
        raise ApiRequestError("bad request format", [{"parameter": f"key_IDs_extension.{ACK}",
                                                      "expected": "boolean"}])
    confirm = extension.get(CONFIRM, [])
    if (not isinstance(confirm, list) or len(confirm) > max_keys
            or not all(isinstance(i, str) and _KEY_ID(i.encode()) for i in confirm)
            or len({i.lower() for i in confirm}) != len(confirm)):
        raise ApiRequestError("bad request format", [{
            "parameter": f"key_IDs_extension.{CONFIRM}",
            "expected": f"a list of at most {max_keys} distinct key_IDs (UUID)"}])
    return {"acknowledge": ack, "confirm": [i.lower() for i in confirm]}


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
    if cfg.network_saes:  # any other peer SAE_ID is a 400 (see ``known_peer``)
        for ops in doc["paths"].values():
            for op in ops.values():
                for param in op.get("parameters", []):
                    if param["name"] in ("slave_SAE_ID", "master_SAE_ID"):
                        param["schema"] = {**param["schema"],
                                           "enum": sorted(cfg.network_saes)}
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


def _container_json(keys: Sequence[DeliveredKey]) -> bytes:
    """The Key container (clause 6.3) as JSON bytes, in one serializer pass.

    A :class:`DeliveredKeys` answer whose key_IDs need no JSON escaping (every one the KM
    makes: UUIDs) is written from its lists, each distinct extension serialized once (a
    relay batch's keys share one); the bytes are the same as the general path's
    (``tests/unit/api/test_etsi014_container.py``).
    """
    if isinstance(keys, DeliveredKeys) and _PLAIN_IDS("".join(keys.key_ids)):
        return _container_from_lists(keys)
    out = []
    b64 = binascii.b2a_base64
    for k in keys:
        item: dict[str, Any] = {"key_ID": k.key_id, "key": b64(k.key, newline=False).decode()}
        if k.extension:
            item["key_extension"] = k.extension
        out.append(item)
    return pydantic_core.to_json({"keys": out})


_PLAIN_IDS = re.compile(r"[0-9A-Za-z._~-]*").fullmatch
"""key_IDs JSON writes as they are (no quote, backslash or control character)."""


def _tail(ext: dict[str, Any] | None) -> str:
    """A key's text after its key bytes: its extension (if any) and the object's end."""
    return '","key_extension":' + pydantic_core.to_json(ext).decode() + "}" if ext else '"}'


def _container_from_lists(keys: DeliveredKeys) -> bytes:
    b64 = binascii.b2a_base64
    exts = keys.extensions
    first = exts[0] if exts else None
    if all(e is first for e in exts):  # one extension object (a relay batch's): no lookup
        tail = _tail(first)
        sep, mid = tail + ',{"key_ID":"', '","key":"'
        parts: list[str] = []
        for key_id, key in zip(keys.key_ids, keys.keys, strict=True):
            parts += (key_id, mid, b64(key, newline=False).decode(), sep)
        if parts:
            parts[-1] = tail
        return ('{"keys":[{"key_ID":"' + "".join(parts) + "]}").encode() if parts else (
            b'{"keys":[]}')
    tails: dict[int, str] = {}  # each key's text after its key bytes, per extension object
    out = []
    for key_id, key, ext in zip(keys.key_ids, keys.keys, exts, strict=True):
        t = tails.get(id(ext))
        if t is None:
            t = tails[id(ext)] = _tail(ext)
        out.append(f'{{"key_ID":"{key_id}","key":"{b64(key, newline=False).decode()}{t}')
    return ('{"keys":[' + ",".join(out) + "]}").encode()


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


_DIGITS = compile_fullmatch(r"^(0|[1-9][0-9]{0,8})$")
_KEY_ID = compile_fullmatch(KEY_ID_PATTERN)


def _sae_param(scope: Scope, name: str) -> str | None:
    """A path's SAE id as FastAPI would accept it (1-256 characters), else None."""
    value = scope.get("path_params", {}).get(name)
    return value if isinstance(value, str) and 1 <= len(value) <= 256 else None


def _int_param(params: dict[bytes, bytes], name: bytes) -> tuple[bool, int | None]:
    """``(ok, value)`` of an optional integer query parameter in plain digits."""
    raw = params.get(name)
    if raw is None:
        return True, None
    return (True, int(raw)) if _DIGITS(raw) else (False, None)


class _Etsi014App(FastAPI):
    """FastAPI, with the hot routes' common requests served ahead of its middleware stack
    (:class:`~keyplane.api.etsi014.fastpath.HotFront`); everything else as FastAPI does."""

    hot_front: HotFront | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot_front is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self.hot_front(scope, receive, send)

    async def full_stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application as FastAPI serves it (middleware, router, handlers)."""
        await super().__call__(scope, receive, send)


async def _handled(app: FastAPI, scope: Scope, receive: Receive, send: Send,
                   exc: Exception) -> None:
    """Answer ``exc`` with the application's exception handler for it, as Starlette's
    exception middleware would (the most specific class registered); re-raise if none."""
    handler = next((app.exception_handlers[cls] for cls in type(exc).__mro__
                    if cls in app.exception_handlers), None)
    if handler is None:
        raise exc
    response = handler(Request(scope, receive), exc)
    if inspect.isawaitable(response):
        response = await response
    await response(scope, receive, send)


def create_etsi014_app(km: ApplicationService, *, kme_id: str,
                       settings: ApiSettings | None = None, fast_path: bool = True) -> FastAPI:
    """The ETSI 014 app of one KME, serving ``/api/v1/keys/...`` exactly as the standard.

    Args:
        km: the node's key manager (the only holder of key state).
        kme_id: this KME's ID (its node id), kept in ``app.state.kme_id``.
        settings: limits, local SAEs and timeouts (defaults when None).
        fast_path: serve common enc_keys/dec_keys requests without FastAPI's parameter
            machinery (:mod:`~keyplane.api.etsi014.fastpath`); False: FastAPI only (the
            reference the fast path is tested against).
    """
    cfg = settings or ApiSettings()
    app = _Etsi014App(title="keyplane ETSI GS QKD 014 KME", version="1.1.1",
                  description="ETSI GS QKD 014 V1.1.1 key delivery over HTTPS with mutual TLS.")
    app.state.kme_id = kme_id

    async def call(awaitable: Awaitable[T]) -> T:
        async with asyncio.timeout(cfg.km_timeout_s):
            return await awaitable

    install_error_handlers(app)

    def known_peer(sae_id: str, role: str) -> str:
        """Refuse a peer SAE the network does not have: the request is wrong (400), not
        the server (503), so clients do not retry it (ETSI 014 clause 5, status codes)."""
        if not cfg.knows_sae(sae_id):
            raise ApiRequestError(f"{role} SAE_ID is not an SAE of this network",
                                  [{"parameter": f"{role}_SAE_ID"}])
        return sae_id

    @app.get(API_PREFIX + "/{slave_SAE_ID}/status", response_model=Status, responses=_ERRORS,
             summary="Get status", tags=["ETSI GS QKD 014"])
    async def get_status(request: Request, slave_SAE_ID: SaePath) -> JSONResponse:
        """Status of the keys from the calling master SAE to ``slave_SAE_ID`` (clause 5.1)."""
        caller = caller_from_scope(request.scope)
        master = resolve_sae(request.scope, caller, cfg)
        slave = known_peer(slave_SAE_ID, "slave")
        return JSONResponse(_status_body(await call(km.status(caller, master, slave))))

    async def enc_keys(scope: Scope, slave: str, req: KeyRequest) -> bytes:
        caller = caller_from_scope(scope)
        master = resolve_sae(scope, caller, cfg)
        known_peer(slave, "slave")
        number, size, slaves, ext = check_key_request(req, cfg.limits, cfg.supported_extensions)
        for extra in slaves:
            known_peer(extra, "slave")
        keys = await call(km.enc_keys(caller, master, slave, number, size, slaves or None, ext))
        return _container_json(keys)

    @app.get(API_PREFIX + "/{slave_SAE_ID}/enc_keys", response_model=KeyContainer,
             responses=_ERRORS, summary="Get key", tags=["ETSI GS QKD 014"])
    async def get_enc_keys(request: Request, slave_SAE_ID: SaePath,
                           number: Annotated[int | None, Query()] = None,
                           size: Annotated[int | None, Query()] = None) -> Response:
        """``number`` keys of ``size`` bits for the master to share with the slave (5.2)."""
        return _json(await enc_keys(request.scope, slave_SAE_ID,
                                    KeyRequest(number=number, size=size)))

    @app.post(API_PREFIX + "/{slave_SAE_ID}/enc_keys", response_model=KeyContainer,
              responses=_ERRORS, summary="Get key (POST)", tags=["ETSI GS QKD 014"])
    async def post_enc_keys(request: Request, slave_SAE_ID: SaePath,
                            body: Annotated[KeyRequest | None, Body()] = None) -> Response:
        """As GET, plus multicast (``additional_slave_SAE_IDs``) and extensions (5.2)."""
        return _json(await enc_keys(request.scope, slave_SAE_ID, body or KeyRequest()))

    async def dec_keys(scope: Scope, master: str, ids: list[str],
                       extension: dict[str, Any] | None = None) -> bytes:
        caller = caller_from_scope(scope)
        slave = resolve_sae(scope, caller, cfg)
        known_peer(master, "master")
        if len(ids) > cfg.limits.max_key_per_request:
            raise ApiRequestError("number of key_IDs exceeds max_key_per_request",
                                  [{"max_key_per_request": cfg.limits.max_key_per_request}])
        key_ids = [i.lower() for i in ids]  # canonical UUID text is lower case
        if len(set(key_ids)) != len(key_ids):
            raise ApiRequestError("key_IDs contains duplicates")
        options = acknowledgement_options(extension, cfg.limits.max_key_per_request)
        return _container_json(await call(km.dec_keys(caller, slave, master, key_ids,
                                                      **options)))

    @app.get(API_PREFIX + "/{master_SAE_ID}/dec_keys", response_model=KeyContainer,
             responses=_ERRORS, summary="Get key with key IDs", tags=["ETSI GS QKD 014"])
    async def get_dec_keys(request: Request, master_SAE_ID: SaePath,
                           key_ID: Annotated[KeyId, Query()]) -> Response:
        """The key ``key_ID`` that ``master_SAE_ID`` obtained for the calling slave (5.3)."""
        return _json(await dec_keys(request.scope, master_SAE_ID, [key_ID]))

    @app.post(API_PREFIX + "/{master_SAE_ID}/dec_keys", response_model=KeyContainer,
              responses=_ERRORS, summary="Get key with key IDs (POST)",
              tags=["ETSI GS QKD 014"])
    async def post_dec_keys(request: Request, master_SAE_ID: SaePath,
                            body: Annotated[KeyIDs, Body()]) -> Response:
        """The keys ``key_IDs`` that ``master_SAE_ID`` obtained for the calling slave (5.3)."""
        return _json(await dec_keys(request.scope, master_SAE_ID,
                                    [k.key_ID for k in body.key_IDs], body.key_IDs_extension))

    # ---- fast path: the same handlers, without FastAPI's per-request machinery -------
    def parse_get_enc(scope: Scope, _: bytes | None) -> tuple[str, KeyRequest] | None:
        slave, params = _sae_param(scope, "slave_SAE_ID"), query_params(scope, _ENC_PARAMS)
        if slave is None or params is None:
            return None
        (ok_n, number), (ok_s, size) = (_int_param(params, b"number"),
                                        _int_param(params, b"size"))
        return (slave, KeyRequest(number=number, size=size)) if ok_n and ok_s else None

    def parse_post_enc(scope: Scope, body: bytes | None) -> tuple[str, KeyRequest] | None:
        slave, req = _sae_param(scope, "slave_SAE_ID"), json_body(KeyRequest, body)
        return None if slave is None or req is None else (slave, req)

    def parse_get_dec(scope: Scope, _: bytes | None) -> tuple[str, list[str]] | None:
        master, params = _sae_param(scope, "master_SAE_ID"), query_params(scope, _DEC_PARAMS)
        key_id = None if params is None else params.get(b"key_ID")
        if master is None or key_id is None or not _KEY_ID(key_id):
            return None
        return master, [key_id.decode()]

    def parse_post_dec(scope: Scope, body: bytes | None
                       ) -> tuple[str, list[str], dict[str, Any] | None] | None:
        master = _sae_param(scope, "master_SAE_ID")
        if master is None:
            return None
        plain = key_ids_body(body, KEY_ID_PATTERN)  # a bulk body without a model per key
        if plain is not None:
            return master, plain[0], plain[1]
        ids = json_body(KeyIDs, body)
        return None if ids is None else (
            master, [k.key_ID for k in ids.key_IDs], ids.key_IDs_extension)

    async def serve_enc(scope: Scope, args: tuple[str, KeyRequest]) -> bytes:
        return await enc_keys(scope, *args)

    async def serve_dec(scope: Scope, args: tuple[Any, ...]) -> bytes:
        return await dec_keys(scope, *args)

    if fast_path:
        front: dict[tuple[str, str], tuple[str, Any, Any, bool]] = {
            ("enc_keys", "GET"): ("slave_SAE_ID", parse_get_enc, serve_enc, False),
            ("enc_keys", "POST"): ("slave_SAE_ID", parse_post_enc, serve_enc, True),
            ("dec_keys", "GET"): ("master_SAE_ID", parse_get_dec, serve_dec, False),
            ("dec_keys", "POST"): ("master_SAE_ID", parse_post_dec, serve_dec, True),
        }
        app.hot_front = HotFront(app.full_stack, API_PREFIX, front,
                                 functools.partial(_handled, app))
        hot: dict[tuple[str, str], tuple[Any, Any, bool]] = {
            ("/{slave_SAE_ID}/enc_keys", "GET"): (parse_get_enc, serve_enc, False),
            ("/{slave_SAE_ID}/enc_keys", "POST"): (parse_post_enc, serve_enc, True),
            ("/{master_SAE_ID}/dec_keys", "GET"): (parse_get_dec, serve_dec, False),
            ("/{master_SAE_ID}/dec_keys", "POST"): (parse_post_dec, serve_dec, True),
        }
        for route in app.router.routes:
            if not isinstance(route, APIRoute):
                continue
            for method in route.methods or ():
                spec = hot.get((route.path.removeprefix(API_PREFIX), method))
                if spec is not None:
                    parse, serve, reads_body = spec
                    route.app = HotRoute(route.app, method, parse, serve,
                                         reads_body=reads_body)

    drop_validation_responses(app, lambda doc: document_limits(doc, cfg))
    return app

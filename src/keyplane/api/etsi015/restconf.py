"""RESTCONF (RFC 8040) over HTTP for an :class:`~keyplane.api.etsi015.agent.SdnAgent`.

Routes (handlers are thin: parse, call one agent method, map the result):

| method and path                                        | what                                   |
|--------------------------------------------------------|----------------------------------------|
| GET  /.well-known/host-meta                            | RFC 8040 §3.1 root discovery (XRD)     |
| GET  /restconf                                         | API root (``ietf-restconf:restconf``)  |
| GET  /restconf/yang-library-version                    | ``2019-01-04`` (RFC 8525)              |
| GET  /restconf/data/ietf-yang-library:yang-library     | the YANG library (RFC 8525)            |
| GET  /restconf/data/ietf-yang-library:modules-state    | the module set (RFC 7895, deprecated)  |
| GET  /restconf/yang/<module>@<revision>                | a module file (RFC 8040 §3.7)          |
| GET  /restconf/data/ietf-restconf-monitoring:restconf-state/streams | the event stream     |
| GET/HEAD /restconf/data[/<resource>]                   | reads (``content``,``depth``,``fields``)|
| POST/PUT/PATCH/DELETE /restconf/data/<resource>        | writes (controller certificate only)   |
| GET  /restconf/streams/etsi-qkd-sdn-node/json          | notifications as SSE (RFC 8040 §6.3)   |

Every failure goes through one handler that answers with ``ietf-restconf:errors``.

Who the client is (:class:`RestconfOptions`): by default the TLS client certificate, whose
subject is read from the ASGI scope state key :data:`PEER_SUBJECT_STATE_KEY` (set per
connection by :mod:`keyplane.api.etsi015.server`); any certificate of the network's CA may
read, the controller's may write. A listener built with ``basic_users`` instead asks every
request for HTTP Basic credentials (RFC 7617) and lets a valid user read and write: the
controller-facing listener for an unmodified TeraFlowSDN (:mod:`keyplane.api.etsi015.teraflow`).

What the client is shown: RFC 7951 names (or TeraFlowSDN's unqualified top member), and
keyplane's augment ``keyplane-qkd-provenance`` unless the listener serves the plain ETSI
model, in which case its members, its module in the YANG library and paths into it are
absent (404) as if keyplane had no augment.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyplane.api.etsi015.agent import SdnAgent
from keyplane.api.etsi015.datastore import Content
from keyplane.api.etsi015.errors import ERROR_MEDIA_TYPE, RestconfError
from keyplane.api.etsi015.library import (
    LIBRARY_REVISION,
    YANG_MEDIA_TYPE,
    module_text,
    modules_state,
    yang_library,
)
from keyplane.api.etsi015.model import MODULE, PROVENANCE_MODULE

__all__ = [
    "PEER_SUBJECT_STATE_KEY",
    "STREAM_NAME",
    "YANG_DATA_JSON",
    "RestconfOptions",
    "create_agent_app",
    "restconf_error_handlers",
]

logger = logging.getLogger(__name__)

YANG_DATA_JSON = "application/yang-data+json"
PEER_SUBJECT_STATE_KEY = "keyplane.peer_subject"
"""ASGI ``scope["state"]`` key holding the RFC 4514 subject of the TLS client certificate."""
STREAM_NAME = MODULE
YANG_LIBRARY_VERSION = LIBRARY_REVISION
_JSON_TYPES = ("application/yang-data+json", "application/json")
_WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class YangJSONResponse(JSONResponse):
    """JSON with the RESTCONF media type."""

    media_type = YANG_DATA_JSON


def _error_response(exc: RestconfError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, media_type=ERROR_MEDIA_TYPE,
                        headers=exc.headers or None)


@dataclass(frozen=True)
class RestconfOptions:
    """What one listener shows and whom it trusts (see the module docstring).

    Attributes:
        unqualified_top_member: answer ``{"qkd_node": …}`` (TeraFlowSDN reads that) instead
            of RFC 7951's ``{"etsi-qkd-sdn-node:qkd_node": …}``.
        keyplane_augment: serve ``keyplane-qkd-provenance``; False serves the plain ETSI model.
        basic_users: user → password; set, every request must carry one of them as HTTP
            Basic credentials, and such a user may write. None: the TLS client certificate.
        realm: the Basic realm named in ``WWW-Authenticate``.
    """

    unqualified_top_member: bool = False
    keyplane_augment: bool = True
    basic_users: Mapping[str, str] | None = field(default=None, repr=False)
    realm: str = "keyplane ETSI GS QKD 015"


def _basic_user(request: Request, users: Mapping[str, str], realm: str) -> str:
    """The user whose Basic credentials the request carries.

    Raises:
        RestconfError: 401 ``access-denied`` (with ``WWW-Authenticate``) when they are
            missing, malformed or wrong.
    """
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    given_user, given_password = "", ""
    if scheme.lower() == "basic":
        try:
            given_user, _, given_password = base64.b64decode(
                value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            given_user = ""
    found = None
    for user, password in users.items():  # compare with every entry: no early exit on a name
        same = hmac.compare_digest(user.encode(), given_user.encode())
        same &= hmac.compare_digest(password.encode(), given_password.encode())
        if same:
            found = user
    if found is None:
        raise RestconfError(401, "access-denied", "valid HTTP Basic credentials required",
                            headers={"WWW-Authenticate": f'Basic realm="{realm}"'})
    return found


def _without_module(value: Any, module: str) -> Any:
    """``value`` without the members of ``module`` (RFC 7951 qualifies them where they start)."""
    prefix = f"{module}:"
    if isinstance(value, dict):
        return {k: _without_module(v, module) for k, v in value.items()
                if not k.startswith(prefix)}
    if isinstance(value, list):
        return [_without_module(v, module) for v in value]
    return value


def restconf_error_handlers(app: FastAPI) -> None:
    """Install the one error path: every failure becomes ``ietf-restconf:errors``."""

    async def on_restconf(_: Request, exc: Exception) -> Response:
        return _error_response(cast(RestconfError, exc))

    async def on_http(_: Request, exc: Exception) -> Response:
        http = cast(StarletteHTTPException, exc)
        if http.status_code == 404:
            err = RestconfError(404, "invalid-value", "no such resource")
        elif http.status_code == 405:
            err = RestconfError(405, "operation-not-supported", "method not allowed")
        else:
            err = RestconfError(http.status_code, "operation-failed", str(http.detail))
        return _error_response(err)

    async def on_other(_: Request, exc: Exception) -> Response:
        logger.exception("RESTCONF handler failed", exc_info=exc)
        return _error_response(RestconfError(500, "operation-failed", "internal error",
                                             error_type="application"))

    app.add_exception_handler(RestconfError, on_restconf)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_other)


def peer_subject_of(request: Request) -> str | None:
    """The client certificate subject of the request's TLS connection, if any."""
    state = request.scope.get("state") or {}
    subject = state.get(PEER_SUBJECT_STATE_KEY)
    return subject if isinstance(subject, str) else None


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if not accept:
        return
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if not any(t in _JSON_TYPES or t in ("*/*", "application/*") for t in types):
        raise RestconfError(406, "invalid-value",
                            "only application/yang-data+json (or application/json) is served")


def _query(request: Request, allowed: tuple[str, ...]
           ) -> tuple[Content, int | None, str | None]:
    content: Content = "all"
    depth: int | None = None
    fields: str | None = None
    seen: set[str] = set()
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise RestconfError(400, "invalid-value", f"query parameter {name!r} not supported")
        if name in seen:  # RFC 8040 §4.8: each parameter at most once
            raise RestconfError(400, "invalid-value", f"query parameter {name!r} repeated")
        seen.add(name)
        if name == "fields":
            fields = value
        if name == "content":
            if value not in ("all", "config", "nonconfig"):
                raise RestconfError(400, "invalid-value", "content must be all|config|nonconfig")
            content = cast(Content, value)
        elif name == "depth" and value != "unbounded":
            try:
                depth = int(value)
            except ValueError:
                raise RestconfError(400, "invalid-value",
                                    "depth must be 1..65535 or unbounded") from None
    return content, depth, fields


async def _json_body(request: Request) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in _JSON_TYPES:
        raise RestconfError(415, "invalid-value",
                            f"unsupported media type {ctype or '(none)'!r}; "
                            "use application/yang-data+json")
    raw = await request.body()
    if not raw:
        raise RestconfError(400, "malformed-message", "the request needs a JSON body")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RestconfError(400, "malformed-message", f"invalid JSON: {exc}") from None


def _resource_path(request: Request, decoded: str) -> str:
    """The still percent-encoded resource path after ``/restconf/data`` (RFC 8040 §3.5.3).

    Key values are percent-decoded by the resource-id parser, so a ``,`` or ``/`` inside a
    key stays unambiguous; the decoded path parameter is the fallback.
    """
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes):
        text = raw.decode("ascii", "replace")
        root = request.scope.get("root_path", "") + "/restconf/data"
        if text.startswith(root):
            return text[len(root):].strip("/")
    return decoded.strip("/")


def _library(path: str, base_url: str, augment: bool) -> Response:
    """The YANG library resources (RFC 8525 ``yang-library``, RFC 7895 ``modules-state``)."""
    if path == "ietf-yang-library:yang-library":
        return YangJSONResponse(yang_library(base_url, augment=augment))
    if path == "ietf-yang-library:modules-state":
        return YangJSONResponse(modules_state(base_url, augment=augment))
    raise RestconfError(404, "invalid-value", "no such YANG library resource",
                        path="/" + path)


def _unqualify_top(body: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix(f"{MODULE}:"): v for k, v in body.items()}


def create_agent_app(agent: SdnAgent, options: RestconfOptions | None = None) -> FastAPI:
    """The RESTCONF application of ``agent`` (serve it with :func:`serve_agent`).

    ``options``: what this listener shows and whom it trusts; None takes
    ``unqualified_top_member`` and ``keyplane_augment`` from ``agent.settings`` and trusts
    the TLS client certificate.
    """
    opts = options or RestconfOptions(
        unqualified_top_member=agent.settings.unqualified_top_member,
        keyplane_augment=agent.settings.keyplane_augment)

    def principal(request: Request) -> str | None:
        """Who sent ``request`` (raises 401 on a Basic listener without valid credentials)."""
        if opts.basic_users is not None:
            return "basic:" + _basic_user(request, opts.basic_users, opts.realm)
        return peer_subject_of(request)

    async def authenticate(request: Request) -> None:
        principal(request)

    app = FastAPI(title=f"keyplane SDN agent {agent.node_id} (ETSI GS QKD 015)",
                  docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(authenticate)] if opts.basic_users is not None else [])
    restconf_error_handlers(app)
    hidden = () if opts.keyplane_augment else (PROVENANCE_MODULE,)

    def answer(body: dict[str, Any], status: int = 200) -> Response:
        for module in hidden:
            body = _without_module(body, module)
        if opts.unqualified_top_member:
            body = _unqualify_top(body)
        return YangJSONResponse(body, status_code=status)

    def may_write(who: str | None) -> bool:
        if opts.basic_users is not None:  # the listener's users are controllers
            return who is not None
        return agent.may_write(who)

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @app.get("/.well-known/host-meta")
    async def host_meta() -> Response:
        xrd = ("<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>"
               "<Link rel='restconf' href='/restconf'/></XRD>")
        return Response(xrd, media_type="application/xrd+xml")

    @app.get("/restconf")
    async def api_root() -> Response:
        return YangJSONResponse({"ietf-restconf:restconf": {
            "data": {}, "operations": {}, "yang-library-version": YANG_LIBRARY_VERSION}})

    @app.get("/restconf/yang-library-version")
    async def library_version() -> Response:
        return YangJSONResponse({"ietf-restconf:yang-library-version": YANG_LIBRARY_VERSION})

    @app.get("/restconf/yang/{module}")
    async def schema(module: str) -> Response:
        name, _, revision = module.removesuffix(".yang").partition("@")
        text = module_text(name, revision or None, augment=opts.keyplane_augment)
        if text is None:
            raise RestconfError(404, "invalid-value", f"no module {module!r} is served")
        return Response(text, media_type=YANG_MEDIA_TYPE)

    @app.get("/restconf/streams/{stream}/json")
    async def event_stream(stream: str, request: Request) -> Response:
        if stream != STREAM_NAME:
            raise RestconfError(404, "invalid-value", f"no stream {stream!r}")
        feed = agent.subscribe()

        async def events() -> AsyncIterator[bytes]:
            try:
                async for note in feed:
                    doc = {"ietf-restconf:notification": {
                        "eventTime": note.event_time, f"{MODULE}:{note.name}": note.content}}
                    yield f"data: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()
            finally:
                feed.close()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def data(request: Request, path: str = "") -> Response:
        path = _resource_path(request, path)
        method = request.method
        if method == "OPTIONS":
            return Response(status_code=200, headers={"Allow": _ALLOW})
        if path.startswith("ietf-yang-library:") and method in ("GET", "HEAD"):
            return _library(path, base_url(request), opts.keyplane_augment)
        if any(path.startswith(f"{module}:") or f"/{module}:" in path for module in hidden):
            raise RestconfError(404, "invalid-value", "unknown resource (module not served)")
        if path.startswith("ietf-restconf-monitoring:restconf-state") and method == "GET":
            base = str(request.base_url).rstrip("/")
            return YangJSONResponse({"ietf-restconf-monitoring:restconf-state": {"streams": {
                "stream": [{"name": STREAM_NAME, "description": "ETSI GS QKD 015 notifications",
                            "access": [{"encoding": "json", "location":
                                        f"{base}/restconf/streams/{STREAM_NAME}/json"}]}]}}})
        if method in ("GET", "HEAD"):
            _check_accept(request)
            content, depth, fields = _query(request, ("content", "depth", "fields"))
            if fields is not None and any(f"{module}:" in fields for module in hidden):
                raise RestconfError(400, "invalid-value", "fields: a module not served")
            body = agent.get(path, content=content, depth=depth, fields=fields)
            if method == "HEAD":
                return Response(status_code=200, media_type=YANG_DATA_JSON)
            return answer(body)
        _query(request, ())
        if not may_write(principal(request)):
            raise RestconfError(403, "access-denied",
                                "only the SDN controller's certificate may write")
        if method == "DELETE":
            await agent.delete(path)
            return Response(status_code=204)
        body = await _json_body(request)
        if method == "POST":
            location = await agent.create(path, body)
            url = base_url(request) + "/restconf/data/" + location
            return Response(status_code=201, headers={"Location": url})
        if method == "PUT":
            created = await agent.replace(path, body)
            return Response(status_code=201 if created else 204)
        await agent.merge(path, body)
        return Response(status_code=204)

    methods = ["GET", "HEAD", "OPTIONS", *_WRITE_METHODS]
    handler = cast(Callable[..., Awaitable[Response]], data)
    app.add_api_route("/restconf/data", handler, methods=methods, include_in_schema=False)
    app.add_api_route("/restconf/data/{path:path}", handler, methods=methods,
                      include_in_schema=False)
    return app

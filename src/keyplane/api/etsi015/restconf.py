"""RESTCONF (RFC 8040) over HTTP for an :class:`~keyplane.api.etsi015.agent.SdnAgent`.

Routes (handlers are thin: parse, call one agent method, map the result):

| method and path                                        | what                                   |
|--------------------------------------------------------|----------------------------------------|
| GET  /.well-known/host-meta                            | RFC 8040 §3.1 root discovery (XRD)     |
| GET  /restconf                                         | API root (``ietf-restconf:restconf``)  |
| GET  /restconf/yang-library-version                    | ``2016-06-21``                         |
| GET  /restconf/data/ietf-yang-library:modules-state    | the module set (RFC 7895)              |
| GET  /restconf/data/ietf-restconf-monitoring:restconf-state/streams | the event stream     |
| GET/HEAD /restconf/data[/<resource>]                   | reads (``content``,``depth``,``fields``)|
| POST/PUT/PATCH/DELETE /restconf/data/<resource>        | writes (controller certificate only)   |
| GET  /restconf/streams/etsi-qkd-sdn-node/json          | notifications as SSE (RFC 8040 §6.3)   |

Every failure goes through one handler that answers with ``ietf-restconf:errors``.
The client certificate's subject is read from the ASGI scope state key
:data:`PEER_SUBJECT_STATE_KEY` (set per connection by :mod:`keyplane.api.etsi015.server`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyplane.api.etsi015.agent import SdnAgent
from keyplane.api.etsi015.datastore import Content
from keyplane.api.etsi015.errors import ERROR_MEDIA_TYPE, RestconfError
from keyplane.api.etsi015.model import MODULE, YANG_DIR

__all__ = [
    "PEER_SUBJECT_STATE_KEY",
    "STREAM_NAME",
    "YANG_DATA_JSON",
    "create_agent_app",
    "restconf_error_handlers",
]

logger = logging.getLogger(__name__)

YANG_DATA_JSON = "application/yang-data+json"
PEER_SUBJECT_STATE_KEY = "keyplane.peer_subject"
"""ASGI ``scope["state"]`` key holding the RFC 4514 subject of the TLS client certificate."""
STREAM_NAME = MODULE
YANG_LIBRARY_VERSION = "2016-06-21"
_JSON_TYPES = ("application/yang-data+json", "application/json")
_WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class YangJSONResponse(JSONResponse):
    """JSON with the RESTCONF media type."""

    media_type = YANG_DATA_JSON


def _error_response(exc: RestconfError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, media_type=ERROR_MEDIA_TYPE)


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


def _unqualify_top(body: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix(f"{MODULE}:"): v for k, v in body.items()}


def create_agent_app(agent: SdnAgent) -> FastAPI:
    """The RESTCONF application of ``agent`` (serve it with :func:`serve_agent`)."""
    app = FastAPI(title=f"keyplane SDN agent {agent.node_id} (ETSI GS QKD 015)",
                  docs_url=None, redoc_url=None, openapi_url=None)
    restconf_error_handlers(app)
    yang_library = json.loads((YANG_DIR / "yang-library.json").read_text(encoding="utf-8"))

    def answer(body: dict[str, Any], status: int = 200) -> Response:
        if agent.settings.unqualified_top_member:
            body = _unqualify_top(body)
        return YangJSONResponse(body, status_code=status)

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
        if path.startswith("ietf-yang-library:modules-state") and method in ("GET", "HEAD"):
            return YangJSONResponse(yang_library)
        if path.startswith("ietf-restconf-monitoring:restconf-state") and method == "GET":
            base = str(request.base_url).rstrip("/")
            return YangJSONResponse({"ietf-restconf-monitoring:restconf-state": {"streams": {
                "stream": [{"name": STREAM_NAME, "description": "ETSI GS QKD 015 notifications",
                            "access": [{"encoding": "json", "location":
                                        f"{base}/restconf/streams/{STREAM_NAME}/json"}]}]}}})
        if method in ("GET", "HEAD"):
            _check_accept(request)
            content, depth, fields = _query(request, ("content", "depth", "fields"))
            body = agent.get(path, content=content, depth=depth, fields=fields)
            if method == "HEAD":
                return Response(status_code=200, media_type=YANG_DATA_JSON)
            return answer(body)
        _query(request, ())
        if not agent.may_write(peer_subject_of(request)):
            raise RestconfError(403, "access-denied",
                                "only the SDN controller's certificate may write")
        if method == "DELETE":
            await agent.delete(path)
            return Response(status_code=204)
        body = await _json_body(request)
        if method == "POST":
            location = await agent.create(path, body)
            url = str(request.base_url).rstrip("/") + "/restconf/data/" + location
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

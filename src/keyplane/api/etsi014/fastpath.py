"""The fast path of the two hot ETSI 014 routes (enc_keys, dec_keys; GET and POST).

FastAPI resolves every request of a route through its dependency machinery: it builds a
``Request``, introspects the endpoint's parameters, validates each one through a
``TypeAdapter``, opens two exit stacks and renders the response through ``JSONResponse``.
Measured on the ETSI 014 server that costs more CPU than TLS, HTTP parsing and the key
manager's own work for a one-key request (docs/benchmarks.md).

:class:`HotRoute` wraps the ASGI app of such a route. A request in the plain, common form
(the expected method, an ``application/json`` body that the route's pydantic model accepts,
or query parameters that are exactly the route's, each once, in plain digits or key_ID
form) is parsed here once and served directly; **anything else goes, unchanged, to the
FastAPI handler**, which alone decides how unusual input reads (coercions, 400 bodies with
the parameter's location). So the fast path may only accept what FastAPI accepts and must
mean the same by it; tests/unit/api/test_etsi014_fastpath.py compares both paths.

The route's declaration (OpenAPI document, FastAPI validation for the fallback) is not
touched, and failures raised here (the server's :class:`~keyplane.api.errors.ApiRequestError`,
domain errors) reach the application's exception handlers as they do from an endpoint.

:class:`HotFront` goes one step further: it serves those requests *ahead of* the
application's middleware stack and router (six ASGI layers and a route scan per request, a
measurable share of a one-key request's CPU), calling the application's own exception
handlers for what ``serve`` raises; any request it does not take (another path, a root
path, an unusual form) goes to the whole application unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HotFront", "HotRoute", "compile_fullmatch", "json_body", "key_ids_body",
           "query_params"]

A = TypeVar("A")
M = TypeVar("M", bound=BaseModel)

MAX_FAST_BODY_BYTES = 1 << 20
"""Bodies up to this size are read here; a larger one goes to FastAPI (which reads it all)."""

_JSON_HEADERS = [(b"content-type", b"application/json")]

Parse = Callable[[Scope, bytes | None], A | None]
Serve = Callable[[Scope, A], Awaitable[bytes]]
OnError = Callable[[Scope, Receive, Send, Exception], Awaitable[None]]


def query_params(scope: Scope, names: frozenset[bytes]) -> dict[bytes, bytes] | None:
    """The query parameters, when each is one of ``names``, appears once and needs no
    decoding; None otherwise (the request then takes the FastAPI path)."""
    qs: bytes = scope.get("query_string", b"")
    out: dict[bytes, bytes] = {}
    if not qs:
        return out
    if b"%" in qs or b"+" in qs:
        return None
    for part in qs.split(b"&"):
        name, eq, value = part.partition(b"=")
        if not eq or name not in names or name in out:
            return None
        out[name] = value
    return out


def json_body(model: type[M], body: bytes | None) -> M | None:
    """``body`` validated as ``model`` straight from its JSON bytes (None: not valid)."""
    if not body:
        return None
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None


def _is_json(scope: Scope) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            return bytes(value).split(b";", 1)[0].strip().lower() == b"application/json"
    return False


class HotRoute(Generic[A]):
    """The ASGI app of one hot route: ``parse`` the request, ``serve`` it (JSON bytes of
    a 200 answer), or hand it to ``fallback`` (the route's FastAPI app) unchanged.

    Args:
        fallback: the route's own ASGI app (FastAPI's handler).
        method: the route's method; other methods (HEAD) take the fallback.
        parse: ``(scope, body or None) -> arguments``, or None for the fallback.
        serve: ``(scope, arguments) -> response body`` (raises domain errors).
        reads_body: whether the route takes a JSON body.
        on_error: answers what ``serve`` raised (None: the exception propagates, to the
            application's exception middleware).
    """

    def __init__(self, fallback: ASGIApp, method: str, parse: Parse[A], serve: Serve[A], *,
                 reads_body: bool = False, on_error: OnError | None = None) -> None:
        self.fallback = fallback
        self.method = method
        self.parse = parse
        self.serve = serve
        self.reads_body = reads_body
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != self.method:
            await self.fallback(scope, receive, send)
            return
        body: bytes | None = None
        if self.reads_body:
            if not _is_json(scope):
                await self.fallback(scope, receive, send)
                return
            read, body = await _read_body(receive)
            if body is None:
                await self.fallback(scope, _replay(read, receive), send)
                return
            args = self.parse(scope, body)
            if args is None:
                await self.fallback(scope, _replay(read, receive), send)
                return
        else:
            args = self.parse(scope, None)
            if args is None:
                await self.fallback(scope, receive, send)
                return
        try:
            payload = await self.serve(scope, args)
        except Exception as exc:
            if self.on_error is None:
                raise
            await self.on_error(scope, receive, send, exc)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload})


class HotFront:
    """Dispatch ``{prefix}/{id}/{name}`` requests of the hot routes before ``app`` runs.

    Args:
        app: the whole application (middleware and router): every request not taken here.
        prefix: the routes' common path prefix (e.g. ``/api/v1/keys``).
        routes: ``(name, method) -> (path parameter name, parse, serve, reads_body)``.
        on_error: answers what a route's ``serve`` raised (the application's handlers).
    """

    def __init__(self, app: ASGIApp, prefix: str,
                 routes: dict[tuple[str, str], tuple[str, Parse[Any], Serve[Any], bool]],
                 on_error: OnError) -> None:
        self.app = app
        self.prefix = prefix + "/"
        self.routes = {key: (param, HotRoute(app, key[1], parse, serve, reads_body=body,
                                             on_error=on_error))
                       for key, (param, parse, serve, body) in routes.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self._match(scope)
        if hot is None:
            await self.app(scope, receive, send)
            return
        param, value, route = hot
        scope["path_params"] = {param: value}
        await route(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[str, str, HotRoute[Any]] | None:
        """The hot route of a plain ``{prefix}/{id}/{name}`` request (what the router would
        match with a ``str`` path parameter), else None."""
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not path.startswith(self.prefix):
            return None
        value, sep, name = path[len(self.prefix):].partition("/")
        if not sep or not value or "/" in name:
            return None
        spec = self.routes.get((name, scope["method"]))
        return None if spec is None else (spec[0], value, spec[1])


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Read the request body: ``(messages read, body)``; body None when the client left
    or the body exceeds :data:`MAX_FAST_BODY_BYTES` (the messages are replayed then)."""
    read: list[Message] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return read, None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FAST_BODY_BYTES:
            return read, None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return read, b"".join(chunks)


def _replay(read: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives back the messages already read, then reads on."""
    pending = list(read)

    async def again() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()
    return again


def compile_fullmatch(pattern: str) -> Callable[[bytes], bool]:
    """A bytes matcher for a pydantic ``pattern`` written as ``^...$``: whole value only."""
    rx = re.compile(pattern.removeprefix("^").removesuffix("$").encode())
    return lambda value: rx.fullmatch(value) is not None


def key_ids_body(body: bytes | None, key_id_pattern: str
                 ) -> tuple[list[str], dict[str, Any] | None] | None:
    """The key_IDs and ``key_IDs_extension`` of a Key IDs body (ETSI 014 clause 6.4) in
    its plain form: an object of ``key_IDs`` (a non-empty list of objects holding only a
    ``key_ID``) and optionally ``key_IDs_extension`` (an object or null), every key_ID
    matching ``key_id_pattern``, checked in one regex pass over the joined ids. None for
    anything else, which then takes the model's full validation: a bulk request's body
    costs no model object per key (issue #15), and every body this accepts the model
    accepts with the same values."""
    if not body:
        return None
    try:
        # its own cache for keys only: a bulk body's 1,000 one-off ids only churn pydantic's
        # shared string cache (a third of this parse's time)
        doc = pydantic_core.from_json(body, cache_strings="keys")
    except ValueError:
        return None
    if type(doc) is not dict or not doc.keys() <= {"key_IDs", "key_IDs_extension"}:
        return None
    items, ext = doc.get("key_IDs"), doc.get("key_IDs_extension")
    if type(items) is not list or not items or (ext is not None and type(ext) is not dict):
        return None
    # checked in bulk rather than item by item (fewer Python steps per id): only a JSON
    # object is indexed by a string without TypeError, so each item is an object holding
    # "key_ID" and, its length 1, nothing else; only a str joins
    try:
        ids = [item["key_ID"] for item in items]
        joined = "".join(ids)
    except (TypeError, KeyError):
        return None
    if sum(map(len, items)) != len(items) or set(map(len, ids)) != {36}:
        return None
    return (ids, ext) if _id_run(key_id_pattern).fullmatch(joined) else None


_RUNS: dict[str, re.Pattern[str]] = {}


def _id_run(pattern: str) -> re.Pattern[str]:
    """One or more ids of ``pattern`` (``^...$``, fixed length) back to back."""
    rx = _RUNS.get(pattern)
    if rx is None:
        rx = _RUNS[pattern] = re.compile(
            f"(?:{pattern.removeprefix('^').removesuffix('$')})+")
    return rx

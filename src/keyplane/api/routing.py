"""HTTP details shared by the ETSI 004 and 014 servers: the ``Allow`` header of a 405 and
the error answers, all as ``{"message", "details"}`` (ETSI 014's Error body)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from keyplane.api.errors import ApiRequestError, error_details, map_exception
from keyplane.errors import KeyplaneError

__all__ = ["allowed_methods", "error_response", "install_error_handlers"]


def error_response(status: int, message: str, details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"message", "details"}`` (details only when there are some) with ``status``."""
    body: dict[str, Any] = {"message": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure of ``app`` with :func:`error_response`.

    The key manager's domain exceptions (and a KM call's timeout) by the table of
    :mod:`keyplane.api.errors`; the server's own :class:`ApiRequestError`; FastAPI's
    validation errors as 400 (FastAPI says 422; the ETSI standards say 400), naming the
    parameter and the rule but never echoing the input; Starlette's 404/405, a 405 with
    the ``Allow`` header of every route on the path.
    """
    @app.exception_handler(ApiRequestError)
    async def _api_error(_: Request, exc: ApiRequestError) -> JSONResponse:
        return error_response(exc.http_status, exc.message, exc.details)

    async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
        mapping = map_exception(exc)
        assert mapping is not None  # registered only for mapped types
        return error_response(mapping.http_status, mapping.message, error_details(exc))

    app.add_exception_handler(KeyplaneError, _domain_error)
    app.add_exception_handler(TimeoutError, _domain_error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"parameter": ".".join(str(p) for p in e.get("loc", ())),
                    "error": e.get("msg", "")} for e in exc.errors()]
        return error_response(400, "bad request format", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(app.router.routes, dict(request.scope))
        return error_response(exc.status_code, str(exc.detail), headers=headers)


def allowed_methods(routes: list[BaseRoute], scope: dict[str, Any]) -> str:
    """The ``Allow`` header for a 405: every method of every route matching the path.

    Starlette answers 405 with the methods of the first matching route only; enc_keys and
    dec_keys are two routes each (GET and POST), so the header must be their union
    (RFC 9110 §15.5.6).
    """
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(scope)
        if match in (Match.PARTIAL, Match.FULL):
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))

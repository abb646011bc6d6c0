"""HTTP details shared by the ETSI servers."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute, Match

__all__ = ["allowed_methods"]


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

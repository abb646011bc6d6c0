"""OpenAPI adjustments shared by the ETSI servers.

FastAPI documents a 422 response with its own validation-error schema on every route
with parameters; the ETSI servers answer those cases with 400 and the standard's error
body instead, so the 422 entries and their schemas are removed from the document.

The committed documents under docs/api/ are written by :mod:`keyplane.api.openapi_docs`
(kept apart: it imports the apps, which import this module).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["drop_validation_responses"]


def drop_validation_responses(app: FastAPI,
                              patch: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Make ``app.openapi()`` omit FastAPI's 422 responses (the servers answer 400).

    ``patch``, when given, edits the document further (e.g. documents configured limits).
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            if patch is not None:
                patch(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

"""OpenAPI adjustments shared by the ETSI servers.

FastAPI documents a 422 response with its own validation-error schema on every route
with parameters; the ETSI servers answer those cases with 400 and the standard's error
body instead, so the 422 entries and their schemas are removed from the document.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["drop_validation_responses", "openapi_documents", "write_openapi_docs"]


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


def openapi_documents() -> dict[str, dict[str, Any]]:
    """The OpenAPI documents every KM serves, by file name under docs/api/."""
    from keyplane.api.etsi004.app import create_etsi004_app
    from keyplane.api.etsi014.app import create_etsi014_app

    # The documents do not depend on the key manager or the node; any will do.
    km: Any = None
    return {"openapi-etsi014.json": create_etsi014_app(km, kme_id="kme").openapi(),
            "openapi-etsi004.json": create_etsi004_app(km, kme_id="kme").openapi()}


def render(document: dict[str, Any]) -> str:
    """The committed text form of an OpenAPI document."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_openapi_docs(directory: str | Path) -> list[Path]:
    """Write :func:`openapi_documents` to ``directory`` (``docs/api`` in the repository)."""
    out = []
    for name, doc in openapi_documents().items():
        path = Path(directory) / name
        path.write_text(render(doc))
        out.append(path)
    return out


if __name__ == "__main__":  # python -m keyplane.api.openapi docs/api
    for written in write_openapi_docs(sys.argv[1] if len(sys.argv) > 1 else "docs/api"):
        print(written)

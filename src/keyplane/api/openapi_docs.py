"""The OpenAPI documents every KM serves, as committed under docs/api/.

Regenerate with ``PYTHONPATH=src python -m keyplane.api.openapi_docs docs/api``
(tests/unit/api/test_openapi.py fails when the committed files drift).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from keyplane.api.etsi004.app import create_etsi004_app
from keyplane.api.etsi014.app import create_etsi014_app

__all__ = ["openapi_documents", "render", "write_openapi_docs"]


def openapi_documents() -> dict[str, dict[str, Any]]:
    """The OpenAPI documents every KM serves, by file name under docs/api/."""
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


if __name__ == "__main__":  # python -m keyplane.api.openapi_docs docs/api
    for written in write_openapi_docs(sys.argv[1] if len(sys.argv) > 1 else "docs/api"):
        print(written)

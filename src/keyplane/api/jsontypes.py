"""JSON Schema's ``integer`` as a pydantic type, for request bodies.

Pydantic's lax ``int`` also takes ``true`` and ``"5"``, which JSON Schema calls not
integers; its strict ``int`` refuses ``5.0``, which JSON Schema calls an integer. The ETSI
bodies are JSON, so they follow JSON Schema: whole numbers only, of any JSON number form.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["JSON_INTEGER", "JsonInt"]


def _json_integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a JSON integer")
        return int(value)
    return value


JSON_INTEGER = BeforeValidator(_json_integer)
"""Put it *after* the bounds, ``Annotated[int, Field(ge=0), JSON_INTEGER]``, so that the
bounds appear in the JSON Schema as ``minimum``/``maximum``."""
JsonInt = Annotated[int, JSON_INTEGER]

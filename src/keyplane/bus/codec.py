"""Encoding of bus messages: versioned pydantic models as JSON, never pickles.

Wire form (UTF-8 JSON)::

    {"kind": "session.config", "v": 1, "body": {...model fields...}}

Every message class subclasses :class:`Message` and declares ``KIND`` and ``VERSION``;
defining the class registers it. A receiver refuses unknown kinds and versions newer than
the one it knows, with :class:`~keyplane.errors.MessageDecodeError`.

Speed (every delivery of the embedded bus goes through here too): the body is written by
pydantic's serializer straight to JSON bytes and the envelope around it is fixed text, so
encoding builds no intermediate dicts. Decoding takes a fast path for envelopes in exactly
that form (the body is validated straight from its JSON bytes); anything else, or a body
the fast path refuses, goes through the general parser, which alone decides what is
accepted and how errors read.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError

from keyplane.errors import MessageDecodeError

__all__ = ["Message", "decode", "encode", "registry"]

_REGISTRY: dict[str, type[Message]] = {}


class Message(BaseModel):
    """Base of every model that crosses the bus."""

    # non-finite floats as JSON's usual Infinity/NaN constants (not null), as json.dumps
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.__dict__.get("KIND", "")
        if kind:
            other = _REGISTRY.get(kind)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise TypeError(f"message kind {kind!r} defined twice ({other} and {cls})")
            _REGISTRY[kind] = cls


def registry() -> dict[str, type[Message]]:
    """A copy of the kind → class table."""
    return dict(_REGISTRY)


def encode(msg: Message) -> bytes:
    """Serialize a message to its JSON envelope."""
    if not msg.KIND:
        raise TypeError(f"{type(msg).__name__} has no KIND and cannot go on the bus")
    head = _HEADS.get((msg.KIND, msg.VERSION))
    if head is None:
        head = _HEADS[(msg.KIND, msg.VERSION)] = (
            f'{{"kind":{json.dumps(msg.KIND)},"v":{int(msg.VERSION)},"body":'.encode())
    return head + msg.model_dump_json().encode() + b"}"


_HEADS: dict[tuple[str, int], bytes] = {}
_FAST_HEAD = re.compile(rb'\{"kind":"([A-Za-z0-9_.\-]+)","v":([1-9][0-9]{0,3}),"body":')


def decode(data: bytes) -> Message:
    """Parse a JSON envelope back into its message model.

    Raises:
        MessageDecodeError: not JSON, not an envelope, unknown kind, newer version than
            supported, or a body that does not validate.
    """
    m = _FAST_HEAD.match(data)
    if m is not None and data.endswith(b"}"):
        cls = _REGISTRY.get(m.group(1).decode())
        if cls is not None and int(m.group(2)) <= cls.VERSION:
            try:
                return cls.model_validate_json(data[m.end():-1])
            except ValidationError:
                pass  # the general path below decides (and words the error)
    try:
        env = pydantic_core.from_json(data)
    except ValueError as exc:
        raise MessageDecodeError("bus message is not JSON") from exc
    if not isinstance(env, dict) or not {"kind", "v", "body"} <= env.keys():
        raise MessageDecodeError("bus message is not a keyplane envelope")
    kind, version = env["kind"], env["v"]
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageDecodeError(f"unknown message kind {kind!r}")
    if not isinstance(version, int) or version > cls.VERSION or version < 1:
        raise MessageDecodeError(
            f"{kind} version {version!r} not supported (this side knows up to {cls.VERSION})"
        )
    try:
        return cls.model_validate(env["body"])
    except ValidationError as exc:
        raise MessageDecodeError(f"invalid {kind} body: {exc.error_count()} error(s)") from exc

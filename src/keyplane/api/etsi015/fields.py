"""RFC 8040 §4.8.3 ``fields``: parse a selection expression, check it against the schema,
and tell what it selects of a child node (used by :func:`keyplane.api.etsi015.tree.read_resource`).
"""

from __future__ import annotations

import re
from typing import Any

from yangson.schemanode import InternalNode, SchemaNode

from keyplane.api.etsi015.errors import RestconfError
from keyplane.api.etsi015.model import MODULE

__all__ = ["UNSELECTED", "Fields", "check_fields", "parse_fields", "picked"]


def _member_child(schema: SchemaNode, raw_name: str) -> SchemaNode | None:
    """The schema child a node identifier (``name`` or ``module:name``) names; a bare name
    is in the parent's module (at the top level ``MODULE``)."""
    if not isinstance(schema, InternalNode):
        return None
    prefix, sep, local = raw_name.partition(":")
    if sep:
        return schema.get_child(local, prefix)
    return schema.get_child(raw_name, schema.ns or MODULE)


Fields = dict[str, "Fields | None"]
"""A parsed ``fields`` expression: node identifier (``name`` or ``module:name``) -> the
selection below it (None: the whole subtree)."""

UNSELECTED: Any = object()
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*(?::[A-Za-z_][A-Za-z0-9_.-]*)?")


def parse_fields(text: str) -> Fields:
    """Parse an RFC 8040 §4.8.3 ``fields`` expression.

    ``a/b(c;d/e);f`` selects ``a/b/c``, ``a/b/d/e`` and ``f``. Paths that share a prefix
    are merged; a path that selects a node whole wins over one that selects part of it.

    Raises:
        RestconfError: 400 on a malformed expression.
    """
    def bad(why: str) -> RestconfError:
        return RestconfError(400, "invalid-value", f"fields: {why}")

    def merge(into: Fields, name: str, sub: Fields | None) -> None:
        if name in into and (into[name] is None or sub is None):
            into[name] = None
        elif name in into:
            target = into[name]
            assert target is not None and sub is not None
            for k, v in sub.items():
                merge(target, k, v)
        else:
            into[name] = sub

    def expr(i: int) -> tuple[Fields, int]:
        out: Fields = {}
        while True:
            names: list[str] = []
            while True:
                m = _FIELD_NAME.match(text, i)
                if m is None:
                    raise bad(f"a node identifier expected at offset {i}")
                names.append(m.group())
                i = m.end()
                if i < len(text) and text[i] == "/":
                    i += 1
                    continue
                break
            sub: Fields | None = None
            if i < len(text) and text[i] == "(":
                sub, i = expr(i + 1)
                if i >= len(text) or text[i] != ")":
                    raise bad(f"')' expected at offset {i}")
                i += 1
            for name in reversed(names[1:]):
                sub = {name: sub}
            merge(out, names[0], sub)
            if i < len(text) and text[i] == ";":
                i += 1
                continue
            return out, i

    if not text:
        raise bad("empty expression")
    fields, end = expr(0)
    if end != len(text):
        raise bad(f"unexpected {text[end]!r} at offset {end}")
    return fields


def check_fields(fields: Fields, schema: SchemaNode) -> Fields:
    """``fields`` if every identifier names a data node under ``schema``, else a 400."""
    for name, sub in fields.items():
        child = _member_child(schema, name)
        if child is None:
            raise RestconfError(400, "invalid-value",
                                f"fields: {name!r} names no data node here")
        if sub is not None:
            check_fields(sub, child)
    return fields


def picked(fields: Fields, child: SchemaNode) -> Any:
    """What ``fields`` selects of ``child``: a :data:`Fields` (None: all of it), or
    :data:`UNSELECTED`."""
    for name, sub in fields.items():
        prefix, sep, local = name.partition(":")
        if (local if sep else name) == child.name and (not sep or prefix == child.ns):
            return sub
    return UNSELECTED

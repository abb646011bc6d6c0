"""A generic RESTCONF (RFC 8040) engine over one RFC 7951 JSON tree of the node model.

No datastore state lives here: every function works on a raw tree it is given (a
``{"etsi-qkd-sdn-node:qkd_node": {...}}`` document, or a candidate copy of one) and the loaded
YANG schema (:func:`keyplane.api.etsi015.model.data_model`). The datastore
(:mod:`keyplane.api.etsi015.datastore`) decides which tree a request runs on, validates the
result and commits it; this module only knows RESTCONF:

* **paths** (RFC 8040 §3.5.3): :func:`route` parses a data resource path into yangson
  selectors, with key and leaf-list values parsed by their YANG types; :func:`locate` finds
  the instance it names;
* **reads** (§4.3, §4.8): :func:`read_resource` with ``content``, ``depth`` and ``fields``;
* **writes** on a candidate tree: :func:`post` (§4.4.1, plus TeraFlowSDN's form that posts
  the target itself), :func:`put` (§4.5), :func:`patch` (plain merge, §4.6.1) and
  :func:`delete` (§4.7). They raise :class:`~keyplane.api.etsi015.errors.RestconfError` on a
  request that cannot apply (and the caller then drops the candidate), never validate.

RFC 7951 member names: qualified at the top level and wherever the module changes (an
augment such as ``keyplane-qkd-provenance:provenance``), bare otherwise; request bodies may
qualify this module's names or not.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

from yangson.exceptions import YangsonException
from yangson.instance import EntryKeys, EntryValue, MemberName
from yangson.schemanode import InternalNode, LeafListNode, ListNode, SchemaNode

from keyplane.api.etsi015.errors import RestconfError
from keyplane.api.etsi015.fields import UNSELECTED, Fields, check_fields, parse_fields, picked
from keyplane.api.etsi015.model import MODULE, ROOT_MEMBER, data_model

__all__ = [
    "MAX_DEPTH",
    "Content",
    "Fields",
    "delete",
    "error_path",
    "is_state",
    "locate",
    "member_child",
    "member_name",
    "parse_fields",
    "patch",
    "post",
    "put",
    "read_resource",
    "root_schema",
    "route",
    "schema_of",
    "unqualify",
]

Content = Literal["all", "config", "nonconfig"]
"""RFC 8040 ``content`` query parameter."""
MAX_DEPTH = 65535
"""Largest RFC 8040 ``depth``."""


# ---------------------------------------------------------------------- writes


def post(root: dict[str, Any], steps: Sequence[Any], path: str, body: Any) -> str:
    """RFC 8040 POST on the tree ``root``: create the child resource(s) in ``body``.

    Accepts the strict form (the child, e.g. ``{"etsi-qkd-sdn-node:qkd_link": [...]}``
    posted to ``…/qkd_links``) and TeraFlowSDN's form (the target itself, e.g.
    ``{"qkd_links": {"qkd_link": [...]}}`` posted to ``…/qkd_links``).

    Returns:
        The path of the created resource (the target's when several were created).

    Raises:
        RestconfError: 400 malformed body, 404 unknown target, 405 read-only target,
            409 data-exists.
    """
    if not steps:
        raise RestconfError(409, "data-exists", "the qkd_node container always exists",
                            error_type="application", path=error_path(ROOT_MEMBER))
    holder, slot, schema = locate(root, steps, path, config=True)
    target = holder[slot]
    whole_list = isinstance(schema, ListNode) and not isinstance(holder, list)
    if not isinstance(schema, InternalNode) or whole_list:
        raise RestconfError(405, "operation-not-supported",
                            "POST needs a container or list entry as target",
                            path=error_path(path))
    name, value = _single_member(body)
    created: list[str] = []
    child = member_child(schema, name)
    if child is not None and name != schema.name:
        created.append(_create_child(target, schema, child, value, path))
    elif name == schema.name and isinstance(value, dict) and not isinstance(holder, list):
        for member, member_value in value.items():
            sub = member_child(schema, unqualify(member))
            if sub is None:
                raise RestconfError(400, "unknown-element",
                                    f"{member!r} is not a child of {schema.name}",
                                    path=error_path(path))
            created.append(_create_child(target, schema, sub, member_value, path))
    else:
        raise RestconfError(400, "unknown-element", f"{name!r} is not a child of {schema.name}",
                            path=error_path(path))
    return created[0] if len(created) == 1 else path


def put(root: dict[str, Any], steps: Sequence[Any], path: str, body: Any) -> bool:
    """RFC 8040 PUT on the tree ``root``: create or replace the target resource.

    Returns:
        True if the resource was created.

    Raises:
        RestconfError: 400 malformed body or key mismatch, 404 missing parent, 405 read-only
            target or the datastore root.
    """
    if not steps:
        raise RestconfError(405, "operation-not-supported",
                            "PUT on the datastore root is not supported; PUT the qkd_node")
    schema = schema_of(steps)
    value = _body_for(schema, steps, body, path)
    try:
        holder, slot, _ = locate(root, steps, path, config=True)
    except RestconfError as exc:
        if exc.status != 404:
            raise
        _insert(root, steps, value, path)
        return True
    holder[slot] = value
    return False


def patch(root: dict[str, Any], steps: Sequence[Any], path: str, body: Any) -> None:
    """RFC 8040 plain PATCH on the tree ``root``: merge ``body`` into the existing target.

    Raises:
        RestconfError: 400 malformed body, 404 target missing, 405 read-only.
    """
    if not steps:
        name, value = _single_member(body)
        if name != "qkd_node" or not isinstance(value, dict):
            raise RestconfError(400, "unknown-element", f"{name!r} is not a top-level node")
        _merge(root[ROOT_MEMBER], value, root_schema())
        return
    schema = schema_of(steps)
    value = _body_for(schema, steps, body, path)
    holder, slot, _ = locate(root, steps, path, config=True)
    if isinstance(holder[slot], dict) and isinstance(value, dict):
        _merge(holder[slot], value, schema)
    elif isinstance(schema, LeafListNode) and not isinstance(holder, list):
        merged = list(holder[slot])
        merged += [v for v in value if v not in merged]
        holder[slot] = merged
    else:
        holder[slot] = value


def delete(root: dict[str, Any], steps: Sequence[Any], path: str) -> None:
    """RFC 8040 DELETE of the target resource in the tree ``root``.

    Raises:
        RestconfError: 404 target missing, 405 read-only target or the datastore root.
    """
    if not steps:
        raise RestconfError(405, "operation-not-supported", "cannot delete the datastore")
    holder, slot, _ = locate(root, steps, path, config=True)
    del holder[slot]
    if isinstance(holder, list) and not holder:
        parent, pslot, _ = locate(root, steps[:-1], path, config=True)
        del parent[pslot]


def _insert(root: dict[str, Any], steps: Sequence[Any], value: Any, path: str
            ) -> None:
    """Create a missing resource under its existing parent (PUT that creates)."""
    last = steps[-1]
    if isinstance(last, EntryKeys | EntryValue):
        parent, pslot, _ = locate(root, steps[:-2], path, config=True)
        container = parent[pslot]
        container.setdefault(_member_of(steps[:-1]), []).append(value)
    else:
        parent, pslot, _ = locate(root, steps[:-1], path, config=True)
        parent[pslot][_member_of(steps)] = value

def _body_for(schema: SchemaNode, steps: Sequence[Any], body: Any, path: str
              ) -> Any:
    """The value a PUT/PATCH body carries for the target (checks name and keys).

    Raises:
        RestconfError: 405 the target is state data; 400 a body that does not match.
    """
    if is_state(schema):
        raise RestconfError(405, "operation-not-supported",
                            f"{schema.name} is state data (config false)",
                            path=error_path(path))
    name, value = _single_member(body)
    if name != _target_member(schema):
        raise RestconfError(400, "unknown-element",
                            f"body member {name!r} does not match the target {schema.name!r}",
                            path=error_path(path))
    last = steps[-1]
    if isinstance(last, EntryKeys | EntryValue):
        if not isinstance(value, list) or len(value) != 1:
            raise RestconfError(400, "invalid-value",
                                "a list entry body must be an array of exactly one entry",
                                path=error_path(path))
        value = value[0]
        if isinstance(last, EntryKeys):
            if not isinstance(value, dict):
                raise RestconfError(400, "invalid-value", "a list entry must be an object",
                                    path=error_path(path))
            for (key, _ns), uri_value in last.keys.items():
                if key in value and value[key] != uri_value:
                    raise RestconfError(400, "invalid-value",
                                        f"key {key} in the body differs from the URI",
                                        path=error_path(path))
                value.setdefault(key, uri_value)
        elif value != last.value:
            raise RestconfError(400, "invalid-value",
                                "leaf-list value in the body differs from the URI",
                                path=error_path(path))
    return value

def _create_child(target: dict[str, Any], parent: SchemaNode, child: SchemaNode,
                  value: Any, path: str) -> str:
    """Add one POSTed child to ``target``; returns the created resource's path."""
    member = member_name(child, parent)
    if is_state(child):
        raise RestconfError(405, "operation-not-supported",
                            f"{child.name} is state data (config false)",
                            path=error_path(path))
    base = path.strip("/")
    if isinstance(child, ListNode | LeafListNode):
        entries = value if isinstance(value, list) else [value]
        if not entries:
            raise RestconfError(400, "invalid-value", f"no {child.name} entry to create",
                                path=error_path(path))
        existing = target.setdefault(member, [])
        location = f"{base}/{member}"
        for entry in entries:
            if isinstance(child, ListNode):
                if not isinstance(entry, dict):
                    raise RestconfError(400, "invalid-value",
                                        f"a {child.name} entry must be an object",
                                        path=error_path(path))
                keys = [k for k, _ in child.keys]
                missing = [k for k in keys if k not in entry]
                if missing:
                    raise RestconfError(400, "missing-element",
                                        f"{child.name} entry lacks key {missing[0]}",
                                        path=error_path(path))
                same = [e for e in existing if all(e.get(k) == entry[k] for k in keys)]
                key_text = ",".join(str(entry[k]) for k in keys)
            else:
                same = [e for e in existing if e == entry]
                key_text = str(entry)
            if same:
                raise RestconfError(409, "data-exists",
                                    f"{child.name}={key_text} already exists",
                                    error_type="application",
                                    path=error_path(f"{location}={key_text}"))
            existing.append(entry)
            location = f"{base}/{member}={key_text}"
        return location
    if member in target:
        raise RestconfError(409, "data-exists", f"{child.name} already exists",
                            error_type="application",
                            path=error_path(f"{base}/{member}"))
    target[member] = value
    return f"{base}/{member}"


# ---------------------------------------------------------------------- helpers


# ---------------------------------------------------------------------- paths and reads


def root_schema() -> SchemaNode:
    node = data_model().schema.get_child("qkd_node", MODULE)
    assert node is not None
    return node


def route(path: str) -> list[Any]:
    """Parse a RESTCONF data resource path into yangson selectors.

    Raises:
        RestconfError: 404 an unknown schema node, 400 a malformed path or key.
    """
    path = path.strip("/")
    if not path:
        return []
    try:
        route = data_model().parse_resource_id("/" + path)
    except YangsonException as exc:
        kind = type(exc).__name__
        if kind == "NonexistentSchemaNode":
            raise RestconfError(404, "invalid-value", f"unknown resource: {exc}",
                                path=error_path(path)) from exc
        raise RestconfError(400, "invalid-value", f"malformed resource path: {exc}",
                            path=error_path(path)) from exc
    except ValueError as exc:
        raise RestconfError(400, "invalid-value", f"malformed resource path: {exc}",
                            path=error_path(path)) from exc
    return _cook_keys(list(route), path)


def _cook_keys(steps: list[Any], path: str) -> list[Any]:
    """Parse key and leaf-list values of the URI with their YANG types (``"2"`` → ``2``).

    Raises:
        RestconfError: 400 a value that is not of the key's type.
    """
    schema: SchemaNode | None = data_model().schema
    out: list[Any] = []
    for step in steps:
        if isinstance(step, MemberName):
            assert isinstance(schema, InternalNode)
            schema = _child(schema, step.name, step.namespace)
            out.append(step)
        elif isinstance(step, EntryKeys) and isinstance(schema, ListNode):
            keys: dict[Any, Any] = {}
            for (name, ns), text in step.keys.items():
                leaf = schema.get_child(name, ns)
                value = leaf.type.parse_value(text) if leaf is not None else None
                if value is None:
                    raise RestconfError(400, "invalid-value",
                                        f"{text!r} is not a valid {name}",
                                        path=error_path(path))
                keys[(name, ns)] = value
            out.append(EntryKeys(keys))
        elif isinstance(step, EntryValue) and isinstance(schema, LeafListNode):
            value = schema.type.parse_value(step.value)
            if value is None:
                raise RestconfError(400, "invalid-value",
                                    f"{step.value!r} is not a valid {schema.name}",
                                    path=error_path(path))
            out.append(EntryValue(value))
        else:
            out.append(step)
    return out

def schema_of(steps: Sequence[Any]) -> SchemaNode:
    schema: SchemaNode | None = data_model().schema
    for step in steps:
        if isinstance(step, MemberName):
            assert isinstance(schema, InternalNode)
            schema = _child(schema, step.name, step.namespace)
    assert schema is not None
    return schema

def locate(root: dict[str, Any], steps: Sequence[Any], path: str, *,
            config: bool = False) -> tuple[Any, Any, SchemaNode]:
    """(holder, slot, schema node) of the resource ``steps`` names in ``root``.

    Raises:
        RestconfError: 404 the instance does not exist; 405 when ``config`` and the
            resource is state data (``config false``).
    """
    holder: Any = None
    slot: Any = None
    current: Any = root
    schema: SchemaNode = data_model().schema
    for step in steps:
        if isinstance(step, MemberName):
            child = _child(schema, step.name, step.namespace)
            assert child is not None
            key = member_name(child, schema)
            schema = child
            if not isinstance(current, dict) or key not in current:
                break
            holder, slot, current = current, key, current[key]
        elif isinstance(step, EntryKeys | EntryValue):
            index = _entry_index(current, step)
            if index is None:
                break
            holder, slot, current = current, index, current[index]
        else:
            raise RestconfError(400, "invalid-value", "unsupported path selector",
                                path=error_path(path))
    else:
        if config and is_state(schema):
            raise RestconfError(405, "operation-not-supported",
                                f"{schema.name} is state data (config false)",
                                path=error_path(path))
        return holder, slot, schema
    if config and is_state(schema_of(steps)):
        raise RestconfError(405, "operation-not-supported",
                            f"{schema_of(steps).name} is state data (config false)",
                            path=error_path(path))
    raise RestconfError(404, "invalid-value", "the target resource does not exist",
                        path=error_path(path))


def read_resource(document: dict[str, Any], path: str, *, content: Content = "all",
                  depth: int | None = None, fields: str | None = None) -> dict[str, Any]:
    """RFC 8040 GET of ``path`` in a ``{"etsi-qkd-sdn-node:qkd_node": …}`` document.

    Args:
        content, depth, fields: the RFC 8040 query parameters (§4.8.1, §4.8.2, §4.8.3);
            ``fields`` paths are relative to the target resource.

    Returns:
        ``{"<module>:<name>": value}`` (a one-entry array for a list or leaf-list entry).

    Raises:
        RestconfError: 400 a malformed path, key, depth or fields expression (or one naming
            no data node under the target); 404 an unknown resource.
    """
    if depth is not None and not 1 <= depth <= MAX_DEPTH:
        raise RestconfError(400, "invalid-value", f"depth must be 1..{MAX_DEPTH}")
    steps = route(path)
    if not steps:
        schema: SchemaNode = root_schema()
        selection = None if fields is None else check_fields(parse_fields(fields), schema)
        shaped = _shape(document.get(ROOT_MEMBER, {}), schema, content, depth, fields=selection)
        return {ROOT_MEMBER: shaped if shaped is not _OMIT else {}}
    holder, slot, schema = locate(document, steps, path)
    value = holder[slot]
    selection = None if fields is None else check_fields(parse_fields(fields), schema)
    shaped = _shape(value, schema, content, depth, entry=isinstance(holder, list),
                    fields=selection)
    if shaped is _OMIT:
        raise RestconfError(404, "invalid-value",
                            f"no {content} data at this resource", path=error_path(path))
    name = f"{schema.ns}:{schema.name}"
    return {name: [shaped] if isinstance(holder, list) else shaped}

_OMIT: Any = object()


def is_state(schema: SchemaNode) -> bool:
    return bool(schema.content_type().name == "nonconfig")


def _child(schema: SchemaNode | None, name: str, ns: str | None = None) -> SchemaNode | None:
    """The schema child ``name`` of module ``ns``; ``None``: the parent's module (RFC 7951
    member names and RFC 8040 path segments inherit it), at the top level ``MODULE``."""
    if not isinstance(schema, InternalNode):
        return None
    return schema.get_child(name, ns or schema.ns or MODULE)


def member_child(schema: SchemaNode, raw_name: str) -> SchemaNode | None:
    """The schema child an RFC 7951 member name (``name`` or ``module:name``) names."""
    prefix, sep, local = raw_name.partition(":")
    return _child(schema, local, prefix) if sep else _child(schema, raw_name)


def member_name(child: SchemaNode, parent: SchemaNode) -> str:
    """RFC 7951 member name of ``child`` under ``parent``: qualified where the module
    changes (the top level, and augments such as ``keyplane-qkd-provenance:provenance``)."""
    return child.name if child.ns == parent.ns else f"{child.ns}:{child.name}"


def _member_of(steps: Sequence[Any]) -> str:
    """RFC 7951 member name of the node the last :class:`MemberName` of ``steps`` selects."""
    names = [i for i, step in enumerate(steps) if isinstance(step, MemberName)]
    return member_name(schema_of(steps[:names[-1] + 1]), schema_of(steps[:names[-1]]))


def _target_member(schema: SchemaNode) -> str:
    """The member name a PUT/PATCH body must use for ``schema`` (this module's unqualified,
    as :func:`_unqualify` leaves it; any other module's qualified)."""
    return schema.name if schema.ns == MODULE else f"{schema.ns}:{schema.name}"


def unqualify(name: str) -> str:
    """Strip this module's prefix (RFC 7951 qualified names); keep others for the error."""
    prefix, sep, local = name.partition(":")
    if sep and prefix == MODULE:
        return local
    return name


def _single_member(body: Any) -> tuple[str, Any]:
    """The one member of a RESTCONF request body (unqualified if of this module).

    Raises:
        RestconfError: 400 not one member, or a module the data model does not have.
    """
    if not isinstance(body, dict) or len(body) != 1:
        raise RestconfError(400, "malformed-message",
                            "the body must be a JSON object with exactly one member")
    (name, value), = body.items()
    local = unqualify(name)
    prefix, sep, _ = local.partition(":")
    if sep and prefix not in _known_modules():
        raise RestconfError(400, "unknown-element", f"unknown module in member {name!r}")
    return local, value


@functools.cache
def _known_modules() -> frozenset[str]:
    """Names of the modules in the YANG library (the prefixes a member name may carry)."""
    return frozenset(name for name, _rev in data_model().schema_data.modules)


def _entry_index(current: Any, step: EntryKeys | EntryValue) -> int | None:
    if not isinstance(current, list):
        return None
    for i, entry in enumerate(current):
        if isinstance(step, EntryValue):
            if entry == step.value:
                return i
        elif isinstance(entry, dict) and all(entry.get(k) == v
                                             for (k, _ns), v in step.keys.items()):
            return i
    return None


def _merge(old: dict[str, Any], new: dict[str, Any], schema: SchemaNode) -> None:
    """RFC 8040 merge of ``new`` into ``old`` (lists merged by key, leaf-lists by value)."""
    for raw_name, value in new.items():
        name = unqualify(raw_name)
        child = member_child(schema, name)
        if child is None or name not in old:
            old[name] = value
        elif isinstance(child, ListNode) and isinstance(value, list):
            keys = [k for k, _ in child.keys]
            for entry in value:
                match = next((e for e in old[name] if isinstance(entry, dict)
                              and all(e.get(k) == entry.get(k) for k in keys)), None)
                if match is None:
                    old[name].append(entry)
                else:
                    _merge(match, entry, child)
        elif isinstance(child, LeafListNode) and isinstance(value, list):
            old[name] = old[name] + [v for v in value if v not in old[name]]
        elif isinstance(value, dict) and isinstance(old[name], dict):
            _merge(old[name], value, child)
        else:
            old[name] = value


def _shape(value: Any, schema: SchemaNode, content: Content, depth: int | None, *,
           entry: bool = False, fields: Fields | None = None) -> Any:
    """Apply the RFC 8040 ``content``, ``depth`` and ``fields`` query parameters to a raw
    value (``fields``: the checked selection of :func:`parse_fields`; None selects all).

    ``depth`` counts the target as level 1; list keys are always kept so entries stay
    identifiable. Returns ``_OMIT`` when nothing of ``value`` is selected.
    """
    if isinstance(schema, ListNode) and isinstance(value, list) and not entry:
        shaped = [_shape(v, schema, content, depth, entry=True, fields=fields) for v in value]
        shaped = [s for s in shaped if s is not _OMIT]
        return shaped if shaped else _OMIT
    if isinstance(value, dict) and isinstance(schema, InternalNode):
        keys = {k for k, _ in schema.keys} if isinstance(schema, ListNode) else set()
        out: dict[str, Any] = {}
        for name, sub in value.items():
            child = member_child(schema, name)
            if child is None:
                continue
            if name in keys:
                if content != "config" or not is_state(child):
                    out[name] = sub
                continue
            if depth is not None and depth <= 1:
                continue
            below: Fields | None = None
            if fields is not None:
                chosen = picked(fields, child)
                if chosen is UNSELECTED:
                    continue
                below = chosen
            shaped = _shape(sub, child, content, None if depth is None else depth - 1,
                            fields=below)
            if shaped is not _OMIT:
                out[name] = shaped
        selected = set(out) - keys
        pruned = depth is not None and depth <= 1
        if not selected and (fields is not None or content != "all") and not pruned \
                and set(value) - keys:
            return _OMIT
        return out
    state = is_state(schema)
    if (content == "config" and state) or (content == "nonconfig" and not state):
        return _OMIT
    return value


def error_path(path: str) -> str:
    """RFC 8040 error-path in the instance-identifier form of the resource path."""
    return "/" + path.strip("/")


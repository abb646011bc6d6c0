"""Which lists of the node model can be validated one entry at a time (issue 15.1).

A write to one ``qkd_link`` or ``qkd_app`` used to revalidate the whole datastore with
yangson, so each session's VIRT link cost time in proportion to the sessions already live
(81 % of the process while sessions were being opened). A list is **entry-local** when no
YANG constraint inside one of its entries looks outside that entry, and nothing outside
looks in. Then an entry, validated in a *skeleton* — the node's small top-level part plus
that entry alone — is valid in the whole tree exactly when it is valid in the skeleton, as
long as its key is unique (which the datastore checks by dictionary lookup).

:func:`entry_local_lists` proves this from the loaded schema instead of assuming it, so a
future model revision that adds, say, a ``leafref`` from ``backing_qkdl_id`` into
``qkd_link`` makes the datastore fall back to whole-tree validation by itself. The proof is
conservative (it may reject a list that is in fact local, never the reverse):

* no ``unique``, ``min-elements`` or ``max-elements`` on the list (they count or compare
  sibling entries);
* no ``leafref`` or ``instance-identifier`` anywhere below it (they point anywhere);
* every ``when`` and ``must`` below it is a relative XPath expression, without ``deref()``
  or ``ancestor``/sibling axes out of the entry, whose ``..`` steps (all of them counted,
  predicates included) cannot climb above the entry from the expression's context node;
* no constraint outside the top-level lists at all (from there a path can reach into any
  list).

One constraint that breaks these rules anywhere makes no list entry-local: a constraint that
leaves its own entry may land in any list, so every write is validated on the whole tree.

The datastore also counts the size of every tree it hands to yangson
(:class:`ValidationMeter`): the tests pin a write's validation work, not its wall-clock.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from yangson.datamodel import DataModel
from yangson.datatype import DataType, InstanceIdentifierType, LeafrefType, UnionType
from yangson.enumerations import Axis
from yangson.schemanode import (
    DataNode,
    InternalNode,
    ListNode,
    SchemaNode,
    SequenceNode,
    TerminalNode,
)
from yangson.xpathast import Expr, FuncDeref, Root, Step

from keyplane.api.etsi015.model import MODULE, data_model, validate_node

__all__ = ["ListPath", "ValidationMeter", "count_nodes", "entry_local_lists",
           "model_entry_local_lists"]

ListPath = tuple[str, ...]
"""RFC 7951 member names from inside ``qkd_node`` down to a list, e.g.
``("qkd_links", "qkd_link")``."""

_ESCAPING_AXES = (Axis.ancestor, Axis.ancestor_or_self, Axis.following_sibling,
                  Axis.preceding_sibling)


def _sub_exprs(expr: Any) -> Iterator[Any]:
    """Every node of an XPath syntax tree (yangson keeps them in plain attributes)."""
    pending = [expr]
    while pending:
        node = pending.pop()
        yield node
        for value in vars(node).values():
            if isinstance(value, Expr):
                pending.append(value)
            elif isinstance(value, list):
                pending.extend(v for v in value if isinstance(v, Expr))


def _climb(expr: Expr) -> int | None:
    """How many levels ``expr`` may climb from its context node (None: anywhere)."""
    ups = 0
    for node in _sub_exprs(expr):
        if isinstance(node, Root | FuncDeref):
            return None
        if isinstance(node, Step):
            if node.axis in _ESCAPING_AXES:
                return None
            if node.axis == Axis.parent:
                ups += 1
    return ups


def _types(dtype: DataType) -> Iterator[DataType]:
    yield dtype
    if isinstance(dtype, UnionType):
        for member in dtype.types:
            yield from _types(member)


@dataclass(frozen=True)
class _Constraint:
    """A constraint found in the schema: where (data depth below its list entry) and how
    far it may climb (None: unbounded)."""

    owner: ListPath | None  # the top-most list above it (None: outside every list)
    depth: int
    climb: int | None


def _constraints(node: SchemaNode, owner: ListPath | None, path: ListPath, depth: int
                 ) -> Iterator[_Constraint]:
    """Every constraint at or below ``node``; ``depth`` is ``node``'s context depth below
    the owner's entry (the entry itself is 0)."""
    # a data node is its own context node; a uses/choice/case (no data level) has its data
    # parent's, which the caller's depth already is
    here = depth
    exprs: list[Expr] = [node.when] if node.when is not None else []
    exprs += [must.expression for must in getattr(node, "must", [])]
    for expr in exprs:
        yield _Constraint(owner, here, _climb(expr))
    if isinstance(node, TerminalNode):
        for dtype in _types(node.type):
            if isinstance(dtype, LeafrefType | InstanceIdentifierType):
                yield _Constraint(owner, here, None)
    counted = isinstance(node, SequenceNode) and (node.min_elements > 0
                                                  or node.max_elements is not None)
    if counted or (isinstance(node, ListNode) and node.unique):
        # sibling instances: inside an entry (depth >= 1) they share the entry, at the
        # owner list itself they are the other entries
        yield _Constraint(owner, here, 1 if here >= 1 else None)
    if isinstance(node, InternalNode):
        for child in node.children:
            child_path = (*path, child.iname()) if isinstance(child, DataNode) else path
            child_owner = owner
            child_depth = depth + 1 if isinstance(child, DataNode) else depth
            if owner is None and isinstance(child, ListNode):
                child_owner, child_depth = child_path, 0
            yield from _constraints(child, child_owner, child_path, child_depth)


def entry_local_lists(dm: DataModel, root_member: str = f"{MODULE}:qkd_node"
                      ) -> frozenset[ListPath]:
    """The top-most lists under ``root_member`` whose entries can be validated alone: all of
    them, or none (see the module docstring for the rules).

    Raises:
        KeyError: ``root_member`` is not a data node of ``dm``.
    """
    module, _, name = root_member.partition(":")
    root = dm.schema.get_child(name, module)
    if root is None:
        raise KeyError(root_member)
    for found in _constraints(root, None, (), 0):
        if found.owner is None or found.climb is None or found.climb > found.depth:
            return frozenset()  # it may look into any list: validate whole trees
    return frozenset(_top_lists(root, ()))


def _top_lists(node: SchemaNode, path: ListPath) -> Iterator[ListPath]:
    if not isinstance(node, InternalNode):
        return
    for child in node.children:
        child_path = (*path, child.iname()) if isinstance(child, DataNode) else path
        if isinstance(child, ListNode):
            yield child_path
        else:
            yield from _top_lists(child, child_path)


@functools.cache
def model_entry_local_lists() -> frozenset[ListPath]:
    """:func:`entry_local_lists` of the loaded ETSI 015 model (computed once)."""
    return entry_local_lists(data_model())


def count_nodes(raw: Any) -> int:
    """Data nodes in an RFC 7951 tree: one per object member and per array item."""
    total = 0
    pending = [raw]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            total += len(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            total += len(value)
            pending.extend(value)
    return total


@dataclass
class ValidationMeter:
    """What a datastore has handed to yangson: validator calls and data nodes validated.

    The work of one write is the difference of two readings (tests and bench/etsi015.py).
    """

    calls: int = 0
    nodes: int = 0

    def validate(self, document: dict[str, Any], *, config_only: bool = False) -> None:
        """Count ``document`` and validate it (:func:`~keyplane.api.etsi015.model.validate_node`).

        Raises:
            YangInvalid: the document breaks the model.
        """
        self.calls += 1
        self.nodes += count_nodes(document)
        validate_node(document, config_only=config_only)

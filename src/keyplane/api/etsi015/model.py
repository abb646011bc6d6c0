"""The ETSI GS QKD 015 YANG model (``etsi-qkd-sdn-node``), loaded once, with the upstream fix.

Files: ``keyplane/api/yang/`` ships the two ETSI modules verbatim (revision 2022-01-30, GS QKD
015 V2.1.1), the IETF type modules they import, and ``yang-library.json`` (RFC 7895) listing
them, with ``etsi-qkd-node-types`` as ``implement`` so identityref values resolve, and
keyplane's own augment ``keyplane-qkd-provenance`` (:data:`PROVENANCE_MODULE`: the hybrid
policy and per-hop key provenance of each ``qkd_app``, the last hop source of each VIRT
``qkd_link``; all ``config false``; docs/api/etsi015.md).

The upstream defect and the workaround (shared/specs/README.md §1):
in ``qkd_link`` the ``when`` conditions compare the identityref leaf ``qkdl_type`` with the bare
strings ``'VIRT'`` and ``'PHYS'``. A conforming XPath evaluator never finds them true (the
leaf's value is ``etsi-qkd-node-types:PHYS``), so every ``virt_*``/``phys_*`` member would be
rejected. At load time, in memory only, :func:`patch_when_conditions` rewrites the three
conditions as ``derived-from-or-self(qkdl_type, 'etsi-qkdn-types:VIRT')`` (and ``PHYS``, and
``../qkdl_type`` for ``phys_perf``) and sets ``yang-version "1.1"`` (``derived-from-or-self`` is
a YANG 1.1 function). The files on disk stay byte-identical to the ETSI release.

Encoding rules (RFC 7951) that the helpers here implement: identityrefs are qualified with
the defining module (:func:`identity`), ``decimal64`` values are JSON strings
(:func:`decimal64`), ``yang:date-and-time`` is RFC 3339 (:func:`date_and_time`), ``uint32``
values are JSON numbers clamped to range (:func:`uint32`).

Ids: the model wants UUIDs for nodes, links and applications; keyplane ids are short names.
:func:`qkdn_id`, :func:`qkdl_id` and :func:`app_id` derive stable UUIDv5s from them, so every
node, the controller and an orchestrator compute the same UUID for the same element.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from pathlib import Path
from typing import Any

from yangson import DataModel
from yangson.enumerations import ContentType, ValidationScope
from yangson.exceptions import YangsonException
from yangson.schemadata import ModuleData, SchemaData
from yangson.schemanode import SchemaTreeNode
from yangson.statement import ModuleParser, Statement

__all__ = [
    "KEYPLANE_UUID_NAMESPACE",
    "MODULE",
    "PROVENANCE_MEMBER",
    "PROVENANCE_MODULE",
    "ROOT_MEMBER",
    "TYPES_MODULE",
    "YANG_DIR",
    "YangInvalid",
    "app_id",
    "data_model",
    "date_and_time",
    "decimal64",
    "identity",
    "identity_name",
    "patch_when_conditions",
    "qkdl_id",
    "qkdn_id",
    "uint32",
    "validate_node",
    "validate_notification",
]

MODULE = "etsi-qkd-sdn-node"
"""Module name: the RFC 7951 qualifier of the top-level member."""
TYPES_MODULE = "etsi-qkd-node-types"
"""Module that defines every identity (the qualifier of identityref values)."""
ROOT_MEMBER = f"{MODULE}:qkd_node"
PROVENANCE_MODULE = "keyplane-qkd-provenance"
"""keyplane's augment of ``qkd_app`` and VIRT ``qkd_link`` (key provenance, state only)."""
PROVENANCE_MEMBER = f"{PROVENANCE_MODULE}:provenance"
"""RFC 7951 member name of the augment's container inside ``qkd_app`` / ``qkd_link``."""
YANG_DIR = Path(__file__).resolve().parents[1] / "yang"

KEYPLANE_UUID_NAMESPACE = uuid.UUID("6f1d3c1e-5b0a-5d7e-9a43-6b65796c616e")
"""UUIDv5 namespace of keyplane element ids (fixed forever: changing it renames everything)."""

# (upstream text, replacement) pairs of the workaround; each must occur exactly once.
_WHEN_FIXES: tuple[tuple[str, str], ...] = (
    ('yang-version "1";', 'yang-version "1.1";'),
    ("when \"qkdl_type = 'VIRT'\"",
     "when \"derived-from-or-self(qkdl_type, 'etsi-qkdn-types:VIRT')\""),
    ("when \"qkdl_type = 'PHYS'\"",
     "when \"derived-from-or-self(qkdl_type, 'etsi-qkdn-types:PHYS')\""),
    ("when \"../qkdl_type = 'PHYS'\"",
     "when \"derived-from-or-self(../qkdl_type, 'etsi-qkdn-types:PHYS')\""),
)


class YangInvalid(ValueError):
    """Instance data the YANG model forbids.

    Attributes:
        tag: the NETCONF/RESTCONF error-tag that fits (``invalid-value``, ``unknown-element``,
            ``missing-element``, ``malformed-message``).
        path: the instance path yangson reported, if any.
    """

    def __init__(self, message: str, *, tag: str = "invalid-value", path: str | None = None
                 ) -> None:
        super().__init__(message)
        self.tag = tag
        self.path = path


def patch_when_conditions(text: str) -> str:
    """Apply the documented ``when`` workaround to the text of ``etsi-qkd-sdn-node.yang``.

    Raises:
        ValueError: a condition to patch is missing or ambiguous (the shipped module is not
            the 2022-01-30 release this workaround was written for).
    """
    for old, new in _WHEN_FIXES:
        count = text.count(old)
        if count != 1:
            raise ValueError(f"expected exactly one {old!r} in {MODULE}.yang, found {count}")
        text = text.replace(old, new)
    return text


class _PatchedSchemaData(SchemaData):
    """yangson's module repository, reading our directory and patching the ETSI module."""

    def _load_module(self, name: str, rev: str, mdata: ModuleData) -> Statement:
        path = YANG_DIR / f"{name}.yang"
        text = path.read_text(encoding="utf-8")
        if name == MODULE:
            text = patch_when_conditions(text)
        mdata.path = str(path)
        return ModuleParser(text, name, rev).parse()


class _PatchedDataModel(DataModel):
    """A :class:`yangson.DataModel` built on :class:`_PatchedSchemaData`.

    Mirrors ``DataModel.__init__`` (yangson 1.7), swapping in the patched module loader.
    """

    def __init__(self, yltxt: str) -> None:
        self.yang_library = json.loads(yltxt)
        self.schema_data = _PatchedSchemaData(self.yang_library, [str(YANG_DIR)])
        self.schema = SchemaTreeNode(self.schema_data)
        self.schema._ctype = ContentType.all
        self._build_schema()
        self.schema.description = "ETSI GS QKD 015 V2.1.1 (when-conditions patched in memory)"


@functools.cache
def data_model() -> DataModel:
    """The loaded model (built once per process; about 0.1 s)."""
    return _PatchedDataModel((YANG_DIR / "yang-library.json").read_text(encoding="utf-8"))


def _yang_error(exc: YangsonException) -> YangInvalid:
    """Translate a yangson exception into :class:`YangInvalid` with a RESTCONF error-tag."""
    name = type(exc).__name__
    text = str(exc)
    tag = "invalid-value"
    if name == "RawMemberError" or "member-not-allowed" in text:
        tag = "unknown-element"
    elif "missing-data" in text:
        tag = "missing-element"
    path = getattr(exc, "path", None) or getattr(getattr(exc, "instance", None), "json_pointer",
                                                  lambda: None)()
    return YangInvalid(f"{name}: {text}", tag=tag, path=str(path) if path else None)


def validate_node(document: dict[str, Any], *, config_only: bool = False) -> None:
    """Check a whole ``{"etsi-qkd-sdn-node:qkd_node": {...}}`` document against the model.

    Args:
        document: RFC 7951 JSON of the datastore.
        config_only: refuse state (``config false``) members, as for what a client writes.

    Raises:
        YangInvalid: the document breaks the model (type, pattern, unknown member, missing
            mandatory leaf, duplicate key, ``when`` condition).
    """
    dm = data_model()
    ctype = ContentType.config if config_only else ContentType.all
    try:
        dm.from_raw(document).validate(ValidationScope.all, ctype)
    except YangsonException as exc:
        raise _yang_error(exc) from exc


def validate_notification(name: str, content: dict[str, Any]) -> None:
    """Check the content of notification ``name`` (e.g. ``sdqkdn_link_down``).

    Raises:
        YangInvalid: unknown notification or content the model forbids.
    """
    dm = data_model()
    try:
        inst = dm.from_raw(content, subschema=f"{MODULE}:{name}")
        inst.validate(ValidationScope.all, ContentType.all)
    except YangsonException as exc:
        raise _yang_error(exc) from exc


def identity(name: str) -> str:
    """RFC 7951 identityref value: ``PHYS`` → ``etsi-qkd-node-types:PHYS``."""
    return f"{TYPES_MODULE}:{name}"


def identity_name(value: str) -> str:
    """The bare identity of an RFC 7951 identityref value (inverse of :func:`identity`)."""
    return value.rpartition(":")[2]


def decimal64(value: float, fraction_digits: int = 3) -> str:
    """RFC 7951 ``decimal64``: a JSON string with the type's fraction digits."""
    return f"{value:.{fraction_digits}f}"


def uint32(value: float) -> int:
    """Round and clamp to the ``uint32`` range (rates above 4.29 Gb/s saturate)."""
    return max(0, min(2**32 - 1, round(value)))


def date_and_time(wall_s: float) -> str:
    """``yang:date-and-time`` (RFC 3339, UTC, millisecond precision) of a Unix time."""
    stamp = dt.datetime.fromtimestamp(wall_s, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def qkdn_id(node_id: str) -> str:
    """Stable ``qkdn_id`` (UUIDv5) of a topology node id."""
    return str(uuid.uuid5(KEYPLANE_UUID_NAMESPACE, f"node:{node_id}"))


def qkdl_id(link_id: str) -> str:
    """Stable ``qkdl_id`` (UUIDv5) of a topology link id (PHYS) or a virtual link name."""
    return str(uuid.uuid5(KEYPLANE_UUID_NAMESPACE, f"link:{link_id}"))


def app_id(session_id: str) -> str:
    """``app_id`` of a session: its Key_stream_ID if that is a UUID, else a stable UUIDv5."""
    try:
        return str(uuid.UUID(session_id))
    except ValueError:
        return str(uuid.uuid5(KEYPLANE_UUID_NAMESPACE, f"session:{session_id}"))

"""The YANG library an SDN agent serves (RFC 8525, and RFC 7895 for older clients) and the
module files behind it (RFC 8040 §3.7), so a client can fetch every module it is told about.

The module set: the two ETSI GS QKD 015 modules and the IETF type modules they import (the
set yangson validates with, ``keyplane/api/yang/yang-library.json``), keyplane's augment
``keyplane-qkd-provenance`` unless the client asked for the plain ETSI model, and the modules
of the RESTCONF protocol itself (``ietf-yang-library``, ``ietf-restconf-monitoring`` for the
notification stream, ``ietf-datastores`` for the datastore identities). Each entry's
``location`` (RFC 8525) and ``schema`` (RFC 7895) is the URL of its file:
``<base>/restconf/yang/<name>@<revision>``, served as ``application/yang``. The files are
the published texts byte for byte (the ETSI ones as released; the ``when`` fix of
:mod:`keyplane.api.etsi015.model` is applied in memory only, see docs/api/etsi015.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from keyplane.api.etsi015.model import PROVENANCE_MODULE, YANG_DIR

__all__ = ["LIBRARY_REVISION", "YANG_MEDIA_TYPE", "YangModule", "module_text", "modules",
           "modules_state", "schema_path", "yang_library"]

LIBRARY_REVISION = "2019-01-04"
"""Revision of ``ietf-yang-library`` implemented (RFC 8525); RESTCONF's
``yang-library-version``."""
YANG_MEDIA_TYPE = "application/yang"
"""Media type of a YANG module file (RFC 6020 §14)."""
MODULE_SET = "keyplane-etsi-qkd-015"
SCHEMA = "keyplane-etsi-qkd-015"

Conformance = Literal["implement", "import"]


@dataclass(frozen=True)
class YangModule:
    """One module of the library and where its file is."""

    name: str
    revision: str
    namespace: str
    conformance: Conformance

    @property
    def file_name(self) -> str:
        """File under ``keyplane/api/yang/``."""
        return f"{self.name}.yang"


_PROTOCOL_MODULES = (
    YangModule("ietf-yang-library", LIBRARY_REVISION,
               "urn:ietf:params:xml:ns:yang:ietf-yang-library", "implement"),
    YangModule("ietf-restconf-monitoring", "2017-01-26",
               "urn:ietf:params:xml:ns:yang:ietf-restconf-monitoring", "implement"),
    YangModule("ietf-datastores", "2018-02-14",
               "urn:ietf:params:xml:ns:yang:ietf-datastores", "import"),
)


@functools.cache
def _model_modules() -> tuple[YangModule, ...]:
    raw = json.loads((YANG_DIR / "yang-library.json").read_text(encoding="utf-8"))
    return tuple(YangModule(m["name"], m["revision"], m["namespace"], m["conformance-type"])
                 for m in raw["ietf-yang-library:modules-state"]["module"])


def modules(*, augment: bool = True) -> tuple[YangModule, ...]:
    """Every module served (without keyplane's augment when ``augment`` is False)."""
    return tuple(m for m in (*_model_modules(), *_PROTOCOL_MODULES)
                 if augment or m.name != PROVENANCE_MODULE)


def schema_path(module: YangModule) -> str:
    """Path of a module's file on the agent (RFC 8040 §3.7 schema resource)."""
    return f"/restconf/yang/{module.name}@{module.revision}"


def module_text(name: str, revision: str | None = None, *, augment: bool = True) -> str | None:
    """The text of a served module (``revision`` None: the one served), or None."""
    for module in modules(augment=augment):
        if module.name == name and revision in (None, module.revision):
            return (YANG_DIR / module.file_name).read_text(encoding="utf-8")
    return None


def _content_id(mods: tuple[YangModule, ...]) -> str:
    text = ";".join(f"{m.name}@{m.revision}:{m.conformance}" for m in mods)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def yang_library(base_url: str, *, augment: bool = True) -> dict[str, Any]:
    """The ``ietf-yang-library:yang-library`` document (RFC 8525, NMDA).

    ``base_url``: the agent's scheme, host and port, e.g. ``https://10.0.0.1:8443``.
    """
    mods = modules(augment=augment)

    def entry(m: YangModule) -> dict[str, Any]:
        return {"name": m.name, "revision": m.revision, "namespace": m.namespace,
                "location": [base_url + schema_path(m)]}

    return {"ietf-yang-library:yang-library": {
        "module-set": [{
            "name": MODULE_SET,
            "module": [entry(m) for m in mods if m.conformance == "implement"],
            "import-only-module": [entry(m) for m in mods if m.conformance == "import"]}],
        "schema": [{"name": SCHEMA, "module-set": [MODULE_SET]}],
        "datastore": [{"name": f"ietf-datastores:{ds}", "schema": SCHEMA}
                      for ds in ("running", "operational")],
        "content-id": _content_id(mods)}}


def modules_state(base_url: str, *, augment: bool = True) -> dict[str, Any]:
    """The deprecated ``ietf-yang-library:modules-state`` (RFC 7895), with ``schema`` URLs."""
    mods = modules(augment=augment)
    return {"ietf-yang-library:modules-state": {
        "module-set-id": _content_id(mods),
        "module": [{"name": m.name, "revision": m.revision, "namespace": m.namespace,
                    "schema": base_url + schema_path(m), "conformance-type": m.conformance}
                   for m in mods]}}

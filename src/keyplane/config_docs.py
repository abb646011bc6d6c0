"""The topology format's reference, generated from the pydantic models of :mod:`keyplane.config`.

Two outputs, both checked in and kept equal to the models by a test:

* ``docs/topology.schema.json``: the JSON Schema of a topology file (draft 2020-12, as
  pydantic writes it), for editors (YAML language servers read it from a
  ``# yaml-language-server: $schema=...`` comment);
* the reference tables of ``docs/topology.md``, between the markers below: every field of
  every section with its type, default, bounds and description (units are in the names).

Regenerate both after changing a model::

    python -m keyplane.config_docs --write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from keyplane import config

__all__ = ["BEGIN", "END", "json_schema", "reference_markdown", "write"]

BEGIN = "<!-- BEGIN GENERATED REFERENCE (python -m keyplane.config_docs --write) -->"
END = "<!-- END GENERATED REFERENCE -->"

_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Topology (the file)", config.Topology),
    ("nodes[]", config.Node),
    ("nodes[].ports", config.NodePorts),
    ("links[]", config.QuantumLink),
    ("links[].decoy", config.DecoySettings),
    ("links[].postprocessing", config.PostProcessing),
    ("links[].eavesdropper", config.Eavesdropper),
    ("links[].source (kind: etsi014)", config.Etsi014Source),
    ("links[].source.ends.<node>", config.DeviceEndpoint),
    ("users[]", config.User),
    ("users[].sla", config.SlaProfile),
    ("applications[]", config.Application),
]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a topology file."""
    schema = config.Topology.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://keyplane.dev/schemas/topology-v1.json"
    return schema


def _type(prop: dict[str, Any]) -> str:
    """A short type name from a field's JSON Schema."""
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    if "enum" in prop:
        return "one of " + ", ".join(f"{v}" for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    kind = prop.get("type")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(_type(p) for p in prop["prefixItems"]) + "]"
        return f"list of {_type(prop.get('items', {}))}"
    return {"integer": "int", "number": "float", "string": "str", "boolean": "bool",
            "null": "none"}.get(str(kind), str(kind))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return ""
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(defaults below)"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


_BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
           ("exclusiveMaximum", "<"), ("minLength", "length >="), ("maxLength", "length <="),
           ("pattern", "matches"))


def _bounds(prop: dict[str, Any]) -> str:
    for p in prop.get("anyOf", []):  # optional fields: the bounds of the non-null branch
        if p.get("type") != "null":
            prop = p
    return ", ".join(f"{sym} `{prop[key]}`" for key, sym in _BOUNDS if key in prop)


def reference_markdown() -> str:
    """The reference tables, one per section of the file."""
    out = [BEGIN, ""]
    for title, model in _SECTIONS:
        doc = " ".join((model.__doc__ or "").split("\n\n")[0].split())
        out += [f"### {title}", "", doc, "",
                "| field | type | default | bounds | meaning |",
                "|---|---|---|---|---|"]
        props = model.model_json_schema()["properties"]
        for name, info in model.model_fields.items():
            desc = " ".join((info.description or "").split()).replace("|", "\\|")
            prop = props[name]
            out.append(f"| `{name}` | {_type(prop)} | {_default(info)} | {_bounds(prop)} "
                       f"| {desc} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def write(root: Path) -> list[Path]:
    """Write the schema and the reference under ``root`` (a repository checkout)."""
    schema_path = root / "docs" / "topology.schema.json"
    schema_path.write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")
    md_path = root / "docs" / "topology.md"
    text = md_path.read_text(encoding="utf-8")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    md_path.write_text(head + reference_markdown() + tail, encoding="utf-8")
    return [schema_path, md_path]


def main(argv: list[str] | None = None) -> int:
    """``python -m keyplane.config_docs [--write] [--root DIR]``."""
    ap = argparse.ArgumentParser(description="Topology reference and JSON Schema.")
    ap.add_argument("--write", action="store_true", help="write docs/ under --root")
    ap.add_argument("--root", type=Path, default=Path.cwd())
    args = ap.parse_args(argv)
    if args.write:
        for p in write(args.root):
            print(f"wrote {p}")
    else:
        sys.stdout.write(reference_markdown() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

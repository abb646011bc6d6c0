"""Where in a YAML file a validation error points: paths to line numbers.

The topology loader (:func:`keyplane.config.parse_topology`) names each bad field by its
path and line; these helpers map a YAML document's paths (``links[2].length_km``) to the
line each starts on, independent of the models being validated.
"""

from __future__ import annotations

import re

import yaml

__all__ = ["MESSAGE_PATH", "format_path", "line_for", "parse_message_path", "yaml_line_index"]


def yaml_line_index(text: str) -> dict[tuple[str | int, ...], int]:
    """Map every path in the YAML document to its 1-based line number."""
    index: dict[tuple[str | int, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        index[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                index[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index
    if root is not None:
        walk(root, ())
    return index


def format_path(path: tuple[str | int, ...]) -> str:
    """``("links", 2, "length_km")`` -> ``links[2].length_km``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


MESSAGE_PATH = re.compile(  # a pydantic message that starts with a field path
    r"^([A-Za-z_]+(?:\[\d+\])?(?:\.[A-Za-z_]+(?:\[\d+\])?)*): ")


def parse_message_path(text: str) -> tuple[str | int, ...]:
    """The inverse of :func:`format_path` (stops at the first part that is not a name)."""
    out: list[str | int] = []
    for part in text.split("."):
        m = re.fullmatch(r"([A-Za-z_]+)(?:\[(\d+)\])?", part)
        if m is None:
            break
        out.append(m.group(1))
        if m.group(2) is not None:
            out.append(int(m.group(2)))
    return tuple(out)


def line_for(index: dict[tuple[str | int, ...], int], path: tuple[str | int, ...]) -> int | None:
    """The line of ``path``, or of its nearest ancestor the index knows."""
    while True:
        if path in index:
            return index[path]
        if not path:
            return None
        path = path[:-1]

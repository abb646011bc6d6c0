"""The package's import graph has no cycle (issue 20: "no import cycle; a test checks it").

The graph is read from the source with :mod:`ast` (nothing is imported): one node per module
of ``src/keyplane``, an edge for every ``import``/``from … import`` of another keyplane module,
at module level or inside a function (a lazy import only hides a cycle until it runs). Imports
under ``if TYPE_CHECKING:`` are left out: they never run, so they cannot form a cycle at run
time, and annotations need them. ``from pkg import name`` is an edge to ``pkg.name`` when that
is a module, else to ``pkg``. A package's ``__init__`` is the package's node.

Cycles are the strongly connected components of more than one module (networkx), or a module
importing itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under the package directory ``root``."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, skipping ``if TYPE_CHECKING:`` bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
            continue
        if isinstance(node, ast.If) and _type_checking_only(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path) -> nx.DiGraph:
    """The module import graph of the package at ``root`` (see the module docstring)."""
    modules = module_names(root)
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for stmt in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(stmt, ast.Import):
                targets = [alias.name for alias in stmt.names]
            else:
                base = stmt.module or ""
                if stmt.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (stmt.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in stmt.names]
            for target in targets:
                resolved = resolve(target)
                if resolved is not None:
                    graph.add_edge(name, resolved)
    return graph


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """Each import cycle as the sorted modules of one strongly connected component."""
    found = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    found += [[n] for n in nx.nodes_with_selfloops(graph)]
    return sorted(found)


def test_keyplane_has_no_import_cycle() -> None:
    graph = import_graph(SRC / "keyplane")
    assert graph.number_of_nodes() > 50  # the walk found the package
    assert ("keyplane.control.southbound", "keyplane.control.sdn_model") in graph.edges
    assert cycles(graph) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


@pytest.mark.parametrize(("files", "expected"), [
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n", "pkg/b.py": "import pkg.a\n"},
     [["pkg.a", "pkg.b"]]),
    # a lazy (function-level) import still closes the cycle
    ({"pkg/__init__.py": "", "pkg/a.py": "def f():\n    from pkg.b import g\n",
      "pkg/b.py": "from .a import f\n"}, [["pkg.a", "pkg.b"]]),
    # relative imports resolve against the importing module's package
    ({"pkg/__init__.py": "", "pkg/sub/__init__.py": "", "pkg/sub/c.py": "from .. import d\n",
      "pkg/d.py": "from pkg.sub import c\n"}, [["pkg.d", "pkg.sub.c"]]),
])
def test_a_cycle_is_found(tmp_path: Path, files: dict[str, str],
                          expected: list[list[str]]) -> None:
    assert cycles(import_graph(_write(tmp_path, files))) == expected


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
        "pkg/b.py": "from pkg.a import A\n"})
    graph = import_graph(root)
    assert ("pkg.b", "pkg.a") in graph.edges and ("pkg.a", "pkg.b") not in graph.edges
    assert cycles(graph) == []


def test_control_cores_do_not_reach_the_physical_layer() -> None:
    """The control plane's pure cores judge what links report; they never need the twin
    (numpy and the emulator), even for a link whose basis bias the twin picks (``auto``)."""
    graph = import_graph(SRC / "keyplane")
    cores = [m for m in graph if m.startswith("keyplane.control.") and m.endswith(".core")]
    assert "keyplane.control.monitoring.core" in cores
    for core in cores:
        reached = sorted(m for m in nx.descendants(graph, core)
                         if m.startswith("keyplane.physical"))
        assert reached == [], f"{core} imports {reached}"

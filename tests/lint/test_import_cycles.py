"""The import graph of the three roles, built from the source: no cycles, and no import outside ``ipsbench.*``.

Every ``import`` counts, wherever it is written: at module level, inside functions, under ``TYPE_CHECKING``. An
import of ``ipsbench.a.b.c`` is an edge to that module and to the packages above it (importing a module runs its
packages' ``__init__`` first).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "ipsbench"
ROLES = ("server", "loadgen", "export", "matrix")
"""Top-level folders, installed as ``ipsbench.<folder>``."""
SCRIPT_FOLDERS = ("tests", "benchmarks", "deploy", "scripts")
"""Folders whose code imports the installed roles."""


def project_modules() -> dict[str, Path]:
    """Module name → source file, for every module of the three roles."""
    modules = {}
    for role in ROLES:
        for path in sorted((ROOT / role).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((DISTRIBUTION, *parts))] = path
    return modules


def imported_names(path: Path, module: str) -> list[tuple[str, int]]:
    """(absolute name, line) of everything ``path`` imports, ``from x import y`` giving ``x.y`` and ``x``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.append((source, node.lineno))
            names += [(f"{source}.{alias.name}", node.lineno) for alias in node.names]
    return names


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        for name, _ in imported_names(path, module):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):  # the module and every package above it
                target = ".".join(parts[:end])
                if target in modules and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(component, graph) for component in components]


def _cycle_in(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node] & component):
                if successor == start:
                    return paths[node] + [start]
                if successor not in paths:
                    paths[successor] = paths[node] + [successor]
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_the_cycle_finder_finds_a_cycle_and_names_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_from_imports_resolve_to_project_modules(tmp_path):
    source = tmp_path / "stage.py"
    source.write_text("from . import decode\nfrom ..errors import invalid\nif True:\n    import ipsbench.x.y\n")
    names = {name for name, _ in imported_names(source, "ipsbench.server.preprocess.stage")}
    assert {"ipsbench.server.preprocess.decode", "ipsbench.server.errors.invalid", "ipsbench.x.y"} <= names


def test_the_graph_covers_every_role():
    graph = import_graph()
    for role in ROLES:
        assert f"{DISTRIBUTION}.{role}" in graph
    assert sum(len(targets) for targets in graph.values()) > 100  # the roles' modules import each other


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_every_import_of_the_project_goes_through_the_ipsbench_package():
    """``server``, ``loadgen`` and ``export`` are folders of the repository, not top-level modules of an install."""
    wrong = []
    for path in sorted(p for folder in (*ROLES, *SCRIPT_FOLDERS) for p in (ROOT / folder).rglob("*.py")):
        for name, line in imported_names(path, "ipsbench.unused.module"):
            if name.split(".")[0] in ROLES:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not wrong, "imports outside ipsbench.*:\n" + "\n".join(sorted(set(wrong)))

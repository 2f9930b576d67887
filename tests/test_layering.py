"""The package imports in one direction, and its modules stay small.

Imports are read with :mod:`ast` from every module of ``popstats/``: at
module level and inside functions (a lazy import is still a dependency),
but not under ``if TYPE_CHECKING:`` (annotations only). The graph of
dependencies between popstats' own modules must have no cycle, apart from
the documented exceptions in :data:`UPWARD`: convenience methods of a
record that hand over to a higher layer, imported inside the method.
"""

from __future__ import annotations

import ast
from pathlib import Path

import popstats

ROOT = Path(popstats.__file__).parent
#: (importer, imported): lazy imports allowed to point up the layers
UPWARD = {
    # PopulationStatistics.plot / .report call into inspection
    ("popstats._src.statistics", "popstats._src.inspection.plots"),
    ("popstats._src.statistics", "popstats._src.inspection.report"),
}
#: the most lines a module of popstats/_src may have
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, lazily?) for every popstats import of ``path``."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "popstats"
        ):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                # `from popstats._src import estimators as est` imports a module
                target = full if (ROOT.parent / (full.replace(".", "/") + ".py")
                                  ).exists() else node.module
                found.append((target, lazy))
        elif isinstance(node, ast.Import):
            found.extend((a.name, lazy) for a in node.names
                         if a.name.startswith("popstats"))
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        edges.setdefault(name, set())
        for target, lazy in imports(path):
            if target == name:
                continue
            if (name, target) in UPWARD:
                assert lazy, f"{name} imports {target} at module level"
                continue
            edges[name].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_pipeline_imports_downwards():
    edges = graph()
    src = "popstats._src."
    # the pass does not import the inspection layer at module level, and the
    # low-level file module depends on nothing of popstats but its errors
    assert edges[src + "persistence"] == {src + "errors"}
    for low in ("tagger", "walk", "exporter", "pooling", "estimators", "state"):
        assert not any(t.startswith(src + "inspection") for t in edges[src + low]), low


def test_modules_are_small():
    long = {
        module_name(p): n
        for p in (ROOT / "_src").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"

"""The package's folders import in pipeline order, with no cycle at all.

Imports are read with :mod:`ast` from every module of ``popstats/``: at
module level, inside functions (a lazy import is still a dependency) and
under ``if TYPE_CHECKING:`` (an annotation is a dependency too). Two rules,
with no exception list:

* between the stage folders of ``popstats/_src`` imports point down
  :data:`ORDER` only (a folder may import itself and anything before it;
  :data:`BASE` modules are below every folder and import none of them);
* the graph of imports between popstats' modules has no cycle.

Beside them, what keeps the tree readable: every module of
``popstats/_src`` has a line in the map of the code in
``docs/how-it-works.rst`` (and the map names no module that is gone), opens
with a one-line summary of what it holds, and has at most :data:`MAX_LINES`
lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import popstats

ROOT = Path(popstats.__file__).parent
SRC = "popstats._src"
#: the stage folders of popstats/_src, lowest first
ORDER = ("graph", "export", "independence", "estimation", "rewrite", "upstream",
         "running", "nn", "inspection", "drift", "distributed")
#: modules of popstats/_src below every folder
BASE = ("errors", "version")
#: the most lines a module of popstats/_src may have: a bound on what a
#: reader must hold at once, wide enough that a feature does not split a file
MAX_LINES = 900


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, name: str) -> str:
    """``from module import name``: the module imported (name may be one)."""
    full = f"{module}.{name}"
    as_path = ROOT.parent / full.replace(".", "/")
    if as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists():
        return full
    return module


def imports(path: Path) -> set[str]:
    """Every popstats module ``path`` imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "popstats"
        ):
            found.update(_resolve(node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("popstats"))
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        edges[name] = imports(path) - {name}
    return edges


def folder(module: str) -> str | None:
    """The stage folder of a module of popstats/_src (None: base or outside)."""
    if not module.startswith(SRC + "."):
        return None
    top = module.removeprefix(SRC + ".").split(".")[0]
    return top if top in ORDER else None


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for importer, targets in sorted(edges.items()):
        if not importer.startswith(SRC + ".") and importer != SRC:
            continue
        here = folder(importer)
        rank = -1 if here is None else ORDER.index(here)
        for target in sorted(targets):
            there = folder(target)
            if not target.startswith(SRC) or target == SRC:
                wrong.append(f"{importer} imports {target} (outside popstats._src)")
            elif there is not None and ORDER.index(there) > rank:
                wrong.append(f"{importer} ({here or 'base'}) imports {target} "
                             f"({there})")
    return wrong


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


def test_every_module_is_in_a_folder_or_the_base():
    loose = [m for m in graph() if m.startswith(SRC + ".") and folder(m) is None
             and m.removeprefix(SRC + ".") not in BASE]
    assert not loose, f"modules outside the stage folders: {loose}"
    folders = {p.name for p in (ROOT / "_src").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(ORDER), folders ^ set(ORDER)


def test_folders_import_in_pipeline_order():
    wrong = upward_imports(graph())
    assert not wrong, "imports against the pipeline order:\n" + "\n".join(wrong)


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_type_checking_imports_count(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from popstats._src.export.exporter import Site\n"
                    "def f():\n    from popstats._src.graph import walk\n")
    assert imports(path) == {f"{SRC}.export.exporter", f"{SRC}.graph.walk"}


def test_the_checks_find_what_they_look_for():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    low, high = f"{SRC}.graph.walk", f"{SRC}.rewrite.rewriter"
    assert upward_imports({low: {high}}) == [
        f"{low} (graph) imports {high} (rewrite)"]
    assert upward_imports({high: {low}, f"{SRC}.errors": set()}) == []
    assert upward_imports({f"{SRC}.errors": {low}}) == [
        f"{SRC}.errors (base) imports {low} (graph)"]


def test_the_core_never_imports_inspection():
    edges = graph()
    core = ("graph", "export", "independence", "estimation", "rewrite", "upstream",
            "running")
    wrong = [(m, t) for m, ts in edges.items() if folder(m) in core
             for t in ts if folder(t) in ("inspection", "drift", "distributed", "nn")]
    assert not wrong, wrong
    # the file layer depends on nothing of popstats but its errors
    assert edges[SRC + ".estimation.persistence"] == {SRC + ".errors"}


def test_modules_are_small():
    long = {
        module_name(p): n
        for p in (ROOT / "_src").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_module_says_what_it_holds():
    """Each module opens with a docstring whose first line sums up what it
    holds; the folder says the stage, the map of the code where it sits."""
    wrong = []
    for path in sorted((ROOT / "_src").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if not doc.strip() or not doc.splitlines()[0].strip():
            wrong.append(module_name(path))
    assert not wrong, f"modules without a summary line: {wrong}"


#: the page whose map of the code names every module of popstats/_src
MAP_PAGE = ROOT.parent / "docs" / "how-it-works.rst"


def map_entries(text: str) -> list[str]:
    """The modules the map names, as paths under popstats/_src (``graph/``
    is its face, ``graph/__init__.py``). The map is the text block that
    opens with ``popstats/_src/``: a name at two spaces is a folder (``x/``)
    or a base module, at four a module of the folder above it; deeper lines
    continue a description."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.strip() == "popstats/_src/")
    indent = len(lines[start]) - len(lines[start].lstrip())
    found, here = [], ""
    for line in lines[start + 1:]:
        if not line.strip():
            break
        depth = len(line) - len(line.lstrip()) - indent
        name = line.split()[0]
        if depth == 2:
            here = name if name.endswith("/") else ""
            found.append(f"{name}__init__.py" if here else f"{name}.py")
        elif depth == 4:
            found.append(f"{here}{name}.py")
    return found


def tree_modules() -> list[str]:
    src = ROOT / "_src"
    return sorted(p.relative_to(src).as_posix() for p in src.rglob("*.py")
                  if p.parent != src or p.name != "__init__.py")


def test_the_map_names_every_module_once():
    named = map_entries(MAP_PAGE.read_text(encoding="utf-8"))
    twice = sorted({m for m in named if named.count(m) > 1})
    assert not twice, f"named twice in the map of {MAP_PAGE.name}: {twice}"
    missing = sorted(set(tree_modules()) - set(named))
    assert not missing, f"modules without a line in the map: {missing}"
    stale = sorted(set(named) - set(tree_modules()))
    assert not stale, f"the map names modules that do not exist: {stale}"


def test_the_map_check_finds_what_it_looks_for():
    text = ("intro\n\n    popstats/_src/\n      errors     the errors\n"
            "      graph/     1. graph\n        walk       the walk,\n"
            "                   continued\n        surgery    Scan surgery\n\n"
            "after\n")
    assert map_entries(text) == ["errors.py", "graph/__init__.py",
                                 "graph/walk.py", "graph/surgery.py"]

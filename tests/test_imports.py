"""The import graph of hhcl and hhcl_tui, read from the source with ``ast`` (nothing is imported): no cycles,
and the engine never imports the front end (``hhcl/__main__.py`` aside, the torchrun entry point).

Every import counts, module level and function-local, except under ``if TYPE_CHECKING:``. ``from pkg import
name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``. Importing ``a.b.c`` also runs
``a/__init__`` and ``a/b/__init__``, but those implicit parent edges are left out: a package's ``__init__``
re-exporting its submodules would otherwise make every such package a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hhcl", "hhcl_tui")
Graph = Mapping[str, set[str]]


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the packages (a package is its __init__)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in or under ``nodes``, skipping the bodies of ``if TYPE_CHECKING:`` blocks."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse)
        else:
            yield from _import_nodes(ast.iter_child_nodes(node))


def _known(name: str, modules: Mapping[str, object]) -> str | None:
    """``name`` or its longest prefix that is one of ``modules`` (``import a.b.x`` where x is not a module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """Dotted names an import statement reaches (before filtering to known modules)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    yield base
    yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of ``files`` it imports (see the module docstring for what counts)."""
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in _import_nodes(tree.body):
            targets = list(_targets(module, path.name == "__init__.py", node))
            if isinstance(node, ast.ImportFrom):
                base, names = targets[0], targets[1:]
                submodules = [n for n in names if n in files]
                edges.update(submodules)
                if len(submodules) < len(names) or not names:  # some names are attributes of base itself
                    edges.add(base)
            else:
                edges.update(targets)
        graph[module] = {k for k in (_known(e, files) for e in edges) if k is not None}
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (first node repeated at the end) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        start = min(component)
        if len(component) > 1 or start in graph.get(start, ()):
            cycles.append(_cycle_through(start, component, graph))
    return sorted(cycles)


def _cycle_through(start: str, component: set[str], graph: Graph) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected component (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w in component and w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is not on a cycle of its component {sorted(component)}")


def test_cycle_finder_on_hand_made_graphs() -> None:
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycles(acyclic) == []
    graph = {"a": {"b"}, "b": {"c", "x"}, "c": {"a"}, "x": {"y"}, "y": {"x"}, "s": {"s"}, "z": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["s", "s"], ["x", "y", "x"]]


def test_graph_builder_on_hand_made_package(tmp_path: Path) -> None:
    (tmp_path / "p" / "sub").mkdir(parents=True)
    sources = {
        "p/__init__.py": "from p.sub.leaf import f\n",
        "p/sub/__init__.py": "from . import leaf\nfrom .leaf import f\n",
        "p/sub/leaf.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.other\nelse:\n    import json\n"
            "def g():\n    from p import other, VALUE\n"
        ),
        "p/other.py": "import p.sub.leaf as leaf\nfrom ..outside import x\n",
    }
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    files = {
        "p": tmp_path / "p/__init__.py",
        "p.sub": tmp_path / "p/sub/__init__.py",
        "p.sub.leaf": tmp_path / "p/sub/leaf.py",
        "p.other": tmp_path / "p/other.py",
    }
    graph = import_graph(files)
    assert graph == {
        "p": {"p.sub.leaf"},
        "p.sub": {"p.sub.leaf"},
        "p.sub.leaf": {"p.other", "p"},  # the function-local import; not the TYPE_CHECKING one
        "p.other": {"p.sub.leaf"},
    }
    # one component {p, p.sub.leaf, p.other}: its shortest cycle through "p"; p.sub is on none (no child->parent edge)
    assert find_cycles(graph) == [["p", "p.sub.leaf", "p"]]


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph(module_files()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_engine_never_imports_the_front_end() -> None:
    bad = {
        module: sorted(t for t in targets if t.split(".")[0] == "hhcl_tui")
        for module, targets in import_graph(module_files()).items()
        if module.split(".")[0] == "hhcl" and module != "hhcl.__main__"
    }
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, f"hhcl modules importing hhcl_tui (only hhcl/__main__.py may): {bad}"


#: the foundation: modules the run layer builds on, which must never reach back up into it
_BELOW_RUN = ("hhcl.atomic", "hhcl.faults", "hhcl.weight_files", "hhcl.diskspace", "hhcl.words")


def test_no_upward_arrow_into_the_run_layer() -> None:
    """The run layer (``hhcl/run/``) uses atomic I/O and weight files; they never import ``hhcl.run``, directly
    or through another module, so each can be read, tested and reused alone."""
    graph = import_graph(module_files())

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for w in graph.get(todo.pop(), ()):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    bad = {m: sorted(t for t in reach(m) if t == "hhcl.run" or t.startswith("hhcl.run.")) for m in _BELOW_RUN}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, f"modules below the run layer that reach into it: {bad}"
    assert "hhcl.weight_files" in graph["hhcl.run.checkpoint"], "the run's checkpoints are written as weight files"

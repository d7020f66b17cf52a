"""The import graph of a source tree, read with ``ast`` (nothing is imported or executed).

Every import statement counts wherever it is: module level, inside a function (a lazy import) and under
``if TYPE_CHECKING:``, plus ``importlib.import_module("literal")`` calls. A cycle that only shows up
lazily is still a cycle in the design, and type-only imports still tie two modules together.

An import of ``a.b.c`` is one edge, to ``a.b.c``; the packages ``a`` and ``a.b`` whose ``__init__``
also runs are not counted, because a submodule running its own package's ``__init__`` is how packages
work, not a dependency anyone wrote. ``from a.b import c`` is an edge to ``a.b.c`` when that is a module
of the tree, else to ``a.b``. Relative imports are resolved against the importing module's package.
"""

from __future__ import annotations

import ast
import fnmatch
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    """``source`` (a module of the tree) imports ``target`` (absolute dotted name) at ``path:line``."""

    source: str
    target: str
    path: Path
    line: int


@dataclass(frozen=True)
class ImportGraph:
    modules: dict[str, Path]  # dotted name -> file (a package's file is its __init__.py)
    imports: tuple[Import, ...]  # every import found, also of modules outside the tree

    def internal_edges(self) -> dict[str, dict[str, Import]]:
        """``source -> {target: first import of it}`` for targets that are modules of the tree."""
        edges: dict[str, dict[str, Import]] = {name: {} for name in self.modules}
        for imp in self.imports:
            if imp.target in self.modules:
                edges[imp.source].setdefault(imp.target, imp)
        return edges

    def cycles(self) -> list[list[str]]:
        """Cycles that cover every import edge inside each strongly connected component, see ``cycles``."""
        return cycles({src: set(dsts) for src, dsts in self.internal_edges().items()})


def module_name(root: Path, path: Path) -> str:
    """``root/a/b/c.py`` -> ``a.b.c``; ``root/a/b/__init__.py`` -> ``a.b``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every ``.py`` file under ``root/<package>`` for each top-level package, by dotted name."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).parts
            if any(part == "__pycache__" or part.startswith(".") for part in rel):
                continue
            modules[module_name(root, path)] = path
    return modules


def build_import_graph(root: Path, packages: Iterable[str]) -> ImportGraph:
    modules = discover_modules(root, packages)
    # dict.fromkeys: ``from a import b, c`` names ``a`` once per alias, the same import on the same line.
    imports = dict.fromkeys(imp for name, path in modules.items() for imp in _imports_of(name, path, modules))
    return ImportGraph(modules, tuple(imports))


def _imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    # A package's relative imports start from the package itself, a plain module's from its parent.
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package, path, node.lineno)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield Import(name, submodule if submodule in modules else base, path, node.lineno)
        elif isinstance(node, ast.Call) and _is_import_module(node):
            target = node.args[0].value  # type: ignore[attr-defined]
            if not target.startswith("."):  # relative needs the package argument's value
                yield Import(name, target, path, node.lineno)


def _absolute(module: str | None, level: int, package: str, path: Path, line: int) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".") if package else []
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{path}:{line}: relative import beyond the top-level package")
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _is_import_module(node: ast.Call) -> bool:
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return (
        called in ("import_module", "__import__")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def matches(name: str, pattern: str) -> bool:
    """``pattern`` names a module and everything below it; a ``*`` is a glob on the dotted name's first
    component it appears in (``dagster*`` is ``dagster``, ``dagster_mlflow``, ``dagster_dvc.x``)."""
    if "*" in pattern:
        depth = pattern.count(".") + 1
        return fnmatch.fnmatchcase(".".join(name.split(".")[:depth]), pattern)
    return name == pattern or name.startswith(pattern + ".")


def strongly_connected_components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on deep import chains); each component sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(edges.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """For each edge ``u -> v`` inside a strongly connected component, the shortest cycle through it
    (``[u, v, ..., ]``, back to ``u`` implied), rotated to start at its smallest name and deduplicated.

    Every import that takes part in a cycle appears in at least one listed cycle, so the list says which
    imports to cut; listing every elementary cycle instead can grow exponentially.
    """
    found: set[tuple[str, ...]] = set()
    for component in strongly_connected_components(edges):
        members = set(component)
        for u in component:
            if u in edges.get(u, ()):
                found.add((u,))
        if len(component) < 2:
            continue
        for u in component:
            for v in sorted(edges.get(u, ()) & members - {u}):
                path = _shortest_path(edges, v, u, members)
                cycle = [u, *path[:-1]]
                pivot = cycle.index(min(cycle))
                found.add(tuple(cycle[pivot:] + cycle[:pivot]))
    return [list(c) for c in sorted(found)]


def _shortest_path(edges: dict[str, set[str]], start: str, goal: str, within: set[str]) -> list[str]:
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for succ in sorted(edges.get(node, ()) & within):
            if succ not in parent:
                parent[succ] = node
                queue.append(succ)
    path = [goal]
    while (prev := parent[path[-1]]) is not None:
        path.append(prev)
    return path[::-1]


def format_cycle(cycle: list[str]) -> str:
    return " -> ".join([*cycle, cycle[0]])

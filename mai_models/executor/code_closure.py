"""A step's code: the module that declares it and every ``mai_models`` module it imports, transitively
(function-level imports included), found by reading the sources, never from a hand-kept list.

Bookkeeping modules (the executor itself, tracking, settings, the params schema) are left out: they
decide where outputs go and what is logged, not what is built, and parameter values are hashed on
their own. Editing any other module a step reaches makes that step, and only that step, stale.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "mai_models"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Prefixes of modules that never change what a step builds.
BOOKKEEPING = (
    "mai_models.executor",
    "mai_models.graph",
    "mai_models.tracking",
    "mai_models.settings",
    "mai_models.config",
    "mai_models.errors",
)


def module_file(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for candidate in (PACKAGE_DIR / rel.with_suffix(".py"), PACKAGE_DIR / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _imports(module: str) -> frozenset[str]:
    path = module_file(module)
    if path is None:
        return frozenset()
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node, is_package)
            found.add(base)
            # `from pkg import name` imports pkg.name when that is a module.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(m for m in found if m.split(".")[0] == PACKAGE and module_file(m) is not None)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _bookkeeping(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in BOOKKEEPING)


def closure(roots: tuple[str, ...]) -> tuple[str, ...]:
    """Every module the roots reach, roots included, sorted."""
    seen: set[str] = set()
    todo = [r for r in roots if module_file(r) is not None]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(m for m in _imports(module) if m not in seen and not _bookkeeping(m))
        todo.extend(_parents_with_code(module))
    return tuple(sorted(seen))


def _parents_with_code(module: str) -> list[str]:
    """Importing ``a.b.c`` runs the ``__init__`` of ``a.b`` too: those that hold code count."""
    parts = module.split(".")
    parents = []
    for i in range(2, len(parts)):
        package = ".".join(parts[:i])
        init = module_file(package)
        if init is not None and init.stat().st_size and not _bookkeeping(package):
            parents.append(package)
    return parents


def closure_files(roots: tuple[str, ...]) -> tuple[Path, ...]:
    return tuple(sorted({p for m in closure(roots) if (p := module_file(m)) is not None}))


def code_version(roots: tuple[str, ...]) -> str:
    """Hash of the sources the roots reach; the path is part of it, so a moved module counts too."""
    digest = hashlib.sha256()
    for path in closure_files(roots):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]

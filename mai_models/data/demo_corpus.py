"""The embedded demo corpus: real, human-written English that every CPython installation carries.

Two labelled sources, both read from the running interpreter's own files, in a fixed order:
``pydoc_topics`` (the reference-manual topics behind ``help()``) and ``stdlib_docstrings`` (module,
class and function docstrings of the pure-Python standard library, parsed with ``ast``, never imported).
"""

from __future__ import annotations

import ast
import sysconfig
from itertools import zip_longest
from collections.abc import Iterator
from pathlib import Path

from mai_models.data.records import Record

PYDOC_SOURCE = "pydoc_topics"
DOCSTRING_SOURCE = "stdlib_docstrings"
DEMO_SOURCES = (PYDOC_SOURCE, DOCSTRING_SOURCE)
MIN_DOCSTRING_CHARS = 200
# Test suites, IDLE and demo packages hold few docstrings worth reading and mostly fixtures.
_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "turtledemo",
    "site-packages",
    "dist-packages",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "__pycache__",
    "lib-dynload",
}
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def iter_demo_documents(limit_bytes: int | None = None) -> Iterator[Record]:
    """Yield demo documents deterministically (for a given Python version) until ``limit_bytes``."""
    total = 0
    for record in _iter_all():
        if limit_bytes is not None and total >= limit_bytes:
            return
        total += len(record.text.encode())
        yield record


def _iter_all() -> Iterator[Record]:
    # Interleaved so that a byte-limited prefix (tests, quick demos) still holds both sources.
    for pair in zip_longest(_pydoc_topics(), _stdlib_docstrings()):
        yield from (record for record in pair if record is not None)


def _pydoc_topics() -> Iterator[Record]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Record(PYDOC_SOURCE, f"pydoc_data.topics:{name}", topics[name])


def _stdlib_docstrings() -> Iterator[Record]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_files(stdlib):
        yield from _docstrings(path, path.relative_to(stdlib).as_posix())


def _stdlib_files(stdlib: Path) -> Iterator[Path]:
    for entry in sorted(stdlib.iterdir()):
        if entry.is_dir():
            if entry.name in _SKIP_DIRS or entry.name.startswith(("test", "config-")):
                continue
            yield from _stdlib_files(entry)
        elif entry.suffix == ".py":
            yield entry


def _docstrings(path: Path, rel: str) -> Iterator[Record]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return  # a few stdlib files are deliberately invalid (e.g. bad encodings for tests)
    for node, qualname in _walk(tree, ""):
        doc = ast.get_docstring(node)
        if doc and len(doc) >= MIN_DOCSTRING_CHARS:
            line = getattr(node, "lineno", 0)
            yield Record(DOCSTRING_SOURCE, f"stdlib:{rel}:{line}:{qualname or '<module>'}", doc)


def _walk(node: ast.AST, prefix: str) -> Iterator[tuple[ast.AST, str]]:
    yield node, prefix
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DOC_NODES):
            yield from _walk(child, f"{prefix}.{child.name}" if prefix else child.name)

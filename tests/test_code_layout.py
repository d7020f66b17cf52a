"""Layout rules, checked statically on the source (``ast``; no project module is imported here).

``pipelines/`` (Dagster definitions) -> ``assets/`` (thin Dagster assets) -> ``mai_models/`` (the
framework-free library). Inside ``mai_models/`` each subpackage is a stage folder (data, tokenizer, lm,
tts, eval, ...): it declares its steps in ``*_step.py`` modules and ``mai_models/graph`` collects them,
so a stage never reaches for the step graph nor into another stage's step declarations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mai_models.import_graph import Import, ImportGraph, build_import_graph, format_cycle, matches

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mai_models", "assets", "pipelines")

# Layering: modules under the key never import anything matching a pattern of its row.
FORBIDDEN_BY_LAYER: dict[str, tuple[str, ...]] = {
    "mai_models": ("assets", "pipelines", "dagster*"),
    "assets": ("pipelines",),
}

# Stage folders are the subpackages of mai_models except these.
NOT_STAGES: dict[str, str] = {"graph": "the step registry itself, once it is a package"}

# Stage folders never import these.
FORBIDDEN_IN_STAGES: dict[str, str] = {
    "mai_models.graph": "the step registry: it imports the stages, never the other way round",
    "mai_models.text_pipeline": "being removed: its steps move to the stage folders",
    "mai_models.speech_pipeline": "being removed: its steps move to the stage folders",
    "mai_models.eval_pipeline": "being removed: its steps move to the stage folders",
    "mai_models.pipeline": "being removed: its steps move to the stage folders",
    "mai_models.materialize": "being removed: its steps move to the stage folders",
}

# A step declaration (a module named *_step) is imported only by its own stage folder and by these.
STEP_MODULE = "*_step"
STEP_IMPORTERS = ("mai_models.graph*",)  # mai_models/graph.py, mai_models/graph/, graph_*.py

MAX_LINES = 450
# Modules of mai_models/ allowed over MAX_LINES: each holds one concern that splitting would only scatter.
LONG_MODULES: dict[str, str] = {
    "mai_models/tts/frontend/normalize.py": (
        "English text normalisation rules (one table of patterns for one language) and the sentence "
        "splitter that reads the same abbreviation table; the rules alone are ~480 lines"
    ),
    "mai_models/data/validation.py": (
        "the great-expectations data-quality suites for raw and clean documents: the expectations, "
        "the in-memory GX runner and the one-line description of each expectation kind's result"
    ),
    "mai_models/export/hf.py": (
        "Megatron MoE -> Hugging Face conversion: layout choice, weight mapping, HF config, writing, and "
        "the logits comparison that proves it exact; a 35-line docstring documents why it is exact"
    ),
}


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_import_graph(REPO, PACKAGES)


def _stage(module: str) -> str | None:
    """``mai_models.<stage>...`` -> ``<stage>`` when ``mai_models/<stage>/`` is a stage folder, else None."""
    parts = module.split(".")
    if parts[0] != "mai_models" or len(parts) < 2 or parts[1] in NOT_STAGES:
        return None
    return parts[1] if (REPO / "mai_models" / parts[1]).is_dir() else None


def _where(imp: Import) -> str:
    return f"{imp.source} -> {imp.target} ({imp.path.relative_to(REPO)}:{imp.line})"


def test_graph_covers_every_package(graph: ImportGraph) -> None:
    for package in PACKAGES:
        assert package in graph.modules, f"{package}/__init__.py not found: the graph would be empty"
    files = {
        p for package in PACKAGES for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts
    }
    assert set(graph.modules.values()) == files


def test_no_import_cycles(graph: ImportGraph) -> None:
    edges = graph.internal_edges()
    lines = []
    for cycle in graph.cycles():
        hops = zip(cycle, [*cycle[1:], cycle[0]], strict=True)
        at = ", ".join(f"{edges[a][b].path.relative_to(REPO)}:{edges[a][b].line}" for a, b in hops)
        lines.append(f"{format_cycle(cycle)}   [{at}]")
    assert not lines, "import cycles (every import is counted, lazy and TYPE_CHECKING too):\n" + "\n".join(
        lines
    )


def test_layers_import_downwards_only(graph: ImportGraph) -> None:
    bad = [
        f"{_where(imp)} [{layer} must not import {pattern}]"
        for imp in graph.imports
        for layer, patterns in FORBIDDEN_BY_LAYER.items()
        if matches(imp.source, layer)
        for pattern in patterns
        if matches(imp.target, pattern)
    ]
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_stages_do_not_import_the_step_graph(graph: ImportGraph) -> None:
    bad = [
        f"{_where(imp)} [{why}]"
        for imp in graph.imports
        if _stage(imp.source)
        for forbidden, why in FORBIDDEN_IN_STAGES.items()
        if matches(imp.target, forbidden)
    ]
    assert not bad, "stage folders importing the step graph or a pipeline module:\n" + "\n".join(bad)


def test_step_declarations_are_imported_by_their_stage_or_the_graph(graph: ImportGraph) -> None:
    bad = [
        f"{_where(imp)} [a step declaration of stage '{_stage(imp.target)}']"
        for imp in graph.imports
        if imp.target in graph.modules
        and matches(imp.target.rpartition(".")[2], STEP_MODULE)
        and _stage(imp.target)
        and _stage(imp.source) != _stage(imp.target)
        and not any(matches(imp.source, allowed) for allowed in STEP_IMPORTERS)
    ]
    assert not bad, "step declarations imported outside their stage:\n" + "\n".join(bad)


def _line_counts() -> dict[str, int]:
    return {
        str(p.relative_to(REPO)): len(p.read_text().splitlines())
        for p in sorted((REPO / "mai_models").rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def test_modules_are_small() -> None:
    long = [
        f"{path}: {n} lines"
        for path, n in _line_counts().items()
        if n > MAX_LINES and path not in LONG_MODULES
    ]
    assert not long, f"modules over {MAX_LINES} lines (split them, one job per module):\n" + "\n".join(long)


def test_long_module_allow_list_is_current() -> None:
    counts = _line_counts()
    stale = [
        f"{path}: {'gone' if path not in counts else f'{counts[path]} lines'}"
        for path in LONG_MODULES
        if counts.get(path, 0) <= MAX_LINES
    ]
    assert not stale, f"LONG_MODULES entries no longer over {MAX_LINES} lines, remove them:\n" + "\n".join(
        stale
    )


def test_import_graph_resolution(tmp_path: Path) -> None:
    """The graph builder on a tiny tree: every import form it must see, and the cycles it reports."""
    files = {
        "pkg/__init__.py": "from . import a\n",
        "pkg/a.py": "from pkg.sub import b\nimport json\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from ..a import thing\n"
            "def f():\n    from .c import g\n"
        ),
        "pkg/sub/c.py": "import importlib\nimportlib.import_module('pkg.d')\nfrom pkg.sub import *\n",
        "pkg/d.py": "import pkg.d\nimport dagster_mlflow.resources\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = build_import_graph(tmp_path, ["pkg"])
    edges = {src: sorted(dsts) for src, dsts in graph.internal_edges().items()}
    assert edges == {
        "pkg": ["pkg.a"],
        "pkg.a": ["pkg.sub.b"],
        "pkg.sub": [],
        "pkg.sub.b": ["pkg.a", "pkg.sub.c"],
        "pkg.sub.c": ["pkg.d", "pkg.sub"],
        "pkg.d": ["pkg.d"],
    }
    assert [format_cycle(c) for c in graph.cycles()] == ["pkg.a -> pkg.sub.b -> pkg.a", "pkg.d -> pkg.d"]
    external = sorted(imp.target for imp in graph.imports if imp.target not in graph.modules)
    assert external == ["dagster_mlflow.resources", "importlib", "json", "typing"]
    assert matches("dagster_mlflow.resources", "dagster*") and not matches("pkg.dagster", "dagster*")
    assert matches("mai_models.graph.steps", "mai_models.graph") and not matches(
        "mai_models.graphs", "mai_models.graph"
    )

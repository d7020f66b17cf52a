"""What an asset's page shows beside the step's own figures: its key plots inline (Markdown with the
PNG as a data URI: Dagster's Markdown allows ``data:`` images, and the picture then needs no file
server), links to its MLflow run and registered version, and who owns it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from dagster import MetadataValue

from mai_models.executor.project import Materialization, Project
from mai_models.executor.step import Step
from mai_models.tracking.mlflow_links import absolute, model_version_route
from mai_models.tracking.mlflow_runs import run_page

MAX_PLOT_BYTES = 400_000  # per picture: the event log stores it with every materialisation
MAX_PLOTS = 4


def owners(step: Step) -> list[str]:
    """The step's owners, by default its plane's team."""
    return list(step.owners) or [f"team:{step.group}"]


def tags(step: Step) -> dict[str, str]:
    return {"plane": step.group, "compute": step.compute, "automation": step.automation}


def plots(graph: Project, step: Step, done: Materialization) -> list[Path]:
    """The step's PNG figures: those the build reported, those among its artifacts, and the plots its
    training kept in the version's work directory (still there when a materialisation is reused)."""
    reported = [Path(p) for p in (done.live or {}).get("plots", [])]
    out = done.result.out_dir
    artifacts = [p for a in step.artifacts for p in _pngs(out / a)]
    work = graph.settings.home / "work" / step.name / done.result.version / "plots"
    found = dict.fromkeys(p for p in (*reported, *artifacts, *_pngs(work)) if p.is_file())
    return list(found)[:MAX_PLOTS]


def _pngs(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(path.rglob("*.png"))
    return [path] if path.suffix == ".png" else []


def plots_markdown(paths: list[Path]) -> MetadataValue | None:
    shown = []
    for path in paths:
        data = path.read_bytes()
        if len(data) <= MAX_PLOT_BYTES:
            shown.append(
                f"**{path.stem}**\n\n![{path.stem}](data:image/png;base64,{base64.b64encode(data).decode()})"
            )
    return MetadataValue.md("\n\n".join(shown)) if shown else None


def links(graph: Project, done: Materialization) -> dict[str, Any]:
    settings = graph.settings
    meta: dict[str, Any] = {}
    if done.mlflow_run_id:
        meta["mlflow_run"] = MetadataValue.url(
            run_page(settings, done.mlflow_run_id, done.mlflow_experiment_id)
        )
    extra = done.extra or {}
    if extra.get("registered_model") and extra.get("model_version"):
        route = model_version_route(extra["registered_model"], str(extra["model_version"]))
        meta["mlflow_model_version"] = MetadataValue.url(absolute(settings, route))
    return meta


def page_metadata(graph: Project, step: Step, done: Materialization) -> dict[str, Any]:
    meta = links(graph, done)
    figures = plots_markdown(plots(graph, step, done))
    if figures is not None:
        meta["plots"] = figures
    return meta

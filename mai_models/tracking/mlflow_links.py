"""Links into the MLflow UI. The UI routes in the URL fragment; ``workflowType=machine_learning`` is
how MLflow 3.5+ chooses its "Model training" view for a page (a browser's last choice otherwise, and
the GenAI view on a first visit), so every link we hand out carries it. Inside MLflow (version
descriptions) links are relative fragments, which work wherever the UI is served; Dagster's asset
pages get absolute ones."""

from __future__ import annotations

import json
from urllib.parse import quote

from mai_models.settings import Settings

ML_VIEW = "workflowType=machine_learning"
MLFLOW_UI_PORT = 5000  # `mai ui`'s default


def ui_base(settings: Settings) -> str:
    if settings.mlflow_ui_url:
        return settings.mlflow_ui_url.rstrip("/")
    if settings.tracks_to_server:
        return str(settings.mlflow_tracking_uri).rstrip("/")
    return f"http://127.0.0.1:{MLFLOW_UI_PORT}"


def experiment_route(experiment_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs?{ML_VIEW}"


def run_route(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"{page}/artifactPath/{quote(artifact)}?{ML_VIEW}" if artifact else f"{page}?{ML_VIEW}"


def compare_route(experiment_ids: list[str], run_ids: list[str]) -> str:
    runs, experiments = quote(json.dumps(run_ids)), quote(json.dumps(sorted(set(experiment_ids))))
    return f"#/compare-runs?runs={runs}&experiments={experiments}&{ML_VIEW}"


def metric_route(experiment_ids: list[str], run_ids: list[str], keys: list[str]) -> str:
    """The metric page: ``keys`` of ``run_ids`` as curves over steps in one chart."""
    query = "&".join(
        f"{name}={quote(json.dumps(value))}"
        for name, value in (
            ("runs", run_ids),
            ("metric", keys[0]),
            ("experiments", sorted(set(experiment_ids))),
            ("plot_metric_keys", keys),
        )
    )
    return f"#/metric?{query}&x_axis=step&y_axis_scale=linear&line_smoothness=1&show_point=true&{ML_VIEW}"


def model_version_route(model: str, version: str) -> str:
    return f"#/models/{quote(model)}/versions/{version}?{ML_VIEW}"


def absolute(settings: Settings, route: str) -> str:
    return f"{ui_base(settings)}/{route}"

"""One MLflow run per materialisation, with the tags analysts filter on and the data it used.

Runs go to one experiment per plane (``<experiment>/text``, ``/lm``, ``/speech``, ``/evaluation``):
two retrainings of a model are two rows of the same short table, ticked and compared in one click,
instead of two rows among every data, speech and evaluation run. Each experiment is tagged as a
model-training one, and metric names never carry a model version (see ``metric_names``), so the
same chart compares every retraining.

A tracking server that does not answer fails the step with one line naming it (``ServiceUnavailable``,
which the orchestrator retries): nothing is buffered for a later replay. What the step built stays in
place, so the re-run only logs it.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mai_models.errors import ServiceUnavailable
from mai_models.settings import Settings
from mai_models.tracking.metric_names import stable_metric_names
from mai_models.tracking.mlflow_links import absolute, run_route

TAG_STEP = "mai.step"
TAG_ASSET_KEY = "mai.asset_key"
TAG_CODE_VERSION = "mai.code_version"
TAG_DATA_VERSION = "mai.data_version"
TAG_DVC_HASH = "mai.dvc_hash"
TAG_DAGSTER_RUN = "dagster.run_id"
# MLflow 3 reads the experiment's kind from this tag (the UI writes it when someone picks a view); a
# model-training experiment opens on its runs, not on the GenAI traces.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
TAG_NOTE = "mlflow.note.content"


@dataclass
class DatasetInput:
    """A table this run read or wrote, recorded with ``mlflow.log_input``."""

    name: str
    source: Path
    frame: Any  # pandas.DataFrame
    context: str


@dataclass
class StepRun:
    step: str
    plane: str  # the step's group: its experiment
    data_version: str
    code_version: str
    params: dict[str, Any]
    stats: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    datasets: list[DatasetInput] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# MLflow's REST client wraps what requests raised ("... failed with exception ...") once its own retries
# (MLFLOW_HTTP_REQUEST_MAX_RETRIES, with backoff) are spent; a proxy in front of a stopped server answers 5xx.
_UNREACHABLE = re.compile(r"failed with exception|failed with error code 50[234]")
_CAUSE = re.compile(r"\[Errno -?\d+\] [^\"')]+|Read timed out|Connection aborted")


def unreachable(exc: BaseException) -> bool:
    """Whether an MLflow error means the tracking server did not answer (not a bad request)."""
    import mlflow

    return isinstance(exc, mlflow.exceptions.MlflowException) and bool(_UNREACHABLE.search(str(exc)))


@contextmanager
def tracking_server(settings: Settings) -> Iterator[None]:
    """MLflow calls inside fail, when the server does not answer, with one line naming it."""
    try:
        yield
    except Exception as exc:
        if not unreachable(exc):
            raise
        cause = _CAUSE.search(str(exc))
        raise ServiceUnavailable(
            f"MLflow tracking server {settings.mlflow_tracking_uri} did not answer "
            f"({cause.group(0) if cause else str(exc).splitlines()[0][:200]}); the step's outputs are kept, "
            "re-run when it is back"
        ) from exc


def experiment_name(settings: Settings, plane: str) -> str:
    return f"{settings.mlflow_experiment}/{plane}"


def ensure_experiment(settings: Settings, plane: str) -> str:
    """The plane's experiment, created (or brought up to date) as a model-training experiment."""
    import mlflow

    with tracking_server(settings):
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        client = mlflow.MlflowClient()
        name = experiment_name(settings, plane)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            experiment_id = client.create_experiment(name, artifact_location=settings.mlflow_artifact_uri)
            tags: dict[str, str] = {}
        else:
            experiment_id, tags = experiment.experiment_id, experiment.tags
        if tags.get(TAG_EXPERIMENT_KIND) != MODEL_TRAINING:
            client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, MODEL_TRAINING)
        if TAG_NOTE not in tags:
            client.set_experiment_tag(
                experiment_id,
                TAG_NOTE,
                f"The {plane} plane of MAI Foundry: one run per step materialisation, named "
                "`<step>-<data version>`. Tick two runs of a step and press Compare.",
            )
        return experiment_id


def run_exists(client: Any, run_id: str) -> bool:
    """Whether a run to resume logging into is still there (the store may have been reset, or the run
    deleted in the UI): otherwise the caller starts a new one. A server that does not answer is not
    a missing run: that error goes up."""
    import mlflow

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException as exc:
        if unreachable(exc):
            raise
        return False


def log_step_run(settings: Settings, run: StepRun, run_id: str | None = None) -> str:
    """Log ``run`` and return the MLflow run id; with ``run_id``, add to the run the step already
    opened while it ran (training curves and samples) instead of starting another."""
    with tracking_server(settings):
        return _log_step_run(settings, run, run_id)


def _log_step_run(settings: Settings, run: StepRun, run_id: str | None) -> str:
    import mlflow

    experiment_id = ensure_experiment(settings, run.plane)
    tags = {
        TAG_STEP: run.step,
        TAG_ASSET_KEY: run.step,
        TAG_CODE_VERSION: run.code_version,
        TAG_DATA_VERSION: run.data_version,
        **run.tags,
    }
    commit = git_commit(settings.root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run_args: dict[str, Any] = (
        {"run_id": run_id}
        if run_id
        else {"experiment_id": experiment_id, "run_name": f"{run.step}-{run.data_version[:8]}"}
    )
    with mlflow.start_run(**run_args, tags=tags) as active:
        params = {k: _param(v) for k, v in flatten(run.params).items()}
        if params:
            mlflow.log_params(params)
        metrics = stable_metric_names(
            {k: float(v) for k, v in flatten({**run.stats, "timing": run.timings}).items() if _numeric(v)},
            candidate=run.stats.get("candidate"),
        )
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_dict(run.stats, "stats.json")
        for dataset in run.datasets:
            with warnings.catch_warnings():
                # Schema-inference hints about integer columns concern model signatures, not datasets.
                warnings.simplefilter("ignore", UserWarning)
                logged = mlflow.data.from_pandas(dataset.frame, source=str(dataset.source), name=dataset.name)
                mlflow.log_input(logged, context=dataset.context)
        for artifact in run.artifacts:
            if artifact.is_dir():
                mlflow.log_artifacts(str(artifact), artifact.name)
            else:
                mlflow.log_artifact(str(artifact))
        return active.info.run_id


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def plane_experiments(settings: Settings) -> dict[str, str]:
    """Experiment name -> id of every plane that has logged a run, in name order."""
    import mlflow

    with tracking_server(settings):
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        prefix = settings.mlflow_experiment.replace("'", "''")
        found = mlflow.search_experiments(filter_string=f"name LIKE '{prefix}/%'")
    return {e.name: e.experiment_id for e in sorted(found, key=lambda e: e.name)}


def find_runs(settings: Settings, filter_string: str = "") -> list[Any]:
    """Runs of every plane's experiment, newest first."""
    import mlflow

    experiments = plane_experiments(settings)
    if not experiments:
        return []
    with tracking_server(settings):
        return mlflow.search_runs(
            experiment_ids=list(experiments.values()), filter_string=filter_string, output_format="list"
        )


def run_experiment_id(settings: Settings, run_id: str) -> str:
    import mlflow

    with tracking_server(settings):
        return mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(run_id).info.experiment_id


def run_page(settings: Settings, run_id: str, experiment_id: str | None = None) -> str:
    """The run's page in the MLflow UI (its model-training view). The step state keeps the
    experiment id: a reused step links its run without opening the tracking store (~1 s)."""
    experiment = experiment_id or run_experiment_id(settings, run_id)
    return absolute(settings, run_route(experiment, run_id))

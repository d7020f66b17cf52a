"""One Dagster asset per step of the graph, and one asset check per step check: the asset wires the
resources, calls ``Project.materialize`` and reports metadata and the data version. Everything about
the step (deps, group, kinds, code version, description, checks) comes from its declaration."""

from typing import Any

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    RetryRequested,
    asset,
    asset_check,
)

from assets.automation import condition_for
from assets.pipes_launcher import PipesLauncher
from assets.resources import DvcVersioning, FoundrySettings, MLflowTracking
from mai_models.errors import ServiceUnavailable
from mai_models.executor.project import Project
from mai_models.executor.step import Check, Step
from mai_models.graph import project
from mai_models.tracking.mlflow_runs import TAG_DAGSTER_RUN

# Concurrency pools, each limited to one in the instance (`concurrency.pools.default_limit: 1`): DVC
# holds a repository-wide lock, so one light step at a time commits; heavy steps (trainings, model
# evaluations) run one at a time because they compete for the same cores.
DVC_POOL = "dvc"
TRAINING_POOL = "training"
# A step whose network service (DVC remote, MLflow server, object store) did not answer is retried.
SERVICE_RETRIES = 3
SERVICE_RETRY_SECONDS = 20


class StepConfig(Config):
    overrides: list[str] = []
    """Parameter overrides in `key.sub=value` form, as with `dvc exp run -S`."""
    force: bool = False
    """Rebuild even if the stored output already has this version."""


def as_metadata(values: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, MetadataValue):
            meta[key] = value
        elif isinstance(value, dict | list):
            meta[key] = MetadataValue.json(value)
        elif isinstance(value, bool | int | float):
            meta[key] = value
        elif isinstance(value, str) and value.startswith("file://"):
            meta[key] = MetadataValue.url(value)
        else:
            meta[key] = MetadataValue.text(str(value))
    return meta


def step_metadata(stats: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    meta = as_metadata({**stats, **extra})
    for rows_key in ("docs", "kept_docs", "utterances"):
        if rows_key in stats:
            meta["dagster/row_count"] = stats[rows_key]
    return meta


def build_step_asset(
    step: Step, deps: tuple[str, ...], code_version: str, training_cron: str
) -> AssetsDefinition:
    heavy = step.compute == "heavy"

    @asset(
        name=step.name,
        deps=list(deps),
        group_name=step.group,
        code_version=code_version,
        description=step.description,
        kinds=set(step.kinds),
        pool=TRAINING_POOL if heavy else DVC_POOL,
        automation_condition=condition_for(step, training_cron),
    )
    def _step_asset(
        context: AssetExecutionContext,
        config: StepConfig,
        foundry: FoundrySettings,
        mlflow: MLflowTracking,
        dvc: DvcVersioning,
        pipes_subprocess_client: PipesSubprocessClient,
    ) -> MaterializeResult:
        settings = mlflow.apply(foundry.load())
        launcher = PipesLauncher(context, pipes_subprocess_client)
        graph = project(settings, foundry.params(config.overrides), launcher=launcher)
        try:
            done = graph.materialize(
                step.name,
                dvc=dvc.client(settings),
                track=mlflow.enabled,
                tags={TAG_DAGSTER_RUN: context.run.run_id},
                force=config.force,
            )
        except ServiceUnavailable as exc:
            # Outputs already built stay in place: the retry finds them stored and only commits.
            context.log.warning(f"{step.name}: {exc}; retrying in {SERVICE_RETRY_SECONDS} s")
            raise RetryRequested(max_retries=SERVICE_RETRIES, seconds_to_wait=SERVICE_RETRY_SECONDS) from exc
        context.log.info(done.result.summary)
        return MaterializeResult(
            metadata=step_metadata(done.result.stats, done.metadata()),
            data_version=DataVersion(done.result.version),
        )

    return _step_asset


def build_step_check(step: Step, check: Check) -> AssetChecksDefinition:
    severity = AssetCheckSeverity.WARN if check.severity == "warn" else AssetCheckSeverity.ERROR

    @asset_check(asset=step.name, name=check.name, blocking=check.blocking, description=check.description)
    def _check(foundry: FoundrySettings) -> AssetCheckResult:
        result = project(foundry.load(), foundry.params()).run_check(step.name, check.name)
        return AssetCheckResult(
            passed=result.passed,
            severity=severity,
            description=result.description,
            metadata=as_metadata(result.metadata),
        )

    return _check


def graph_assets(graph: Project) -> list[AssetsDefinition]:
    cron = graph.params.automation.training_cron
    return [
        build_step_asset(step, graph.upstream(name), graph.code_version(name), cron)
        for name, step in graph.steps.items()
    ]


def graph_checks(graph: Project) -> list[AssetChecksDefinition]:
    return [build_step_check(step, check) for step in graph.steps.values() for check in step.checks]

"""One Dagster asset per step of the graph, and one asset check per step check: the asset wires the
resources, calls ``Project.materialize`` and reports metadata and the data version. Everything about
the step (deps, group, kinds, code version, description, owners, checks, the launchpad's config)
comes from its declaration; the page's plots and links from ``asset_page``."""

from typing import Any

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetsDefinition,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    RetryRequested,
    asset,
    asset_check,
)

from assets.asset_page import owners, page_metadata, tags
from assets.automation import condition_for
from assets.pipes_launcher import PipesLauncher
from assets.resources import DvcVersioning, FoundrySettings, MLflowTracking
from assets.step_config import config_class
from mai_models.config import PipelineParams
from mai_models.errors import ServiceUnavailable
from mai_models.executor.project import Project
from mai_models.executor.step import Check, Step
from mai_models.graph import project
from mai_models.tracking.mlflow_runs import TAG_DAGSTER_RUN

# Heavy steps (trainings, model evaluations) share one concurrency pool, limited to one in the instance
# (`concurrency.pools.default_limit: 1`), because they compete for the same cores. Light steps take no
# pool, so they overlap (the speech data builds while the tokenizer trains and shards), and their DVC
# commits take turns on the file lock `mai_models.tracking.dvc` holds (DVC's own lock fails, not waits).
TRAINING_POOL = "training"
# The same pools as a run-scoped limit of the multiprocess executor (each step's op tag names its pool).
# A step blocked on an instance pool re-claims its slot with a backoff that grows to 15 s, so without
# this a run lost up to 15 s at every hand-over (measured: 9-14 s between a training's end and the next
# heavy step's start); the executor releases a step held by its own limit as soon as the slot frees.
POOL_TAG = "mai/pool"
RUN_POOL_LIMITS = [{"key": POOL_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
# A step whose network service (DVC remote, MLflow server, object store) did not answer is retried.
SERVICE_RETRIES = 3
SERVICE_RETRY_SECONDS = 20


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
    step: Step, deps: tuple[str, ...], code_version: str, params: PipelineParams
) -> AssetsDefinition:
    pool = TRAINING_POOL if step.compute == "heavy" else None
    step_config = config_class(step, params)

    @asset(
        name=step.name,
        deps=list(deps),
        group_name=step.group,
        code_version=code_version,
        description=step.description,
        kinds=set(step.kinds),
        owners=owners(step),
        tags=tags(step),
        pool=pool,
        op_tags={POOL_TAG: pool} if pool else None,
        automation_condition=condition_for(step, params.automation.training_cron),
    )
    def _step_asset(
        context: AssetExecutionContext,
        config: step_config,
        foundry: FoundrySettings,
        mlflow: MLflowTracking,
        dvc: DvcVersioning,
        pipes_subprocess_client: PipesSubprocessClient,
    ) -> MaterializeResult:
        settings = mlflow.apply(foundry.load())
        launcher = PipesLauncher(context, pipes_subprocess_client)
        graph = project(settings, foundry.params(config.parameter_overrides()), launcher=launcher)
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
            metadata={
                **step_metadata(done.result.stats, done.metadata()),
                **page_metadata(graph, step, done),
            },
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
    return [
        build_step_asset(step, graph.upstream(name), graph.code_version(name), graph.params)
        for name, step in graph.steps.items()
    ]


def graph_checks(graph: Project) -> list[AssetChecksDefinition]:
    return [build_step_check(step, check) for step in graph.steps.values() for check in step.checks]

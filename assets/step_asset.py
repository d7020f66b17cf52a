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
    asset,
    asset_check,
)

from assets.pipes_launcher import PipesLauncher
from assets.resources import DvcVersioning, FoundrySettings, MLflowTracking
from mai_models.executor.project import Project
from mai_models.executor.step import Check, Step
from mai_models.graph import project
from mai_models.tracking.mlflow_runs import TAG_DAGSTER_RUN

DVC_POOL = "dvc"  # DVC holds a repository-wide lock: one asset at a time may commit
# Heavy steps (trainings, model evaluations) carry this tag; the run config lets one run at a time.
COMPUTE_TAG = "mai/compute"


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


def build_step_asset(step: Step, deps: tuple[str, ...], code_version: str) -> AssetsDefinition:
    heavy = step.compute == "heavy"

    @asset(
        name=step.name,
        deps=list(deps),
        group_name=step.group,
        code_version=code_version,
        description=step.description,
        kinds=set(step.kinds),
        # Heavy steps run for minutes: holding the DVC pool would stall every other asset meanwhile.
        pool=None if heavy else DVC_POOL,
        op_tags={COMPUTE_TAG: "training"} if heavy else None,
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
        done = graph.materialize(
            step.name,
            dvc=dvc.client(settings),
            track=mlflow.enabled,
            tags={TAG_DAGSTER_RUN: context.run.run_id},
            force=config.force,
        )
        context.log.info(done.result.summary)
        return MaterializeResult(
            metadata=step_metadata(done.result.stats, done.metadata()),
            data_version=DataVersion(done.result.version),
        )

    return _step_asset


def build_step_check(step: Step, check: Check) -> AssetChecksDefinition:
    @asset_check(asset=step.name, name=check.name, blocking=True, description=check.description)
    def _check(foundry: FoundrySettings) -> AssetCheckResult:
        result = project(foundry.load(), foundry.params()).run_check(step.name, check.name)
        return AssetCheckResult(
            passed=result.passed,
            severity=AssetCheckSeverity.ERROR,
            description=result.description,
            metadata=as_metadata(result.metadata),
        )

    return _check


def graph_assets(graph: Project) -> list[AssetsDefinition]:
    return [
        build_step_asset(step, graph.upstream(name), graph.code_version(name))
        for name, step in graph.steps.items()
    ]


def graph_checks(graph: Project) -> list[AssetChecksDefinition]:
    return [build_step_check(step, check) for step in graph.steps.values() for check in step.checks]

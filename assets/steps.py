"""One Dagster asset per versioned library step (text or speech): the asset only wires resources,
runs ``materialize_step`` and reports metadata and the data version."""

from collections.abc import Callable
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from mai_models.config import PipelineParams
from mai_models.materialize import materialize_step
from mai_models.pipeline import StepPipeline
from mai_models.settings import Settings
from mai_models.tracking.mlflow_runs import TAG_DAGSTER_RUN
from pipelines.resources import DvcVersioning, FoundrySettings, MLflowTracking

DVC_POOL = "dvc"  # DVC holds a repository-wide lock: one asset at a time may commit


class StepConfig(Config):
    overrides: list[str] = []
    """Parameter overrides in `key.sub=value` form, as with `dvc exp run -S`."""
    force: bool = False
    """Rebuild even if the stored output already has this version."""


def step_metadata(stats: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in {**stats, **extra}.items():
        if value is None:
            continue
        if isinstance(value, dict):
            meta[key] = MetadataValue.json(value)
        elif isinstance(value, bool | int | float | str):
            meta[key] = value
        else:
            meta[key] = MetadataValue.text(str(value))
    for rows_key in ("docs", "kept_docs", "utterances"):
        if rows_key in stats:
            meta["dagster/row_count"] = stats[rows_key]
    return meta


def build_step_asset(
    name: str,
    *,
    deps: list[str],
    group: str,
    code_version: str,
    description: str,
    kinds: set[str],
    make_pipeline: Callable[[Settings, PipelineParams], StepPipeline],
    pool: str | None = DVC_POOL,
    op_tags: dict[str, str] | None = None,
) -> AssetsDefinition:
    @asset(
        name=name,
        deps=deps,
        group_name=group,
        code_version=code_version,
        description=description,
        kinds=kinds,
        pool=pool,
        op_tags=op_tags,
    )
    def _step_asset(
        context: AssetExecutionContext,
        config: StepConfig,
        foundry: FoundrySettings,
        mlflow: MLflowTracking,
        dvc: DvcVersioning,
    ) -> MaterializeResult:
        settings = mlflow.apply(foundry.load())
        pipe = make_pipeline(settings, foundry.params(config.overrides))
        done = materialize_step(
            pipe,
            name,
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

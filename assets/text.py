"""Thin Dagster assets over mai_models.text_pipeline: raw -> clean -> tokenizer -> Megatron shards."""

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

from mai_models.materialize import materialize_step
from mai_models.text_pipeline import STEPS, TextPipeline
from mai_models.tracking.mlflow_runs import TAG_DAGSTER_RUN
from pipelines.resources import DvcVersioning, FoundrySettings, MLflowTracking

TEXT_GROUP = "text"
DVC_POOL = "dvc"  # DVC holds a repository-wide lock: one asset at a time may commit


class StepConfig(Config):
    overrides: list[str] = []
    """Parameter overrides in `key.sub=value` form, as with `dvc exp run -S`."""
    force: bool = False
    """Rebuild even if the stored output already has this version."""


def _metadata(stats: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
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
    for rows_key in ("docs", "kept_docs"):
        if rows_key in stats:
            meta["dagster/row_count"] = stats[rows_key]
    return meta


def _build_text_asset(name: str) -> AssetsDefinition:
    step = STEPS[name]

    @asset(
        name=name,
        deps=list(step.upstream),
        group_name=TEXT_GROUP,
        code_version=step.code_version(),
        description=step.description,
        kinds={"python", "parquet"} if "documents" in name else {"python"},
        pool=DVC_POOL,
    )
    def _text_asset(
        context: AssetExecutionContext,
        config: StepConfig,
        foundry: FoundrySettings,
        mlflow: MLflowTracking,
        dvc: DvcVersioning,
    ) -> MaterializeResult:
        settings = mlflow.apply(foundry.load())
        pipe = TextPipeline(settings, foundry.params(config.overrides))
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
            metadata=_metadata(done.result.stats, done.metadata()),
            data_version=DataVersion(done.result.version),
        )

    return _text_asset


raw_documents, clean_documents, bpe_tokenizer, token_shards = (_build_text_asset(n) for n in STEPS)
TEXT_ASSETS = [raw_documents, clean_documents, bpe_tokenizer, token_shards]

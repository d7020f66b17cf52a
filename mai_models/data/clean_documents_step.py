"""clean_documents: normalised, filtered, deduplicated documents split into train/valid/test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.data.document_checks import CLEAN_EXPECTATIONS
from mai_models.data.logged_datasets import raw_dataset, split_datasets
from mai_models.executor.step import StepContext
from mai_models.executor.step import Step


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    from mai_models.data.clean_documents import build_clean

    return build_clean(ctx.params, ctx.input("raw_documents"), out, progress=ctx.progress)


STEP = Step(
    name="clean_documents",
    description="Normalised, filtered, deduplicated documents in train/valid/test Parquet shards.",
    group="text",
    command="data ingest",
    build=build,
    upstream=("raw_documents",),
    params=("clean", "dedup", "split"),
    kinds=frozenset({"python", "parquet"}),
    datasets=lambda ctx: [raw_dataset(ctx.input("raw_documents"), "input"), *split_datasets(ctx.output)],
    checks=(CLEAN_EXPECTATIONS,),
)

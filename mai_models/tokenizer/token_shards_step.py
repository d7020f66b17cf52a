"""token_shards: the clean splits encoded into Megatron-Core IndexedDataset shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.data.logged_datasets import split_datasets
from mai_models.executor.step import Step, StepContext


def build(ctx: StepContext, out: Path) -> tuple[dict[str, Any], dict[str, float]]:
    from mai_models.tokenizer.shards import build_token_shards

    stats = build_token_shards(
        ctx.params.tokenize,
        ctx.input("clean_documents"),
        ctx.input("bpe_tokenizer"),
        out,
        progress=ctx.progress,
    )
    return stats.deterministic(), stats.timing()


STEP = Step(
    name="token_shards",
    description="Megatron-Core IndexedDataset .bin/.idx per split.",
    group="text",
    command="data tokenize",
    build=build,
    upstream=("clean_documents", "bpe_tokenizer"),
    # No params: tokenize.* holds worker counts and batch sizes, which never change the shards.
    datasets=lambda ctx: split_datasets(ctx.input("clean_documents")),
)

"""bpe_tokenizer: byte-level BPE trained on the train split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.data.logged_datasets import split_datasets
from mai_models.executor.step import Step, StepContext


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    from mai_models.tokenizer.bpe import train_tokenizer

    return train_tokenizer(ctx.params.tokenizer, ctx.input("clean_documents"), out)


STEP = Step(
    name="bpe_tokenizer",
    description="Byte-level BPE trained on the train split; loads with PreTrainedTokenizerFast.",
    group="text",
    command="data tokenize",
    build=build,
    upstream=("clean_documents",),
    params=("tokenizer",),
    datasets=lambda ctx: split_datasets(ctx.input("clean_documents"), ("train",)),
)

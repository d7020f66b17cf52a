"""bpe_tokenizer: byte-level BPE trained on the train split, or, with ``tokenizer.freeze_to: champion``,
the ``mai-moe`` champion's tokenizer copied unchanged, so that a warm-started retraining keeps the
token ids its parent learnt. A frozen tokenizer reads no corpus: its version follows the champion's
tokenizer (the hash recorded on the champion's registry version), so new data or a new champion with
the same tokenizer leaves it, and the shards' vocabulary, as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.config import PipelineParams
from mai_models.data.logged_datasets import split_datasets
from mai_models.errors import MaiUserError
from mai_models.executor.step import Step, StepContext
from mai_models.tracking.champion_output import (
    TAG_TOKENIZER_SHA256,
    TRAINING_STEP,
    champion,
    output_dir,
    output_tags,
    version_label,
)
from mai_models.tracking.registry import LM_MODEL


def _frozen(params: PipelineParams) -> bool:
    return params.tokenizer.freeze_to == "champion"


def _champion(ctx: StepContext) -> dict[str, Any] | None:
    key = f"freeze_to/{LM_MODEL}"  # once per project: the build copies what the version names
    if key not in ctx.memo:
        ctx.memo[key] = champion(ctx.settings, LM_MODEL)
    return ctx.memo[key]


def inputs(ctx: StepContext) -> dict[str, Any] | None:
    if not _frozen(ctx.params):
        return None
    found = _champion(ctx)
    if found is None:
        return {"frozen_to": None}
    # A version registered before the hash was recorded is named by its output's data version.
    return {"frozen_to": found["tags"].get(TAG_TOKENIZER_SHA256) or output_tags(found)[0]}


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    from mai_models.tokenizer.bpe import copy_tokenizer, train_tokenizer

    if not _frozen(ctx.params):
        return train_tokenizer(ctx.params.tokenizer, ctx.input("clean_documents"), out)
    found = _champion(ctx)
    if found is None:
        raise MaiUserError(
            f"tokenizer.freeze_to: champion, but {LM_MODEL} has no champion yet: "
            "train and promote a first model with tokenizer.freeze_to: none"
        )
    # The champion's output is the work tree's moe_pretrain output while that is the newest build.
    trained = ctx.settings.data_dir / TRAINING_STEP[LM_MODEL]
    stats = copy_tokenizer(output_dir(ctx.settings, found, trained), out)
    return {**stats, "frozen_to": version_label(found)}


STEP = Step(
    name="bpe_tokenizer",
    description="Byte-level BPE trained on the train split (or the champion's, frozen); loads with "
    "PreTrainedTokenizerFast.",
    group="text",
    command="data tokenize",
    build=build,
    upstream=lambda params: () if _frozen(params) else ("clean_documents",),
    params=("tokenizer",),
    # Frozen, only freeze_to matters: the vocabulary size and frequencies belong to the champion's.
    config=lambda params: {
        "tokenizer": {"freeze_to": "champion"}
        if _frozen(params)
        else params.tokenizer.model_dump(mode="json")
    },
    inputs=inputs,
    datasets=lambda ctx: (
        [] if _frozen(ctx.params) else split_datasets(ctx.input("clean_documents"), ("train",))
    ),
)

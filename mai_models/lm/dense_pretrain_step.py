"""dense_pretrain: the dense baseline, the same run with the MoE layers off and the same active
parameters and tokens. Versioned like the MoE, but not registered: it is a yardstick, not a product.

It always trains from scratch, whatever ``lm.init_from`` says: a yardstick warm started from the MoE
champion would no longer measure what the MoE layers buy, so ``init_from`` never changes its version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.executor.step import Step, StepContext
from mai_models.lm.pretrain import UPSTREAM, build_pretrain, lm_config
from mai_models.lm.train_config import TrainConfig


def _from_scratch(cfg: TrainConfig) -> TrainConfig:
    return cfg.model_copy(update={"init_from": "scratch"})


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    from mai_models.lm.launch import dense_twin
    from mai_models.tokenizer.bpe import load_tokenizer

    vocab = load_tokenizer(ctx.input("bpe_tokenizer")).get_vocab_size()
    return build_pretrain(ctx, out, dense_twin(_from_scratch(ctx.params.lm), vocab))


STEP = Step(
    name="dense_pretrain",
    description="The dense baseline: the MoE run with its MoE layers off, same active parameters and tokens.",
    group="lm",
    command="lm train",
    build=build,
    upstream=UPSTREAM,
    params=("lm",),
    # The twin follows from the MoE config and the tokenizer's vocabulary (an upstream version).
    config=lambda params: {**lm_config(_from_scratch(params.lm)), "twin": "dense"},
    code=("mai_models.lm.entry",),
    kinds=frozenset({"pytorch", "python"}),
    compute="heavy",
    automation="scheduled",
)

"""The language models an evaluation compares: the candidate MoE, its dense twin (same active
parameters and tokens) and the n-gram baseline trained by ``lm_evaluation``."""

from __future__ import annotations

from typing import Any

from mai_models.eval.champions import candidate_version, model_name
from mai_models.executor.step import StepContext
from mai_models.tracking.registry import LM_MODEL

NGRAM_FILE = "ngram.npz"
DENSE_NAME = "dense-baseline"


def candidate_lm(ctx: StepContext) -> Any:
    """The candidate's MegatronLM and its scoring model, named after its registry version."""
    from mai_models.eval.scoring import MegatronScoringModel
    from mai_models.lm.inference import load_pretrained

    lm = load_pretrained(ctx.input("moe_pretrain"))
    return lm, MegatronScoringModel(lm, name=model_name(LM_MODEL, candidate_version(ctx, LM_MODEL)))


def dense_lm(ctx: StepContext) -> Any:
    from mai_models.eval.scoring import MegatronScoringModel
    from mai_models.lm.inference import load_pretrained

    return MegatronScoringModel(load_pretrained(ctx.input("dense_pretrain")), name=DENSE_NAME)

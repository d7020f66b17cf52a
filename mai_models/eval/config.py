"""The ``evaluation`` section of params.yaml: evaluation sizes, the arena and its judge."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    test_docs: int = Field(60, ge=1, description="Held-out test documents for bits per byte")
    lm_eval_limit: int = Field(40, ge=1, description="Items per local lm-eval task")
    ngram_order: int = Field(3, ge=1)
    generation_tokens: int = Field(48, ge=1)
    arena_prompts: int = Field(24, ge=1, description="Pinned prompts drawn from held-out documents")
    bootstrap_rounds: int = Field(100, ge=10)
    judge: Literal["reference-likelihood", "openai"] = "reference-likelihood"
    judge_base_url: str | None = Field(None, description="openai judge: an OpenAI-compatible endpoint")
    judge_model: str | None = None
    tie_tolerance: float = Field(0.01, ge=0, description="Bits per byte within which a battle is a tie")
    tts_sentences: int = Field(8, ge=1, description="Held-out sentences for TTS evaluation")
    rating_prior_ties: float = Field(
        1.0, ge=0, description="Virtual ties per compared pair: keeps ratings finite when one side wins all"
    )
    text_floor: Literal["ngram", "dense", "none"] = Field(
        "ngram", description="The baseline a first language-model candidate must beat to become champion"
    )
    speech_floor: Literal["teacher", "none"] = Field(
        "teacher", description="The baseline a first voice candidate must beat to become champion"
    )
    seed: int = 0

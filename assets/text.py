"""Thin Dagster assets over mai_models.text_pipeline: raw -> clean -> tokenizer -> Megatron shards."""

from assets.steps import build_step_asset
from mai_models.text_pipeline import STEPS, TextPipeline

TEXT_GROUP = "text"

raw_documents, clean_documents, bpe_tokenizer, token_shards = (
    build_step_asset(
        name,
        deps=list(step.upstream),
        group=TEXT_GROUP,
        code_version=step.code_version(),
        description=step.description,
        kinds={"python", "parquet"} if "documents" in name else {"python"},
        make_pipeline=TextPipeline,
    )
    for name, step in STEPS.items()
)
TEXT_ASSETS = [raw_documents, clean_documents, bpe_tokenizer, token_shards]

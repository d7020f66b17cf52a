from dagster import AssetSelection, define_asset_job

from assets.text import TEXT_GROUP

text_data_job = define_asset_job(
    "text_data_job",
    selection=AssetSelection.groups(TEXT_GROUP),
    description="Ingest, validate, dedup, tokenizer and Megatron shards; unchanged steps are reused.",
)

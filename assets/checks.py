"""Blocking great-expectations checks on raw and clean documents: a failure stops downstream assets
in the same run and shows its one-line reason in the Dagster UI."""

from dagster import AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, asset_check

from mai_models.data.validate_stage import validate_stage
from mai_models.text_pipeline import TextPipeline
from pipelines.resources import FoundrySettings


def _build_check(stage: str, description: str) -> AssetChecksDefinition:
    @asset_check(asset=stage, name=f"{stage}_expectations", blocking=True, description=description)
    def _check(foundry: FoundrySettings) -> AssetCheckResult:
        pipe = TextPipeline(foundry.load(), foundry.params())
        report = validate_stage(pipe, stage)
        return AssetCheckResult(
            passed=report.passed,
            severity=AssetCheckSeverity.ERROR,
            description=report.summary(),
            metadata=report.to_metadata(),
        )

    return _check


raw_documents_expectations = _build_check(
    "raw_documents", "GX suite: rows present, text and doc_id not null, unique ids, expected sources and mix."
)
clean_documents_expectations = _build_check(
    "clean_documents",
    "GX suite: non-null text, unique ids, length bounds, splits, reject and dedup rates, source mix.",
)
TEXT_CHECKS = [raw_documents_expectations, clean_documents_expectations]

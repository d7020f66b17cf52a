"""Blocking great-expectations checks: a failure stops downstream assets in the same run and shows
its one-line reason in the Dagster UI."""

from collections.abc import Callable

from dagster import AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, asset_check

from mai_models.data.validate_stage import validate_stage
from mai_models.data.validation import ValidationReport
from mai_models.speech_pipeline import SpeechPipeline
from mai_models.text_pipeline import TextPipeline
from mai_models.tts.validate_stage import validate_speech_stage
from pipelines.resources import FoundrySettings

Validate = Callable[[FoundrySettings], ValidationReport]


def _build_check(stage: str, description: str, validate: Validate) -> AssetChecksDefinition:
    @asset_check(asset=stage, name=f"{stage}_expectations", blocking=True, description=description)
    def _check(foundry: FoundrySettings) -> AssetCheckResult:
        report = validate(foundry)
        return AssetCheckResult(
            passed=report.passed,
            severity=AssetCheckSeverity.ERROR,
            description=report.summary(),
            metadata=report.to_metadata(),
        )

    return _check


def _text(stage: str) -> Validate:
    return lambda foundry: validate_stage(TextPipeline(foundry.load(), foundry.params()), stage)


def _speech(foundry: FoundrySettings) -> ValidationReport:
    return validate_speech_stage(SpeechPipeline(foundry.load(), foundry.params()))


raw_documents_expectations = _build_check(
    "raw_documents",
    "GX suite: rows present, text and doc_id not null, unique ids, expected sources and mix.",
    _text("raw_documents"),
)
clean_documents_expectations = _build_check(
    "clean_documents",
    "GX suite: non-null text, unique ids, length bounds, splits, reject and dedup rates, source mix.",
    _text("clean_documents"),
)
speech_corpus_expectations = _build_check(
    "speech_corpus",
    "GX suite: sample rate and mono, duration, chars/s, silence and clipping bounds, non-empty "
    "transcripts, unique ids, enough utterances and minutes, reject rate.",
    _speech,
)
TEXT_CHECKS = [raw_documents_expectations, clean_documents_expectations]
SPEECH_CHECKS = [speech_corpus_expectations]

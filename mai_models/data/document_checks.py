"""The great-expectations suites of the raw and clean document tables, as blocking step checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from mai_models.data.clean_documents import read_clean_split
from mai_models.data.ingest import expected_source_labels
from mai_models.data.schema import RAW_DOCUMENTS_FILE, SPLITS
from mai_models.data.validation import ValidationReport, validate_clean, validate_raw
from mai_models.executor.step import Check, CheckResult
from mai_models.executor.versioning import read_manifest

if TYPE_CHECKING:
    from mai_models.config import PipelineParams
    from mai_models.executor.step import StepContext


def _sources(params: PipelineParams) -> tuple[list[str], list[str]]:
    """The sources whose share is demanded, and the optional ones (landing drops may be empty)."""
    sources = params.ingest.sources
    required = params.validation.expected_sources or expected_source_labels(
        [s for s in sources if s.kind != "landing"]
    )
    return required, [s.label for s in sources if s.kind == "landing"]


def validate_raw_documents(ctx: StepContext) -> ValidationReport:
    required, optional = _sources(ctx.params)
    frame = pq.read_table(ctx.output / RAW_DOCUMENTS_FILE).to_pandas()
    return validate_raw(frame, ctx.params.validation, required, optional_sources=optional)


def validate_clean_documents(ctx: StepContext) -> ValidationReport:
    required, optional = _sources(ctx.params)
    stats = (read_manifest(ctx.output) or {}).get("stats", {})
    frame = pa.concat_tables(read_clean_split(ctx.output, s) for s in SPLITS).to_pandas()
    return validate_clean(
        frame, stats, ctx.params.validation, ctx.params.clean, required, optional_sources=optional
    )


def report_check(report: ValidationReport) -> CheckResult:
    return CheckResult(report.passed, report.summary(), report.to_metadata())


RAW_EXPECTATIONS = Check(
    "raw_documents_expectations",
    "GX suite: rows present, text and doc_id not null, unique ids, expected sources and mix.",
    lambda ctx: report_check(validate_raw_documents(ctx)),
)
CLEAN_EXPECTATIONS = Check(
    "clean_documents_expectations",
    "GX suite: non-null text, unique ids, length bounds, splits, reject and dedup rates, source mix.",
    lambda ctx: report_check(validate_clean_documents(ctx)),
)

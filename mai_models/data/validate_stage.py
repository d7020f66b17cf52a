"""Run the great-expectations suite that belongs to a materialised text stage."""

from __future__ import annotations

import pyarrow.parquet as pq

from mai_models.data.clean_documents import read_clean_split
from mai_models.data.ingest import expected_source_labels
from mai_models.data.schema import RAW_DOCUMENTS_FILE, SPLITS
from mai_models.data.validation import ValidationReport, validate_clean, validate_raw
from mai_models.errors import MaiUserError
from mai_models.steps import read_manifest
from mai_models.text_pipeline import TextPipeline


def validate_stage(pipe: TextPipeline, stage: str) -> ValidationReport:
    params = pipe.params
    cfg = params.validation
    sources = params.ingest.sources
    required = cfg.expected_sources or expected_source_labels([s for s in sources if s.kind != "landing"])
    # Landing drops are optional: their documents are allowed, but no share is demanded of them.
    optional = [s.label for s in sources if s.kind == "landing"]
    out_dir = pipe.out_dir(stage)
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise MaiUserError(f"{stage} is not materialised at {out_dir}")
    if stage == "raw_documents":
        frame = pq.read_table(out_dir / RAW_DOCUMENTS_FILE).to_pandas()
        return validate_raw(frame, cfg, required, optional_sources=optional)
    if stage == "clean_documents":
        import pyarrow as pa

        frame = pa.concat_tables(read_clean_split(out_dir, s) for s in SPLITS).to_pandas()
        return validate_clean(
            frame, manifest["stats"], cfg, params.clean, required, optional_sources=optional
        )
    raise MaiUserError(f"no validation suite for {stage}")

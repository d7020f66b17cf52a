"""raw_documents: every configured source read into one Parquet table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.data.document_checks import RAW_EXPECTATIONS
from mai_models.data.logged_datasets import raw_dataset
from mai_models.executor.step import StepContext
from mai_models.executor.step import Step


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    from mai_models.data.ingest import build_raw

    return build_raw(ctx.params.ingest, ctx.settings.root, out, progress=ctx.progress)


def _inputs(ctx: StepContext) -> Any:
    # New drops or edited source files change the version even when no parameter changed.
    from mai_models.data.ingest import inputs_fingerprint

    return inputs_fingerprint(ctx.params.ingest, ctx.settings.root)


STEP = Step(
    name="raw_documents",
    description="Every configured source read into one Parquet table; unreadable records quarantined.",
    group="text",
    command="data ingest",
    build=build,
    params=("ingest",),
    kinds=frozenset({"python", "parquet"}),
    inputs=_inputs,
    datasets=lambda ctx: [raw_dataset(ctx.output, "ingested")],
    checks=(RAW_EXPECTATIONS,),
    watch=lambda params: tuple(s.path for s in params.ingest.sources if s.path),
)

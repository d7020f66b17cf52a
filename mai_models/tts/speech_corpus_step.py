"""speech_corpus: every speech source decoded, resampled, trimmed and screened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.executor.step import Check, CheckResult, Step, StepContext
from mai_models.executor.versioning import read_manifest
from mai_models.tracking.mlflow_runs import DatasetInput

DEMO = "speech_demo_dataset"
UTTERANCES = "utterances.parquet"


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    from mai_models.tts.corpus import build_speech_corpus
    from mai_models.tts.frontend import normalize_text

    # A demo dataset left by an earlier setup is never read once `demo` is no longer a source.
    demo = ctx.input(DEMO) if ctx.has_input(DEMO) else None
    return build_speech_corpus(
        ctx.params.speech,
        ctx.settings.root,
        demo,
        out,
        normalize=lambda text: normalize_text(text).text,
    )


def _inputs(ctx: StepContext) -> Any:
    from mai_models.tts.source_fingerprint import inputs_fingerprint

    return inputs_fingerprint(ctx.params.speech, ctx.settings.root)


def corpus_dataset(corpus_dir: Path, context: str) -> DatasetInput:
    import pandas as pd

    columns = ["utt_id", "speaker", "source", "split", "seconds", "chars_per_second"]
    table = corpus_dir / UTTERANCES
    return DatasetInput("speech_corpus", table, pd.read_parquet(table, columns=columns), context)


def _expectations(ctx: StepContext) -> CheckResult:
    import pandas as pd

    from mai_models.tts.validation import validate_speech_corpus

    stats = (read_manifest(ctx.output) or {}).get("stats", {})
    frame = pd.read_parquet(ctx.output / UTTERANCES)
    report = validate_speech_corpus(frame, stats, ctx.params.speech, ctx.params.speech_validation)
    return CheckResult(report.passed, report.summary(), report.to_metadata())


STEP = Step(
    name="speech_corpus",
    description="Every speech source decoded, resampled, trimmed and screened; bad clips quarantined.",
    group="speech",
    command="tts build",
    build=build,
    upstream=lambda params: (DEMO,) if params.speech.uses_demo else (),
    params=("speech",),
    config=lambda params: {"speech": params.speech.model_dump(mode="json", exclude={"demo"})},
    kinds=frozenset({"python", "wav", "parquet"}),
    inputs=_inputs,
    datasets=lambda ctx: [corpus_dataset(ctx.output, "output")],
    watch=lambda params: tuple(s.path for s in params.speech.sources if s.path),
    checks=(
        Check(
            "speech_corpus_expectations",
            "GX suite: sample rate and mono, duration, chars/s, silence and clipping bounds, non-empty "
            "transcripts, unique ids, enough utterances and minutes, reject rate.",
            _expectations,
        ),
    ),
)

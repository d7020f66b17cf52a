"""mai_voice: the ONNX voice bundle, verified against torch, with held-out samples and WER, registered
in MLflow as a candidate version of the voice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mai_models.executor.step import Step, StepContext
from mai_models.tracking.registry import VOICE_MODEL
from mai_models.tts.tracked_training import metrics_sink

DEMO = "speech_demo_dataset"


def build(ctx: StepContext, out: Path) -> tuple[dict[str, Any], dict[str, float]]:
    from mai_models.tts.release import build_voice_release

    sink = metrics_sink(ctx)
    try:
        return build_voice_release(
            ctx.params,
            acoustic_dir=ctx.input("tts_acoustic"),
            vocoder_dir=ctx.input("tts_vocoder"),
            demo_dir=ctx.input(DEMO) if ctx.has_input(DEMO) else None,
            corpus_dir=ctx.input("speech_corpus"),
            out=out,
            sink=sink,
        )
    finally:
        sink.close()


def register(ctx: StepContext, run_id: str | None, dvc_hash: str | None) -> dict[str, Any]:
    if run_id is None:
        return {}
    from mai_models.executor.versioning import current_version
    from mai_models.tracking.registry import register_candidate
    from mai_models.tracking.warm_start import TAG_PARENT_VERSION, read_record

    out = ctx.output
    report = json.loads((out / "report.json").read_text())
    upstream = ctx.upstream_versions()
    # The models a retraining warm starts from are upstream of the bundle: name their DVC outputs too.
    hashes = {f"mai.upstream.{k}.dvc_hash": h for k in upstream if (h := ctx.state(k).get("dvc_hash"))}
    parents = [(read_record(ctx.input(k)) or {}).get("parent") for k in ("tts_acoustic", "tts_vocoder")]
    tags = {
        "mai.bundle_uri": (out / "bundle").as_uri(),
        "mai.data_version": current_version(out) or "",
        **({"mai.dvc_hash": dvc_hash} if dvc_hash else {}),
        **{f"mai.upstream.{k}": v for k, v in upstream.items()},
        **hashes,
        "mai.teacher": json.dumps(report.get("teacher", {}), sort_keys=True),
        # The voice continues from the version its models started from (the acoustic model's first).
        TAG_PARENT_VERSION: next((p for p in parents if p), "none"),
    }
    metrics = {k: v for k, v in report["metrics"].items() if isinstance(v, int | float)}
    params = {"preset": ctx.params.tts.preset, **report["parameters"]}
    version = register_candidate(ctx.settings, VOICE_MODEL, run_id, tags, params, metrics)
    return {"model_version": version, "registered_model": VOICE_MODEL}


STEP = Step(
    name="mai_voice",
    description="ONNX voice bundle, verified against torch; held-out samples and WER; registered mai-voice.",
    group="speech",
    command="tts build",
    build=build,
    # The demo's held-out sentences (read by the teacher) are the WER references while it is a source.
    upstream=lambda params: (
        *((DEMO,) if params.speech.uses_demo else ()),
        "speech_corpus",
        "tts_acoustic",
        "tts_vocoder",
    ),
    params=("tts.wer_sentences",),
    kinds=frozenset({"onnx", "mlflow"}),
    compute="heavy",
    after_commit=register,
)

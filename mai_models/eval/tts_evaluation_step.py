"""tts_evaluation: RTF, MCD-DTW, F0 RMSE, WER/CER and DNSMOS of the candidate voice, of its teacher and
of the champion voice, per utterance, on held-out references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.eval.champions import (
    attach_to_model_version,
    candidate_version,
    dump,
    model_name,
    opponent_dir,
    opponent_versions,
)
from mai_models.executor.step import Step, StepContext
from mai_models.tracking.registry import VOICE_MODEL

DEMO = "speech_demo_dataset"


def build(ctx: StepContext, out: Path) -> tuple[dict[str, Any], dict[str, float]]:
    from mai_models.eval.tts_metrics import evaluate_systems, load_references, voice_synthesizer
    from mai_models.tts.release import heldout_references
    from mai_models.tts.teacher import pick_teacher

    cfg = ctx.params.evaluation
    if ctx.has_input(DEMO):
        heldout = ctx.input(DEMO) / "heldout"
        if not (heldout / "metadata.csv").exists():
            raise MaiUserError(f"no held-out speech at {heldout}: the TTS evaluation needs reference audio")
        refs = load_references(heldout, limit=cfg.tts_sentences)
    else:
        # Without the demo source, the corpus's own validation recordings (never trained on) are the
        # references, as for the voice's release report.
        found, _ = heldout_references(None, ctx.input("speech_corpus"), cfg.tts_sentences)
        refs = [{**r, "normalized_text": r["text"], "audio_path": r.pop("audio")} for r in found]
        if not refs:
            raise MaiUserError("speech_corpus has no validation clips to evaluate the voice on")
    voice = model_name(VOICE_MODEL, candidate_version(ctx, VOICE_MODEL))
    demo = ctx.params.speech.demo
    # The teacher's WER is the ceiling a voice trained on it can reach; the champion voice speaks the
    # same sentences, so the speech arena can compare all three.
    teacher = pick_teacher(demo.teacher, demo.flite_voice, demo.espeak_voice)
    teacher_name = f"teacher:{teacher.name}-{teacher.voice}"
    systems = {
        voice: voice_synthesizer(ctx.input("mai_voice") / "bundle", ctx.params.tts.threads),
        teacher_name: teacher.synthesize,
    }
    champion = opponent_dir(ctx, VOICE_MODEL)
    if champion:
        systems[champion[0]] = voice_synthesizer(champion[1] / "bundle", ctx.params.tts.threads)
    frame, summaries = evaluate_systems(systems, refs)
    # Timings stay out of the versioned table (they differ per run); the summary and MLflow keep them.
    timing = [c for c in frame.columns if c.endswith("_time_s") or c in ("synth_seconds", "rtf")]
    frame.drop(columns=timing).to_parquet(out / "per_utterance.parquet", index=False)
    dump(out / "summary.json", {"candidate": voice, "teacher": teacher_name, "systems": summaries})
    stats = {
        name: {
            k: round(v, 4)
            for k, v in s.items()
            if k in ("wer", "cer", "mean_mcd_db", "mean_f0_rmse_hz", "mean_dnsmos_ovrl")
        }
        for name, s in summaries.items()
    }
    timings = {f"{name}_rtf": s["rtf"] for name, s in summaries.items()}
    return {"candidate": voice, "utterances": len(refs), "systems": stats}, timings


STEP = Step(
    name="tts_evaluation",
    description="RTF, MCD-DTW, F0 RMSE, WER/CER and DNSMOS of the voice and of its teacher, per utterance.",
    group="evaluation",
    command="eval build",
    build=build,
    # The references are the demo's held-out set while demo is a speech source, otherwise the
    # corpus's validation recordings (never trained on).
    upstream=lambda params: ("mai_voice", DEMO if params.speech.uses_demo else "speech_corpus"),
    params=("evaluation",),
    config=lambda params: {
        "evaluation": params.evaluation.model_dump(mode="json", include={"tts_sentences"})
    },
    kinds=frozenset({"python", "mlflow"}),
    compute="heavy",
    inputs=lambda ctx: opponent_versions(ctx, (VOICE_MODEL,)),
    artifacts=("summary.json", "per_utterance.parquet"),
    after_commit=lambda ctx, run_id, dvc_hash: attach_to_model_version(
        ctx, VOICE_MODEL, ctx.output / "summary.json"
    ),
)

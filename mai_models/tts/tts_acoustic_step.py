"""tts_acoustic: the FastSpeech2-style acoustic model, durations from monotonic alignment search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.executor.step import Step, StepContext
from mai_models.tts.tracked_training import train_tracked, tts_config


def build(ctx: StepContext, out: Path) -> tuple[dict[str, Any], dict[str, float]]:
    return train_tracked(ctx, "acoustic", ctx.input("speech_features"), out)


STEP = Step(
    name="tts_acoustic",
    description="FastSpeech2-style acoustic model, durations from monotonic alignment search.",
    group="speech",
    command="tts build",
    build=build,
    upstream=("speech_features",),
    params=("tts",),
    config=lambda params: {"tts": tts_config(params, {"vocoder", "wer_sentences"})},
    kinds=frozenset({"pytorch"}),
    compute="heavy",
    automation="scheduled",
)

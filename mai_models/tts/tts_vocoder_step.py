"""tts_vocoder: the Vocos-style iSTFT vocoder, trained on the corpus audio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.executor.step import Step, StepContext
from mai_models.tts.tracked_training import train_tracked, tts_config


def build(ctx: StepContext, out: Path) -> tuple[dict[str, Any], dict[str, float]]:
    return train_tracked(ctx, "vocoder", ctx.input("speech_corpus"), out)


STEP = Step(
    name="tts_vocoder",
    description="Vocos-style iSTFT vocoder, multi-resolution STFT loss.",
    group="speech",
    command="tts build",
    build=build,
    upstream=("speech_corpus",),
    params=("tts", "features"),
    config=lambda params: {
        "tts": tts_config(params, {"acoustic", "wer_sentences"}),
        "features": params.features.model_dump(mode="json"),
    },
    kinds=frozenset({"pytorch"}),
    compute="heavy",
    automation="scheduled",
)

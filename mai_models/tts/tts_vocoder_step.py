"""tts_vocoder: the Vocos-style iSTFT vocoder, trained on the corpus audio. With
``tts.init_from: champion`` it starts from the champion voice's vocoder (the parent is part of its
version)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.config import PipelineParams
from mai_models.executor.step import Step, StepContext
from mai_models.tracking.warm_start import WARM_START_FILE
from mai_models.tts.tracked_training import train_tracked, tts_config, voice_inputs, voice_start


def _config(params: PipelineParams) -> dict[str, Any]:
    return {
        "tts": tts_config(params, {"acoustic", "wer_sentences"}),
        "features": params.features.model_dump(mode="json"),
    }


def build(ctx: StepContext, out: Path) -> tuple[dict[str, Any], dict[str, float]]:
    start = voice_start(ctx, _config(ctx.params))
    return train_tracked(ctx, "vocoder", ctx.input("speech_corpus"), out, start)


STEP = Step(
    name="tts_vocoder",
    description="Vocos-style iSTFT vocoder, multi-resolution STFT loss.",
    group="speech",
    command="tts build",
    build=build,
    upstream=("speech_corpus",),
    params=("tts", "features"),
    config=_config,
    kinds=frozenset({"pytorch"}),
    compute="heavy",
    automation="scheduled",
    inputs=lambda ctx: voice_inputs(ctx, _config(ctx.params)),
    artifacts=(WARM_START_FILE,),
)

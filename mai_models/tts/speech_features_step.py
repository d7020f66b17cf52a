"""speech_features: phoneme ids and log-mel frames of every kept utterance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.executor.step import Step, StepContext
from mai_models.tts.speech_corpus_step import corpus_dataset


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    from mai_models.tts.features import build_speech_features

    p = ctx.params
    return build_speech_features(p.features, p.speech.sample_rate, ctx.input("speech_corpus"), out)


STEP = Step(
    name="speech_features",
    description="Phoneme ids (gruut G2P) and 80-bin log-mel frames, with the phoneme vocabulary.",
    group="speech",
    command="tts build",
    build=build,
    upstream=("speech_corpus",),
    params=("features", "speech.sample_rate"),
    kinds=frozenset({"python", "numpy"}),
    datasets=lambda ctx: [corpus_dataset(ctx.input("speech_corpus"), "input")],
)

"""speech_demo_dataset: SYNTHETIC LJSpeech-format speech, corpus sentences read by a teacher
synthesizer. A step only while ``speech.sources`` lists the ``demo`` source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.executor.step import Step, StepContext

NAME = "speech_demo_dataset"


def teacher(ctx: StepContext) -> Any:
    from mai_models.tts.teacher import pick_teacher

    demo = ctx.params.speech.demo
    return pick_teacher(demo.teacher, demo.flite_voice, demo.espeak_voice)


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    from mai_models.tts.demo_dataset import build_demo_speech_dataset

    return build_demo_speech_dataset(ctx.params.speech.demo, ctx.input("clean_documents"), out)


STEP = Step(
    name=NAME,
    description="SYNTHETIC LJSpeech-format speech: corpus sentences read by a teacher synthesizer.",
    group="speech",
    command="tts build",
    build=build,
    upstream=("clean_documents",),
    params=("speech.demo",),
    kinds=frozenset({"python", "wav"}),
    enabled=lambda params: params.speech.uses_demo,
    # The resolved teacher: flite and espeak-ng read the same sentences differently.
    inputs=lambda ctx: teacher(ctx).info(),
)

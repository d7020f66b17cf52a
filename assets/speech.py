"""Thin Dagster assets over mai_models.speech_pipeline: synthetic demo speech -> corpus -> features
-> acoustic model and vocoder -> the `mai-voice` release (ONNX bundle, samples, WER, registry)."""

from assets.steps import DVC_POOL, build_step_asset
from mai_models.launcher import TRAINING_TAG
from mai_models.speech_pipeline import STEPS, SpeechPipeline

SPEECH_GROUP = "speech"
TRAINING_STEPS = ("tts_acoustic", "tts_vocoder")

_KINDS = {
    "speech_demo_dataset": {"python", "wav"},
    "speech_corpus": {"python", "wav", "parquet"},
    "speech_features": {"python", "numpy"},
    "tts_acoustic": {"pytorch"},
    "tts_vocoder": {"pytorch"},
    "mai_voice": {"onnx", "mlflow"},
}

SPEECH_ASSETS = [
    build_step_asset(
        name,
        deps=list(step.upstream),
        group=SPEECH_GROUP,
        code_version=step.code_version(),
        description=step.description,
        kinds=_KINDS[name],
        make_pipeline=SpeechPipeline,
        # Training runs for minutes: holding the DVC pool would stall every other asset meanwhile.
        pool=None if name in TRAINING_STEPS else DVC_POOL,
        op_tags={TRAINING_TAG: "training"} if name in TRAINING_STEPS else None,
    )
    for name, step in STEPS.items()
]

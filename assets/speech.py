"""Thin Dagster assets over mai_models.speech_pipeline: synthetic demo speech -> corpus -> features
-> acoustic model and vocoder -> the `mai-voice` release (ONNX bundle, samples, WER, registry)."""

from assets.steps import build_step_asset
from mai_models.speech_pipeline import STEPS, SpeechPipeline

SPEECH_GROUP = "speech"

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
    )
    for name, step in STEPS.items()
]

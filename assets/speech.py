"""Thin Dagster assets over mai_models.speech_pipeline: (synthetic demo speech ->) corpus -> features
-> acoustic model and vocoder -> the `mai-voice` release (ONNX bundle, samples, WER, registry)."""

from dagster import AssetsDefinition

from assets.steps import DVC_POOL, build_step_asset
from mai_models.config import PipelineParams
from mai_models.launcher import TRAINING_TAG
from mai_models.speech_pipeline import STEPS, SpeechPipeline, speech_steps, speech_upstream
from pipelines.resources import FoundrySettings

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


def speech_assets(params: PipelineParams) -> list[AssetsDefinition]:
    """The assets of the steps ``params.speech.sources`` need, wired as the library wires them: without
    the `demo` source there is no demo dataset, so the `speech_job` never touches the text plane."""
    return [
        build_step_asset(
            name,
            deps=list(speech_upstream(params, name)),
            group=SPEECH_GROUP,
            code_version=STEPS[name].code_version(),
            description=STEPS[name].description,
            kinds=_KINDS[name],
            make_pipeline=SpeechPipeline,
            # Training runs for minutes: holding the DVC pool would stall every other asset meanwhile.
            pool=None if name in TRAINING_STEPS else DVC_POOL,
            op_tags={TRAINING_TAG: "training"} if name in TRAINING_STEPS else None,
        )
        for name in speech_steps(params)
    ]


# Dagster fixes an asset's deps when the code location loads, so they come from the parameters of the
# project the default `foundry` resource points at (as in pipelines/definitions.py); after editing
# `speech.sources`, reload the code location.
SPEECH_ASSETS = speech_assets(FoundrySettings().params())

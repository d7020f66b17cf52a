"""Run the great-expectations suite of the materialised ``speech_corpus``."""

from __future__ import annotations

import pandas as pd

from mai_models.data.validation import ValidationReport
from mai_models.errors import MaiUserError
from mai_models.speech_pipeline import SpeechPipeline
from mai_models.steps import read_manifest
from mai_models.tts.validation import validate_speech_corpus


def validate_speech_stage(pipe: SpeechPipeline) -> ValidationReport:
    out_dir = pipe.out_dir("speech_corpus")
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise MaiUserError(f"speech_corpus is not materialised at {out_dir}")
    frame = pd.read_parquet(out_dir / "utterances.parquet")
    return validate_speech_corpus(frame, manifest["stats"], pipe.params.speech, pipe.params.speech_validation)

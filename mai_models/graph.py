"""The step graph: every step of the factory, in build order. Each is declared in its stage's folder;
the Dagster assets, the DVC stages, the CLI's ``--only`` choices, the demo report and the submission's
lineage are all derived from this list. A new step is one file plus one line here."""

from __future__ import annotations

from typing import Any

from mai_models.config import PipelineParams
from mai_models.data import clean_documents_step, raw_documents_step
from mai_models.eval import arena_step, champion_step, lm_evaluation_step, tts_evaluation_step
from mai_models.executor.project import Project
from mai_models.executor.step import Step
from mai_models.export import arena_submission_step, hf_export_step
from mai_models.lm import dense_pretrain_step, moe_pretrain_step
from mai_models.settings import Settings
from mai_models.tokenizer import bpe_tokenizer_step, token_shards_step
from mai_models.tts import (
    mai_voice_step,
    speech_corpus_step,
    speech_demo_dataset_step,
    speech_features_step,
    tts_acoustic_step,
    tts_vocoder_step,
)

STEPS: tuple[Step, ...] = (
    raw_documents_step.STEP,
    clean_documents_step.STEP,
    bpe_tokenizer_step.STEP,
    token_shards_step.STEP,
    moe_pretrain_step.STEP,
    dense_pretrain_step.STEP,
    speech_demo_dataset_step.STEP,
    speech_corpus_step.STEP,
    speech_features_step.STEP,
    tts_acoustic_step.STEP,
    tts_vocoder_step.STEP,
    mai_voice_step.STEP,
    hf_export_step.STEP,
    lm_evaluation_step.STEP,
    tts_evaluation_step.STEP,
    arena_step.STEP,
    champion_step.STEP,
    arena_submission_step.STEP,
)
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(s.group for s in STEPS))
COMMANDS: dict[str, tuple[str, ...]] = {
    command: tuple(s.name for s in STEPS if s.command == command)
    for command in dict.fromkeys(s.command for s in STEPS)
}


def project(settings: Settings, params: PipelineParams, **kwargs: Any) -> Project:
    """This project's graph: the steps its parameters enable, bound to where its data lives."""
    return Project(settings, params, STEPS, **kwargs)


def load_project(overrides: list[str] | None = None, **kwargs: Any) -> Project:
    """The project of the current directory (``mai.yaml``, ``MAI_*``), its params with ``overrides``."""
    from mai_models.config import load_params
    from mai_models.settings import load_settings

    settings = load_settings()
    return project(settings, load_params(settings.params_file, overrides), **kwargs)

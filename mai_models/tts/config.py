"""Typed parameters of the speech plane: the ``speech``, ``speech_validation``, ``features`` and ``tts``
sections of params.yaml (the same ``key.sub=value`` overrides as the text plane)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mai_models.precision import Precision

SpeechSourceKind = Literal["demo", "ljspeech", "piper", "lhotse", "hf_disk"]
TeacherName = Literal["auto", "flite", "espeak"]
TTSPresetName = Literal["tiny", "demo", "quality"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpeechSourceConfig(_Strict):
    """One speech input. ``demo`` is the synthetic teacher dataset (``speech_demo_dataset``)."""

    kind: SpeechSourceKind
    name: str | None = Field(None, description="Label stored in each utterance's `source` column")
    path: str | None = Field(None, description="Dataset directory or manifest, relative to the project root")
    speaker: str | None = Field(None, description="Speaker label when the format has none")
    audio_field: str = Field("audio", description="hf_disk: the Audio column")
    text_field: str = Field("text", description="hf_disk: the transcript column")

    @model_validator(mode="after")
    def _path_needed(self) -> SpeechSourceConfig:
        if self.kind != "demo" and not self.path:
            raise ValueError(f"speech source kind '{self.kind}' needs a path")
        return self

    @property
    def label(self) -> str:
        return self.name or (
            self.kind if self.kind == "demo" else f"{self.kind}:{Path(self.path or '').name}"
        )


class DemoSpeechConfig(_Strict):
    """The synthetic demo dataset: sentences of the text corpus read by a teacher synthesizer."""

    sentences: int = Field(300, ge=1, description="Training sentences, from the train split")
    heldout_sentences: int = Field(20, ge=0, description="Held-out sentences (test split) for WER")
    min_words: int = Field(5, ge=1)
    max_words: int = Field(22, ge=1)
    teacher: TeacherName = Field("auto", description="auto: flite when installed, else espeak-ng")
    flite_voice: str = "slt"
    espeak_voice: str = "en-us"
    seed: int = 0


class SpeechConfig(_Strict):
    sources: list[SpeechSourceConfig] = Field(default_factory=lambda: [SpeechSourceConfig(kind="demo")])
    demo: DemoSpeechConfig = Field(default_factory=DemoSpeechConfig)
    sample_rate: int = Field(22050, gt=0, description="Model rate: every clip is resampled to it")
    trim_top_db: float = Field(
        40.0, gt=0, description="Leading/trailing audio this far below peak is trimmed"
    )
    min_seconds: float = Field(0.5, gt=0)
    max_seconds: float = Field(15.0, gt=0)
    min_chars_per_second: float = Field(4.0, ge=0)
    max_chars_per_second: float = Field(30.0, gt=0)
    max_silence_ratio: float = Field(0.6, ge=0, le=1, description="Silent share of the trimmed clip")
    max_clipping_ratio: float = Field(0.002, ge=0, le=1, description="Share of samples at full scale")
    valid_fraction: float = Field(0.05, ge=0, lt=0.5)
    split_salt: str = "mai-speech-split-v1"

    @property
    def uses_demo(self) -> bool:
        """Whether the synthetic demo dataset is one of the sources (and so a step of the graph)."""
        return any(source.kind == "demo" for source in self.sources)


class SpeechValidationConfig(_Strict):
    """Blocking checks on the kept corpus (per-clip thresholds are enforced by quarantine)."""

    min_utterances: int = Field(20, ge=1)
    min_total_minutes: float = Field(1.0, ge=0)
    max_reject_rate: float = Field(0.3, ge=0, le=1)


class FeatureConfig(_Strict):
    n_mels: int = Field(80, ge=8)
    n_fft: int = Field(1024, ge=64)
    win_length: int = Field(1024, ge=64)
    hop_length: int = Field(256, ge=16)
    f_min: float = Field(0.0, ge=0)
    f_max: float = Field(8000.0, gt=0)


class BudgetOverrides(_Strict):
    """Overrides of the preset's training budget; unset fields keep the preset's."""

    steps: int | None = Field(None, ge=1, description="Default: the preset's")
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    precision: Precision | None = Field(
        None, description="auto | fp32 | bf16 (autocast: bf16 networks; weights, alignment, losses fp32)"
    )


class TTSConfig(_Strict):
    preset: TTSPresetName = "demo"
    seed: int = 1234
    threads: int = Field(2, ge=1, description="torch threads per training process")
    acoustic: BudgetOverrides = Field(default_factory=BudgetOverrides)
    vocoder: BudgetOverrides = Field(default_factory=BudgetOverrides)
    eval_interval: int | None = Field(None, ge=1, description="Steps between logged samples; default preset")
    checkpoint_interval: int = Field(200, ge=1)
    wer_sentences: int = Field(12, ge=0, description="Held-out sentences scored by pocketsphinx")
    init_from: Literal["scratch", "champion"] = Field(
        "scratch",
        description="champion: the acoustic model and vocoder start from the mai-voice champion's",
    )

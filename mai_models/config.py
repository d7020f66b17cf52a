"""Typed pipeline parameters. ``params.yaml`` is the single source: DVC reads it (``dvc exp run -S``),
the CLI and the Dagster assets load it, and all three accept the same ``key.sub=value`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mai_models.errors import MaiUserError, first_validation_error
from mai_models.eval.config import EvalConfig
from mai_models.lm.train_config import TrainConfig
from mai_models.tts.config import FeatureConfig, SpeechConfig, SpeechValidationConfig, TTSConfig

SourceKind = Literal["demo", "jsonl", "parquet", "textdir", "hf_disk", "landing"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """One input of the corpus. ``path`` is relative to the project root unless absolute."""

    kind: SourceKind
    name: str | None = Field(None, description="Label stored in each document's `source` column")
    path: str | None = None
    text_field: str = "text"
    limit_bytes: int | None = Field(None, description="demo only: stop after this many bytes of text")

    @model_validator(mode="after")
    def _path_needed(self) -> SourceConfig:
        if self.kind != "demo" and not self.path:
            raise ValueError(f"source kind '{self.kind}' needs a path")
        return self

    @property
    def label(self) -> str:
        return self.name or (
            self.kind if self.kind in ("demo", "landing") else f"{self.kind}:{Path(self.path or '').name}"
        )


class IngestConfig(_Strict):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(kind="demo")])
    max_doc_bytes: int = Field(8_000_000, gt=0, description="Larger records are quarantined as too_large")


class CleanConfig(_Strict):
    min_chars: int = Field(200, ge=0)
    max_chars: int = Field(200_000, gt=0)
    max_non_text_ratio: float = Field(
        0.35, ge=0, le=1, description="Share of chars that are neither letters nor spaces"
    )


class DedupConfig(_Strict):
    near_dup_threshold: float = Field(
        0.8, gt=0, le=1, description="Estimated Jaccard similarity of word shingles"
    )
    num_perm: int = Field(128, ge=16)
    shingle_words: int = Field(5, ge=1)


class SplitConfig(_Strict):
    valid_fraction: float = Field(0.03, ge=0, lt=0.5)
    test_fraction: float = Field(0.03, ge=0, lt=0.5)
    salt: str = "mai-split-v1"
    shard_docs: int = Field(2000, gt=0, description="Documents per Parquet shard")


class ValidationConfig(_Strict):
    max_reject_rate: float = Field(0.5, ge=0, le=1)
    max_dedup_rate: float = Field(0.3, ge=0, le=1)
    min_chars: int = Field(1, ge=0, description="Length bound checked on clean data")
    min_source_share: float = Field(0.0, ge=0, le=1, description="Each expected source must reach this share")
    expected_sources: list[str] | None = Field(None, description="Default: the labels of ingest.sources")


class TokenizerConfig(_Strict):
    vocab_size: int = Field(8192, ge=300)
    min_frequency: int = Field(2, ge=1)
    freeze_to: Literal["none", "champion"] = Field(
        "none",
        description="champion: copy the mai-moe champion's tokenizer instead of training one (warm starts)",
    )


class TokenizeConfig(_Strict):
    workers: int = Field(2, ge=1, description="Encoder processes")
    batch_docs: int = Field(256, ge=1)


class AutomationConfig(_Strict):
    """What an orchestrator does by itself (see README, "Run it as a service")."""

    training_cron: str = Field("0 4 * * 1", description="Trainings rerun at this tick after new data")
    retraining_cron: str = Field("0 3 * * *", description="The retraining schedule: landing -> submission")
    champion_max_age_days: float = Field(30.0, gt=0, description="Older champion: the freshness check warns")


class PipelineParams(_Strict):
    """Everything in params.yaml: the text data plane, ``lm`` pretraining and the speech plane."""

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    lm: TrainConfig = Field(default_factory=TrainConfig)
    speech: SpeechConfig = Field(default_factory=SpeechConfig)
    speech_validation: SpeechValidationConfig = Field(default_factory=SpeechValidationConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    tts: TTSConfig = Field(default_factory=TTSConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    automation: AutomationConfig = Field(default_factory=AutomationConfig)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (the syntax of ``dvc exp run -S``); values are parsed as YAML."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MaiUserError(f"override '{item}' is not of the form key.sub=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MaiUserError(f"override '{item}': '{part}' is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_params(path: Path | None, overrides: list[str] | None = None) -> PipelineParams:
    """Load ``params.yaml`` (absent file: all defaults) and apply overrides; one-line errors."""
    data: dict[str, Any] = {}
    if path is not None and path.exists():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MaiUserError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc
    apply_overrides(data, list(overrides or []))
    try:
        return PipelineParams.model_validate(data)
    except ValidationError as exc:
        where, reason = first_validation_error(exc)
        raise MaiUserError(f"invalid parameter {where or 'params'}: {reason}") from exc

"""Train the acoustic model (from the features) or the vocoder (from the corpus audio), resumably, from
scratch or from a parent's weights, and write the trained weights, their AdamW moments and cards."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import torch

from mai_models.tracking.sinks import MetricsSink
from mai_models.tracking.warm_start import WARM_START_FILE
from mai_models.tts.config import FeatureConfig, SpeechConfig, TTSConfig
from mai_models.tts.presets import PRESETS, Budget
from mai_models.tts.train_loop import Distributed, LoopConfig, train_loop

ModelKind = Literal["acoustic", "vocoder"]


def resolve_budget(tts: TTSConfig, kind: ModelKind) -> Budget:
    preset = PRESETS[tts.preset]
    budget = preset.acoustic_budget if kind == "acoustic" else preset.vocoder_budget
    overrides = {k: v for k, v in getattr(tts, kind).model_dump().items() if v is not None}
    if tts.eval_interval is not None:
        overrides["eval_interval"] = tts.eval_interval
    budget = dataclasses.replace(budget, **overrides)
    return dataclasses.replace(budget, warmup=min(budget.warmup, max(1, budget.steps // 5)))


def _acoustic_task(tts: TTSConfig, features: FeatureConfig, speech: SpeechConfig, data_dir: Path) -> Any:
    from mai_models.tts.acoustic import AcousticModel
    from mai_models.tts.features import VOCAB_FILE, load_feature_config
    from mai_models.tts.frontend import PhonemeVocab
    from mai_models.tts.mel import LogMel
    from mai_models.tts.model_files import acoustic_card
    from mai_models.tts.tasks import AcousticTask

    arch = PRESETS[tts.preset].acoustic
    n_symbols = len(PhonemeVocab.load(data_dir / VOCAB_FILE))
    stats = load_feature_config(data_dir)
    model = AcousticModel(arch, n_symbols, features.n_mels, stats["mel_mean"], stats["mel_std"])
    task = AcousticTask(model, data_dir, LogMel(features, speech.sample_rate), speech.sample_rate)
    card = acoustic_card(arch, n_symbols, features, speech.sample_rate)
    return task, card, {"train_utterances": len(task.train)}


def _vocoder_task(tts: TTSConfig, features: FeatureConfig, speech: SpeechConfig, data_dir: Path) -> Any:
    from mai_models.tts.mel import LogMel
    from mai_models.tts.model_files import vocoder_card
    from mai_models.tts.tasks import VocoderTask
    from mai_models.tts.vocoder import Vocoder

    arch = PRESETS[tts.preset].vocoder
    model = Vocoder(arch, features, speech.sample_rate)
    segment = resolve_budget(tts, "vocoder").segment_frames
    task = VocoderTask(model, data_dir, LogMel(features, speech.sample_rate), speech.sample_rate, segment)
    return task, vocoder_card(arch, features, speech.sample_rate), {"train_clips": len(task.train.clips)}


def train_model(
    kind: ModelKind,
    tts: TTSConfig,
    features: FeatureConfig,
    speech: SpeechConfig,
    data_dir: Path,
    work_dir: Path,
    out: Path,
    sink: MetricsSink,
    dist: Distributed | None = None,
    stop_after_step: int | None = None,
    parent_dir: Path | None = None,
) -> dict[str, Any]:
    """``data_dir``: speech_features for the acoustic model, speech_corpus for the vocoder;
    ``parent_dir``: the same kind of model's output to warm start from."""
    from mai_models.tts.acoustic import count_parameters
    from mai_models.tts.features import VOCAB_FILE
    from mai_models.tts.model_files import (
        ACOUSTIC_CARD,
        ACOUSTIC_OPTIMIZER,
        ACOUSTIC_WEIGHTS,
        VOCODER_CARD,
        VOCODER_OPTIMIZER,
        VOCODER_WEIGHTS,
        save_model,
    )
    from mai_models.tts.train_loop import checkpoint_paths
    from mai_models.tts.warm_start import optimizer_moments

    torch.set_num_threads(tts.threads)
    torch.manual_seed(tts.seed)
    make_task = _acoustic_task if kind == "acoustic" else _vocoder_task
    task, card, data_stats = make_task(tts, features, speech, data_dir)
    budget = resolve_budget(tts, kind)
    loop = LoopConfig(budget, tts.seed, tts.checkpoint_interval, stop_after_step=stop_after_step)
    weights, card_name, optimizer_file = (
        (ACOUSTIC_WEIGHTS, ACOUSTIC_CARD, ACOUSTIC_OPTIMIZER)
        if kind == "acoustic"
        else (VOCODER_WEIGHTS, VOCODER_CARD, VOCODER_OPTIMIZER)
    )
    started = work_dir / WARM_START_FILE
    warm = None
    if parent_dir is not None:

        def warm(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
            report = _warm_start(kind, model, optimizer, parent_dir, data_dir, weights, optimizer_file)
            started.parent.mkdir(parents=True, exist_ok=True)
            started.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    summary = train_loop(task, loop, work_dir, sink, dist or Distributed(), warm_start=warm)
    parameters = count_parameters(task.model)
    card.update(preset=tts.preset, budget=dataclasses.asdict(budget), parameters=parameters)
    save_model(task.model, out, weights, card_name, card)
    # The last checkpoint is the final step's: its optimizer state is the trained model's.
    final = torch.load(checkpoint_paths(work_dir)[-1], map_location="cpu", weights_only=True)
    torch.save(optimizer_moments(task.model, final["optimizer"]), out / optimizer_file)
    if kind == "acoustic":  # the vocabulary travels with the model that reads its ids
        (out / VOCAB_FILE).write_bytes((data_dir / VOCAB_FILE).read_bytes())
    # A resumed warm start loaded its parent in its first attempt, which left the report.
    init = json.loads(started.read_text()) if parent_dir is not None and started.exists() else {}
    return {**summary, "parameters": parameters, **data_stats, "init": init}


def _warm_start(
    kind: ModelKind,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    parent_dir: Path,
    data_dir: Path,
    weights: str,
    optimizer_file: str,
) -> dict[str, Any]:
    from mai_models.tts.features import VOCAB_FILE
    from mai_models.tts.frontend import PhonemeVocab
    from mai_models.tts.warm_start import load_parent, read_parent, symbol_rows

    if kind == "vocoder":
        from mai_models.tts.model_files import read_vocoder_card

        read_vocoder_card(parent_dir)  # a parent whose head means something else is refused
    parent_weights, moments = read_parent(parent_dir, weights, optimizer_file)
    rows = None
    if kind == "acoustic":
        ours = PhonemeVocab.load(data_dir / VOCAB_FILE).tokens
        theirs = PhonemeVocab.load(parent_dir / VOCAB_FILE).tokens
        rows = None if ours == theirs else {"embed.weight": symbol_rows(ours, theirs)}
    return load_parent(model, optimizer, parent_weights, moments, rows)

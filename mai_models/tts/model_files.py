"""Trained speech models on disk: weights (``*.pt``) beside a JSON card with everything needed to
rebuild the module (architecture, vocabulary size, feature settings)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mai_models.errors import MaiUserError
from mai_models.tts.acoustic import AcousticModel
from mai_models.tts.config import FeatureConfig
from mai_models.tts.presets import AcousticArch, VocoderArch
from mai_models.tts.vocoder import MAGNITUDE_HEAD, Vocoder

ACOUSTIC_WEIGHTS, ACOUSTIC_CARD = "acoustic.pt", "acoustic.json"
VOCODER_WEIGHTS, VOCODER_CARD = "vocoder.pt", "vocoder.json"
# AdamW moments by parameter name: what a retraining that warm starts from this model continues with.
ACOUSTIC_OPTIMIZER, VOCODER_OPTIMIZER = "acoustic_optimizer.pt", "vocoder_optimizer.pt"


def save_model(model: torch.nn.Module, out: Path, weights: str, card_name: str, card: dict[str, Any]) -> None:
    torch.save(model.state_dict(), out / weights)
    (out / card_name).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def acoustic_card(
    arch: AcousticArch, n_symbols: int, features: FeatureConfig, sample_rate: int
) -> dict[str, Any]:
    return {
        "arch": asdict(arch),
        "n_symbols": n_symbols,
        "features": features.model_dump(mode="json"),
        "sample_rate": sample_rate,
    }


def vocoder_card(arch: VocoderArch, features: FeatureConfig, sample_rate: int) -> dict[str, Any]:
    return {
        "arch": asdict(arch),
        "features": features.model_dump(mode="json"),
        "sample_rate": sample_rate,
        "magnitude_head": MAGNITUDE_HEAD,
    }


def read_vocoder_card(model_dir: Path) -> dict[str, Any]:
    """The card of a vocoder this code can run: one trained before the magnitude head became a
    correction of the mel's pseudo-inverse would be loaded without error and sound wrong."""
    card = _read_card(model_dir / VOCODER_CARD)
    if card.get("magnitude_head") != MAGNITUDE_HEAD:
        raise MaiUserError(
            f"the vocoder at {model_dir} predates the mel-pseudo-inverse magnitude head: train it again"
        )
    return card


def _read_card(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise MaiUserError(f"no trained model at {path.parent} ({path.name} is missing)") from exc


def load_acoustic(model_dir: Path) -> tuple[AcousticModel, dict[str, Any]]:
    card = _read_card(model_dir / ACOUSTIC_CARD)
    model = AcousticModel(AcousticArch(**card["arch"]), card["n_symbols"], card["features"]["n_mels"])
    model.load_state_dict(torch.load(model_dir / ACOUSTIC_WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval(), card


def load_vocoder(model_dir: Path) -> tuple[Vocoder, dict[str, Any]]:
    card = read_vocoder_card(model_dir)
    model = Vocoder(VocoderArch(**card["arch"]), FeatureConfig(**card["features"]), card["sample_rate"])
    model.load_state_dict(torch.load(model_dir / VOCODER_WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval(), card

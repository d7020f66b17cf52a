"""Export the trained voice as an ONNX bundle (encoder, decoder, vocoder, phoneme vocabulary, config)
and verify each graph against torch with onnxruntime."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mai_models.tts.acoustic import AcousticModel
from mai_models.tts.vocoder import Vocoder
from mai_models.tts.voice import BUNDLE_CONFIG, BUNDLE_VOCAB, DECODER_FILE, ENCODER_FILE, VOCODER_FILE

OPSET = 17


class _Encoder(nn.Module):
    def __init__(self, model: AcousticModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(ids)


class _Decoder(nn.Module):
    def __init__(self, model: AcousticModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.decode(hidden)


def _export(
    module: nn.Module, example: torch.Tensor, path: Path, names: tuple[list[str], list[str]], axes: dict
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about Python ints in shapes are expected here
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=names[0],
            output_names=names[1],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def bundle_config(
    acoustic_card: dict[str, Any], vocoder_card: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """What a runtime needs beside the graphs: rates, feature settings and the G2P that made the ids."""
    from mai_models.tts.frontend import backend_info

    return {
        "sample_rate": acoustic_card["sample_rate"],
        "hop_length": acoustic_card["features"]["hop_length"],
        "n_mels": acoustic_card["features"]["n_mels"],
        "features": acoustic_card["features"],
        "g2p": backend_info(),
        "acoustic": acoustic_card["arch"],
        "vocoder": vocoder_card["arch"],
        **extra,
    }


def export_bundle(
    acoustic: AcousticModel, vocoder: Vocoder, vocab_file: Path, config: dict[str, Any], out: Path
) -> dict[str, float]:
    """Write the bundle into ``out`` and return the max |torch - onnxruntime| of each graph."""
    out.mkdir(parents=True, exist_ok=True)
    ids = torch.randint(2, acoustic.embed.num_embeddings, (1, 23))
    hidden = torch.randn(1, 97, acoustic.arch.d_model)
    mel = torch.randn(1, vocoder.embed.in_channels, 75)
    _export(
        _Encoder(acoustic),
        ids,
        out / ENCODER_FILE,
        (["ids"], ["hidden", "log_durations"]),
        {"ids": {1: "phonemes"}, "hidden": {1: "phonemes"}, "log_durations": {1: "phonemes"}},
    )
    _export(
        _Decoder(acoustic),
        hidden,
        out / DECODER_FILE,
        (["hidden"], ["mel"]),
        {"hidden": {1: "frames"}, "mel": {2: "frames"}},
    )
    _export(
        vocoder, mel, out / VOCODER_FILE, (["mel"], ["wave"]), {"mel": {2: "frames"}, "wave": {1: "samples"}}
    )
    shutil.copy(vocab_file, out / BUNDLE_VOCAB)
    (out / BUNDLE_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return verify_bundle(acoustic, vocoder, out)


def verify_bundle(acoustic: AcousticModel, vocoder: Vocoder, bundle: Path) -> dict[str, float]:
    """Compare torch and onnxruntime on inputs of other lengths than the export examples."""
    import onnxruntime as ort

    def session(name: str) -> Any:
        return ort.InferenceSession(str(bundle / name), providers=["CPUExecutionProvider"])

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, acoustic.embed.num_embeddings, (1, 41), generator=gen)
    hidden = torch.randn(1, 211, acoustic.arch.d_model, generator=gen)
    mel = torch.randn(1, vocoder.embed.in_channels, 130, generator=gen) - 4.0
    with torch.no_grad():
        ref_hidden, ref_dur = acoustic.encode(ids)
        ref_mel = acoustic.decode(hidden)
        ref_wave = vocoder(mel)
    enc_hidden, enc_dur = session(ENCODER_FILE).run(None, {"ids": ids.numpy()})
    (dec_mel,) = session(DECODER_FILE).run(None, {"hidden": hidden.numpy()})
    (voc_wave,) = session(VOCODER_FILE).run(None, {"mel": mel.numpy()})
    return {
        "encoder_max_abs_diff": float(
            max(np.abs(enc_hidden - ref_hidden.numpy()).max(), np.abs(enc_dur - ref_dur.numpy()).max())
        ),
        "decoder_max_abs_diff": float(np.abs(dec_mel - ref_mel.numpy()).max()),
        "vocoder_max_abs_diff": float(np.abs(voc_wave - ref_wave.numpy()).max()),
    }

"""Load a trained voice as a SynthesisEngine: from the ONNX bundle (onnxruntime and numpy only, no
torch import) or from the torch weights the training steps wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mai_models.errors import MaiUserError
from mai_models.tts.engine import SynthesisEngine

ENCODER_FILE, DECODER_FILE, VOCODER_FILE = "encoder.onnx", "decoder.onnx", "vocoder.onnx"
BUNDLE_CONFIG, BUNDLE_VOCAB = "config.json", "phonemes.json"


def _frontend(vocab_file: Path) -> Any:
    from mai_models.tts.frontend import PhonemeVocab, TextFrontend

    return TextFrontend(PhonemeVocab.load(vocab_file))


def load_onnx_voice(bundle: Path, threads: int = 2) -> SynthesisEngine:
    import onnxruntime as ort

    missing = [
        f
        for f in (ENCODER_FILE, DECODER_FILE, VOCODER_FILE, BUNDLE_CONFIG, BUNDLE_VOCAB)
        if not (bundle / f).exists()
    ]
    if missing:
        raise MaiUserError(f"{bundle} is not a voice bundle (missing {', '.join(missing)})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    def session(name: str) -> Any:
        return ort.InferenceSession(str(bundle / name), options, providers=["CPUExecutionProvider"])

    encoder, decoder, vocoder = session(ENCODER_FILE), session(DECODER_FILE), session(VOCODER_FILE)
    config = json.loads((bundle / BUNDLE_CONFIG).read_text())

    def encode(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden, log_dur = encoder.run(None, {"ids": ids})
        return hidden, log_dur

    return SynthesisEngine(
        _frontend(bundle / BUNDLE_VOCAB),
        encode,
        lambda hidden: decoder.run(None, {"hidden": hidden.astype(np.float32)})[0],
        lambda mel: vocoder.run(None, {"mel": mel.astype(np.float32)})[0],
        config["sample_rate"],
        config["hop_length"],
    )


def load_torch_voice(acoustic_dir: Path, vocoder_dir: Path, threads: int = 2) -> SynthesisEngine:
    import torch

    from mai_models.tts.model_files import load_acoustic, load_vocoder

    torch.set_num_threads(threads)
    acoustic, card = load_acoustic(acoustic_dir)
    vocoder, _ = load_vocoder(vocoder_dir)

    @torch.inference_mode()
    def encode(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden, log_dur = acoustic.encode(torch.from_numpy(ids))
        return hidden.numpy(), log_dur.numpy()

    @torch.inference_mode()
    def decode(hidden: np.ndarray) -> np.ndarray:
        return acoustic.decode(torch.from_numpy(hidden)).numpy()

    @torch.inference_mode()
    def vocode(mel: np.ndarray) -> np.ndarray:
        return vocoder(torch.from_numpy(mel)).numpy()

    return SynthesisEngine(
        _frontend(acoustic_dir / BUNDLE_VOCAB),
        encode,
        decode,
        vocode,
        card["sample_rate"],
        card["features"]["hop_length"],
    )

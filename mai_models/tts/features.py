"""Features for the acoustic model: phoneme ids (G2P of each normalised transcript) and log-mel frames,
stored as one versioned array file plus an index, with the phoneme vocabulary the model will carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mai_models.data.quarantine import QuarantineWriter
from mai_models.data.records import Reject
from mai_models.tts.config import FeatureConfig

MELS_FILE = "mels.npy"
INDEX_FILE = "index.parquet"
VOCAB_FILE = "phonemes.json"
FEATURES_CONFIG_FILE = "features.json"
UTTERANCES_FILE = "utterances.parquet"
QUARANTINE_FILE = "quarantine.parquet"

_INDEX_SCHEMA = pa.schema(
    [
        ("utt_id", pa.string()),
        ("split", pa.string()),
        ("speaker", pa.string()),
        ("text", pa.string()),
        ("offset", pa.int64()),
        ("frames", pa.int32()),
        ("phonemes", pa.list_(pa.string())),
        ("ids", pa.list_(pa.int32())),
    ]
)


def build_speech_features(
    cfg: FeatureConfig, sample_rate: int, corpus_dir: Path, out: Path
) -> dict[str, Any]:
    """Write ``mels.npy`` [frames, n_mels] float32, ``index.parquet`` and ``phonemes.json``."""
    import torch

    from mai_models.tts.audio import read_audio
    from mai_models.tts.frontend import G2P, PhonemeVocab, backend_info
    from mai_models.tts.mel import LogMel

    utterances = pq.read_table(corpus_dir / UTTERANCES_FILE).to_pylist()
    g2p = G2P()
    logmel = LogMel(cfg, sample_rate)
    rows, mel_blocks, offset = [], [], 0
    quarantine = QuarantineWriter(out / QUARANTINE_FILE, "speech_features")
    for utt in utterances:
        tokens = g2p.phonemize(utt["normalized_text"])
        wave, sr, _ = read_audio(corpus_dir / utt["path"])
        if sr != sample_rate:
            raise ValueError(f"{utt['utt_id']}: corpus audio at {sr} Hz, features expect {sample_rate}")
        with torch.no_grad():
            mel = logmel(torch.from_numpy(wave)[None])[0].T.numpy().astype(np.float32)
        # Alignment gives every phoneme at least one frame; a clip too short for its text cannot train.
        if not tokens or len(tokens) > mel.shape[0]:
            reason = "too_few_frames" if tokens else "no_phonemes"
            detail = f"{len(tokens)} phonemes for {mel.shape[0]} frames"
            quarantine.add(
                Reject(utt["source"], utt["origin"], reason, detail, utt["normalized_text"], utt["utt_id"])
            )
            continue
        rows.append(
            {
                "utt_id": utt["utt_id"],
                "split": utt["split"],
                "speaker": utt.get("speaker") or "",
                "text": utt["normalized_text"],
                "offset": offset,
                "frames": mel.shape[0],
                "phonemes": tokens,
            }
        )
        mel_blocks.append(mel)
        offset += mel.shape[0]

    vocab = PhonemeVocab.build(r["phonemes"] for r in rows)
    for row in rows:
        row["ids"], _ = vocab.encode(row["phonemes"])
    mels = np.concatenate(mel_blocks) if mel_blocks else np.zeros((0, cfg.n_mels), np.float32)
    np.save(out / MELS_FILE, mels)
    pq.write_table(pa.Table.from_pylist(rows, schema=_INDEX_SCHEMA), out / INDEX_FILE)
    vocab.save(out / VOCAB_FILE)
    quarantine.close()
    train = [m for m, r in zip(mel_blocks, rows, strict=True) if r["split"] == "train"] or mel_blocks
    train_frames = np.concatenate(train) if train else np.zeros((1, cfg.n_mels), np.float32)
    mel_mean, mel_std = float(train_frames.mean()), float(train_frames.std()) or 1.0
    config = {
        "features": cfg.model_dump(mode="json"),
        "sample_rate": sample_rate,
        "g2p": backend_info(),
        "mel_mean": round(mel_mean, 6),
        "mel_std": round(mel_std, 6),
    }
    (out / FEATURES_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    splits = {s: sum(r["split"] == s for r in rows) for s in ("train", "valid")}
    return {
        "utterances": len(rows),
        "frames": int(mels.shape[0]),
        "hours": round(mels.shape[0] * cfg.hop_length / sample_rate / 3600, 4),
        "phoneme_vocab": len(vocab),
        "phonemes": sum(len(r["ids"]) for r in rows),
        "rejected": quarantine.count,
        "rejected_by_reason": dict(sorted(quarantine.by_reason.items())),
        "splits": splits,
        "g2p": backend_info(),
        "mel_mean": config["mel_mean"],
        "mel_std": config["mel_std"],
    }


def load_feature_config(features_dir: Path) -> dict[str, Any]:
    return json.loads((features_dir / FEATURES_CONFIG_FILE).read_text())

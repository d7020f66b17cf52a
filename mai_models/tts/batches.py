"""Training batches: phoneme ids with their log-mel frames for the acoustic model, and random audio
segments for the vocoder. Each rank draws from its own seeded generator (DDP without a sampler)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from mai_models.errors import MaiUserError
from mai_models.tts.features import INDEX_FILE, MELS_FILE, UTTERANCES_FILE


@dataclass
class AcousticBatch:
    ids: torch.Tensor  # [B, T_text] int64, 0-padded
    id_lengths: torch.Tensor  # [B]
    mels: torch.Tensor  # [B, n_mels, T_mel]
    mel_lengths: torch.Tensor  # [B]
    utt_ids: list[str]


class AcousticData:
    def __init__(self, features_dir: Path, split: str) -> None:
        self.mels = np.load(features_dir / MELS_FILE, mmap_mode="r")
        rows = [r for r in pq.read_table(features_dir / INDEX_FILE).to_pylist() if r["split"] == split]
        if not rows:
            raise MaiUserError(f"{features_dir}: no '{split}' utterances to train on")
        # Length-sorted, so a batch drawn from a window of neighbours wastes little on padding.
        self.rows = sorted(rows, key=lambda r: (r["frames"], r["utt_id"]))

    def __len__(self) -> int:
        return len(self.rows)

    def collate(self, rows: list[dict]) -> AcousticBatch:
        t_text = max(len(r["ids"]) for r in rows)
        t_mel = max(r["frames"] for r in rows)
        n_mels = self.mels.shape[1]
        ids = torch.zeros(len(rows), t_text, dtype=torch.long)
        mels = torch.zeros(len(rows), n_mels, t_mel)
        for i, r in enumerate(rows):
            ids[i, : len(r["ids"])] = torch.tensor(r["ids"])
            mels[i, :, : r["frames"]] = torch.from_numpy(
                np.array(self.mels[r["offset"] : r["offset"] + r["frames"]]).T
            )
        return AcousticBatch(
            ids,
            torch.tensor([len(r["ids"]) for r in rows]),
            mels,
            torch.tensor([r["frames"] for r in rows]),
            [r["utt_id"] for r in rows],
        )

    def sample(self, rng: np.random.Generator, batch_size: int) -> AcousticBatch:
        size = min(batch_size, len(self.rows))
        start = int(rng.integers(0, len(self.rows) - size + 1))
        return self.collate(self.rows[start : start + size])

    def first(self, count: int) -> list[AcousticBatch]:
        """Fixed evaluation utterances, one per batch, chosen by id so they never change."""
        chosen = sorted(self.rows, key=lambda r: r["utt_id"])[:count]
        return [self.collate([r]) for r in chosen]


class AudioSegments:
    """Mono int16 clips of the corpus held in memory; segments are cut at frame boundaries."""

    def __init__(self, corpus_dir: Path, split: str, hop_length: int) -> None:
        from mai_models.tts.audio import read_audio

        rows = [r for r in pq.read_table(corpus_dir / UTTERANCES_FILE).to_pylist() if r["split"] == split]
        if not rows:
            raise MaiUserError(f"{corpus_dir}: no '{split}' utterances to train on")
        rows.sort(key=lambda r: r["utt_id"])
        self.utt_ids = [r["utt_id"] for r in rows]
        self.clips = [read_audio(corpus_dir / r["path"])[0] for r in rows]
        self.hop = hop_length
        lengths = np.array([len(c) for c in self.clips], dtype=np.float64)
        self.weights = lengths / lengths.sum()

    def sample(self, rng: np.random.Generator, batch_size: int, segment_frames: int) -> torch.Tensor:
        length = segment_frames * self.hop
        out = np.zeros((batch_size, length), dtype=np.float32)
        for i, clip in enumerate(rng.choice(len(self.clips), size=batch_size, p=self.weights)):
            wave = self.clips[clip]
            if len(wave) > length:
                start = int(rng.integers(0, (len(wave) - length) // self.hop + 1)) * self.hop
                out[i] = wave[start : start + length]
            else:
                out[i, : len(wave)] = wave
        return torch.from_numpy(out)

    def first(self, count: int, max_seconds: float, sample_rate: int) -> list[tuple[str, torch.Tensor]]:
        limit = int(max_seconds * sample_rate) // self.hop * self.hop
        return [
            (u, torch.from_numpy(c[:limit].copy())[None])
            for u, c in list(zip(self.utt_ids, self.clips, strict=True))[:count]
        ]

"""The two speech training tasks: what a batch is, its losses, and what evaluation writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mai_models.precision import full_precision
from mai_models.tts.acoustic import AcousticModel
from mai_models.tts.batches import AcousticData, AudioSegments
from mai_models.tts.engine import predicted_frames
from mai_models.tts.griffin_lim import griffin_lim
from mai_models.tts.mel import LogMel
from mai_models.tts.plots import plot_mels
from mai_models.tts.vocoder import MultiResolutionSTFTLoss, SpectrumLoss, Vocoder

EVAL_UTTERANCES = 2


def _write_wav(path: Path, wave: torch.Tensor, sample_rate: int) -> None:
    from mai_models.tts.audio import write_wav

    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, wave.detach().cpu().numpy().astype(np.float32), sample_rate)


class AcousticTask:
    def __init__(self, model: AcousticModel, features_dir: Path, logmel: LogMel, sample_rate: int) -> None:
        self.model = model
        self.train = AcousticData(features_dir, "train")
        self.valid = AcousticData(features_dir, "valid")
        self.logmel = logmel
        self.sample_rate = sample_rate

    def losses(self, model: nn.Module, rng: np.random.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        b = self.train.sample(rng, batch_size)
        out = model(b.ids, b.id_lengths, b.mels, b.mel_lengths)
        return {k: out[k] for k in ("loss", "mel_l1", "prior", "duration")}

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        sums: dict[str, float] = {}
        batches = [self.valid.collate(self.valid.rows[i : i + 8]) for i in range(0, len(self.valid), 8)]
        for b in batches:
            out = model(b.ids, b.id_lengths, b.mels, b.mel_lengths)
            for key in ("loss", "mel_l1", "prior", "duration"):
                sums[key] = sums.get(key, 0.0) + float(out[key]) * len(b.utt_ids)
        metrics = {k: v / len(self.valid) for k, v in sums.items()}
        for b in self.valid.first(EVAL_UTTERANCES):
            hidden, log_dur = model.encode(b.ids)
            frames = torch.from_numpy(predicted_frames(log_dur[0].numpy()))
            mel = model.decode(torch.repeat_interleave(hidden, frames, dim=1))[0]
            name = b.utt_ids[0]
            plot_mels(b.mels[0].numpy(), mel.numpy(), out_dir / f"{name}_mel.png", f"{name} @ step {step}")
            # No vocoder is assumed here: Griffin-Lim is the debugging ear on the acoustic model alone.
            _write_wav(out_dir / f"{name}_griffin_lim.wav", griffin_lim(mel, self.logmel), self.sample_rate)
        return metrics


class VocoderTask:
    def __init__(
        self, model: Vocoder, corpus_dir: Path, logmel: LogMel, sample_rate: int, segment_frames: int
    ) -> None:
        self.model = model
        self.logmel = logmel
        self.sample_rate = sample_rate
        self.segment_frames = segment_frames
        hop = logmel.cfg.hop_length
        self.train = AudioSegments(corpus_dir, "train", hop)
        self.valid = AudioSegments(corpus_dir, "valid", hop)
        self.stft_loss = MultiResolutionSTFTLoss()
        self.spectrum_loss = SpectrumLoss(logmel.cfg.n_fft, hop)

    def _losses(self, model: nn.Module, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        with full_precision(wave.device.type):
            mel = self.logmel(wave)
        pred, log_mag, phase = model(mel, with_spectrum=True)
        with full_precision(wave.device.type):
            return self._spectral_losses(pred, log_mag, phase, wave)

    def _spectral_losses(
        self, pred: torch.Tensor, log_mag: torch.Tensor, phase: torch.Tensor, wave: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        target = wave[:, : pred.shape[1]]
        stft = self.stft_loss(pred, target)
        mel_l1 = (self.logmel(pred) - self.logmel(target)).abs().mean()
        spectrum = self.spectrum_loss(log_mag, phase, target)
        loss = (
            stft
            + 0.5 * mel_l1
            + spectrum["log_magnitude"]
            + 0.3 * spectrum["phase"]
            + spectrum["compressed_spectrum"]
        )
        return {"loss": loss, "mr_stft": stft, "mel_l1": mel_l1, **spectrum}

    def losses(self, model: nn.Module, rng: np.random.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        return self._losses(model, self.train.sample(rng, batch_size, self.segment_frames))

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        sums: dict[str, float] = {}
        clips = self.valid.first(EVAL_UTTERANCES, max_seconds=6.0, sample_rate=self.sample_rate)
        for name, wave in clips:
            out = self._losses(model, wave)
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            mel = self.logmel(wave)
            pred = model(mel)
            _write_wav(out_dir / f"{name}_vocoded.wav", pred[0], self.sample_rate)
            plot_mels(
                mel[0].numpy(),
                self.logmel(pred)[0].numpy(),
                out_dir / f"{name}_mel.png",
                f"{name} @ step {step}",
            )
        return {k: v / max(1, len(clips)) for k, v in sums.items()}

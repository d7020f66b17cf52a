"""Log-mel spectrogram shared by features, the vocoder loss and evaluation, so every stage sees the
same frames (Slaney mel scale, periodic Hann window, centred frames)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mai_models.tts.config import FeatureConfig

LOG_FLOOR = 1e-5


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney: linear below 1 kHz, logarithmic above.
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    log_region = hz >= min_log_hz
    mels[log_region] = min_log_hz / f_sp + np.log(hz[log_region] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    hz = mels * f_sp
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    log_region = mels >= min_log_mel
    hz[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return hz


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters with Slaney area normalisation."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([f_min]))[0], _hz_to_mel(np.array([f_max]))[0], n_mels + 2)
    )
    fdiff = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2 : n_mels + 2] - mel_points[:n_mels]))[:, None]
    return weights.astype(np.float32)


class LogMel(nn.Module):
    """waveform [B, L] -> log-mel [B, n_mels, L // hop + 1]."""

    def __init__(self, cfg: FeatureConfig, sample_rate: int) -> None:
        super().__init__()
        if cfg.f_max > sample_rate / 2:
            raise ValueError(f"features.f_max {cfg.f_max} is above Nyquist for {sample_rate} Hz")
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        fb = mel_filterbank(sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
        self.register_buffer("filterbank", torch.from_numpy(fb), persistent=False)

    def magnitude(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            wave,
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop_length,
            win_length=self.cfg.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        return spec.abs()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.filterbank, self.magnitude(wave))
        return torch.log(torch.clamp(mel, min=LOG_FLOOR))


def num_frames(num_samples: int, hop_length: int) -> int:
    return num_samples // hop_length + 1

"""Griffin-Lim from a log-mel: a debugging fallback (listen to an acoustic model before its vocoder
exists), never the product path."""

from __future__ import annotations

import torch

from mai_models.tts.mel import LogMel


def griffin_lim(log_mel: torch.Tensor, logmel: LogMel, iterations: int = 32) -> torch.Tensor:
    """log-mel [n_mels, T] -> waveform [L]."""
    cfg = logmel.cfg
    mel = torch.exp(log_mel)
    magnitude = torch.clamp(torch.linalg.pinv(logmel.filterbank) @ mel, min=0.0)
    window = logmel.window
    angles = torch.exp(2j * torch.pi * torch.rand(magnitude.shape))
    length = (magnitude.shape[1] - 1) * cfg.hop_length
    wave = torch.zeros(length)
    for _ in range(iterations):
        wave = torch.istft(
            magnitude * angles, cfg.n_fft, cfg.hop_length, cfg.win_length, window, length=length
        )
        spec = torch.stft(wave, cfg.n_fft, cfg.hop_length, cfg.win_length, window, return_complex=True)
        angles = torch.exp(1j * torch.angle(spec))
    return torch.istft(magnitude * angles, cfg.n_fft, cfg.hop_length, cfg.win_length, window, length=length)

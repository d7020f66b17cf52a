"""A Vocos-style vocoder: ConvNeXt blocks over log-mel frames predict STFT magnitude and phase, and an
inverse STFT makes the waveform, so no upsampling convolutions run at the sample rate.

The magnitude head predicts a correction to the mel's own linear-frequency magnitude (the filterbank's
pseudo-inverse applied to the mel), zero at initialisation. Predicting the whole log magnitude, a demo
budget's vocoder (800 steps) was less intelligible on teacher mels than that pseudo-inverse under
random phase (pocketsphinx WER 0.40 with Griffin-Lim phase vs 0.28, 20 held-out sentences).

The inverse STFT is written as a real inverse-DFT matmul plus overlap-add by shifted sums: the same
arithmetic as ``torch.istft`` but exportable to ONNX, so torch and onnxruntime share one graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mai_models.precision import full_precision
from mai_models.tts.config import FeatureConfig
from mai_models.tts.mel import LOG_FLOOR, mel_filterbank
from mai_models.tts.presets import VocoderArch

MAX_LOG_MAGNITUDE = math.log(100.0)
# What the vocoder's card says its magnitude head predicts; a model whose card lacks it predicted the
# whole log magnitude and means something else to this code.
MAGNITUDE_HEAD = "mel_pinv_residual"


class InverseSTFT(nn.Module):
    """(real, imag) [B, n_fft//2+1, T] -> waveform [B, (T - 1) * hop], inverting a centred STFT."""

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        if n_fft % hop_length:
            raise ValueError("the inverse STFT needs n_fft to be a multiple of hop_length")
        self.n_fft, self.hop = n_fft, hop_length
        window = torch.hann_window(n_fft)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        n = torch.arange(n_fft, dtype=torch.float64)[None, :]
        scale = torch.full((n_fft // 2 + 1, 1), 2.0, dtype=torch.float64)
        scale[0] = scale[-1] = 1.0  # DC and Nyquist appear once in a real spectrum
        angle = 2 * math.pi * k * n / n_fft
        self.register_buffer(
            "cos_basis", (scale * torch.cos(angle) / n_fft * window).float(), persistent=False
        )
        self.register_buffer(
            "sin_basis", (-scale * torch.sin(angle) / n_fft * window).float(), persistent=False
        )
        self.register_buffer("window_sq", (window**2)[None, None, :].float(), persistent=False)

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, n_fft] -> [B, (T + r - 1) * hop] with r = n_fft / hop shifted copies summed."""
        b, t, _ = frames.shape
        r = self.n_fft // self.hop
        parts = frames.reshape(b, t, r, self.hop)
        out = torch.zeros(b, t + r - 1, self.hop, dtype=frames.dtype, device=frames.device)
        for i in range(r):
            out = out + F.pad(parts[:, :, i, :], (0, 0, i, r - 1 - i))
        return out.reshape(b, -1)

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        frames = torch.matmul(real.transpose(1, 2), self.cos_basis) + torch.matmul(
            imag.transpose(1, 2), self.sin_basis
        )
        signal = self._overlap_add(frames)
        envelope = self._overlap_add(self.window_sq.expand(1, frames.shape[1], self.n_fft))
        pad = self.n_fft // 2
        signal = signal[:, pad:-pad]
        envelope = envelope[:, pad:-pad]
        return signal / torch.clamp(envelope, min=1e-8)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, intermediate: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, intermediate)
        self.pw2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class Vocoder(nn.Module):
    """log-mel [B, n_mels, T] -> waveform [B, (T - 1) * hop]."""

    def __init__(self, arch: VocoderArch, features: FeatureConfig, sample_rate: int) -> None:
        super().__init__()
        n_mels, n_fft = features.n_mels, features.n_fft
        filterbank = mel_filterbank(sample_rate, n_fft, n_mels, features.f_min, features.f_max)
        self.register_buffer("mel_inverse", torch.linalg.pinv(torch.from_numpy(filterbank)), persistent=False)
        self.embed = nn.Conv1d(n_mels, arch.dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(arch.dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(arch.dim, arch.intermediate, 1.0 / arch.layers) for _ in range(arch.layers)
        )
        self.final_norm = nn.LayerNorm(arch.dim, eps=1e-6)
        self.head = nn.Linear(arch.dim, n_fft + 2)
        with torch.no_grad():  # the first half of the head is the magnitude correction
            self.head.weight[: n_fft // 2 + 1].zero_()
            self.head.bias[: n_fft // 2 + 1].zero_()
        self.istft = InverseSTFT(n_fft, features.hop_length)

    def mel_magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel [B, n_mels, T] -> log linear magnitude [B, n_fft // 2 + 1, T] by the pseudo-inverse."""
        return torch.log(torch.clamp(torch.matmul(self.mel_inverse, torch.exp(mel)), min=LOG_FLOOR))

    def spectrum(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel [B, n_mels, T] -> (log magnitude, phase), each [B, n_fft // 2 + 1, T]."""
        x = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        x = self.head(self.final_norm(x.transpose(1, 2))).transpose(1, 2)
        # Under bf16 autocast only the network above runs in bf16: the spectrum and the waveform made
        # from it stay fp32 (a bf16 inverse DFT would add noise at about -50 dB).
        with full_precision(mel.device.type):
            correction, phase = x.float().chunk(2, dim=1)
            return torch.clamp(self.mel_magnitude(mel) + correction, max=MAX_LOG_MAGNITUDE), phase

    def forward(
        self, mel: torch.Tensor, with_spectrum: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The waveform; training also asks for the head's spectrum (through forward, so DDP syncs)."""
        log_mag, phase = self.spectrum(mel)
        with full_precision(mel.device.type):
            magnitude = torch.exp(log_mag)
            wave = self.istft(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return (wave, log_mag, phase) if with_spectrum else wave


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence plus log-magnitude L1 at several resolutions (Parallel WaveGAN)."""

    def __init__(
        self, resolutions: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (2048, 512))
    ) -> None:
        super().__init__()
        self.resolutions = resolutions
        for n_fft, _ in resolutions:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros(())
        for n_fft, hop in self.resolutions:
            window = getattr(self, f"window_{n_fft}")
            p = torch.stft(pred, n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-7)
            t = torch.stft(target, n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-7)
            convergence = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=1e-7)
            log_mag = F.l1_loss(torch.log(p), torch.log(t))
            total = total + convergence + log_mag
        return total / len(self.resolutions)


def _anti_wrapped(x: torch.Tensor) -> torch.Tensor:
    """|x| after wrapping into [-pi, pi]: a phase error of 2*pi is no error."""
    return torch.abs(x - 2 * math.pi * torch.round(x / (2 * math.pi)))


class SpectrumLoss(nn.Module):
    """Direct supervision of the head's STFT against the target's own STFT (same frames the inverse
    STFT overlaps): log-magnitude L1, the anti-wrapping phase losses of APNet (instantaneous phase,
    group delay, instantaneous frequency) and the squared error of the power-law compressed complex
    spectrum (MP-SENet), which weighs phase errors by how loud the bin is. Waveform losses alone reach
    the head only through overlap-add, which is what makes a GAN-free iSTFT vocoder slow to learn."""

    COMPRESSION = 0.3

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(
        self, log_mag: torch.Tensor, phase: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        spec = torch.stft(target, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        frames = min(spec.shape[2], log_mag.shape[2])
        spec, log_mag, phase = spec[..., :frames], log_mag[..., :frames], phase[..., :frames]
        true_phase, true_magnitude = torch.angle(spec), spec.abs()
        magnitude = F.l1_loss(log_mag, torch.log(true_magnitude.clamp(min=1e-5)))
        instantaneous = _anti_wrapped(phase - true_phase).mean()
        group_delay = _anti_wrapped(torch.diff(phase, dim=1) - torch.diff(true_phase, dim=1)).mean()
        frequency = _anti_wrapped(torch.diff(phase, dim=2) - torch.diff(true_phase, dim=2)).mean()
        ours = torch.exp(self.COMPRESSION * log_mag)
        theirs = true_magnitude.clamp(min=1e-7) ** self.COMPRESSION
        compressed = (
            (ours * torch.cos(phase) - theirs * torch.cos(true_phase)) ** 2
            + (ours * torch.sin(phase) - theirs * torch.sin(true_phase)) ** 2
        ).mean()
        return {
            "log_magnitude": magnitude,
            "phase": instantaneous + group_delay + frequency,
            "compressed_spectrum": compressed,
        }

"""A FastSpeech2-style non-autoregressive acoustic model whose durations come from monotonic
alignment search against a Gaussian prior over mel frames (learned jointly, no external aligner),
guided towards the diagonal by a beta-binomial prior while the prior means are still uninformative.

phoneme ids -> encoder -> (prior means mu, log durations) -> length regulation -> decoder -> log-mel
Inference is split in two exportable halves (``encode`` and ``decode``) with the data-dependent
length regulation between them, which keeps the ONNX graphs static-shape friendly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mai_models.precision import full_precision
from mai_models.tts.mas import diagonal_log_prior, gaussian_log_likelihood, monotonic_alignment
from mai_models.tts.presets import AcousticArch


def sinusoid_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


class FFTBlock(nn.Module):
    """Self-attention plus a convolutional feed-forward (FastSpeech's feed-forward Transformer)."""

    def __init__(self, arch: AcousticArch) -> None:
        super().__init__()
        self.heads = arch.heads
        self.qkv = nn.Linear(arch.d_model, 3 * arch.d_model)
        self.out = nn.Linear(arch.d_model, arch.d_model)
        self.norm1 = nn.LayerNorm(arch.d_model)
        self.conv1 = nn.Conv1d(arch.d_model, arch.ff_dim, arch.kernel, padding=arch.kernel // 2)
        self.conv2 = nn.Conv1d(arch.ff_dim, arch.d_model, 1)
        self.norm2 = nn.LayerNorm(arch.d_model)
        self.dropout = nn.Dropout(arch.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, D]; mask [B, T] True on real positions, or None (no padding)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]
        # Under bf16 autocast the CPU's fused attention was slower than in fp32 (frames x frames scores).
        with full_precision(x.device.type):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask)
        x = self.norm1(x + self.dropout(self.out(y.transpose(1, 2).reshape(b, t, d))))
        if mask is not None:
            x = x * mask[..., None]
        y = self.conv2(F.relu(self.conv1(x.transpose(1, 2)))).transpose(1, 2)
        x = self.norm2(x + self.dropout(y))
        return x if mask is None else x * mask[..., None]


class DurationPredictor(nn.Module):
    def __init__(self, arch: AcousticArch) -> None:
        super().__init__()
        c = arch.duration_channels
        self.conv1 = nn.Conv1d(arch.d_model, c, 3, padding=1)
        self.norm1 = nn.LayerNorm(c)
        self.conv2 = nn.Conv1d(c, c, 3, padding=1)
        self.norm2 = nn.LayerNorm(c)
        self.proj = nn.Linear(c, 1)
        self.dropout = nn.Dropout(arch.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dropout(self.norm1(F.relu(self.conv1(x.transpose(1, 2))).transpose(1, 2)))
        y = self.dropout(self.norm2(F.relu(self.conv2(y.transpose(1, 2))).transpose(1, 2)))
        return self.proj(y).squeeze(-1)


class AcousticModel(nn.Module):
    def __init__(
        self, arch: AcousticArch, n_symbols: int, n_mels: int, mel_mean: float = 0.0, mel_std: float = 1.0
    ) -> None:
        super().__init__()
        self.arch = arch
        self.n_mels = n_mels
        # The model works on standardised log-mels (the unit-variance prior of the alignment search
        # assumes it); decode() returns plain log-mels, so the vocoder and exports never see the scaling.
        self.register_buffer("mel_mean", torch.tensor(float(mel_mean)))
        self.register_buffer("mel_std", torch.tensor(float(mel_std)))
        self.embed = nn.Embedding(n_symbols, arch.d_model, padding_idx=0)
        self.encoder = nn.ModuleList(FFTBlock(arch) for _ in range(arch.encoder_layers))
        self.prior = nn.Linear(arch.d_model, n_mels)
        self.durations = DurationPredictor(arch)
        self.decoder = nn.ModuleList(FFTBlock(arch) for _ in range(arch.decoder_layers))
        self.mel_out = nn.Linear(arch.d_model, n_mels)

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids) * math.sqrt(self.arch.d_model)
        x = x + sinusoid_positions(ids.shape[1], self.arch.d_model, ids.device)
        for block in self.encoder:
            x = block(x, mask)
        # Duration targets come from the alignment; keep their gradients out of the encoder.
        return x, self.durations(x.detach())

    def _decode(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # No absolute frame positions here: with them the decoder learns a text-independent rhythm
        # before the alignment settles; the regulated phoneme states carry the positions that matter.
        x = hidden
        for block in self.decoder:
            x = block(x, mask)
        # The decoder refines the aligned prior means (a coarse mel per phoneme, as in Grad-TTS and
        # Matcha-TTS), so speech is intelligible early in training and the decoder learns the detail.
        standardised = (self.mel_out(x) + self.prior(hidden)).transpose(1, 2)
        return standardised * self.mel_std + self.mel_mean

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference, batch of unpadded ids [1, T_text] -> (hidden [1, T_text, D], log durations)."""
        return self._encode(ids, None)

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        """Inference: length-regulated hidden [1, T_mel, D] -> log-mel [1, n_mels, T_mel]."""
        return self._decode(hidden, None)

    def forward(
        self, ids: torch.Tensor, id_lengths: torch.Tensor, mels: torch.Tensor, mel_lengths: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Training: losses and the alignment. ids [B, Tx]; mels [B, n_mels, Ty] (padded log-mels)."""
        mels = (mels - self.mel_mean) / self.mel_std
        text_mask = torch.arange(ids.shape[1], device=ids.device)[None] < id_lengths[:, None]
        mel_mask = torch.arange(mels.shape[2], device=ids.device)[None] < mel_lengths[:, None]
        hidden, log_dur = self._encode(ids, text_mask)
        # The alignment's scores, the length regulation and the losses stay fp32 under bf16 autocast;
        # only the encoder and decoder networks run in bf16.
        with full_precision(ids.device.type):
            hidden, log_dur = hidden.float(), log_dur.float()
            mu = self.prior(hidden)
            with torch.no_grad():
                log_p = gaussian_log_likelihood(mu, mels) + diagonal_log_prior(
                    id_lengths, mel_lengths, ids.shape[1], mels.shape[2]
                ).to(mu.device)
                log_p = log_p.masked_fill(~(text_mask[:, :, None] & mel_mask[:, None, :]), -1e9)
                align = monotonic_alignment(log_p, id_lengths, mel_lengths)
            durations = align.sum(-1)
            mu_frames = torch.matmul(align.transpose(1, 2), mu).transpose(1, 2)  # [B, n_mels, Ty]
            frame_count = mel_mask.sum() * self.n_mels
            prior_loss = (0.5 * ((mels - mu_frames) ** 2) * mel_mask[:, None]).sum() / frame_count
            target_log_dur = torch.log1p(durations)
            dur_loss = (((log_dur - target_log_dur) ** 2) * text_mask).sum() / text_mask.sum()
            regulated = torch.matmul(align.transpose(1, 2), hidden)  # [B, Ty, D]
        decoded = self._decode(regulated, mel_mask)
        with full_precision(ids.device.type):
            mel_pred = (decoded.float() - self.mel_mean) / self.mel_std
            mel_loss = ((mel_pred - mels).abs() * mel_mask[:, None]).sum() / frame_count
        return {
            "loss": mel_loss + prior_loss + dur_loss,
            "mel_l1": mel_loss,
            "prior": prior_loss,
            "duration": dur_loss,
            "mel_pred": mel_pred * self.mel_std + self.mel_mean,
            "durations": durations,
        }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

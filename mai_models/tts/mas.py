"""Monotonic alignment search (Glow-TTS): the most likely monotonic, surjective path of mel frames over
phonemes. Durations come from it, so no external aligner is needed. Runs without gradients."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

_NEG = -1e9


def monotonic_alignment(
    log_p: torch.Tensor, text_lengths: torch.Tensor, mel_lengths: torch.Tensor
) -> torch.Tensor:
    """Hard alignment [B, T_text, T_mel] (0/1) maximising the summed ``log_p`` along the path.

    Each frame goes to exactly one phoneme, phoneme indices never decrease, every phoneme gets at
    least one frame (the caller keeps mel_length >= text_length), and the path ends on the last one.
    """
    value = log_p.detach().float().cpu().numpy()
    tx = text_lengths.cpu().numpy().astype(np.int64)
    ty = mel_lengths.cpu().numpy().astype(np.int64)
    batch, t_text, t_mel = value.shape
    text_idx = np.arange(t_text)[None, :]
    valid_text = text_idx < tx[:, None]
    # Dynamic programme over frames, vectorised over the batch and phonemes.
    score = np.full((batch, t_text, t_mel), _NEG, dtype=np.float32)
    prev = np.broadcast_to(np.where(text_idx == 0, 0.0, _NEG), (batch, t_text)).astype(np.float32)
    for j in range(t_mel):
        shifted = np.concatenate([np.full((batch, 1), _NEG, np.float32), prev[:, :-1]], axis=1)
        cur = value[:, :, j] + np.maximum(prev, shifted)
        # A phoneme past frame j is unreachable; padded phonemes never are.
        cur = np.where(valid_text & (text_idx <= j), cur, _NEG)
        score[:, :, j] = cur
        prev = cur

    path = np.zeros((batch, t_text, t_mel), dtype=np.float32)
    rows = np.arange(batch)
    index = tx - 1
    for j in range(t_mel - 1, -1, -1):
        active = j < ty
        path[rows[active], index[active], j] = 1.0
        if j == 0:
            break
        stay = score[rows, index, j - 1]
        move = np.where(index > 0, score[rows, np.maximum(index - 1, 0), j - 1], _NEG)
        go_back = active & (index > 0) & ((index == j) | (move > stay))
        index = index - go_back.astype(np.int64)
    return torch.from_numpy(path).to(log_p.device)


def gaussian_log_likelihood(mu: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
    """log N(mel_j | mu_i, I) up to a constant, for every phoneme i and frame j: [B, T_text, T_mel].

    mu: [B, T_text, n_mels]; mel: [B, n_mels, T_mel].
    """
    mu_sq = (mu**2).sum(-1, keepdim=True)  # [B, Tx, 1]
    mel_sq = (mel**2).sum(1, keepdim=True)  # [B, 1, Ty]
    cross = torch.matmul(mu, mel)  # [B, Tx, Ty]
    return -0.5 * (mu_sq - 2 * cross + mel_sq)


@functools.lru_cache(maxsize=4096)
def _diagonal_log_prior(text_length: int, mel_length: int) -> torch.Tensor:
    i = torch.arange(text_length, dtype=torch.float64)[:, None]
    j = torch.arange(mel_length, dtype=torch.float64)[None, :]
    n, a, b = float(text_length - 1), j + 1, mel_length - j

    def log_beta(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)

    log_choose = math.lgamma(n + 1) - torch.lgamma(i + 1) - torch.lgamma(n - i + 1)
    return (log_choose + log_beta(i + a, n - i + b) - log_beta(a, b)).float()


def diagonal_log_prior(
    text_lengths: torch.Tensor, mel_lengths: torch.Tensor, t_text: int, t_mel: int
) -> torch.Tensor:
    """log P(phoneme i | frame j) under the beta-binomial prior of RAD-TTS ("One TTS Alignment to Rule
    Them All"): frame j of N_y looks at phoneme i of N_x with BetaBinomial(N_x - 1, j + 1, N_y - j), a
    bump that slides along the diagonal. Added to the likelihood it steers the search towards even
    durations while the prior means still say little about which phoneme is where; once they do, the
    likelihood, summed over every mel bin, outweighs it. [B, t_text, t_mel], zero in padded cells.
    Each utterance's matrix is cached: training draws the same lengths again and again."""
    prior = torch.zeros(len(text_lengths), t_text, t_mel)
    for row, (tx, ty) in enumerate(zip(text_lengths.tolist(), mel_lengths.tolist(), strict=True)):
        prior[row, :tx, :ty] = _diagonal_log_prior(tx, ty)
    return prior

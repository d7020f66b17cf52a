"""``mai bench arena``: the arena leaderboard (BT fit + bootstrap CIs) against a straightforward baseline.

Synthetic battles among players of known strength (ties included) go through ``leaderboard`` — our fit
over unique outcomes, with multinomial bootstrap re-weighting — and through a baseline that evaluates
the same Bradley-Terry likelihood and gradient in a per-battle Python loop, minimised by the same
L-BFGS, refitted on each bootstrap resample. Both run in the same process, one after the other.

Target: 50,000 battles, 20 models, 100 bootstrap rounds in under ``TARGET_SECONDS`` on 2 cores. When
the baseline would need more than ``baseline_budget_s`` it is timed on a few rounds and extrapolated
linearly; the result says so (``baseline_extrapolated``, ``baseline_rounds_measured``).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import spearmanr

from mai_models.eval.ratings import _one_blas_thread, bootstrap_bt, leaderboard

TARGET_SECONDS = 5.0
TIE_SHARE = 0.25  # tie probability between equal players; falls off as the gap widens
BOTHBAD_SHARE = 0.4  # of ties


def _log(msg: str) -> None:
    # Progress goes to stderr so that stdout carries only the final result.
    print(f"[bench arena] {msg}", file=sys.stderr, flush=True)


def synthetic_battles(battles: int, models: int, seed: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    """Battles in FastChat's frame layout among ``models`` players, and their true BT strengths."""
    if models < 2 or battles < 1:
        raise ValueError("need at least 2 models and 1 battle")
    rng = np.random.default_rng(seed)
    names = np.array([f"model-{i:02d}" for i in range(models)])
    strength = rng.normal(0.0, 0.7, models)
    a = rng.integers(0, models, battles)
    b = (a + rng.integers(1, models, battles)) % models  # never a self-battle
    p_a = 1.0 / (1.0 + np.exp(strength[b] - strength[a]))
    # Ties are likeliest between close players (4 p (1 - p) peaks at p = 1/2), as in real arenas.
    tie = rng.random(battles) < TIE_SHARE * 4.0 * p_a * (1.0 - p_a)
    a_wins = rng.random(battles) < p_a
    bothbad = rng.random(battles) < BOTHBAD_SHARE
    winner = np.where(tie, np.where(bothbad, "tie (bothbad)", "tie"), np.where(a_wins, "model_a", "model_b"))
    frame = pd.DataFrame(
        {
            "model_a": names[a],
            "model_b": names[b],
            "winner": winner,
            "judge": "synthetic",
            "turn": 1,
            "anony": True,
            "language": "English",
            "tstamp": 1.7e9 + np.arange(battles, dtype=np.float64),
        }
    )
    return frame, dict(zip(names.tolist(), strength.tolist(), strict=True))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _baseline_fit(a: list[int], b: list[int], score_a: list[float], n_models: int) -> np.ndarray:
    """BT strengths from a per-battle loop: the plain way to write the likelihood and its gradient."""
    n = len(a)

    def loss_and_grad(beta: np.ndarray) -> tuple[float, np.ndarray]:
        bl = beta.tolist()
        loss = 0.0
        grad = [0.0] * n_models
        for i, j, s in zip(a, b, score_a, strict=True):
            d = bl[i] - bl[j]
            loss += s * _softplus(-d) + (1.0 - s) * _softplus(d)
            g = 1.0 / (1.0 + math.exp(-d)) - s
            grad[i] += g
            grad[j] -= g
        return loss / n, np.asarray(grad) / n

    res = minimize(
        loss_and_grad,
        np.zeros(n_models),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 1000, "gtol": 1e-10, "ftol": 1e-15},
    )
    return res.x


def _baseline(
    frame: pd.DataFrame, rounds: int, seed: int, budget_s: float
) -> tuple[float, int, bool, dict[str, float]]:
    """(seconds for point fit + ``rounds`` bootstrap fits, rounds measured, extrapolated?, point ratings)."""
    codes, names = pd.factorize(pd.concat([frame["model_a"], frame["model_b"]]), sort=True)
    n = len(frame)
    a, b = codes[:n], codes[n:]
    score = frame["winner"].map({"model_a": 1.0, "model_b": 0.0}).fillna(0.5).to_numpy()
    rng = np.random.default_rng(seed)
    with _one_blas_thread():  # the same BLAS setting as our side
        start = time.perf_counter()
        beta = _baseline_fit(a.tolist(), b.tolist(), score.tolist(), len(names))
        point_s = time.perf_counter() - start
        predicted = point_s * (rounds + 1)
        measure = rounds if predicted <= budget_s else min(rounds, 3)
        if measure < rounds:
            _log(
                f"baseline point fit {point_s:.2f} s: all rounds would take ~{predicted:.0f} s; "
                f"measuring {measure} and extrapolating"
            )
        rounds_s = 0.0
        for r in range(measure):
            idx = rng.integers(0, n, size=n)
            t0 = time.perf_counter()
            _baseline_fit(a[idx].tolist(), b[idx].tolist(), score[idx].tolist(), len(names))
            rounds_s += time.perf_counter() - t0
            if measure == rounds and (r + 1) % 10 == 0:
                _log(f"baseline round {r + 1}/{rounds}")
    extrapolated = measure < rounds
    per_round = rounds_s / measure if measure else point_s
    total = point_s + per_round * rounds if extrapolated else point_s + rounds_s
    centred = beta - beta.mean()
    ratings = 400.0 * centred / math.log(10.0) + 1000.0
    return total, measure, extrapolated, dict(zip(map(str, names), ratings.tolist(), strict=True))


def run(
    battles: int = 50_000,
    models: int = 20,
    rounds: int = 100,
    seed: int = 0,
    repeats: int = 3,
    baseline_budget_s: float = 60.0,
) -> dict[str, Any]:
    """Time ``leaderboard`` (median of ``repeats``) and the per-battle baseline on the same battles."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    frame, truth = synthetic_battles(battles, models, seed)
    _log(f"{battles} battles among {models} models, {rounds} bootstrap rounds")

    ours, boot_only = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        board = leaderboard(frame, rounds=rounds, seed=seed)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bootstrap_bt(frame, rounds=rounds, seed=seed)
        boot_only.append(time.perf_counter() - t0)
    ours_s = statistics.median(ours)
    _log(f"ours: leaderboard {ours_s:.3f} s (median of {repeats})")

    baseline_s, measured, extrapolated, base_ratings = _baseline(frame, rounds, seed, baseline_budget_s)
    _log(f"baseline: {baseline_s:.1f} s{' (extrapolated)' if extrapolated else ''}")

    fitted = board.set_index("model")["rating"]
    rho = spearmanr([fitted[m] for m in truth], list(truth.values())).statistic
    diff = max(abs(fitted[m] - base_ratings[m]) for m in truth)
    result: dict[str, Any] = {
        "benchmark": "arena",
        "battles": battles,
        "models": models,
        "rounds": rounds,
        "ours_seconds": round(ours_s, 4),
        "ours_bootstrap_seconds": round(statistics.median(boot_only), 4),
        "baseline_seconds": round(baseline_s, 3),
        "baseline_rounds_measured": measured,
        "baseline_extrapolated": extrapolated,
        "ratio": round(ours_s / baseline_s, 5),
        "speedup": round(baseline_s / ours_s, 1),
        "target_seconds": TARGET_SECONDS,
        "meets_target": ours_s < TARGET_SECONDS,
        "spearman_vs_truth": round(float(rho), 4),
        "max_rating_diff_vs_baseline": round(float(diff), 6),
    }
    if extrapolated:
        result["baseline_note"] = (
            f"baseline timed on its point fit and {measured} of {rounds} bootstrap rounds, "
            "extrapolated linearly to all rounds"
        )
    return result

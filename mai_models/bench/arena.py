"""``mai bench arena``: our arena ratings (Bradley-Terry point fit + bootstrap) against FastChat's.

Synthetic battles among players of known strength (ties included) are rated twice, in the same
process, alternating sides in every repeat:

* ours: ``compute_bt`` (the point ratings) and ``bootstrap_bt`` (one fit per round over the unique
  outcomes, battles re-drawn with replacement), from ``mai_models.eval.ratings``;
* baseline: FastChat's ``compute_mle_elo`` on the pivoted win table with scikit-learn's
  ``LogisticRegression``, and ``get_bootstrap_result`` refitting it on ``battles.sample(frac=1.0,
  replace=True)`` each round (``mai_models.bench.fastchat_bt``).

Both sides do the full work: the same battles, the same number of rounds, every round timed, and the
same BLAS setting (one thread: the fits are on tiny matrices, where waking BLAS threads costs more
than it saves). Both bootstraps draw from ``numpy.random.default_rng(seed)``, and pandas' ``sample``
turns that generator into the same battle indices as ours, so the confidence bounds are comparable
round for round. Reported: both times, the ratio, and the largest rating difference between the two
(point ratings and the 2.5 / 97.5 % bounds). Target: 50,000 battles, 20 models, 100 rounds in under
``TARGET_SECONDS`` on 2 cores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from mai_models.bench import fastchat_bt
from mai_models.bench.report import Side, bench_result, package_version, progress, timed
from mai_models.errors import MaiUserError
from mai_models.eval.ratings import _one_blas_thread, bootstrap_bt, compute_bt

TARGET_SECONDS = 5.0
TIE_SHARE = 0.25  # tie probability between equal players; falls off as the gap widens
BOTHBAD_SHARE = 0.4  # of ties


_log = progress("arena")


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


def _ours(frame: pd.DataFrame, rounds: int, seed: int) -> tuple[pd.Series, pd.DataFrame]:
    return pd.Series(compute_bt(frame)), bootstrap_bt(frame, rounds=rounds, seed=seed)


def _baseline(frame: pd.DataFrame, rounds: int, seed: int) -> tuple[pd.Series, pd.DataFrame]:
    with _one_blas_thread():  # the setting our side runs under
        point = fastchat_bt.mle_elo(frame)
        boot = fastchat_bt.bootstrap(frame, rounds, np.random.default_rng(seed))
    return point, boot


def _bounds(boot: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"lower": boot.quantile(0.025), "upper": boot.quantile(0.975)})


def run(
    battles: int = 50_000, models: int = 20, rounds: int = 100, seed: int = 0, repeats: int = 3
) -> dict[str, Any]:
    """Seconds for point ratings + ``rounds`` bootstrap rounds, ours and FastChat's, ``repeats`` each."""
    if repeats < 1 or rounds < 1:
        raise MaiUserError("repeats and rounds must be at least 1")
    frame, truth = synthetic_battles(battles, models, seed)
    _log(f"{battles} battles among {models} models, {rounds} bootstrap rounds, {repeats} repeats per side")
    _baseline(frame.head(2000), 1, seed)  # warm-up: scikit-learn's imports are not the baseline's work

    ours_s: list[float] = []
    base_s: list[float] = []
    for i in range(repeats):
        t_ours, (ours_point, ours_boot) = timed(_ours, frame, rounds, seed)
        t_base, (base_point, base_boot) = timed(_baseline, frame, rounds, seed)
        ours_s.append(t_ours)
        base_s.append(t_base)
        _log(f"repeat {i + 1}/{repeats}: ours {t_ours:.3f} s, FastChat/scikit-learn {t_base:.2f} s")

    names = sorted(truth)
    point_diff = (ours_point[names] - base_point[names]).abs().max()
    bound_diff = (_bounds(ours_boot).loc[names] - _bounds(base_boot).loc[names]).abs().max().max()
    rho = spearmanr([ours_point[m] for m in names], [truth[m] for m in names]).statistic
    ours = Side("mai_models.eval.ratings compute_bt + bootstrap_bt", package_version("mai-foundry"), ours_s)
    baseline = Side(
        "FastChat compute_mle_elo + get_bootstrap_result (pandas pivot + sklearn LogisticRegression)",
        f"scikit-learn {package_version('scikit-learn')}, pandas {package_version('pandas')}",
        base_s,
    )
    return bench_result(
        "arena",
        "seconds",
        False,
        ours,
        baseline,
        battles=battles,
        models=models,
        rounds=rounds,
        max_rating_diff_point=round(float(point_diff), 6),
        max_rating_diff_ci_bounds=round(float(bound_diff), 6),
        spearman_vs_truth=round(float(rho), 4),
        target_seconds=TARGET_SECONDS,
        meets_target=ours.median < TARGET_SECONDS,
    )

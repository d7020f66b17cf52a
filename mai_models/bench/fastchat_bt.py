"""The arena benchmark's baseline: Bradley-Terry ratings the way FastChat computes them.

Written here from FastChat's ``compute_mle_elo`` and ``get_bootstrap_result`` (the Chatbot Arena
notebook and ``fastchat/serve/monitor/elo_analysis.py``), step for step, so the benchmark times the
work a user of that code pays for:

* pivot the battles into ``model_a x model_b`` tables of A wins, B wins and ties; the win table is
  ``2 * A wins + 2 * B wins (transposed) + ties + ties (transposed)``, i.e. a tie counts half each way;
* one pair of design rows per ordered pair (``+log(base)`` for A, ``-log(base)`` for B; label 1 and 0),
  weighted by the table, fitted by scikit-learn's ``LogisticRegression`` without intercept or penalty
  (``tol=1e-6`` as in ``compute_mle_elo``); rating = ``scale * coef + init``;
* bootstrap: every round resamples the battles (``battles.sample(frac=1.0, replace=True)``) and refits.

scikit-learn deprecated ``penalty=None`` in 1.8; ``C=np.inf`` is its documented equivalent.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

TIES = ("tie", "tie (bothbad)")


def _pivot(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.pivot_table(rows, index="model_a", columns="model_b", aggfunc="size", fill_value=0)


def mle_elo(battles: pd.DataFrame, scale: float = 400, base: float = 10, init: float = 1000) -> pd.Series:
    """BT ratings from one logistic-regression fit over the pivoted win table; best first."""
    from sklearn.linear_model import LogisticRegression

    winner = battles["winner"]
    a_win = _pivot(battles[winner == "model_a"])
    b_win = _pivot(battles[winner == "model_b"])
    tied = battles[winner.isin(TIES)]
    tie = _pivot(tied) if len(tied) else pd.DataFrame(0, index=a_win.index, columns=a_win.columns)
    win = a_win * 2 + b_win.T * 2 + tie + tie.T

    models = pd.Series(np.arange(len(win.index)), index=win.index)
    p = len(models)
    x = np.zeros((2 * p * (p - 1), p))
    y = np.zeros(2 * p * (p - 1))
    weights: list[float] = []
    row = 0
    for m_a in win.index:
        for m_b in win.columns:
            if m_a == m_b:
                continue
            w_ab, w_ba = win.loc[m_a, m_b], win.loc[m_b, m_a]
            if math.isnan(w_ab) or math.isnan(w_ba):
                continue  # a pair that never met
            x[row : row + 2, models[m_a]] = math.log(base)
            x[row : row + 2, models[m_b]] = -math.log(base)
            y[row] = 1.0
            weights += [w_ab, w_ba]
            row += 2
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-6)
    lr.fit(x[:row], y[:row], sample_weight=weights)
    return pd.Series(scale * lr.coef_[0] + init, index=models.index).sort_values(ascending=False)


def bootstrap(battles: pd.DataFrame, rounds: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row of ratings per round, each fitted on the battles resampled with replacement."""
    rows = [mle_elo(battles.sample(frac=1.0, replace=True, random_state=rng)) for _ in range(rounds)]
    frame = pd.DataFrame(rows)
    return frame[frame.median().sort_values(ascending=False).index]

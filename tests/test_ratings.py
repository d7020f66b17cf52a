"""Arena rating library: FastChat-formulation parity, Elo by hand, bootstrap, gate, battle logs, bench."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from mai_models.bench import arena
from mai_models.eval.battles import (
    FRAME_COLUMNS,
    Battle,
    battles_frame,
    read_battles_jsonl,
    write_battles_jsonl,
)
from mai_models.eval.ratings import bootstrap_bt, compute_bt, compute_elo, leaderboard, plot_leaderboard

# Four models, both seat orders, plain ties and bothbad ties, and no model that always wins or loses
# (a separable set has no finite maximum-likelihood solution to compare).
HAND_BATTLES = (
    [("alpha", "beta", "model_a")] * 5
    + [("beta", "alpha", "model_a")] * 2
    + [("alpha", "beta", "tie")] * 2
    + [("alpha", "gamma", "model_a")] * 3
    + [("gamma", "alpha", "model_a")] * 2
    + [("alpha", "gamma", "tie (bothbad)")]
    + [("beta", "gamma", "model_b")] * 3
    + [("beta", "gamma", "model_a")] * 2
    + [("gamma", "beta", "tie")]
    + [("delta", "alpha", "model_b")] * 4
    + [("delta", "alpha", "model_a")]
    + [("delta", "beta", "tie (bothbad)")] * 2
    + [("gamma", "delta", "model_a")] * 3
    + [("delta", "gamma", "model_a")]
)


def _frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["model_a", "model_b", "winner"])


def _reference_bt(rows: list[tuple[str, str, str]], scale=400.0, base=10.0, init=1000.0) -> dict[str, float]:
    """FastChat's compute_bt formulation, row by row: one logistic-regression row per unique outcome
    (x = +1 for model_a, -1 for model_b, no intercept, no penalty), weighted by its count; a tie is an
    A-win row and a B-win row of half weight each. The likelihood fixes only differences; the zero-mean
    solution is the one L-BFGS reaches from zero, so centre explicitly."""
    counts = Counter(rows)
    models = sorted({m for a, b, _ in counts for m in (a, b)})
    index = {m: i for i, m in enumerate(models)}
    design, label, weight = [], [], []
    for (a, b, winner), count in counts.items():
        x = np.zeros(len(models))
        x[index[a]], x[index[b]] = 1.0, -1.0
        if winner == "model_a":
            design.append(x), label.append(1.0), weight.append(count)
        elif winner == "model_b":
            design.append(x), label.append(0.0), weight.append(count)
        else:
            design += [x, x]
            label += [1.0, 0.0]
            weight += [count / 2, count / 2]

    def nll(beta):
        loss, grad = 0.0, np.zeros_like(beta)
        for x, y, w in zip(design, label, weight, strict=True):
            p = 1.0 / (1.0 + math.exp(-(x @ beta)))
            loss -= w * (y * math.log(p) + (1.0 - y) * math.log(1.0 - p))
            grad -= w * (y - p) * x
        return loss, grad

    beta = minimize(nll, np.zeros(len(models)), jac=True, method="L-BFGS-B", options={"gtol": 1e-12}).x
    beta -= beta.mean()
    return {m: scale * beta[index[m]] / math.log(base) + init for m in models}


def _synthetic(strengths: dict[str, float], n: int, seed: int, tie_rate: float = 0.15) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = list(strengths)
    s = np.array([strengths[m] for m in names])
    a = rng.integers(0, len(names), n)
    b = (a + rng.integers(1, len(names), n)) % len(names)
    p = 1.0 / (1.0 + np.exp(s[b] - s[a]))
    tie = rng.random(n) < tie_rate
    winner = np.where(tie, "tie", np.where(rng.random(n) < p, "model_a", "model_b"))
    return pd.DataFrame({"model_a": np.array(names)[a], "model_b": np.array(names)[b], "winner": winner})


# (1) parity with FastChat's compute_bt formulation


def test_bt_matches_reference_formulation():
    ours = compute_bt(_frame(HAND_BATTLES))
    ref = _reference_bt(HAND_BATTLES)
    assert set(ours) == set(ref) == {"alpha", "beta", "gamma", "delta"}
    for model, rating in ref.items():
        assert ours[model] == pytest.approx(rating, abs=1e-3)
    assert list(ours) == sorted(ours, key=ours.get, reverse=True)  # best first


def test_bt_anchor_scale_and_bothbad_as_tie():
    ref = _reference_bt(HAND_BATTLES, scale=100.0, base=math.e, init=0.0)
    ours = compute_bt(
        _frame(HAND_BATTLES), scale=100.0, base=math.e, init=0.0, anchor="beta", anchor_rating=1114
    )
    for model, rating in ref.items():
        assert ours[model] == pytest.approx(rating - ref["beta"] + 1114, abs=1e-3)
    relabelled = [(a, b, "tie" if w == "tie (bothbad)" else w) for a, b, w in HAND_BATTLES]
    assert compute_bt(_frame(relabelled)) == pytest.approx(compute_bt(_frame(HAND_BATTLES)), abs=1e-9)
    with pytest.raises(ValueError, match="anchor"):
        compute_bt(_frame(HAND_BATTLES), anchor="omega")


def test_bt_matches_sklearn_logistic_regression_when_available():
    """The exact estimator FastChat uses, where scikit-learn happens to be installed."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    counts = Counter(HAND_BATTLES)
    models = sorted({m for a, b, _ in counts for m in (a, b)})
    x_rows, y, w = [], [], []
    for (a, b, winner), count in counts.items():
        x = np.zeros(len(models))
        x[models.index(a)], x[models.index(b)] = math.log(10), -math.log(10)
        outcomes = {"model_a": [(1, count)], "model_b": [(0, count)]}.get(
            winner, [(1, count / 2), (0, count / 2)]
        )
        for label, weight in outcomes:
            x_rows.append(x), y.append(label), w.append(weight)
    lr = linear_model.LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=10_000)
    coef = lr.fit(np.array(x_rows), np.array(y), sample_weight=np.array(w)).coef_[0]
    ours = compute_bt(_frame(HAND_BATTLES))
    for model, c in zip(models, 400 * (coef - coef.mean()) + 1000, strict=True):
        assert ours[model] == pytest.approx(c, abs=1e-3)


def test_bt_only_rates_models_that_played_and_rejects_bad_winner():
    assert set(compute_bt(_frame([("a", "b", "model_a"), ("b", "a", "tie")]))) == {"a", "b"}
    assert compute_bt(_frame([])) == {}
    with pytest.raises(ValueError, match="invalid winner"):
        compute_bt(_frame([("a", "b", "model_c")]))


# (2) online Elo


def test_elo_by_hand():
    battles = _frame([("A", "B", "model_a"), ("B", "C", "tie"), ("A", "C", "model_b")])
    # 1: equal ratings, E = 0.5: A = 1000 + 4 * 0.5 = 1002, B = 998.
    # 2: E_B = 1 / (1 + 10 ** (2 / 400)) = 0.497121800;
    #    B = 998 + 4 * (0.5 - E_B) = 998.011513, C = 1000 - 4 * (0.5 - E_B) = 999.988487.
    # 3: E_A = 1 / (1 + 10 ** ((999.988487 - 1002) / 400)) = 0.502894767; A loses:
    #    A = 1002 - 4 * E_A = 999.988421, C = 999.988487 + 4 * E_A = 1002.000066.
    elo = compute_elo(battles)
    assert elo == pytest.approx({"A": 999.988421, "B": 998.011513, "C": 1002.000066}, abs=1e-5)
    assert list(elo) == ["C", "A", "B"]
    assert compute_elo(battles.replace("tie", "tie (bothbad)")) == pytest.approx(elo)


# (3) recovery of known strengths, bootstrap and leaderboard

STRENGTHS = {"m-low": -1.2, "m-mid-": -0.4, "m-mid": 0.2, "m-mid+": 0.8, "m-high": 1.6}


def test_bt_recovers_known_ordering():
    ratings = compute_bt(_synthetic(STRENGTHS, 6000, seed=1))
    assert list(ratings) == sorted(STRENGTHS, key=STRENGTHS.get, reverse=True)
    # The rating scale is log-odds * 400 / ln 10: without ties (which pull every logit towards 0) the
    # fitted gap in log-odds tracks the true one.
    ratings = compute_bt(_synthetic(STRENGTHS, 6000, seed=1, tie_rate=0.0))
    gap = (ratings["m-high"] - ratings["m-low"]) * math.log(10) / 400
    assert gap == pytest.approx(2.8, abs=0.3)


def test_bootstrap_and_leaderboard():
    df = _synthetic(STRENGTHS, 3000, seed=2)
    boot = bootstrap_bt(df, rounds=40, seed=3)
    assert boot.shape == (40, len(STRENGTHS)) and set(boot.columns) == set(STRENGTHS)
    pd.testing.assert_frame_equal(boot, bootstrap_bt(df, rounds=40, seed=3))  # seeded

    board = leaderboard(df, rounds=40, seed=3)
    assert list(board.columns) == [
        "model", "rating", "lower", "upper", "separated", "elo", "battles", "wins", "losses", "ties",
        "win_rate",
    ]  # fmt: skip
    assert not board["separated"].any()
    assert list(board["model"]) == sorted(STRENGTHS, key=STRENGTHS.get, reverse=True)
    assert (board["lower"] < board["rating"]).all() and (board["rating"] < board["upper"]).all()
    assert board["rating"].is_monotonic_decreasing
    assert (board["battles"] == board["wins"] + board["losses"] + board["ties"]).all()
    assert board["battles"].sum() == 2 * len(df)
    assert board["win_rate"].to_numpy() == pytest.approx((board["wins"] / board["battles"]).to_numpy())
    assert board.set_index("model")["elo"].to_dict() == pytest.approx(compute_elo(df))


def test_leaderboard_counts_and_plot(tmp_path):
    board = leaderboard(_frame(HAND_BATTLES), rounds=20, seed=0, anchor="delta").set_index("model")
    assert board.loc["delta", "rating"] == pytest.approx(1000.0)
    # delta: 4 losses + 1 win against alpha, 2 bothbad ties against beta, 3 losses + 1 win against gamma.
    assert board.loc["delta", ["battles", "wins", "losses", "ties"]].tolist() == [11, 2, 7, 2]
    out = plot_leaderboard(board.reset_index(), tmp_path / "plots" / "board.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# (5) battle logs


def test_battles_jsonl_round_trip(tmp_path):
    battles = [
        Battle("a", "b", "model_a", judge="human", tstamp=1.0, conv_metadata={"sum_assistant_a_tokens": 12}),
        Battle(
            "b", "c", "tie (bothbad)", judge="gpt-judge", turn=2, anony=False, language="German", tstamp=2.0
        ),
        Battle("c", "a", "tie", judge="human", question_id="q-7"),
    ]
    path = write_battles_jsonl(battles, tmp_path / "logs" / "battles.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["winner"] == "model_a"
    assert read_battles_jsonl(path) == battles

    frame = battles_frame(battles)
    assert list(frame.columns) == FRAME_COLUMNS
    assert frame["winner"].tolist() == ["model_a", "tie (bothbad)", "tie"]

    # A public dump carries extra columns: they are ignored.
    extra = tmp_path / "dump.jsonl"
    extra.write_text(json.dumps({**json.loads(lines[0]), "conversation_a": []}) + "\n\n")
    assert read_battles_jsonl(extra) == battles[:1]


def test_invalid_winner(tmp_path):
    with pytest.raises(ValueError, match="invalid winner 'model_c'"):
        Battle("a", "b", "model_c", judge="human")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"model_a": "a", "model_b": "b", "winner": "draw", "judge": "h"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: invalid winner 'draw'"):
        read_battles_jsonl(bad)


# (6) benchmark


def test_bench_arena_small():
    result = arena.run(battles=2000, models=5, rounds=5, repeats=1)
    for key in (
        "benchmark", "battles", "models", "rounds", "ours_median", "baseline_median", "ratio",
        "target_seconds", "meets_target", "spearman_vs_truth", "baseline_version",
    ):  # fmt: skip
        assert key in result
    assert result["benchmark"] == "arena" and result["target_seconds"] == 5.0
    assert result["rounds"] == 5 and result["repeats"] == {"ours": 1, "baseline": 1}
    assert result["ratio"] == pytest.approx(result["baseline_median"] / result["ours_median"], rel=0.01)
    assert result["max_rating_diff_point"] < 1e-2
    assert result["spearman_vs_truth"] > 0.5

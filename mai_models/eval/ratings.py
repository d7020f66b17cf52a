"""Arena ratings from pairwise battles: online Elo and Bradley-Terry with bootstrap confidence intervals.

The formulation follows FastChat's ``compute_elo`` / ``compute_bt`` (written here from the formulas):

* Elo: battles in log order, expected score ``1 / (1 + base ** ((r_b - r_a) / scale))``, update ``k``,
  a tie (``tie`` or ``tie (bothbad)``) scores 0.5 for each side.
* Bradley-Terry: ``P(a beats b) = sigmoid(beta_a - beta_b)``, fitted by maximum likelihood over the
  unique (model_a, model_b, winner) outcomes weighted by their counts; a tie counts as half a win for
  each side. Ratings are ``scale * beta / ln(base) + init``. The likelihood only fixes differences, so
  the point is the zero-mean solution (the one L-BFGS reaches from zero, as in FastChat) unless an anchor
  model is given. Disconnected groups of models are not comparable; their relative offset is arbitrary.
* Bootstrap: each round re-draws the battles with replacement (multinomial counts over battles), and
  refits; intervals are the 2.5 / 97.5 % quantiles over rounds.
* Separation: when a group of models never lost to the rest (or never beat it), the likelihood has no
  finite maximum and every bootstrap round repeats the same one-sided outcome, so the interval comes out
  with zero width: certainty the data do not give. ``leaderboard`` flags such models (``separated``) and
  reports the side the data cannot bound as infinite. An optional weak prior, ``prior_ties`` virtual
  ties per compared pair (fixed, not resampled), keeps the point ratings finite; the arena uses one.

Everything heavy is vectorised over the unique outcomes (at most ``3 * m * (m - 1)`` rows for ``m``
models), so fitting cost does not grow with the number of battles.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from mai_models.eval.battles import WINNERS

# Outcome codes of a unique row, and the share of its weight that counts as a win for A and for B.
_KIND = {"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 2}
_A_SHARE = np.array([1.0, 0.0, 0.5])
_B_SHARE = np.array([0.0, 1.0, 0.5])
# A vanishing ridge keeps a model that won (or lost) every battle at a finite rating instead of letting
# L-BFGS walk off to infinity; on the mean log-loss it moves ordinary ratings by ~1e-6 points.
_L2 = 1e-10
_TIES = ("tie", "tie (bothbad)")


@dataclass(frozen=True)
class _Outcomes:
    """Battles aggregated once: unique (a, b, outcome) rows, grouped by ordered pair (a, b)."""

    models: list[str]
    pair_a: np.ndarray  # model index of side A, per ordered pair
    pair_b: np.ndarray
    row_pair: np.ndarray  # ordered pair of each unique outcome row
    row_kind: np.ndarray  # 0: A won, 1: B won, 2: tie
    row_count: np.ndarray  # battles behind each unique outcome row
    battle_row: np.ndarray  # unique outcome row of each battle, for bootstrap re-weighting

    @property
    def n_models(self) -> int:
        return len(self.models)


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Pin BLAS to one thread while fitting.

    L-BFGS-B calls BLAS on tiny (m x m) systems; a threaded OpenBLAS then spends ~1 ms per call waking
    its threads, which on a busy 2-core machine made 100 bootstrap fits 10-30x slower than the fits
    themselves. threadpoolctl ships with scikit-learn; without it we simply run unpinned.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the environment
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _check(battles_df: pd.DataFrame) -> None:
    missing = {"model_a", "model_b", "winner"} - set(battles_df.columns)
    if missing:
        raise ValueError(f"battles frame lacks column(s) {sorted(missing)}")
    bad = set(battles_df["winner"].unique()) - set(WINNERS)
    if bad:
        raise ValueError(f"invalid winner value(s) {sorted(map(str, bad))}; expected one of {list(WINNERS)}")


def _aggregate(battles_df: pd.DataFrame) -> _Outcomes:
    _check(battles_df)
    n = len(battles_df)
    codes, uniques = pd.factorize(pd.concat([battles_df["model_a"], battles_df["model_b"]]), sort=True)
    m = len(uniques)
    a, b = codes[:n].astype(np.int64), codes[n:].astype(np.int64)
    kind = battles_df["winner"].map(_KIND).to_numpy(dtype=np.int64)
    keys, battle_row, row_count = np.unique((a * m + b) * 3 + kind, return_inverse=True, return_counts=True)
    pairs, row_pair = np.unique(keys // 3, return_inverse=True)
    return _Outcomes(
        models=[str(u) for u in uniques],
        pair_a=pairs // m,
        pair_b=pairs % m,
        row_pair=row_pair,
        row_kind=keys % 3,
        row_count=row_count.astype(np.float64),
        battle_row=battle_row.reshape(-1),
    )


def _fit_beta(
    out: _Outcomes, row_weight: np.ndarray, x0: np.ndarray | None = None, prior_ties: float = 0.0
) -> np.ndarray:
    """Maximum-likelihood BT strengths (natural log-odds units) for one weighting of the unique rows;
    with ``prior_ties`` > 0 the maximum a posteriori under that many virtual ties per compared pair."""
    n_pairs = len(out.pair_a)
    win_a = np.bincount(out.row_pair, row_weight * _A_SHARE[out.row_kind], minlength=n_pairs)
    win_b = np.bincount(out.row_pair, row_weight * _B_SHARE[out.row_kind], minlength=n_pairs)
    if prior_ties:
        # Per unordered pair: (a, b) and (b, a) share its virtual ties.
        unordered = np.minimum(out.pair_a, out.pair_b) * out.n_models + np.maximum(out.pair_a, out.pair_b)
        _, which, orders = np.unique(unordered, return_inverse=True, return_counts=True)
        share = prior_ties / orders[which.reshape(-1)]
        win_a = win_a + 0.5 * share
        win_b = win_b + 0.5 * share
    # The mean rather than the summed loss makes the stopping tolerances independent of the battle count.
    total = win_a.sum() + win_b.sum()
    win_a, win_b = win_a / total, win_b / total
    played = win_a + win_b
    a, b, m = out.pair_a, out.pair_b, out.n_models

    def loss_and_grad(beta: np.ndarray) -> tuple[float, np.ndarray]:
        d = beta[a] - beta[b]
        loss = win_a @ np.logaddexp(0.0, -d) + win_b @ np.logaddexp(0.0, d) + _L2 * (beta @ beta)
        g = played * expit(d) - win_a  # d loss / d d, per pair
        grad = np.bincount(a, g, minlength=m) - np.bincount(b, g, minlength=m) + 2.0 * _L2 * beta
        return float(loss), grad

    start = np.zeros(m) if x0 is None else x0
    res = minimize(
        loss_and_grad,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 1000, "gtol": 1e-10, "ftol": 1e-15},
    )
    return res.x


def _to_ratings(
    beta: np.ndarray,
    present: np.ndarray,
    models: list[str],
    scale: float,
    base: float,
    init: float,
    anchor: str | None,
    anchor_rating: float,
) -> np.ndarray:
    """Ratings on the Elo scale; NaN for models absent from this (re-)sample."""
    ratings = np.full(len(beta), np.nan)
    centred = beta[present] - beta[present].mean()
    ratings[present] = scale * centred / math.log(base) + init
    if anchor is not None:
        ratings += anchor_rating - ratings[models.index(anchor)]
    return ratings


def _present(out: _Outcomes, row_weight: np.ndarray) -> np.ndarray:
    pair_weight = np.bincount(out.row_pair, row_weight, minlength=len(out.pair_a))
    seen = np.bincount(out.pair_a, pair_weight, minlength=out.n_models)
    seen += np.bincount(out.pair_b, pair_weight, minlength=out.n_models)
    return seen > 0


def _check_anchor(out: _Outcomes, anchor: str | None) -> None:
    if anchor is not None and anchor not in out.models:
        raise ValueError(f"anchor model {anchor!r} has no battles")


def _sorted_dict(models: list[str], ratings: np.ndarray) -> dict[str, float]:
    return dict(sorted(zip(models, map(float, ratings), strict=True), key=lambda kv: -kv[1]))


def compute_elo(
    battles_df: pd.DataFrame, k: float = 4, scale: float = 400, base: float = 10, init: float = 1000
) -> dict[str, float]:
    """Online Elo over the battles in frame order; best first."""
    _check(battles_df)
    rating: dict[str, float] = {}
    for model_a, model_b, winner in zip(
        battles_df["model_a"], battles_df["model_b"], battles_df["winner"], strict=True
    ):
        ra = rating.setdefault(model_a, init)
        rb = rating.setdefault(model_b, init)
        expected_a = 1.0 / (1.0 + base ** ((rb - ra) / scale))
        score_a = 1.0 if winner == "model_a" else 0.0 if winner == "model_b" else 0.5
        # Zero-sum update: B's expected score and actual score are the complements of A's.
        rating[model_a] = ra + k * (score_a - expected_a)
        rating[model_b] = rb - k * (score_a - expected_a)
    return dict(sorted(rating.items(), key=lambda kv: -kv[1]))


def compute_bt(
    battles_df: pd.DataFrame,
    scale: float = 400,
    base: float = 10,
    init: float = 1000,
    anchor: str | None = None,
    anchor_rating: float = 1000,
) -> dict[str, float]:
    """Bradley-Terry maximum-likelihood ratings of every model that played; best first."""
    if battles_df.empty:
        return {}
    out = _aggregate(battles_df)
    _check_anchor(out, anchor)
    with _one_blas_thread():
        beta = _fit_beta(out, out.row_count)
    present = np.ones(out.n_models, dtype=bool)
    return _sorted_dict(
        out.models, _to_ratings(beta, present, out.models, scale, base, init, anchor, anchor_rating)
    )


def _bootstrap(
    out: _Outcomes,
    rounds: int,
    seed: int,
    scale: float,
    base: float,
    init: float,
    anchor: str | None,
    anchor_rating: float,
    point_beta: np.ndarray | None = None,
    prior_ties: float = 0.0,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_battles, n_rows = len(out.battle_row), len(out.row_count)
    # Warm-starting every round at the full-data (zero-mean) optimum saves most L-BFGS iterations.
    start = _fit_beta(out, out.row_count, prior_ties=prior_ties) if point_beta is None else point_beta.copy()
    start -= start.mean()
    result = np.full((rounds, out.n_models), np.nan)
    for r in range(rounds):
        # n uniform draws with replacement are Multinomial(n, 1/n) counts over battles; bincount maps
        # them onto the unique outcome rows, so the fit never touches individual battles.
        drawn = out.battle_row[rng.integers(0, n_battles, size=n_battles)]
        weight = np.bincount(drawn, minlength=n_rows).astype(np.float64)
        present = _present(out, weight)
        if anchor is not None and not present[out.models.index(anchor)]:
            continue  # this round cannot be put on the anchored scale
        beta = _fit_beta(out, weight, start, prior_ties)
        result[r] = _to_ratings(beta, present, out.models, scale, base, init, anchor, anchor_rating)
    return result


def bootstrap_bt(
    battles_df: pd.DataFrame,
    rounds: int = 100,
    seed: int = 0,
    scale: float = 400,
    base: float = 10,
    init: float = 1000,
    anchor: str | None = None,
    anchor_rating: float = 1000,
) -> pd.DataFrame:
    """BT ratings per bootstrap round: one row per round, one column per model (best median first).

    A model that drew no battle in a round gets NaN there.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if battles_df.empty:
        return pd.DataFrame(index=pd.RangeIndex(rounds, name="round"))
    out = _aggregate(battles_df)
    _check_anchor(out, anchor)
    with _one_blas_thread():
        boot = _bootstrap(out, rounds, seed, scale, base, init, anchor, anchor_rating)
    frame = pd.DataFrame(boot, columns=out.models, index=pd.RangeIndex(rounds, name="round"))
    return frame[frame.median().sort_values(ascending=False).index]


def _record(battles_df: pd.DataFrame) -> pd.DataFrame:
    """Battles, wins, losses and ties per model (a tie of either kind counts as a tie)."""
    winner = battles_df["winner"]
    tie = winner.isin(_TIES)
    sides = pd.DataFrame(
        {
            "model": pd.concat([battles_df["model_a"], battles_df["model_b"]], ignore_index=True),
            "wins": np.concatenate([winner.eq("model_a"), winner.eq("model_b")]).astype(int),
            "losses": np.concatenate([winner.eq("model_b"), winner.eq("model_a")]).astype(int),
            "ties": np.concatenate([tie, tie]).astype(int),
        }
    )
    record = sides.groupby("model").agg(
        battles=("wins", "size"), wins=("wins", "sum"), losses=("losses", "sum"), ties=("ties", "sum")
    )
    # Ties count as neither: win_rate is the share of battles won outright.
    record["win_rate"] = record["wins"] / record["battles"]
    return record


def separation(out: _Outcomes) -> tuple[np.ndarray, np.ndarray]:
    """Per model: (never lost to any model outside its group, never beat any model outside it).

    A group is a strongly connected component of the "beat or tied" graph within a connected set of
    compared models; with a single group nothing is separated and both flags are False.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    m = out.n_models
    beat_a = np.bincount(out.row_pair, out.row_count * (out.row_kind != 1), minlength=len(out.pair_a)) > 0
    beat_b = np.bincount(out.row_pair, out.row_count * (out.row_kind != 0), minlength=len(out.pair_a)) > 0
    # Edge i -> j: i beat (or tied) j at least once.
    src = np.concatenate([out.pair_a[beat_a], out.pair_b[beat_b]])
    dst = np.concatenate([out.pair_b[beat_a], out.pair_a[beat_b]])
    graph = csr_matrix((np.ones(len(src)), (src, dst)), shape=(m, m))
    _, group = connected_components(graph, directed=True, connection="strong")
    crossing = group[src] != group[dst]
    beats_outside = np.zeros(m, dtype=bool)
    lost_to_outside = np.zeros(m, dtype=bool)
    beats_outside[np.isin(group, group[src[crossing]])] = True
    lost_to_outside[np.isin(group, group[dst[crossing]])] = True
    compared = _present(out, out.row_count)
    n_groups = len(np.unique(group))
    unbeaten = compared & (n_groups > 1) & ~lost_to_outside
    winless = compared & (n_groups > 1) & ~beats_outside
    return unbeaten, winless


def leaderboard(
    battles_df: pd.DataFrame,
    rounds: int = 100,
    seed: int = 0,
    anchor: str | None = None,
    prior_ties: float = 0.0,
) -> pd.DataFrame:
    """One row per model, best BT rating first.

    Columns: model, rating (BT point estimate; MAP under ``prior_ties`` virtual ties per compared pair),
    lower / upper (2.5 / 97.5 % bootstrap quantiles; +inf / -inf on the side a separated model's data
    cannot bound), separated, elo (online), battles, wins, losses, ties, win_rate.
    """
    columns = [
        "model", "rating", "lower", "upper", "separated", "elo", "battles", "wins", "losses", "ties",
        "win_rate",
    ]  # fmt: skip
    if battles_df.empty:
        _check(battles_df)
        return pd.DataFrame(columns=columns)
    out = _aggregate(battles_df)
    _check_anchor(out, anchor)
    kw = {"scale": 400.0, "base": 10.0, "init": 1000.0, "anchor": anchor, "anchor_rating": 1000.0}
    with _one_blas_thread():
        beta = _fit_beta(out, out.row_count, prior_ties=prior_ties)
        boot = _bootstrap(out, rounds, seed, **kw, point_beta=beta, prior_ties=prior_ties)
    rating = _to_ratings(beta, np.ones(out.n_models, dtype=bool), out.models, **kw)
    with np.errstate(all="ignore"):  # all-NaN columns (rounds=0) give NaN bounds, which is the truth
        lower = np.nanquantile(boot, 0.025, axis=0) if rounds else np.full(out.n_models, np.nan)
        upper = np.nanquantile(boot, 0.975, axis=0) if rounds else np.full(out.n_models, np.nan)
    unbeaten, winless = separation(out)
    upper = np.where(unbeaten, np.inf, upper)
    lower = np.where(winless, -np.inf, lower)
    board = pd.DataFrame(
        {
            "model": out.models,
            "rating": rating,
            "lower": lower,
            "upper": upper,
            "separated": unbeaten | winless,
        }
    )
    board["elo"] = board["model"].map(compute_elo(battles_df))
    board = board.join(_record(battles_df), on="model")
    return board.sort_values("rating", ascending=False, ignore_index=True)[columns]


def plot_leaderboard(board: pd.DataFrame, path: str | Path) -> Path:
    """Horizontal error-bar chart of ratings with their bootstrap intervals, best at the top."""
    # The object API with an explicit Agg canvas leaves pyplot's global backend state untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = board.iloc[::-1]
    y = np.arange(len(rows))
    rating = rows["rating"].to_numpy(dtype=float)
    lower, upper = rows["lower"].to_numpy(dtype=float), rows["upper"].to_numpy(dtype=float)
    # An unbounded side (a separated model) is drawn to the plot's edge and marked with an arrow.
    finite = np.concatenate([rating, lower[np.isfinite(lower)], upper[np.isfinite(upper)]])
    margin = max(float(np.ptp(finite)) * 0.15, 50.0) if finite.size else 50.0
    left_edge, right_edge = float(finite.min()) - margin, float(finite.max()) + margin
    shown_lower = np.where(lower == -np.inf, left_edge, lower)
    shown_upper = np.where(upper == np.inf, right_edge, upper)
    err = np.vstack([rating - shown_lower, shown_upper - rating])
    err = np.nan_to_num(np.clip(err, 0.0, None))
    fig = Figure(figsize=(7.0, 1.0 + 0.35 * max(len(rows), 1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.errorbar(rating, y, xerr=err, fmt="o", color="tab:blue", ecolor="tab:gray", capsize=3)
    for side, edge, marker in ((lower == -np.inf, left_edge, "<"), (upper == np.inf, right_edge, ">")):
        if side.any():
            ax.plot(np.full(int(side.sum()), edge), y[side], marker, color="tab:gray", label="unbounded")
    ax.set_xlim(left_edge, right_edge)
    ax.set_yticks(y, labels=list(rows["model"]))
    ax.set_xlabel("Bradley-Terry rating (95% bootstrap interval)")
    ax.set_title("Arena leaderboard")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path

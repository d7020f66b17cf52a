"""The promotion gate decided on real leaderboards (Bradley-Terry with bootstrap intervals over battles):
promote, keep, below the floor, separated, and the boards that cannot decide."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mai_models.eval.gate import decide_promotion
from mai_models.eval.ratings import leaderboard


def _battles(pairs: dict[tuple[str, str], tuple[int, int, int]], seed: int = 0) -> pd.DataFrame:
    """``{(a, b): (a wins, b wins, ties)}`` as a shuffled battle log with sides drawn at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for (a, b), (wins_a, wins_b, ties) in pairs.items():
        for winner, count in ((a, wins_a), (b, wins_b), (None, ties)):
            for _ in range(count):
                left, right = (a, b) if rng.random() < 0.5 else (b, a)
                side = "tie" if winner is None else ("model_a" if winner == left else "model_b")
                rows.append((left, right, side))
    order = rng.permutation(len(rows))
    return pd.DataFrame([rows[i] for i in order], columns=["model_a", "model_b", "winner"])


def _board(pairs: dict[tuple[str, str], tuple[int, int, int]], prior_ties: float = 1.0) -> pd.DataFrame:
    return leaderboard(_battles(pairs), rounds=200, seed=0, prior_ties=prior_ties)


def _rating(board: pd.DataFrame, model: str, column: str = "rating") -> float:
    return float(board.set_index("model").loc[model, column])


# A candidate far ahead of the champion and the n-gram, over enough battles for a tight interval.
STRONG = {("cand", "champ"): (70, 20, 10), ("cand", "ngram"): (80, 10, 10), ("champ", "ngram"): (55, 35, 10)}
# A candidate that splits its battles with the champion: its interval straddles the champion.
EVEN = {("cand", "champ"): (40, 40, 20), ("cand", "ngram"): (55, 35, 10), ("champ", "ngram"): (55, 35, 10)}


def test_promotes_when_the_lower_bound_beats_the_champion() -> None:
    board = _board(STRONG)
    d = decide_promotion(board, "cand", "champ", floor="ngram")
    assert d.outcome == "promote" and d.promote and d.valid
    assert d.candidate_lower == _rating(board, "cand", "lower") > _rating(board, "champ") == d.champion_rating
    assert (
        d.reason == f"candidate lower bound {d.candidate_lower:.1f} > champion rating {d.champion_rating:.1f}"
    )


def test_keeps_the_champion_when_the_interval_overlaps() -> None:
    board = _board(EVEN)
    d = decide_promotion(board, "cand", "champ", floor="ngram")
    assert d.outcome == "keep" and not d.promote and d.valid  # a normal outcome, not a failure
    assert d.candidate_lower <= _rating(board, "champ")
    assert _rating(board, "cand", "upper") > _rating(board, "champ")  # the candidate might be better
    assert "champion champ kept" in d.reason


def test_a_first_candidate_faces_the_floor() -> None:
    beaten = _board({("cand", "ngram"): (10, 70, 20), ("cand", "dense"): (30, 50, 20)})
    d = decide_promotion(beaten, "cand", None, floor="ngram")
    assert d.outcome == "below_floor" and not d.promote and d.valid
    assert d.floor_rating == _rating(beaten, "ngram") >= d.candidate_lower
    assert "no champion until a candidate beats it" in d.reason

    ahead = _board({("cand", "ngram"): (70, 10, 20), ("cand", "dense"): (35, 45, 20)})
    d = decide_promotion(ahead, "cand", None, floor="ngram")
    assert d.outcome == "promote" and d.candidate_lower > d.floor_rating
    assert decide_promotion(ahead, "cand", None, floor=None).outcome == "promote"
    # Beating the weaker baseline is not enough when the floor is the stronger one.
    assert decide_promotion(ahead, "cand", None, floor="dense").outcome == "below_floor"


def test_a_separated_board_shows_no_fake_certainty() -> None:
    # The voice lost every battle to its teacher (8-0, as in the demo).
    mle = _board({("voice", "teacher"): (0, 8, 0)}, prior_ties=0.0)
    assert mle["separated"].all()
    assert _rating(mle, "teacher", "upper") == math.inf and _rating(mle, "voice", "lower") == -math.inf

    board = _board({("voice", "teacher"): (0, 8, 0)})
    # The weak prior (one virtual tie) keeps the point ratings finite: 8.5 : 0.5 odds, not 2738 vs -738.
    gap = _rating(board, "teacher") - _rating(board, "voice")
    assert gap == pytest.approx(400 * math.log10(8.5 / 0.5), rel=1e-4)
    assert _rating(board, "teacher", "upper") == math.inf and _rating(board, "voice", "lower") == -math.inf

    d = decide_promotion(board, "voice", None, floor="teacher")
    assert d.outcome == "below_floor" and d.separated and "separated" in d.reason
    assert d.candidate_lower == -math.inf

    # A candidate that won every battle against the champion is separated too: the open side is +inf,
    # and with the prior its lower bound is finite, so the decision rests on the stated prior.
    won = _board(
        {("cand", "champ"): (12, 0, 0), ("cand", "ngram"): (12, 0, 0), ("champ", "ngram"): (8, 4, 0)}
    )
    assert won["separated"].all()
    assert _rating(won, "cand", "upper") == math.inf and math.isfinite(_rating(won, "cand", "lower"))
    # champ and the n-gram beat each other but never the candidate: unbounded below, relative to it.
    assert _rating(won, "champ", "lower") == _rating(won, "ngram", "lower") == -math.inf
    d = decide_promotion(won, "cand", "champ", floor="ngram")
    assert d.outcome == "promote" and d.separated and "won all 24 decisive battles" in d.reason
    # A clean sweep of 3 battles could be chance (0.025 ** (1/3) = 0.29 <= 0.5): not a promotion.
    few = _board({("cand", "champ"): (2, 0, 0), ("cand", "ngram"): (1, 0, 0), ("champ", "ngram"): (2, 1, 0)})
    assert decide_promotion(few, "cand", "champ", floor="ngram").outcome == "keep"
    assert decide_promotion(few, "cand", None, floor="ngram").outcome == "below_floor"


def test_a_group_separated_from_the_rest_is_flagged() -> None:
    # a and b split their battles, and both beat c every time: {a, b} is unbounded above, c below.
    board = _board({("a", "b"): (5, 5, 0), ("a", "c"): (6, 0, 0), ("b", "c"): (6, 0, 0)}, prior_ties=0.0)
    assert board["separated"].all()
    assert _rating(board, "a", "upper") == _rating(board, "b", "upper") == math.inf
    assert _rating(board, "c", "lower") == -math.inf
    assert math.isfinite(_rating(board, "a", "lower")) and math.isfinite(_rating(board, "c", "upper"))
    connected = _board(EVEN)
    assert not connected["separated"].any() and np.isfinite(connected[["lower", "upper"]].to_numpy()).all()


def test_boards_that_cannot_decide_are_invalid() -> None:
    board = _board(EVEN)
    assert decide_promotion(board.iloc[0:0], "cand", None).outcome == "invalid"
    missing = decide_promotion(board, "ghost", "champ")
    assert missing.outcome == "invalid" and missing.reason == "candidate ghost has no rating on the board"
    assert decide_promotion(board, "cand", "ghost").outcome == "invalid"
    assert decide_promotion(board, "cand", None, floor="ghost").outcome == "invalid"
    no_bounds = leaderboard(_battles(EVEN), rounds=0)  # no bootstrap rounds: NaN bounds
    assert decide_promotion(no_bounds, "cand", "champ").outcome == "invalid"
    # A re-evaluated champion keeps its alias without facing itself.
    assert decide_promotion(board, "cand", "cand").outcome == "keep"


def test_a_separated_board_plots(tmp_path) -> None:
    from mai_models.eval.ratings import plot_leaderboard

    board = _board({("voice", "teacher"): (0, 8, 0)})
    out = plot_leaderboard(board, tmp_path / "board.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

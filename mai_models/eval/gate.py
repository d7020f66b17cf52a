"""Promotion gate: a candidate replaces the champion only when the arena is confident it is better.

"Confident" means the candidate's lower bootstrap bound is above the champion's point rating, so a lucky
run of battles does not promote a model that is merely as good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    candidate: str
    champion: str | None
    candidate_lower: float
    champion_rating: float | None


def _row(board: pd.DataFrame, model: str) -> pd.Series | None:
    rows = board.loc[board["model"] == model]
    return None if rows.empty else rows.iloc[0]


def decide_promotion(board: pd.DataFrame, candidate: str, champion: str | None) -> GateDecision:
    """Decide from a ``leaderboard`` frame (columns model, rating, lower, ...)."""
    cand = _row(board, candidate)
    if cand is None:
        return GateDecision(
            False, f"candidate {candidate} has no rating on the board", candidate, champion, math.nan, None
        )
    lower = float(cand["lower"])
    if champion is None:
        return GateDecision(
            True,
            f"no champion yet: candidate {candidate} promoted (lower bound {lower:.1f})",
            candidate,
            None,
            lower,
            None,
        )
    if champion == candidate:
        # A re-evaluation of the champion (e.g. after an evaluation-code change) keeps its alias.
        return GateDecision(
            True,
            f"candidate {candidate} is already the champion",
            candidate,
            champion,
            lower,
            float(cand["rating"]),
        )
    champ = _row(board, champion)
    if champ is None:
        # Promoting blind would skip the comparison the gate exists for.
        return GateDecision(
            False,
            f"champion {champion} has no rating on the board; cannot compare candidate {candidate}",
            candidate,
            champion,
            lower,
            None,
        )
    champ_rating = float(champ["rating"])
    if math.isnan(lower):
        return GateDecision(
            False,
            f"candidate {candidate} has no bootstrap lower bound; champion rating {champ_rating:.1f} kept",
            candidate,
            champion,
            lower,
            champ_rating,
        )
    promote = lower > champ_rating
    reason = (
        f"candidate lower bound {lower:.1f} > champion rating {champ_rating:.1f}"
        if promote
        else f"candidate lower bound {lower:.1f} <= champion rating {champ_rating:.1f}: "
        f"champion {champion} kept"
    )
    return GateDecision(promote, reason, candidate, champion, lower, champ_rating)

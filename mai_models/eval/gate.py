"""Promotion gate: a candidate replaces the champion only when the arena is confident it is better.

"Confident" means the candidate's lower bootstrap bound is above the champion's point rating, so a lucky
run of battles does not promote a model that is merely as good. A first candidate (no champion yet)
faces a floor instead: a baseline on the same board (for text the n-gram, for speech the teacher), so
the first champion is at least better than the simplest thing that could be shipped.

Outcomes: ``promote``, ``keep`` (the champion stays), ``below_floor`` (no champion yet and the
candidate did not beat the floor) and ``invalid`` (the board cannot decide: the candidate, the champion
or the floor is missing, or the candidate's bound is NaN). Only ``invalid`` is a failed gate; keeping
the champion is the normal outcome of most retraining runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

Outcome = Literal["promote", "keep", "below_floor", "invalid"]


@dataclass(frozen=True)
class GateDecision:
    outcome: Outcome
    reason: str
    candidate: str
    champion: str | None
    floor: str | None
    candidate_lower: float
    champion_rating: float | None
    floor_rating: float | None
    separated: bool

    @property
    def promote(self) -> bool:
        return self.outcome == "promote"

    @property
    def valid(self) -> bool:
        return self.outcome != "invalid"


def _row(board: pd.DataFrame, model: str) -> pd.Series | None:
    rows = board.loc[board["model"] == model] if "model" in board else board.iloc[0:0]
    return None if rows.empty else rows.iloc[0]


def _separated(row: pd.Series) -> bool:
    return bool(row.get("separated", False))


def decide_promotion(
    board: pd.DataFrame, candidate: str, champion: str | None, floor: str | None = None
) -> GateDecision:
    """Decide from a ``leaderboard`` frame (columns model, rating, lower, ..., separated).

    ``champion``: the model holding the champion alias that the candidate faced, or None.
    ``floor``: the baseline a first candidate must beat, or None for no floor.
    """

    def decide(outcome: Outcome, reason: str, **values: float | bool | None) -> GateDecision:
        base = {
            "candidate_lower": math.nan,
            "champion_rating": None,
            "floor_rating": None,
            "separated": False,
        }
        return GateDecision(outcome, reason, candidate, champion, floor, **{**base, **values})

    if board.empty:
        return decide("invalid", "the arena produced no leaderboard")
    cand = _row(board, candidate)
    if cand is None:
        return decide("invalid", f"candidate {candidate} has no rating on the board")
    lower, separated = float(cand["lower"]), _separated(cand)
    if math.isnan(lower):
        return decide("invalid", f"candidate {candidate} has no bootstrap lower bound", separated=separated)
    if champion == candidate:
        # A re-evaluation of the champion (e.g. after an evaluation-code change) keeps its alias.
        return decide(
            "keep",
            f"candidate {candidate} is already the champion",
            candidate_lower=lower,
            champion_rating=float(cand["rating"]),
            separated=separated,
        )
    if champion is None and floor is None:
        return decide(
            "promote",
            f"no champion yet and no floor configured: candidate {candidate} promoted "
            f"(lower bound {lower:.1f})",
            candidate_lower=lower,
            separated=separated,
        )
    # The candidate must beat the champion or, while there is none, the floor.
    against = champion if champion is not None else floor
    row = _row(board, str(against))
    if row is None:
        reason = (
            f"champion {champion} has no rating on the board; cannot compare candidate {candidate}"
            if champion is not None
            else f"floor baseline {floor} has no rating on the board; cannot judge candidate {candidate}"
        )
        # Promoting blind would skip the comparison the gate exists for.
        return decide("invalid", reason, candidate_lower=lower, separated=separated)
    rating = float(row["rating"])
    values = {
        "candidate_lower": lower,
        "separated": separated,
        "champion_rating" if champion is not None else "floor_rating": rating,
    }
    not_beaten: Outcome = "keep" if champion is not None else "below_floor"
    stay = f"champion {champion} kept" if champion is not None else "no champion until a candidate beats it"

    note = ""
    if separated and lower == -math.inf:
        note = " (separated: the candidate lost every battle, its lower bound is unbounded)"
    elif separated:
        # Every round of the bootstrap repeats the same clean sweep, so its lower bound is only the prior's
        # point; the exact binomial bound on the sweep says whether that many wins can be chance.
        wins = int(cand.get("wins", 0))
        sure = 0.025 ** (1.0 / wins) if wins else 0.0
        if sure <= 0.5:
            return decide(
                not_beaten,
                f"separated: candidate {candidate} won all {wins} decisive battles, too few to be sure "
                f"(exact 95 % lower bound on its win rate {sure:.2f} <= 0.5); "
                + (stay if champion is not None else "no champion yet"),
                **values,
            )
        note = (
            f" (separated: the candidate won all {wins} decisive battles; exact 95 % lower bound on its "
            f"win rate {sure:.2f})"
        )

    beats = lower > rating
    compared = f"candidate lower bound {lower:.1f} {'>' if beats else '<='}"
    if champion is not None:
        reason = f"{compared} champion rating {rating:.1f}"
    else:
        reason = f"no champion yet: {compared} floor {floor} rating {rating:.1f}"
    if not beats:
        reason += f"{':' if champion is not None else ';'} {stay}"
    return decide("promote" if beats else not_beaten, reason + note, **values)

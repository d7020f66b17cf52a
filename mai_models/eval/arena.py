"""The local arena: a pinned prompt set from held-out documents (their human-written continuations are
the references), round-robin battles between every pair of contestants, judged and stored in
FastChat's battle schema."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mai_models.eval.battles import Battle
from mai_models.eval.judges import OpenAIJudge, ReferenceLikelihoodJudge, speech_verdict
from mai_models.eval.scoring import ScoringModel

PROMPT_WORDS = 48
REFERENCE_WORDS = 32


def pinned_prompts(texts: Iterable[str], count: int, seed: int = 0) -> list[dict[str, str]]:
    """``count`` prompts from held-out documents long enough to hold a prompt and a reference,
    chosen by a seeded hash so the set only changes when the data does."""
    items = []
    for text in texts:
        words = text.split()
        if len(words) < PROMPT_WORDS + REFERENCE_WORDS:
            continue
        key = hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()
        items.append(
            {
                "question_id": key[:16],
                "prompt": " ".join(words[:PROMPT_WORDS]),
                "reference": " ".join(words[PROMPT_WORDS : PROMPT_WORDS + REFERENCE_WORDS]),
            }
        )
    return sorted(items, key=lambda item: item["question_id"])[:count]


def text_battles(
    contestants: dict[str, ScoringModel],
    prompts: Sequence[dict[str, str]],
    judge: ReferenceLikelihoodJudge | OpenAIJudge | None = None,
    seed: int = 0,
) -> list[Battle]:
    """Every pair on every prompt; which side is A is drawn at random (judges must not care)."""
    judge = judge or ReferenceLikelihoodJudge()
    if isinstance(judge, OpenAIJudge):
        judge.answer_all(contestants.values(), [item["prompt"] for item in prompts])
    rng = random.Random(seed)
    battles = []
    for item in prompts:
        for left, right in itertools.combinations(sorted(contestants), 2):
            a, b = (left, right) if rng.random() < 0.5 else (right, left)
            verdict = judge.judge(item["prompt"], item["reference"], contestants[a], contestants[b])
            battles.append(
                Battle(
                    model_a=a,
                    model_b=b,
                    winner=verdict.winner,
                    judge=judge.name,
                    tstamp=0.0,  # pinned: a rerun on the same data writes the same battles
                    conv_metadata=verdict.detail,
                    question_id=item["question_id"],
                )
            )
    return battles


def speech_battles(scores: dict[str, dict[str, dict[str, float]]], seed: int = 0) -> list[Battle]:
    """``scores[system][utt_id] = {"wer", "mcd"}``: one battle per pair per shared sentence."""
    rng = random.Random(seed)
    battles = []
    shared = sorted(set.intersection(*(set(s) for s in scores.values()))) if scores else []
    for utt in shared:
        for left, right in itertools.combinations(sorted(scores), 2):
            a, b = (left, right) if rng.random() < 0.5 else (right, left)
            verdict = speech_verdict(scores[a][utt], scores[b][utt])
            battles.append(
                Battle(
                    a,
                    b,
                    verdict.winner,
                    "asr-then-mcd",
                    tstamp=0.0,
                    conv_metadata=verdict.detail,
                    question_id=utt,
                )
            )
    return battles


def arena_summary(board: Any, battles: Sequence[Battle]) -> dict[str, Any]:
    return {
        "battles": len(battles),
        "contestants": int(len(board)),
        "leaderboard": board.round(2).to_dict(orient="records"),
    }


def write_arena(out: Path, battles: Sequence[Battle], board: Any, plot_title: str) -> dict[str, Path]:
    from mai_models.eval.battles import write_battles_jsonl
    from mai_models.eval.ratings import plot_leaderboard

    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "battles": write_battles_jsonl(battles, out / "battles.jsonl"),
        "leaderboard": out / "leaderboard.csv",
        "plot": plot_leaderboard(board, out / "leaderboard.png"),
    }
    board.to_csv(paths["leaderboard"], index=False)
    return paths

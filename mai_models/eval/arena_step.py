"""arena: battles on pinned held-out prompts (text) and sentences (speech), Bradley-Terry ratings with
bootstrap intervals, and the gate's decision for each model: promote, keep, or below the floor.
The decision is recorded here; the ``champion`` step applies it after the blocking gate check."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.eval.champions import (
    DECISION_FILE,
    candidate_version,
    dump,
    opponent_dir,
    opponent_name,
    opponent_versions,
    record_decisions,
)
from mai_models.eval.contestants import DENSE_NAME, NGRAM_FILE, candidate_lm, dense_lm
from mai_models.executor.step import Check, CheckResult, Step, StepContext
from mai_models.executor.versioning import read_manifest
from mai_models.tracking.registry import LM_MODEL, VOICE_MODEL


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    import pandas as pd

    from mai_models.eval.arena import pinned_prompts, speech_battles, text_battles, write_arena
    from mai_models.eval.battles import battles_frame
    from mai_models.eval.gate import decide_promotion
    from mai_models.eval.lm_metrics import heldout_texts
    from mai_models.eval.ngram import NGramLM
    from mai_models.eval.ratings import leaderboard
    from mai_models.eval.scoring import MegatronScoringModel
    from mai_models.lm.inference import load_pretrained

    cfg = ctx.params.evaluation
    _, candidate = candidate_lm(ctx)
    ngram = NGramLM.load(ctx.input("lm_evaluation") / NGRAM_FILE)
    contestants = {candidate.name: candidate, ngram.name: ngram, DENSE_NAME: dense_lm(ctx)}
    champion = opponent_dir(ctx, LM_MODEL)
    if champion:
        contestants[champion[0]] = MegatronScoringModel(load_pretrained(champion[1]), name=champion[0])
    prompts = pinned_prompts(heldout_texts(ctx.input("clean_documents"), "test"), cfg.arena_prompts, cfg.seed)
    battles = text_battles(contestants, prompts, _judge(cfg), cfg.seed)

    rating = {"rounds": cfg.bootstrap_rounds, "seed": cfg.seed, "prior_ties": cfg.rating_prior_ties}
    board = leaderboard(battles_frame(battles), **rating)
    write_arena(out / "text", battles, board, "text arena")
    (out / "text" / "questions.json").write_text(json.dumps(prompts, indent=1) + "\n")
    text_floor = {"ngram": ngram.name, "dense": DENSE_NAME, "none": None}[cfg.text_floor]
    lm_decision = decide_promotion(board, candidate.name, opponent_name(ctx, LM_MODEL), text_floor)

    per_utt = pd.read_parquet(ctx.input("tts_evaluation") / "per_utterance.parquet")
    scores = {
        system: {
            r["utt_id"]: {"wer": float(r["wer"]), "mcd": float(r.get("mcd_db", math.nan))}
            for _, r in rows.iterrows()
        }
        for system, rows in per_utt.groupby("system")
    }
    summary = json.loads((ctx.input("tts_evaluation") / "summary.json").read_text())
    s_battles = speech_battles(scores, cfg.seed)
    s_board = leaderboard(battles_frame(s_battles), **rating)
    write_arena(out / "speech", s_battles, s_board, "speech arena")
    speech_floor = summary.get("teacher") if cfg.speech_floor == "teacher" else None
    voice_decision = decide_promotion(
        s_board, summary["candidate"], opponent_name(ctx, VOICE_MODEL), speech_floor
    )

    decisions = {
        LM_MODEL: _decision(lm_decision, candidate_version(ctx, LM_MODEL)),
        VOICE_MODEL: _decision(voice_decision, candidate_version(ctx, VOICE_MODEL)),
    }
    dump(out / DECISION_FILE, decisions)
    return {
        "text_battles": len(battles),
        "speech_battles": len(s_battles),
        "text_leaderboard": _board(board),
        "speech_leaderboard": _board(s_board),
        "decisions": {m: {"outcome": d["outcome"], "reason": d["reason"]} for m, d in decisions.items()},
    }


def _judge(cfg: Any) -> Any:
    from mai_models.eval.judges import OpenAIJudge, ReferenceLikelihoodJudge

    if cfg.judge == "reference-likelihood":
        return ReferenceLikelihoodJudge(cfg.tie_tolerance)
    if not (cfg.judge_base_url and cfg.judge_model):
        raise MaiUserError(
            "evaluation.judge=openai needs evaluation.judge_base_url and evaluation.judge_model"
        )
    key = os.environ.get("MAI_JUDGE_API_KEY")
    return OpenAIJudge(cfg.judge_base_url, cfg.judge_model, key, max_new_tokens=cfg.generation_tokens)


def _board(board: Any) -> list[dict[str, Any]]:
    """Leaderboard rows as strict JSON: an unbounded side is the string "inf" / "-inf"."""

    def plain(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 2) if math.isfinite(value) else str(value)
        return value.item() if hasattr(value, "item") else value

    return [
        {
            k: plain(v)
            for k, v in row.items()
            if k in ("model", "rating", "lower", "upper", "separated", "battles", "win_rate")
        }
        for row in board.to_dict(orient="records")
    ]


def _decision(decision: Any, version: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {**asdict(decision), "promote": decision.promote, "version": version}


def champion_gate(ctx: StepContext) -> CheckResult:
    """Passes whenever the gate could decide (promote, keep, below the floor): keeping the champion is a
    normal outcome of retraining, not a failure. Fails only when the board cannot decide."""
    path = ctx.output / DECISION_FILE
    if read_manifest(ctx.output) is None or not path.exists():
        return CheckResult(False, f"no {path}")
    decisions = json.loads(path.read_text())
    broken = {m: d for m, d in decisions.items() if d["outcome"] == "invalid"}
    headline = next(iter(broken.items()), (LM_MODEL, decisions[LM_MODEL]))
    return CheckResult(
        passed=not broken,
        description=f"{headline[0]}: {headline[1]['outcome']}: {headline[1]['reason']}",
        metadata={
            **{m: f"{d['outcome']}: {d['reason']}" for m, d in decisions.items()},
            **{f"{m}/separated": bool(d["separated"]) for m, d in decisions.items()},
        },
    )


STEP = Step(
    name="arena",
    description="Battles on pinned held-out prompts, Bradley-Terry ratings with bootstrap CIs, the gate.",
    group="evaluation",
    command="eval build",
    build=build,
    upstream=(
        "lm_evaluation",
        "tts_evaluation",
        "moe_pretrain",
        "dense_pretrain",
        "mai_voice",
        "clean_documents",
    ),
    params=("evaluation",),
    kinds=frozenset({"python", "mlflow"}),
    compute="heavy",
    inputs=lambda ctx: opponent_versions(ctx, (LM_MODEL, VOICE_MODEL)),
    artifacts=("text", "speech", DECISION_FILE),
    after_commit=lambda ctx, run_id, dvc_hash: record_decisions(
        ctx, json.loads((ctx.output / DECISION_FILE).read_text())
    ),
    checks=(
        Check(
            "champion_gate",
            "The gate could decide for every model: promote (lower CI bound beats the champion, or the "
            "floor when there is none), keep, or below the floor. Fails only when the board cannot decide.",
            champion_gate,
        ),
    ),
)

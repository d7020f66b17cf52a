"""Thin Dagster assets over mai_models.eval_pipeline: the HF export, LM and TTS evaluation, the local
arena (with its gate) and the arena submission bundle."""

import json

from dagster import AssetCheckResult, AssetCheckSeverity, asset_check

from assets.steps import build_step_asset
from mai_models.eval_pipeline import DECISION_FILE, STEPS, EvalPipeline, eval_upstream
from mai_models.launcher import TRAINING_TAG
from mai_models.lm.launch import REGISTERED_MODEL
from pipelines.resources import FoundrySettings

EVAL_GROUP = "evaluation"
# Evaluation runs the models for minutes: like training, one at a time on shared cores.
_HEAVY = ("lm_evaluation", "tts_evaluation", "arena", "arena_submission")
_KINDS = {"hf_export": {"huggingface", "safetensors"}, "champion": {"mlflow"}}

# Deps come from the project's parameters, as for the speech assets (reload after editing them).
_PARAMS = FoundrySettings().params()
EVAL_ASSETS = [
    build_step_asset(
        name,
        deps=list(eval_upstream(_PARAMS, name)),
        group=EVAL_GROUP,
        code_version=step.code_version(),
        description=step.description,
        kinds=_KINDS.get(name, {"python", "mlflow"}),
        make_pipeline=EvalPipeline,
        pool=None,
        op_tags={TRAINING_TAG: "training"} if name in _HEAVY else None,
    )
    for name, step in STEPS.items()
]


@asset_check(
    asset="arena",
    name="champion_gate",
    blocking=True,
    description="The gate could decide for every model: promote (lower CI bound beats the champion, or the "
    "floor when there is none), keep, or below the floor. Fails only when the board cannot decide.",
)
def champion_gate(foundry: FoundrySettings) -> AssetCheckResult:
    pipe = EvalPipeline(foundry.load(), foundry.params())
    path = pipe.out_dir("arena") / DECISION_FILE
    if not path.exists():
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, description=f"no {path}")
    decisions = json.loads(path.read_text())
    broken = {m: d for m, d in decisions.items() if d["outcome"] == "invalid"}
    lm = decisions[REGISTERED_MODEL]
    headline = next(iter(broken.items()), (REGISTERED_MODEL, lm))
    return AssetCheckResult(
        passed=not broken,
        severity=AssetCheckSeverity.ERROR,
        description=f"{headline[0]}: {headline[1]['outcome']}: {headline[1]['reason']}",
        metadata={
            **{m: f"{d['outcome']}: {d['reason']}" for m, d in decisions.items()},
            **{f"{m}/separated": bool(d["separated"]) for m, d in decisions.items()},
        },
    )


@asset_check(asset="arena_submission", name="submission_schema", blocking=True)
def submission_schema(foundry: FoundrySettings) -> AssetCheckResult:
    """Every file present with its checksum, and the FastChat / Arena-Hard schemas respected."""
    from mai_models.export.submission import SUBMISSION_FILE, validate_submission

    pipe = EvalPipeline(foundry.load(), foundry.params())
    out = pipe.out_dir("arena_submission")
    status = json.loads((out / SUBMISSION_FILE).read_text())
    if status["bundle"] is None:
        # Nothing to validate: there is no champion (or its bundle is elsewhere), and the status says why.
        return AssetCheckResult(
            passed=True,
            description=f"no bundle ({status['status']}): {status['reason']}",
            metadata={"status": status["status"], "reason": status["reason"]},
        )
    bundle = out / status["bundle"]
    problems = validate_submission(bundle)
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description="bundle valid" if not problems else f"{len(problems)} problems: {problems[0]}",
        metadata={
            "bundle": str(bundle),
            "status": status["status"],
            "problems": "\n".join(problems[:20]) or "none",
        },
    )


EVAL_CHECKS = [champion_gate, submission_schema]

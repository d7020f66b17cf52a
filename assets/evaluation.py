"""Thin Dagster assets over mai_models.eval_pipeline: the HF export, LM and TTS evaluation, the local
arena (with its gate) and the arena submission bundle."""

import json

from dagster import AssetCheckResult, AssetCheckSeverity, asset_check

from assets.steps import build_step_asset
from mai_models.eval_pipeline import DECISION_FILE, STEPS, EvalPipeline
from mai_models.launcher import TRAINING_TAG
from mai_models.lm.launch import REGISTERED_MODEL
from pipelines.resources import FoundrySettings

EVAL_GROUP = "evaluation"
# Evaluation runs the models for minutes: like training, one at a time on shared cores.
_HEAVY = ("lm_evaluation", "tts_evaluation", "arena", "arena_submission")

EVAL_ASSETS = [
    build_step_asset(
        name,
        deps=list(step.upstream),
        group=EVAL_GROUP,
        code_version=step.code_version(),
        description=step.description,
        kinds={"python", "mlflow"} if name != "hf_export" else {"huggingface", "safetensors"},
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
    description="The candidate becomes champion only if its rating's lower CI bound beats the champion.",
)
def champion_gate(foundry: FoundrySettings) -> AssetCheckResult:
    pipe = EvalPipeline(foundry.load(), foundry.params())
    decisions = json.loads((pipe.out_dir("arena") / DECISION_FILE).read_text())
    lm = decisions[REGISTERED_MODEL]
    return AssetCheckResult(
        passed=bool(lm["promote"]),
        severity=AssetCheckSeverity.ERROR,
        description=f"{REGISTERED_MODEL}: {'promoted' if lm['promote'] else 'champion kept'}: {lm['reason']}",
        metadata={m: f"{'promote' if d['promote'] else 'keep'}: {d['reason']}" for m, d in decisions.items()},
    )


@asset_check(asset="arena_submission", name="submission_schema", blocking=True)
def submission_schema(foundry: FoundrySettings) -> AssetCheckResult:
    """Every file present with its checksum, and the FastChat / Arena-Hard schemas respected."""
    from mai_models.export.submission import find_bundle, validate_submission

    pipe = EvalPipeline(foundry.load(), foundry.params())
    bundle = find_bundle(pipe.out_dir("arena_submission"))
    problems = validate_submission(bundle)
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description="bundle valid" if not problems else f"{len(problems)} problems: {problems[0]}",
        metadata={"bundle": str(bundle), "problems": "\n".join(problems[:20]) or "none"},
    )


EVAL_CHECKS = [champion_gate, submission_schema]

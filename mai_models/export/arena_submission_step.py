"""arena_submission: the champion's bundle for the arena (api_endpoint.json, questions, Arena-Hard
answers, battles, model card and manifest with the whole lineage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mai_models.executor.step import Check, CheckResult, Step, StepContext
from mai_models.export.submission import SUBMISSION_FILE, build_submission, validate_submission


def submission_schema(ctx: StepContext) -> CheckResult:
    """Every file present with its checksum, and the FastChat / Arena-Hard schemas respected."""
    status = json.loads((ctx.output / SUBMISSION_FILE).read_text())
    if status["bundle"] is None:
        # Nothing to validate: there is no champion (or its bundle is elsewhere), and the status says why.
        return CheckResult(
            True,
            f"no bundle ({status['status']}): {status['reason']}",
            {"status": status["status"], "reason": status["reason"]},
        )
    bundle = ctx.output / status["bundle"]
    problems = validate_submission(bundle)
    return CheckResult(
        not problems,
        "bundle valid" if not problems else f"{len(problems)} problems: {problems[0]}",
        {"bundle": str(bundle), "status": status["status"], "problems": "\n".join(problems[:20]) or "none"},
    )


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    return build_submission(ctx, out)


STEP = Step(
    name="arena_submission",
    description="The champion's bundle: api_endpoint.json, questions, Arena-Hard answers, battles, manifest.",
    group="evaluation",
    command="eval build",
    build=build,
    upstream=("champion", "arena", "hf_export", "lm_evaluation", "moe_pretrain", "mai_voice"),
    params=("evaluation",),
    config=lambda params: {
        "evaluation": params.evaluation.model_dump(mode="json", include={"generation_tokens"})
    },
    kinds=frozenset({"python", "mlflow"}),
    compute="heavy",
    checks=(Check("submission_schema", submission_schema.__doc__ or "", submission_schema),),
)

"""champion: the gate's decision applied to the registry: who holds the champion alias, and since when.
It runs after the arena's blocking gate check, and moves the alias only after its own commit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.eval.champions import CHAMPION_FILE, DECISION_FILE, apply_champions, dump
from mai_models.eval.champions import opponent as find_opponent
from mai_models.executor.step import Check, CheckResult, Step, StepContext
from mai_models.tracking.registry import LM_MODEL, VOICE_MODEL


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    """Who holds ``champion`` once the gate's decision is applied (the alias moves after the commit)."""
    decisions = json.loads((ctx.input("arena") / DECISION_FILE).read_text())
    champions = {}
    for model, decision in decisions.items():
        if not decision.get("promote") and decision["outcome"] not in ("keep", "below_floor"):
            raise MaiUserError(f"{model}: the gate could not decide ({decision['reason']})")
        opponent = find_opponent(ctx, model, decision["version"])
        if decision["promote"]:
            holder = str(decision["version"])
        else:
            holder = str(opponent["version"]) if opponent else None
        champions[model] = {
            "version": holder,
            "changed": bool(decision["promote"]),
            "previous": str(opponent["version"]) if opponent else None,
            "outcome": decision["outcome"],
            "reason": decision["reason"],
        }
    dump(out / CHAMPION_FILE, champions)
    return {m: {"version": c["version"], "changed": c["changed"]} for m, c in champions.items()}


def champion_freshness(ctx: StepContext) -> CheckResult:
    """Warns when a champion was trained longer ago than ``automation.champion_max_age_days``: the
    factory is still shipping it, but retraining has not produced anything better for that long."""
    import time

    from mai_models.tracking.champion_output import champion

    limit = ctx.params.automation.champion_max_age_days
    ages: dict[str, float] = {}
    for model in (LM_MODEL, VOICE_MODEL):
        # An unreachable tracking server raises (one line) instead of reading as "no champion".
        found = champion(ctx.settings, model)
        if found is not None:
            ages[f"{model} v{found['version']}"] = (time.time() - found["created_ms"] / 1000) / 86400
    stale = {name: age for name, age in ages.items() if age > limit}
    if not ages:
        return CheckResult(True, "no champion yet", {"max_age_days": limit})
    worst = max(ages, key=lambda name: ages[name])
    description = (
        f"{worst} is {ages[worst]:.1f} days old (limit {limit:g})"
        if stale
        else f"every champion is younger than {limit:g} days"
    )
    return CheckResult(
        not stale, description, {"max_age_days": limit, **{k: round(v, 3) for k, v in ages.items()}}
    )


STEP = Step(
    name="champion",
    description="Applies the gate's decision to the registry: who holds the champion alias, and since when.",
    group="evaluation",
    command="eval build",
    build=build,
    upstream=("arena",),
    kinds=frozenset({"mlflow"}),
    artifacts=(CHAMPION_FILE,),
    after_commit=lambda ctx, run_id, dvc_hash: apply_champions(
        ctx, json.loads((ctx.output / CHAMPION_FILE).read_text())
    ),
    checks=(
        Check(
            "champion_freshness",
            "Warns when a champion is older than automation.champion_max_age_days.",
            champion_freshness,
            blocking=False,
            severity="warn",
        ),
    ),
)

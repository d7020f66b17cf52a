"""champion: the gate's decision applied to the registry: who holds the champion alias, and since when.
It runs after the arena's blocking gate check, and moves the alias only after its own commit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.eval.champions import CHAMPION_FILE, DECISION_FILE, apply_champions, dump
from mai_models.eval.champions import opponent as find_opponent
from mai_models.executor.step import Step, StepContext


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
)

"""Who a candidate faces and what the gate did: the registry lookups of the evaluation steps.

The candidate is the version its training step registered; its opponent is the holder of the
``champion`` alias, except when the gate already promoted this very candidate: then the champion it
replaced, so that re-running the chain after a promotion replays the same arena instead of a new one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mai_models.executor.step import StepContext
from mai_models.tracking.champion_output import TRAINING_STEP, output_dir, registered_version
from mai_models.tracking.metric_names import stable_key
from mai_models.tracking.mlflow_links import run_route
from mai_models.tracking.mlflow_runs import TAG_DATA_VERSION, TAG_STEP, find_runs
from mai_models.tracking.model_card import media_links, run_links, set_section
from mai_models.tracking.registry import CHAMPION_ALIAS, LM_MODEL, VOICE_MODEL

DECISION_FILE = "decision.json"
CHAMPION_FILE = "champion.json"
# Set on a version when the gate promotes it: the champion it replaced ("none" for the first).
PREVIOUS_CHAMPION_TAG = "mai.gate.previous_champion"
# Where the arena writes each model's battles, leaderboard and plot.
ARENA_DIR = {LM_MODEL: "text", VOICE_MODEL: "speech"}


def model_name(model: str, version: Any) -> str:
    return f"{model}-v{version}" if version else model


def dump(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def candidate_version(ctx: StepContext, model: str) -> str | None:
    """The version the training step registered (None when it ran untracked)."""
    return (ctx.state(TRAINING_STEP[model]).get("extra") or {}).get("model_version")


def opponent(ctx: StepContext, model: str, candidate: Any) -> dict[str, Any] | None:
    """The champion ``candidate`` faces. Looked up once per project: applying the gate moves the alias
    only to the candidate, which then names this same opponent."""
    key = f"opponent/{model}"
    if key not in ctx.memo:
        ctx.memo[key] = _find_opponent(ctx.settings, model, candidate)
    return ctx.memo[key]


def _find_opponent(settings: Any, model: str, candidate: Any) -> dict[str, Any] | None:
    holder = registered_version(settings, model, CHAMPION_ALIAS)
    if holder is None or str(holder["version"]) != str(candidate):
        return holder
    previous = holder["tags"].get(PREVIOUS_CHAMPION_TAG)
    if previous is None:
        return holder  # set by hand, not by the gate: a re-evaluation of the champion
    if previous == "none":
        return None
    return registered_version(settings, model, number=previous)


def opponent_name(ctx: StepContext, model: str) -> str | None:
    found = opponent(ctx, model, candidate_version(ctx, model))
    return model_name(model, found["version"]) if found else None


def opponent_dir(ctx: StepContext, model: str) -> tuple[str, Path] | None:
    """Name and output directory of the champion the candidate faces (None: no champion, or the
    candidate itself); an older champion's output is restored from DVC (``champion_output``)."""
    candidate = candidate_version(ctx, model)
    found = opponent(ctx, model, candidate)
    if found is None or str(found["version"]) == str(candidate):
        return None
    return model_name(model, found["version"]), output_dir(
        ctx.settings, found, ctx.input(TRAINING_STEP[model])
    )


def opponent_versions(ctx: StepContext, models: tuple[str, ...]) -> dict[str, Any]:
    """Who the candidates must beat: part of the version of the steps that compare against them."""
    return {m: (opponent(ctx, m, candidate_version(ctx, m)) or {}).get("version") for m in models}


def record_decisions(ctx: StepContext, decisions: dict[str, Any]) -> dict[str, Any]:
    """Every decision and its reason on the candidate's version, and in its description with the
    leaderboard it was read from; the alias is the champion step's."""
    import mlflow

    client = mlflow.MlflowClient(ctx.settings.mlflow_tracking_uri)
    arena = _step_run(ctx)
    recorded = {}
    for model, decision in decisions.items():
        version = decision.get("version")
        if not version:
            continue
        client.set_model_version_tag(model, str(version), "mai.gate.decision", decision["outcome"])
        client.set_model_version_tag(model, str(version), "mai.gate.reason", decision["reason"])
        lines = [f"**{decision['outcome']}**: {decision['reason']}"]
        if arena is not None:
            experiment = arena.info.experiment_id
            lines.append(f"- Arena run: [{arena.info.run_name}]({run_route(experiment, arena.info.run_id)})")
            board = [
                line
                for line in media_links(client, experiment, arena.info.run_id)
                if f"[{ARENA_DIR.get(model, '')}/" in line
            ]
            lines += board
        set_section(client, model, str(version), "Gate", lines)
        recorded[model] = {"version": version, "outcome": decision["outcome"]}
    return {"gate": recorded}


def apply_champions(ctx: StepContext, champions: dict[str, Any]) -> dict[str, Any]:
    """Move the alias to each promoted version, remembering the champion it replaced."""
    import mlflow

    client = mlflow.MlflowClient(ctx.settings.mlflow_tracking_uri)
    for model, champion in champions.items():
        if champion["changed"]:
            version = champion["version"]
            client.set_model_version_tag(
                model, version, PREVIOUS_CHAMPION_TAG, champion["previous"] or "none"
            )
            client.set_registered_model_alias(model, CHAMPION_ALIAS, version)
    return {"champions": {m: c["version"] for m, c in champions.items()}}


def attach_to_model_version(ctx: StepContext, model: str, metrics_file: Path) -> dict[str, Any]:
    """Evaluation results on the candidate version's training run, under names that do not change
    from one retraining to the next (the candidate is ``candidate``), and the evaluation run with its
    files in the version's description, so the registry page shows and links them."""
    import mlflow

    version = candidate_version(ctx, model)
    if not version:
        return {}
    client = mlflow.MlflowClient(ctx.settings.mlflow_tracking_uri)
    run_id = client.get_model_version(model, str(version)).run_id
    results = json.loads(metrics_file.read_text())
    candidate = results.get("candidate")
    flat = _numbers(results, "eval")
    for key, value in flat.items():
        client.log_metric(run_id, stable_key(key, candidate), value)
    client.log_artifact(run_id, str(metrics_file), "evaluation")
    client.set_model_version_tag(model, str(version), "mai.evaluated", "true")
    evaluation = _step_run(ctx)
    lines = run_links(client, evaluation.info.run_id) if evaluation is not None else []
    training = client.get_run(run_id).info.experiment_id
    lines.append(
        f"- On the training run: [evaluation/{metrics_file.name}]"
        f"({run_route(training, run_id, f'evaluation/{metrics_file.name}')}), metrics `eval/...`"
    )
    set_section(client, model, str(version), f"Evaluation ({ctx.name})", lines)
    return {"evaluated_version": version}


def _step_run(ctx: StepContext) -> Any:
    """The MLflow run this materialisation of the step logged (its after-commit work runs next)."""
    runs = find_runs(
        ctx.settings, f"tags.`{TAG_STEP}` = '{ctx.name}' AND tags.`{TAG_DATA_VERSION}` = '{ctx.version}'"
    )
    return runs[0] if runs else None


def _numbers(data: Any, prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_numbers(value, f"{prefix}/{key}"))
    elif isinstance(data, int | float) and not isinstance(data, bool) and math.isfinite(data):
        out[prefix.replace(" ", "_").replace(",", "_")[:250]] = float(data)
    return out

"""Evaluation, the arena, the champion gate and the submission bundle through real Dagster, MLflow,
DVC, lm-evaluation-harness and transformers, on a tiny MoE model and a tiny voice."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import enter_project, materializations
from dagster import DagsterInstance, PipesSubprocessClient, materialize

from assets.catalog import in_groups
from assets.resources import DvcVersioning, FoundrySettings, MLflowTracking
from mai_models.eval.gate import decide_promotion
from mai_models.settings import load_settings

pytestmark = pytest.mark.slow

SETTINGS = {
    "lm": {
        "preset": "tiny",
        "steps": 4,
        "micro_batch_size": 2,
        "global_batch_size": 4,
        "eval_interval": 2,
        "eval_iters": 1,
        "checkpoint_interval": 2,
        "warmup_steps": 1,
    },
    "tts": {"preset": "tiny", "wer_sentences": 2},
    "evaluation": {
        "test_docs": 6,
        "lm_eval_limit": 4,
        "arena_prompts": 5,
        "bootstrap_rounds": 20,
        "tts_sentences": 2,
    },
}


def _set(params: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        params = params.setdefault(part, {})
    params[leaf] = value


def _checks(result) -> dict:
    return {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def _edit_params(root: Path, values: dict) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in values.items():
        _set(params, key, value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _rerun(root: Path, values: dict | None = None):
    if values:
        _edit_params(root, values)
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        return _materialize_all()


def _decisions(root: Path) -> dict:
    return json.loads((root / "data" / "arena" / "decision.json").read_text())


def _champion(client: mlflow.MlflowClient, model: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def _materialize_all(raise_on_error: bool = True):
    """Pretraining (MoE and dense), the speech plane and evaluation, in one in-process run."""
    assets, checks = in_groups("lm", "speech", "evaluation")
    return materialize(
        [*assets, *checks],
        instance=DagsterInstance.ephemeral(),
        resources={
            "foundry": FoundrySettings(),
            "mlflow": MLflowTracking(),
            "dvc": DvcVersioning(),
            "pipes_subprocess_client": PipesSubprocessClient(),
        },
        raise_on_error=raise_on_error,
    )


@pytest.fixture(scope="module")
def evaluated(lm_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, object]]:
    root = tmp_path_factory.mktemp("eval") / "proj"
    shutil.copytree(lm_project, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in SETTINGS.items():
        params.setdefault(section, {}).update(values)
    for key, value in {
        "speech.demo.sentences": 20,
        "speech.demo.heldout_sentences": 3,
        "speech_validation.min_utterances": 10,
        "speech_validation.min_total_minutes": 0.5,
    }.items():
        _set(params, key, value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        result = _materialize_all()
        yield root, result


def test_a_first_candidate_below_the_floor_is_a_green_run(evaluated) -> None:
    """Four steps of a tiny model cannot beat the 3-gram, and the tiny voice loses every battle to its
    teacher: both are below their floors, the gate check passes, nobody becomes champion, no bundle."""
    root, result = evaluated
    assert result.success
    meta = materializations(result)
    assert {"dense_pretrain", "hf_export", "lm_evaluation", "tts_evaluation", "arena", "champion"} <= set(
        meta
    )
    assert "arena_submission" in meta
    checks = _checks(result)
    assert checks["champion_gate"].passed and checks["submission_schema"].passed

    metrics = json.loads((root / "data" / "lm_evaluation" / "metrics.json").read_text())
    heldout = metrics["heldout"]
    assert set(heldout) == {metrics["candidate"], "dense-baseline", "ngram-3"}
    assert all(0 < m["bpb"] < 20 for m in heldout.values())
    assert set(metrics["lm_eval"][metrics["candidate"]]) >= {"mai_heldout_cloze"}

    decisions = _decisions(root)
    lm, voice = decisions["mai-moe"], decisions["mai-voice"]
    assert lm["outcome"] == "below_floor" and lm["floor"] == "ngram-3" and lm["champion"] is None
    assert voice["outcome"] == "below_floor" and voice["floor"].startswith("teacher:")
    # The decision is the rule applied to the board the arena wrote.
    board = pd.read_csv(root / "data" / "arena" / "text" / "leaderboard.csv")
    assert decide_promotion(board, lm["candidate"], None, "ngram-3").outcome == lm["outcome"]
    speech = pd.read_csv(root / "data" / "arena" / "speech" / "leaderboard.csv").set_index("model")
    assert voice["separated"] and speech.loc[voice["candidate"], "lower"] == -math.inf

    settings = load_settings(root=root)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    assert _champion(client, "mai-moe") is None and _champion(client, "mai-voice") is None
    v1 = client.get_model_version("mai-moe", "1")
    assert v1.tags["mai.gate.decision"] == "below_floor" and v1.tags["mai.gate.reason"] == lm["reason"]
    run = client.get_run(v1.run_id)
    assert any(k.startswith("eval/heldout/") for k in run.data.metrics)
    arena_run = meta["arena"]["mlflow_run_id"].value
    logged = {a.path for a in client.list_artifacts(arena_run, "text")}
    assert {"text/leaderboard.png", "text/leaderboard.csv", "text/battles.jsonl"} <= logged

    status = json.loads((root / "data" / "arena_submission" / "submission.json").read_text())
    assert status == {"status": "no_champion", "bundle": None, "reason": lm["reason"]}
    assert not list((root / "data" / "arena_submission").glob("*/manifest.json"))


def test_promotion_happens_after_the_gate_and_a_rerun_reuses_everything(evaluated) -> None:
    root, _ = evaluated
    result = _rerun(root, {"evaluation.text_floor": "none", "evaluation.speech_floor": "none"})
    meta = materializations(result)
    # A gate setting re-runs the arena, not the evaluations behind it.
    assert meta["lm_evaluation"]["reused"].value and meta["tts_evaluation"]["reused"].value
    assert not meta["arena"]["reused"].value
    decisions = _decisions(root)
    assert decisions["mai-moe"]["outcome"] == decisions["mai-voice"]["outcome"] == "promote"
    assert "no floor configured" in decisions["mai-moe"]["reason"]

    # The alias moves in the champion step, which runs after the blocking gate check.
    order = [
        ("check", e.event_specific_data.check_name)
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        else ("asset", e.step_materialization_data.materialization.asset_key.to_user_string())
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" or e.is_step_materialization
    ]
    assert order.index(("check", "champion_gate")) < order.index(("asset", "champion"))
    client = mlflow.MlflowClient(load_settings(root=root).mlflow_tracking_uri)
    assert _champion(client, "mai-moe") == "1" and _champion(client, "mai-voice") == "1"
    champion = client.get_model_version("mai-moe", "1")
    assert champion.tags["mai.gate.decision"] == "promote"
    assert champion.tags["mai.gate.previous_champion"] == "none"

    status = json.loads((root / "data" / "arena_submission" / "submission.json").read_text())
    assert status["status"] == "submitted" and status["bundle"] == "mai-moe-v1"
    bundle = root / "data" / "arena_submission" / "mai-moe-v1"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["mlflow"]["version"] == "1" and manifest["mlflow"]["voice"]["version"] == "1"
    assert (bundle / "voice").is_dir()
    assert {link["step"] for link in manifest["lineage"]} >= {
        "raw_documents",
        "moe_pretrain",
        "arena",
        "champion",
    }
    answers = (bundle / "model_answer" / f"{manifest['model']}.jsonl").read_text().splitlines()
    row = json.loads(answers[0])
    assert row["messages"][-1]["role"] == "assistant" and "token_len" in row["metadata"]
    battles = (bundle / "arena" / "text" / "battles.jsonl").read_text().splitlines()
    assert {"model_a", "model_b", "winner", "judge"} <= set(json.loads(battles[0]))
    assert _checks(result)["submission_schema"].passed

    lineage = subprocess.run(
        [sys.executable, "-m", "mai_models.cli", "lineage", str(root / "data" / "arena_submission")],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "MAI_ROOT": str(root)},
    )
    assert lineage.returncode == 0, lineage.stderr
    assert "raw_documents" in lineage.stdout and manifest["model"] in lineage.stdout

    # Nothing changed: the promotion does not change the arena's version, so every step is reused.
    again = materializations(_rerun(root))
    assert {name: m["reused"].value for name, m in again.items()} == dict.fromkeys(again, True)
    assert {"arena", "champion", "arena_submission", "moe_pretrain", "mai_voice"} <= set(again)
    assert _champion(client, "mai-moe") == "1"


def test_hf_export_loads_in_transformers(evaluated) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _ = evaluated
    hf_dir = root / "data" / "hf_export"
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    ids = tokenizer("The os module provides", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] >= tokenizer.vocab_size
    manifest = json.loads((hf_dir / "_manifest.json").read_text())
    assert manifest["stats"]["max_abs_logits_diff"] < 1e-3


def test_a_second_candidate_faces_the_champion(evaluated) -> None:
    """A new candidate battles the champion's own weights (restored from DVC: the work tree now holds the
    candidate); the decision follows the rule on the board, and a kept champion keeps its bundle."""
    root, _ = evaluated
    first_battles = _battles_between(root, "mai-moe-v1", "ngram-3")
    # A logging setting is part of the step's version but not of its weights: v2 is v1's twin, so every
    # battle between them is a tie and the gate must keep the champion whatever the recipe learns.
    result = _rerun(root, {"lm.log_interval": 2})
    decision = _decisions(root)["mai-moe"]
    assert decision["version"] == "2" and decision["champion"] == "mai-moe-v1"
    board = pd.read_csv(root / "data" / "arena" / "text" / "leaderboard.csv")
    assert {"mai-moe-v1", "mai-moe-v2"} <= set(board["model"])
    assert decide_promotion(board, "mai-moe-v2", "mai-moe-v1", "ngram-3").outcome == decision["outcome"]
    # The champion fought with its own weights: its battles against the n-gram are those of the last run.
    assert _battles_between(root, "mai-moe-v1", "ngram-3") == first_battles

    assert {w for _, w in _battles_between(root, "mai-moe-v1", "mai-moe-v2")} == {"tie"}
    assert decision["outcome"] == "keep" and "champion mai-moe-v1 kept" in decision["reason"]
    assert _checks(result)["champion_gate"].passed  # keeping the champion is a green run
    client = mlflow.MlflowClient(load_settings(root=root).mlflow_tracking_uri)
    assert client.get_model_version("mai-moe", "2").tags["mai.gate.reason"] == decision["reason"]
    assert _champion(client, "mai-moe") == "1"
    status = json.loads((root / "data" / "arena_submission" / "submission.json").read_text())
    assert status["status"] == "kept" and status["bundle"] == "mai-moe-v1"
    bundles = sorted(p.parent.name for p in (root / "data" / "arena_submission").glob("*/manifest.json"))
    assert bundles == ["mai-moe-v1"] and _checks(result)["submission_schema"].passed


def _battles_between(root: Path, a: str, b: str) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (root / "data" / "arena" / "text" / "battles.jsonl").open()]
    return sorted(
        (
            r["question_id"],
            r["model_a"] if r["winner"] == "model_a" else r["model_b"] if r["winner"] == "model_b" else "tie",
        )
        for r in rows
        if {r["model_a"], r["model_b"]} == {a, b}
    )


def test_a_landing_drop_retrains_by_itself(evaluated) -> None:
    """Driven tick by tick as the daemon would: a drop rebuilds the data, the trainings wait for their
    cron tick, then a new candidate is trained, evaluated against the champion, the gate decides and
    the decision is recorded on the new version."""
    from pipelines.retraining import current_definitions, drive

    root, _ = evaluated
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        defs = current_definitions()
        instance = DagsterInstance.ephemeral()
        start = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)  # a Tuesday
        # The daemon's history: everything built once (all reused), then a quiet tick.
        _, cursor, clock = drive(defs, instance, start=start, training_cron="0 4 * * 1", landing=False)
        quiet, cursor, clock = drive(
            defs, instance, start=clock, training_cron="0 4 * * 1", cursor=cursor, landing=False
        )
        assert quiet.runs == [], "nothing changed: no run"

        (root / "data" / "landing" / "drop.jsonl").write_text(
            json.dumps({"text": "Retraining drop: how dict.setdefault inserts a missing key. " * 8}) + "\n"
        )
        done, _, _ = drive(defs, instance, start=clock, training_cron="0 4 * * 1", cursor=cursor)
    assert done.runs[0] == ["raw_documents"]
    for step in ("clean_documents", "token_shards", "moe_pretrain", "lm_evaluation", "arena", "champion"):
        assert done.ran(step), (step, done.runs)
    decision = _decisions(root)["mai-moe"]
    client = mlflow.MlflowClient(load_settings(root=root).mlflow_tracking_uri)
    newest = max(int(v.version) for v in client.search_model_versions("name='mai-moe'"))
    assert decision["version"] == str(newest) and newest == 3
    assert client.get_model_version("mai-moe", "3").tags["mai.gate.decision"] == decision["outcome"]

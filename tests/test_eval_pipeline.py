"""Evaluation, the arena, the champion gate and the submission bundle through real Dagster, MLflow,
DVC, lm-evaluation-harness and transformers, on a tiny MoE model and a tiny voice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import enter_project, materializations
from dagster import DagsterInstance, PipesSubprocessClient, materialize

from assets.checks import SPEECH_CHECKS
from assets.evaluation import EVAL_ASSETS, EVAL_CHECKS
from assets.lm import dense_pretrain, moe_pretrain
from assets.speech import SPEECH_ASSETS
from mai_models.settings import load_settings
from pipelines.resources import DvcVersioning, FoundrySettings, MLflowTracking

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


def _materialize_all(raise_on_error: bool = True):
    """Pretraining (MoE and dense), the speech plane and evaluation, in one in-process run."""
    return materialize(
        [moe_pretrain, dense_pretrain, *SPEECH_ASSETS, *SPEECH_CHECKS, *EVAL_ASSETS, *EVAL_CHECKS],
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


def test_evaluation_gate_and_bundle(evaluated) -> None:
    root, result = evaluated
    assert result.success
    meta = materializations(result)
    assert {
        "dense_pretrain",
        "hf_export",
        "lm_evaluation",
        "tts_evaluation",
        "arena",
        "arena_submission",
    } <= set(meta)
    checks = {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks["champion_gate"].passed and checks["submission_schema"].passed

    metrics = json.loads((root / "data" / "lm_evaluation" / "metrics.json").read_text())
    heldout = metrics["heldout"]
    assert set(heldout) == {metrics["candidate"], "dense-baseline", "ngram-3"}
    assert all(0 < m["bpb"] < 20 for m in heldout.values())
    assert set(metrics["lm_eval"][metrics["candidate"]]) >= {"mai_heldout_cloze"}

    # First candidate, no champion yet: promoted, with the reason on the registry version.
    settings = load_settings(root=root)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias("mai-moe", "champion")
    assert (
        champion.tags["mai.gate.decision"] == "promote" and "no champion" in champion.tags["mai.gate.reason"]
    )
    assert client.get_model_version_by_alias("mai-voice", "champion").version
    run = client.get_run(champion.run_id)
    assert any(k.startswith("eval/heldout/") for k in run.data.metrics)
    arena_run = meta["arena"]["mlflow_run_id"].value
    logged = {a.path for a in client.list_artifacts(arena_run, "text")}
    assert {"text/leaderboard.png", "text/leaderboard.csv", "text/battles.jsonl"} <= logged

    bundles = sorted((root / "data" / "arena_submission").glob("*/manifest.json"))
    assert len(bundles) == 1
    bundle = bundles[0].parent
    manifest = json.loads(bundles[0].read_text())
    assert manifest["mlflow"]["version"] == str(champion.version)
    assert {link["step"] for link in manifest["lineage"]} >= {"raw_documents", "moe_pretrain", "arena"}
    answers = (bundle / "model_answer" / f"{manifest['model']}.jsonl").read_text().splitlines()
    row = json.loads(answers[0])
    assert row["messages"][-1]["role"] == "assistant" and "token_len" in row["metadata"]
    battles = (bundle / "arena" / "text" / "battles.jsonl").read_text().splitlines()
    assert {"model_a", "model_b", "winner", "judge"} <= set(json.loads(battles[0]))

    lineage = subprocess.run(
        [sys.executable, "-m", "mai_models.cli", "lineage", str(root / "data" / "arena_submission")],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "MAI_ROOT": str(root)},
    )
    assert lineage.returncode == 0, lineage.stderr
    assert "raw_documents" in lineage.stdout and manifest["model"] in lineage.stdout


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
    """A new candidate battles the champion; the gate's decision and reason land on its version and the
    champion alias follows the decision (kept or promoted)."""
    root, first = evaluated
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lm"]["seed"] = 4321  # a different model: a new moe_pretrain version, registered as v2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        result = _materialize_all(raise_on_error=False)
    decision = json.loads((root / "data" / "arena" / "decision.json").read_text())["mai-moe"]
    assert decision["version"] == "2" and decision["champion"] == "mai-moe-v1"
    board = (root / "data" / "arena" / "text" / "leaderboard.csv").read_text()
    assert "mai-moe-v1" in board and "mai-moe-v2" in board  # the champion fought in the arena
    client = mlflow.MlflowClient(load_settings(root=root).mlflow_tracking_uri)
    v2 = client.get_model_version("mai-moe", "2")
    assert v2.tags["mai.gate.reason"] == decision["reason"] and "champion" in decision["reason"]
    champion = client.get_model_version_by_alias("mai-moe", "champion").version
    assert str(champion) == ("2" if decision["promote"] else "1")
    gate = next(
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.event_specific_data.check_name == "champion_gate"
    )
    assert gate.passed == decision["promote"]
    # A kept champion blocks the new submission bundle; a promoted one gets its own.
    bundles = sorted(p.parent.name for p in (root / "data" / "arena_submission").glob("*/manifest.json"))
    assert bundles == (["mai-moe-v2"] if decision["promote"] else ["mai-moe-v1"])

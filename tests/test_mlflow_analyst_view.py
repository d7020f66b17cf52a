"""What an analyst finds in MLflow: one model-training experiment per plane, metric names that do not
change between retrainings, and registered versions whose description summarises the model and links
its training run (plots, audio), the comparison with the version before, its data and evaluation."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import soundfile as sf

from mai_models.config import load_params
from mai_models.graph import project as graph_project
from mai_models.lm.telemetry import plot_loss_curve
from mai_models.settings import load_settings
from mai_models.tracking.metric_names import stable_metric_names
from mai_models.tracking.mlflow_runs import (
    MODEL_TRAINING,
    TAG_EXPERIMENT_KIND,
    StepRun,
    ensure_experiment,
    find_runs,
    log_step_run,
)
from mai_models.tracking.model_card import set_section
from mai_models.tracking.registry import LM_MODEL, register_candidate


def test_each_plane_is_a_model_training_experiment(project: Path) -> None:
    settings = load_settings()
    graph = graph_project(settings, load_params(settings.params_file))
    done = graph.materialize("raw_documents", dvc=None)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("mai-foundry/text")
    assert experiment.tags[TAG_EXPERIMENT_KIND] == MODEL_TRAINING == "custom_model_development"
    assert "Compare" in experiment.tags["mlflow.note.content"]
    run = client.get_run(done.mlflow_run_id)
    assert run.info.experiment_id == experiment.experiment_id
    assert run.info.run_name == f"raw_documents-{done.result.version[:8]}"
    assert [r.info.run_id for r in find_runs(settings)] == [done.mlflow_run_id]
    # An experiment someone created by hand (or an older release) is brought up to date.
    client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, "genai_development")
    assert ensure_experiment(settings, "text") == experiment.experiment_id
    assert client.get_experiment(experiment.experiment_id).tags[TAG_EXPERIMENT_KIND] == MODEL_TRAINING


def test_evaluation_metrics_name_roles_not_versions(project: Path) -> None:
    keys = {
        "lm_eval.mai-moe-v3.cloze": 0.5,
        "lm_eval.ngram-3.cloze": 0.25,
        "systems.mai-voice-v2.wer": 0.4,
        "systems.teacher:flite-slt.wer": 0.1,
        "timing.mai-voice-v3_rtf": 0.2,
        "eval/heldout/dense-baseline/bpb": 3.0,
    }
    assert stable_metric_names(keys, candidate="mai-voice-v3") == {
        "lm_eval.champion.cloze": 0.5,
        "lm_eval.ngram-3.cloze": 0.25,
        "systems.champion.wer": 0.4,
        "systems.teacher.wer": 0.1,
        "timing.candidate_rtf": 0.2,
        "eval/heldout/dense-baseline/bpb": 3.0,
    }
    settings = load_settings()
    logged = []
    for version in (1, 2):  # two retrainings log the same keys
        stats = {
            "candidate": f"mai-moe-v{version}",
            "heldout": {f"mai-moe-v{version}": {"bpb": 2.0 + version}},
        }
        run = StepRun("lm_evaluation", "evaluation", f"{version:016d}", "c" * 16, {}, stats)
        client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
        logged.append(client.get_run(log_step_run(settings, run)).data.metrics)
    assert logged[0].keys() == logged[1].keys() == {"heldout.candidate.bpb"}
    assert logged[1]["heldout.candidate.bpb"] == 4.0


def _training_run(settings, tmp: Path, steps: int) -> str:
    """A training run as the trainer leaves it: a loss plot and audio samples of two evaluations."""
    experiment = ensure_experiment(settings, "lm")
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    run_id = client.create_run(experiment, run_name=f"moe_pretrain-{steps:08d}").info.run_id
    tmp.mkdir(parents=True)
    plot = plot_loss_curve({"train/loss": [(s, 5.0 / (s + 1)) for s in range(steps)]}, tmp / "loss_curve.png")
    client.log_artifact(run_id, str(plot), "plots")
    for step in range(steps):
        client.log_metric(run_id, "train/loss", 5.0 / (step + 1), step=step)
    for step in (2, steps):
        folder = tmp / f"step_{step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / "utt.wav", np.zeros(800, dtype=np.float32), 16000)
        client.log_artifacts(run_id, str(folder), f"samples/{folder.name}")
    client.set_terminated(run_id)
    return run_id


def test_a_registered_version_describes_and_links_its_training(project: Path, tmp_path: Path) -> None:
    settings = load_settings()
    graph = graph_project(settings, load_params(settings.params_file))
    data = graph.materialize("raw_documents", dvc=None)  # the data the "training" read
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    runs = [_training_run(settings, tmp_path / str(n), n) for n in (4, 6)]
    params = {"preset": "tiny", "total": 1_234_567, "active": 600_000}
    tags = {"mai.upstream.raw_documents": data.result.version, "mai.parent_version": "none"}
    for run_id in runs:
        register_candidate(settings, LM_MODEL, run_id, tags, params, {"final_valid_bpb": 3.25})

    version = client.get_model_version(LM_MODEL, "2")
    text = version.description
    assert text.startswith("**mai-moe v2**; preset `tiny`; parameters: total 1.2M, active 600.0k;")
    assert "final_valid_bpb 3.25; trained from scratch." in text
    lm = client.get_experiment_by_name("mai-foundry/lm").experiment_id
    view = "?workflowType=machine_learning"
    assert f"[moe_pretrain-00000006](#/experiments/{lm}/runs/{runs[1]}{view})" in text
    compare = re.search(r"\[Compare with v1\]\(#/compare-runs\?runs=([^&]+)&", text)
    assert compare and runs[0] in compare.group(1) and runs[1] in compare.group(1)
    loss = re.search(r"\[Loss curves of v1 and v2\]\(#/metric\?runs=([^&]+)&metric=%22train/loss%22", text)
    assert loss and runs[0] in loss.group(1) and runs[1] in loss.group(1)
    assert f"#/experiments/{lm}/runs/{runs[1]}/artifactPath/plots/loss_curve.png{view}" in text
    # Only the newest evaluation's samples: the last step's audio, not every step's.
    assert "samples/step_0000006/utt.wav" in text and "step_0000002" not in text
    text_experiment = client.get_experiment_by_name("mai-foundry/text").experiment_id
    assert f"#/experiments/{text_experiment}/runs/{data.mlflow_run_id}{view}" in text
    assert client.get_registered_model(LM_MODEL).description.startswith("The MAI Foundry MoE language model")
    assert str(client.get_model_version_by_alias(LM_MODEL, "candidate").version) == "2"

    # Later stages replace their own section and keep the others.
    for outcome in ("below_floor", "promote"):
        set_section(client, LM_MODEL, "2", "Gate", [f"**{outcome}**"])
    again = client.get_model_version(LM_MODEL, "2").description
    assert again.count("### Gate") == 1 and "**promote**" in again and "below_floor" not in again
    assert again.startswith(text)

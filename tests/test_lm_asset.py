"""`moe_pretrain` through Dagster Pipes: torchrun streams metrics, the checkpoint lands in DVC and
MLflow registers `mai-moe` with alias `candidate`; an unchanged rerun is a no-op."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from dagster import DagsterInstance, PipesSubprocessClient, materialize

from assets.catalog import in_groups
from assets.resources import DvcVersioning, FoundrySettings, MLflowTracking
from mai_models.lm.cpu_peak import PeakStore, measure_gemm_flops
from mai_models.precision import resolve_precision
from mai_models.settings import load_settings

pytestmark = pytest.mark.slow

OVERRIDES = [
    "lm.preset=tiny",
    "lm.steps=4",
    "lm.micro_batch_size=2",
    "lm.global_batch_size=4",
    "lm.eval_interval=2",
    "lm.eval_iters=1",
    "lm.checkpoint_interval=2",
    "lm.warmup_steps=1",
    "lm.launch.threads_per_rank=1",
]


def _materialize(instance: DagsterInstance):
    assets, _ = in_groups("lm")
    return materialize(
        [a for a in assets if a.key.to_user_string() == "moe_pretrain"],
        instance=instance,
        resources={
            "foundry": FoundrySettings(),
            "mlflow": MLflowTracking(),
            "dvc": DvcVersioning(),
            "pipes_subprocess_client": PipesSubprocessClient(),
        },
        run_config={"ops": {"moe_pretrain": {"config": {"overrides": OVERRIDES}}}},
    )


def test_pretrain_asset_tracks_registers_and_reuses(lm_workspace: Path) -> None:
    # MFU needs a CPU peak, which is timed only on idle cores; a shared test machine rarely has them.
    peaks = PeakStore(load_settings().state_dir / "cpu_peaks.json")
    precision = resolve_precision("auto", "cpu")  # the run's, whose peak it looks up
    flops = measure_gemm_flops(1, precision=precision)
    peaks.put(1, {"flops": flops, "measured_at": "test set-up"}, precision)
    instance = DagsterInstance.ephemeral()
    result = _materialize(instance)
    assert result.success
    [event] = [e for e in result.all_events if e.is_step_materialization]
    meta = event.step_materialization_data.materialization.metadata
    assert meta["reused"].value is False
    assert meta["final_train_loss"].value < 7.5  # ln(1024) = 6.93 is uniform; starts near it
    assert meta["parameters_total"].value == 254_784
    assert meta["dvc_hash"].value.endswith(".dir")
    logs = "\n".join(e.message for e in instance.all_logs(result.run_id) if e.message)
    assert '"step": 4' in logs, "rank 0 did not stream metrics through Pipes"

    settings = load_settings()
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    version = client.get_model_version_by_alias("mai-moe", "candidate")
    assert version.tags["mai.dvc_hash"] == meta["dvc_hash"].value
    assert version.tags["mai.checkpoint_uri"].endswith("data/moe_pretrain/checkpoint")
    run = client.get_run(version.run_id)
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert run.data.tags["mai.upstream.token_shards"] and run.data.tags["mai.upstream.bpe_tokenizer"]
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2, 3, 4]
    for name in (
        "perf/mfu",
        "train/grad_norm",
        "router/load_imbalance",
        "router/router_entropy",
        "valid/bits_per_byte",
    ):
        assert client.get_metric_history(run.info.run_id, name), name
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss_curve.png", "plots/expert_load_heatmap.png"}

    lock = yaml.safe_load((lm_workspace / "dvc.lock").read_text())
    assert lock["stages"]["moe_pretrain"]["outs"][0]["md5"] == meta["dvc_hash"].value

    again = _materialize(instance)
    [event] = [e for e in again.all_events if e.is_step_materialization]
    assert event.step_materialization_data.materialization.metadata["reused"].value is True
    assert len(client.search_model_versions("name='mai-moe'")) == 1

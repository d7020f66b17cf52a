"""The training metrics sink for MLflow: steps are sent in batches, yet every step reaches the run in
order, an event sends what is pending first, and closing sends the rest."""

from __future__ import annotations

from pathlib import Path

import mlflow

from mai_models.tracking.sinks import FanOut, MLflowSink


def _run(tmp_path: Path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("sink", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client.create_run(experiment).info.run_id


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    return [m.step for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key)]


def test_steps_wait_for_the_flush_interval_then_all_arrive_in_order(tmp_path: Path) -> None:
    uri, run_id = _run(tmp_path)
    sink = MLflowSink(uri, run_id, flush_seconds=3600)
    for step in range(1, 31):
        sink.log(step, {"train/loss": 10.0 / step, "perf/step_seconds": 0.2})
    assert _steps(uri, run_id, "train/loss") == []  # one transaction per interval, not per step
    sink.close()
    assert _steps(uri, run_id, "train/loss") == list(range(1, 31))
    assert _steps(uri, run_id, "perf/step_seconds") == list(range(1, 31))


def test_a_zero_interval_sends_every_step_at_once(tmp_path: Path) -> None:
    uri, run_id = _run(tmp_path)
    sink = MLflowSink(uri, run_id, flush_seconds=0)
    sink.log(1, {"train/loss": 2.0})
    assert _steps(uri, run_id, "train/loss") == [1]
    sink.close()


def test_an_event_and_a_fan_out_flush_send_the_pending_steps(tmp_path: Path) -> None:
    uri, run_id = _run(tmp_path)
    sink = MLflowSink(uri, run_id, flush_seconds=3600)
    fan = FanOut(sink)
    fan.log(1, {"train/loss": 3.0})
    fan.event("tags", {"mai.test": "yes"})
    assert _steps(uri, run_id, "train/loss") == [1]
    assert mlflow.MlflowClient(uri).get_run(run_id).data.tags["mai.test"] == "yes"
    fan.log(2, {"train/loss": 2.0, "skipped": float("nan")})
    fan.flush()  # what the trainer does at each checkpoint: a resumed run replays only later steps
    assert _steps(uri, run_id, "train/loss") == [1, 2]
    assert _steps(uri, run_id, "skipped") == []
    fan.close()

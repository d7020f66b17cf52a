"""Where training metrics go: JSON lines on stdout (what launchers and Dagster Pipes relay), an MLflow
run, or several at once. Shared by the language-model and speech trainers."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Protocol


class MetricsSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def event(self, kind: str, payload: dict[str, Any]) -> None: ...


class JsonLinesSink:
    """One JSON object per line on stdout: what a launcher or Dagster Pipes relays."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout

    def log(self, step: int, metrics: dict[str, float]) -> None:
        print(
            json.dumps({"step": step, **{k: round(v, 6) for k, v in metrics.items()}}),
            file=self.stream,
            flush=True,
        )

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        print(json.dumps({"event": kind, **payload}, default=str), file=self.stream, flush=True)


class MLflowSink:
    """Logs into an MLflow run (rank 0 only), with system metrics sampled in the background.

    Metrics are sent in one ``log_batch`` per ``flush_seconds`` rather than one per step: each call is
    a store transaction (24 ms on the embedded SQLite store with a demo training beside it; 4% of a
    profiled demo MoE run), while 25 steps in one call cost 4 ms a step. Every step still reaches the
    run, in order; an event, ``flush`` or ``close`` sends what is pending first."""

    def __init__(self, tracking_uri: str, run_id: str, flush_seconds: float = 10.0) -> None:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        self.client = mlflow.MlflowClient()
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self._pending: list[Any] = []
        self._flushed_at = time.monotonic()
        self._monitor = None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(run_id, sampling_interval=5, samples_before_logging=1)
            self._monitor.start()
        except Exception:  # system metrics need psutil; training must not fail for want of them
            self._monitor = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
        if time.monotonic() - self._flushed_at >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(self.run_id, metrics=pending[start : start + 900])
        self._flushed_at = time.monotonic()

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        self.flush()
        if kind == "tags":  # tags, not params: a resumed run may learn a value its first launch lacked
            for key, value in payload.items():
                self.client.set_tag(self.run_id, key, str(value))
        elif kind == "artifact":
            path = Path(payload["path"])
            log = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
            log(self.run_id, str(path), payload.get("artifact_path"))

    def close(self) -> None:
        self.flush()
        if self._monitor is not None:
            self._monitor.finish()


class FanOut:
    def __init__(self, *sinks: Any) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.event(kind, payload)

    def flush(self) -> None:
        for sink in self.sinks:
            if hasattr(sink, "flush"):
                sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            if hasattr(sink, "close"):
                sink.close()

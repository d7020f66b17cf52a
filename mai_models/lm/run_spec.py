"""What one training process is given (a JSON file written by the launcher), kept free of torch so
that Dagster definitions and the launcher load quickly."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from mai_models.lm.train_config import TrainConfig

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
WARM_START_FILE = "warm_start.json"  # how the run started: its parent and the tensors taken from it


class InitSpec(BaseModel):
    """Where the weights start: ``checkpoint`` (the parent's) or, without one, a fresh initialisation."""

    model_config = ConfigDict(extra="forbid")
    init_from: str  # what was asked: scratch or champion
    parent: str | None = None  # the registry version continued from, e.g. "mai-moe v1"
    checkpoint: Path | None = None
    reason: str


class RunSpec(BaseModel):
    """Everything one training process needs; written to JSON by the launcher."""

    model_config = ConfigDict(extra="forbid")
    train: TrainConfig
    shards_dir: Path
    tokenizer_dir: Path
    work_dir: Path  # checkpoints, dataset index cache, metrics and plots
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    peak_flops_per_device: float | None = None
    peak_cache: Path | None = None  # CPU peaks timed on idle cores, per host and thread count (JSON)
    init: InitSpec | None = None  # None: from scratch, nothing asked (the dense twin)
    # Fault injection, to prove recovery end to end: a NaN loss at a step, or SIGKILL of this rank
    # after a step (as an OOM killer or a preempted node would do).
    fault_nan_at_step: int | None = None
    fault_kill_after_step: int | None = None

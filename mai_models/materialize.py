"""Materialise one text step with its bookkeeping: DVC commit and push, one MLflow run, and a small
state record (outside DVC outputs) so a reused step can still report its run and DVC hash."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mai_models.data.schema import RAW_DOCUMENTS_FILE, SPLITS
from mai_models.steps import StepResult
from mai_models.text_pipeline import STEPS, TextPipeline
from mai_models.tracking.dvc import Dvc
from mai_models.tracking.mlflow_runs import TAG_DVC_HASH, DatasetInput, StepRun, log_step_run
from mai_models.tracking.state import read_state, write_state

# The text column is left out of logged datasets: digests and schemas stay cheap on large corpora.
_DATASET_COLUMNS = ["doc_id", "source", "origin", "n_bytes", "sha256"]


@dataclass(frozen=True)
class Materialization:
    result: StepResult
    code_version: str
    mlflow_run_id: str | None
    dvc_hash: str | None

    def metadata(self) -> dict[str, Any]:
        return {
            "data_version": self.result.version,
            "code_version": self.code_version,
            "reused": self.result.reused,
            "summary": self.result.summary,
            "path": str(self.result.out_dir),
            "mlflow_run_id": self.mlflow_run_id,
            "dvc_hash": self.dvc_hash,
            **{f"timing_{k}": v for k, v in self.result.timings.items()},
        }


def materialize_step(
    pipe: TextPipeline,
    name: str,
    *,
    dvc: Dvc | None = None,
    track: bool = True,
    tags: dict[str, str] | None = None,
    force: bool = False,
    progress: bool = False,
) -> Materialization:
    step = STEPS[name]
    result = pipe.run(name, force=force, progress=progress)
    state = read_state(pipe.settings, name)
    bookkept = state.get("version") == result.version and (dvc is None or state.get("dvc_hash"))
    if result.reused and bookkept:
        return Materialization(result, step.code_version(), state.get("mlflow_run_id"), state.get("dvc_hash"))

    dvc_hash = dvc.commit_and_push(name) if dvc is not None else None
    run_id = None
    if track:
        run = StepRun(
            step=name,
            data_version=result.version,
            code_version=step.code_version(),
            params=pipe.config_of(name),
            stats=result.stats,
            timings=result.timings,
            tags={**(tags or {}), **({TAG_DVC_HASH: dvc_hash} if dvc_hash else {})}
            | {f"mai.upstream.{k}": v for k, v in pipe.upstream_versions(name).items()},
            datasets=_datasets(pipe, name),
            artifacts=[result.out_dir / "_manifest.json"],
        )
        run_id = log_step_run(pipe.settings, run)
    state = {"version": result.version, "mlflow_run_id": run_id, "dvc_hash": dvc_hash}
    write_state(pipe.settings, name, state)
    return Materialization(result, step.code_version(), run_id, dvc_hash)


def _datasets(pipe: TextPipeline, name: str) -> list[DatasetInput]:
    raw = pipe.out_dir("raw_documents") / RAW_DOCUMENTS_FILE
    clean = pipe.out_dir("clean_documents")
    if name == "raw_documents":
        return [DatasetInput("raw_documents", raw, _frame([raw]), "ingested")]
    if name == "clean_documents":
        out = [DatasetInput("raw_documents", raw, _frame([raw]), "input")]
        return out + [
            DatasetInput(f"clean_documents/{s}", clean, _frame(sorted(clean.glob(f"{s}-*.parquet"))), s)
            for s in SPLITS
        ]
    splits = ("train",) if name == "bpe_tokenizer" else SPLITS
    return [
        DatasetInput(f"clean_documents/{s}", clean, _frame(sorted(clean.glob(f"{s}-*.parquet"))), s)
        for s in splits
    ]


def _frame(files: list[Path]) -> Any:
    import pandas as pd

    frames = [pq.read_table(f, columns=_DATASET_COLUMNS).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_DATASET_COLUMNS)

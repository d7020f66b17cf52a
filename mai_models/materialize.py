"""Materialise one versioned step (text or speech) with its bookkeeping: DVC commit and push, one
MLflow run, and a small state record (outside DVC outputs) so a reused step can still report its run,
its DVC hash and anything registered after the commit (a model version)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mai_models.pipeline import StepPipeline
from mai_models.steps import StepResult
from mai_models.tracking.dvc import Dvc
from mai_models.tracking.mlflow_runs import TAG_DVC_HASH, StepRun, log_step_run
from mai_models.tracking.state import read_state, write_state


@dataclass(frozen=True)
class Materialization:
    result: StepResult
    code_version: str
    mlflow_run_id: str | None
    dvc_hash: str | None
    extra: dict[str, Any] | None = None

    def metadata(self) -> dict[str, Any]:
        return {
            "data_version": self.result.version,
            "code_version": self.code_version,
            "reused": self.result.reused,
            "summary": self.result.summary,
            "path": str(self.result.out_dir),
            "mlflow_run_id": self.mlflow_run_id,
            "dvc_hash": self.dvc_hash,
            **(self.extra or {}),
            **{f"timing_{k}": v for k, v in self.result.timings.items()},
        }


def materialize_step(
    pipe: StepPipeline,
    name: str,
    *,
    dvc: Dvc | None = None,
    track: bool = True,
    tags: dict[str, str] | None = None,
    force: bool = False,
    progress: bool = False,
) -> Materialization:
    result = pipe.run(name, force=force, progress=progress, track=track)
    code = pipe.code_version(name)
    state = read_state(pipe.settings, name)
    bookkept = state.get("version") == result.version and (dvc is None or state.get("dvc_hash"))
    if result.reused and bookkept:
        return Materialization(
            result, code, state.get("mlflow_run_id"), state.get("dvc_hash"), state.get("extra")
        )

    dvc_hash = dvc.commit_and_push(name) if dvc is not None else None
    run_id = None
    if track:
        run = StepRun(
            step=name,
            data_version=result.version,
            code_version=code,
            params=pipe.config_of(name),
            stats=result.stats,
            timings=result.timings,
            tags={**(tags or {}), **({TAG_DVC_HASH: dvc_hash} if dvc_hash else {})}
            | {f"mai.upstream.{k}": v for k, v in pipe.upstream_versions(name).items()},
            datasets=pipe.datasets(name),
            artifacts=[result.out_dir / "_manifest.json", *pipe.artifacts(name)],
        )
        run_id = log_step_run(pipe.settings, run, run_id=pipe.tracked_run_id(name))
    extra = pipe.after_commit(name, run_id, dvc_hash)
    state = {"version": result.version, "mlflow_run_id": run_id, "dvc_hash": dvc_hash, "extra": extra}
    write_state(pipe.settings, name, state)
    return Materialization(result, code, run_id, dvc_hash, extra)

"""Train the acoustic model or the vocoder as a step: resumable in the step's work directory, logging
its curves to stdout and, when tracked, into the step's MLflow run while it trains."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mai_models.executor.step import StepContext


def metrics_sink(ctx: StepContext) -> Any:
    from mai_models.tracking.sinks import FanOut, JsonLinesSink, MLflowSink

    run_id = ctx.start_run()
    return FanOut(JsonLinesSink(), MLflowSink(ctx.settings.mlflow_tracking_uri, run_id) if run_id else None)


def train_tracked(
    ctx: StepContext, kind: str, data_dir: Path, out: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    from mai_models.tts.train_model import train_model

    p = ctx.params
    sink = metrics_sink(ctx)
    try:
        summary = train_model(
            kind,
            p.tts,
            p.features,
            p.speech,
            data_dir,
            ctx.work_dir,
            out,
            sink,
            stop_after_step=ctx.options.get("stop_after_step"),
        )
    finally:
        sink.close()
    seconds = summary.pop("seconds")
    final = {f"final_{k}": round(v, 5) for k, v in summary.pop("final").items()}
    return {**summary, **final, "preset": p.tts.preset}, {"train_seconds": seconds}


def tts_config(params: Any, leave_out: set[str]) -> dict[str, Any]:
    """The tts section minus what this model does not read (thread counts never change a model)."""
    return params.tts.model_dump(mode="json", exclude={"threads", *leave_out})

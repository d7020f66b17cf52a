"""Train the acoustic model or the vocoder as a step: resumable in the step's work directory, from
scratch or (``tts.init_from: champion``) from the champion voice's model of the same kind, logging its
curves to stdout and, when tracked, into the step's MLflow run while it trains."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mai_models.tracking.registry import VOICE_MODEL
from mai_models.tracking.warm_start import Start, step_start

if TYPE_CHECKING:
    from mai_models.executor.step import StepContext


def metrics_sink(ctx: StepContext, tags: dict[str, str] | None = None) -> Any:
    from mai_models.tracking.sinks import FanOut, JsonLinesSink, MLflowSink

    run_id = ctx.start_run(tags)
    return FanOut(JsonLinesSink(), MLflowSink(ctx.settings.mlflow_tracking_uri, run_id) if run_id else None)


def voice_start(ctx: StepContext, config: dict[str, Any]) -> Start:
    """Where this model starts: the champion voice was built from an acoustic model and a vocoder
    upstream of it, so the parent output is the one its registry version names for this step."""
    return step_start(ctx, VOICE_MODEL, ctx.params.tts.init_from, config, upstream_step=True)


def voice_inputs(ctx: StepContext, config: dict[str, Any]) -> dict[str, Any] | None:
    """The parent a warm start continues from, part of the step's version."""
    if ctx.params.tts.init_from == "scratch":
        return None
    return {"parent": voice_start(ctx, config).identity(ctx.name)}


def train_tracked(
    ctx: StepContext, kind: str, data_dir: Path, out: Path, start: Start
) -> tuple[dict[str, Any], dict[str, float]]:
    from mai_models.tracking.champion_output import output_dir
    from mai_models.tracking.warm_start import TAG_PARENT_VERSION, record, start_summary, write_record
    from mai_models.tts.train_model import train_model

    p = ctx.params
    # ctx.output is still the stored output while the step builds: the champion's when it is newest.
    parent_dir = output_dir(ctx.settings, start.parent, ctx.output, ctx.name) if start.parent else None
    sink = metrics_sink(ctx, start.tags())
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
            parent_dir=parent_dir,
        )
        started = record(start, summary.pop("init"), ctx.name)
        write_record(out, started)
        counts = start_summary(started)
        sink.event("warm_start", {**counts, "reason": started["reason"]})
        sink.event("tags", {TAG_PARENT_VERSION: counts["parent"], **_count_tags(counts)})
    finally:
        sink.close()
    seconds = summary.pop("seconds")
    final = {f"final_{k}": round(v, 5) for k, v in summary.pop("final").items()}
    return {**summary, **final, "preset": p.tts.preset, "init": counts}, {"train_seconds": seconds}


def _count_tags(counts: dict[str, Any]) -> dict[str, str]:
    return {f"mai.warm_start.{k}": str(counts[k]) for k in ("tensors_taken", "tensors_fresh") if k in counts}


def tts_config(params: Any, leave_out: set[str]) -> dict[str, Any]:
    """The tts section minus what this model does not read (thread counts never change a model)."""
    return params.tts.model_dump(mode="json", exclude={"threads", *leave_out})

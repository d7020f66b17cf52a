"""Pretraining as a step: launch torchrun on the token shards (resuming from the work directory of this
version when an earlier attempt was interrupted, starting from a parent's checkpoint when warm started),
then keep the final checkpoint, the tokenizer, a model card and how the weights started as its output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.executor.launch import Program
from mai_models.executor.step import StepContext
from mai_models.lm.launch import ENTRY_MODULE, launch_env, slurm_job, torchrun_prefix, validate_layout
from mai_models.lm.run_spec import SUMMARY_FILE, InitSpec, RunSpec
from mai_models.lm.train_config import TrainConfig
from mai_models.tracking.warm_start import (
    TAG_INIT_FROM,
    TAG_PARENT_VERSION,
    Start,
    record,
    start_summary,
    write_record,
)

UPSTREAM = ("bpe_tokenizer", "token_shards")
FINAL_METRICS = ("final_train_loss", "final_valid_loss", "final_valid_bpb")


def lm_config(cfg: TrainConfig) -> dict[str, Any]:
    """What changes the trained weights: the process count and parallel layout do not (a run resumes
    under another layout), so they stay out of the version."""
    return {"lm": cfg.model_dump(mode="json", exclude={"launch", "parallel"})}


def prepare_run(ctx: StepContext, cfg: TrainConfig, init: InitSpec | None = None) -> Program:
    """Check the layout before any process starts, open the MLflow run, write the ranks' spec into
    this version's work directory (where an interrupted attempt left its checkpoints) and return the
    torchrun program that trains it (here, or as a Slurm job under ``lm.launch.engine: slurm``)."""
    tokenizer_dir, shards_dir = ctx.input("bpe_tokenizer"), ctx.input("token_shards")
    validate_layout(cfg, tokenizer_dir)
    run_id = ctx.start_run(
        {TAG_INIT_FROM: init.init_from, TAG_PARENT_VERSION: init.parent or "none"} if init else None
    )
    work = ctx.work_dir
    work.mkdir(parents=True, exist_ok=True)
    faults = {k: ctx.options[k] for k in ("fault_nan_at_step", "fault_kill_after_step") if k in ctx.options}
    spec = RunSpec(
        train=cfg,
        shards_dir=shards_dir,
        tokenizer_dir=tokenizer_dir,
        work_dir=work,
        mlflow_tracking_uri=ctx.settings.mlflow_tracking_uri,
        mlflow_run_id=run_id,
        peak_cache=ctx.settings.state_dir / "cpu_peaks.json",
        init=init,
        **faults,
    )
    spec_path = work / "spec.json"
    spec_path.write_text(spec.model_dump_json(indent=2))
    return Program(
        prefix=torchrun_prefix(cfg.launch),
        module=ENTRY_MODULE,
        args=(str(spec_path),),
        env=launch_env(ctx.settings),
        cwd=ctx.settings.root,
        slurm=slurm_job(cfg.launch, ctx.name, work),
    )


def build_pretrain(
    ctx: StepContext, out: Path, cfg: TrainConfig, start: Start | None = None
) -> dict[str, Any]:
    """``start``: where ``lm.init_from`` says the weights start (None: from scratch, never warm)."""
    # Here, not at the top: it reads tokenizers, which Dagster's definitions need not load.
    from mai_models.lm.warm_start import init_spec

    ctx.launch(prepare_run(ctx, cfg, init_spec(ctx, start) if start else None))
    work = ctx.work_dir
    summary_path = work / SUMMARY_FILE
    if not summary_path.exists():
        raise MaiUserError(f"training produced no summary at {summary_path}; see the training log")
    summary = json.loads(summary_path.read_text())
    shutil.copytree(summary["checkpoint"], out / "checkpoint")
    shutil.copy(ctx.input("bpe_tokenizer") / "tokenizer.json", out / "tokenizer.json")
    card = {
        "preset": cfg.preset,
        "train": cfg.model_dump(mode="json"),
        "parameters": summary["parameters"],
        "steps": summary["steps"],
        "tokens_seen": summary["tokens_seen"],
        "upstream": ctx.upstream_versions(),
    }
    (out / "model.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    started = record(start, summary["init"]) if start else summary["init"]
    write_record(out, started)
    plots = sorted((work / "plots").glob("*.png"))
    ctx.metadata.update({"plots": [str(p) for p in plots], "resumed_from_step": summary.get("resumed_from")})
    return {
        **{k: summary[k] for k in ("steps", "tokens_seen", "parameters")},
        **{k: summary[k] for k in FINAL_METRICS if summary.get(k) is not None},
        "init": start_summary(started),
    }

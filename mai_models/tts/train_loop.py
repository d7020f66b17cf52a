"""The speech training loop shared by the acoustic model and the vocoder: AdamW with warmup and cosine
decay, optional bf16 autocast, gradient clipping, periodic evaluation samples, and checkpoints that
resume exactly (model, optimiser, scheduler, step and RNG). A warm start loads a parent's weights into a
new run before its first step; the run's own step count and schedule still start at zero. DDP-ready:
under torchrun each rank draws its own batches and rank 0 alone logs and writes checkpoints."""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mai_models.errors import MaiUserError
from mai_models.precision import autocast
from mai_models.tracking.sinks import MetricsSink
from mai_models.tts.presets import Budget

CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2


class TrainTask(Protocol):
    model: nn.Module

    def losses(self, model: nn.Module, rng: np.random.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        """One batch's losses; ``loss`` is the one optimised."""

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Metrics on fixed held-out utterances; writes plots and .wav samples under ``out_dir``."""


@dataclass(frozen=True)
class LoopConfig:
    budget: Budget
    seed: int
    checkpoint_interval: int
    grad_clip: float = 1.0
    log_interval: int = 10
    stop_after_step: int | None = None  # tests: simulate a crash right after this step's checkpoint


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Distributed:
    """torchrun sets WORLD_SIZE/RANK; a plain process trains alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def lr_lambda(budget: Budget) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < budget.warmup:
            return (step + 1) / budget.warmup
        progress = (step - budget.warmup) / max(1, budget.steps - budget.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": rng.bit_generator.state,
        "python": random.getstate(),
    }


def _restore_rng(state: dict[str, Any], rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])


def checkpoint_paths(work_dir: Path) -> list[Path]:
    return sorted((work_dir / CHECKPOINT_DIR).glob("step_*.pt"))


def _save(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.rename(path)  # atomic: a kill mid-write leaves the previous checkpoint as the newest
    for old in checkpoint_paths(path.parent.parent)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)


def _load_latest(work_dir: Path) -> dict[str, Any] | None:
    paths = checkpoint_paths(work_dir)
    for path in reversed(paths):
        try:
            # Every entry is a tensor or a plain type (the NumPy state is a dict of ints): no objects.
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or corrupt file: fall back to the one before
            warnings.warn(
                f"skipping unreadable checkpoint {path.name}: {exc.__class__.__name__}", stacklevel=2
            )
    if paths:
        raise MaiUserError(f"every checkpoint under {work_dir / CHECKPOINT_DIR} is unreadable")
    return None


def train_loop(
    task: TrainTask,
    cfg: LoopConfig,
    work_dir: Path,
    sink: MetricsSink,
    dist: Distributed,
    warm_start: Callable[[nn.Module, torch.optim.Optimizer], None] | None = None,
) -> dict[str, Any]:
    """Train ``task.model`` to ``cfg.budget.steps``, resuming from the newest checkpoint in ``work_dir``;
    a run with no checkpoint yet first calls ``warm_start(model, optimizer)`` when given one."""
    budget = cfg.budget
    torch.manual_seed(cfg.seed + dist.rank)
    random.seed(cfg.seed + dist.rank)
    rng = np.random.default_rng(cfg.seed + dist.rank)
    model = task.model
    train_model: nn.Module = model
    if dist.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.lr, betas=(0.8, 0.99), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(budget))
    step = 0
    state = _load_latest(work_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        # Per-rank RNG streams only mean something on the same world size.
        if state.get("world_size") == dist.world_size and dist.rank in state["rng"]:
            _restore_rng(state["rng"][dist.rank], rng)
        if dist.is_main:
            sink.event("resumed", {"step": step})
    elif warm_start is not None:
        warm_start(model, optimizer)

    history: dict[str, float] = {}
    started, window_start = time.perf_counter(), time.perf_counter()
    while step < budget.steps:
        model.train()
        with autocast(budget.precision, "cpu"):  # speech models train on the CPU
            losses = task.losses(train_model, rng, budget.batch_size)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise MaiUserError(f"loss became {loss.item()} at step {step + 1}; last good checkpoint kept")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        history = {k: float(v.detach()) for k, v in losses.items() if v.dim() == 0}
        if dist.is_main and (step % cfg.log_interval == 0 or step == budget.steps):
            elapsed = time.perf_counter() - window_start
            window_start = time.perf_counter()
            sink.log(
                step,
                {
                    **{f"train/{k}": v for k, v in history.items()},
                    "train/grad_norm": float(grad_norm),
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/steps_per_s": cfg.log_interval / max(elapsed, 1e-9),
                },
            )
        if dist.is_main and (step % budget.eval_interval == 0 or step == budget.steps):
            model.eval()
            with torch.no_grad():
                metrics = task.evaluate(model, step, work_dir / "samples" / f"step_{step:07d}")
            sink.log(step, {f"eval/{k}": v for k, v in metrics.items()})
            sink.event(
                "artifact",
                {
                    "path": str(work_dir / "samples" / f"step_{step:07d}"),
                    "artifact_path": f"samples/step_{step:07d}",
                },
            )
        if step % cfg.checkpoint_interval == 0 or step == budget.steps:
            rng_states = _gather_rng(_rng_state(rng), dist)
            if dist.is_main:
                _save(
                    work_dir / CHECKPOINT_DIR / f"step_{step:07d}.pt",
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "step": step,
                        "world_size": dist.world_size,
                        "rng": rng_states,
                    },
                )
            if hasattr(sink, "flush"):
                sink.flush()  # a run killed later resumes here: MLflow then has every step before it
            if cfg.stop_after_step is not None and step >= cfg.stop_after_step:
                raise SystemExit(f"stopped after step {step} (stop_after_step)")
    return {
        "steps": step,
        "final": history,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _gather_rng(state: dict[str, Any], dist: Distributed) -> dict[int, dict[str, Any]]:
    if dist.world_size == 1:
        return {0: state}
    import torch.distributed as tdist

    states: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(states, state)
    return dict(enumerate(states))

"""Checkpoints with megatron.core.dist_checkpointing: model and AdamW state are saved as sharded
tensors keyed by the model's global parameter names, so a checkpoint saved with one parallel layout
loads into another (EP=2 -> EP=1). Each checkpoint is written to a temporary directory and renamed
when complete, so a run killed mid-save never leaves a half checkpoint under its final name."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import random
import shutil
import signal
import warnings
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mai_models.errors import MaiUserError

log = logging.getLogger(__name__)
_PREFIX = "iter_"
_EXCLUDED_OPTIM_KEYS = ("step",)  # a scalar per parameter; restored from the train state instead


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        optim_state_to_sharding_state,
    )

    model_state = model.sharded_state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optim_state = optimizer.state_dict()
    id_map = get_param_id_to_sharded_param_map(model_state, params)
    optim_state_to_sharding_state(optim_state, id_map, exclude_keys=_EXCLUDED_OPTIM_KEYS)
    rng = ShardedObject("rng_state", _rng_state(), (_world(),), (_rank(),), replica_id=0)
    return {"model": model_state, "optimizer": optim_state, "rng": rng}


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """AdamW creates its state lazily; loading needs the tensors to exist with the right shapes."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _die_with_parent() -> None:
    """Runs in the manager process: ask Linux to SIGKILL it when its parent (the rank) dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _results_queue_bound_to_rank() -> None:
    """Megatron's checkpoint writer lazily starts a spawn-context Manager server per rank for its
    results queue. When a rank is SIGKILLed (OOM killer, preemption) that server is orphaned, lingers
    forever and keeps the launcher's output pipes open, so supervisors hang. Provide the queue from a
    manager that dies with the rank instead."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from torch import multiprocessing as mp

    if filesystem_async._results_queue is not None:
        return
    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(initializer=_die_with_parent)
    filesystem_async._results_queue = manager.Queue()
    _MANAGERS.append(manager)  # keep the server alive for the process lifetime


_MANAGERS: list[SyncManager] = []


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_state: dict[str, Any],
) -> Path:
    from megatron.core import dist_checkpointing

    final = root / f"{_PREFIX}{step:07d}"
    tmp = root / f".{_PREFIX}{step:07d}.tmp"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    _results_queue_bound_to_rank()
    init_optimizer_state(optimizer)
    state = _sharded_state(model, optimizer)
    state["train_state"] = dict(train_state, step=step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist_checkpointing.save(state, str(tmp))
    _barrier()
    if _rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    _barrier()
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG in place and return the train state; one-line error if corrupt."""
    from megatron.core import dist_checkpointing

    init_optimizer_state(optimizer)
    state = _sharded_state(model, optimizer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            common = dist_checkpointing.load_common_state_dict(str(path))
            if common["train_state"].get("world_size") != _world():
                # RNG streams are per rank: they cannot be resharded, so a new layout starts fresh ones.
                del state["rng"]
            loaded = dist_checkpointing.load(state, str(path))
    except Exception as exc:  # torch/megatron raise many types for truncated or garbled files
        raise MaiUserError(
            f"checkpoint {path} is corrupt or incompatible: {type(exc).__name__}: {exc}"[:400]
        ) from exc
    model.load_state_dict(loaded["model"], strict=False)
    loaded_optim = loaded["optimizer"]
    loaded_optim["param_groups"] = optimizer.state_dict()["param_groups"]
    train_state = common["train_state"]
    for param_state in loaded_optim["state"].values():
        param_state["step"] = torch.tensor(float(train_state["optimizer_steps"]))
    optimizer.load_state_dict(loaded_optim)
    if "rng" in loaded:
        _set_rng_state(loaded["rng"])
    return train_state


def load_latest(
    root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """Resume from the newest loadable checkpoint; a corrupt one is skipped with a warning."""
    candidates = checkpoint_dirs(root)
    errors = []
    for path in reversed(candidates):
        try:
            return load_checkpoint(path, model, optimizer)
        except MaiUserError as exc:
            log.warning("skipping %s", exc)
            errors.append(str(exc))
    if errors:
        raise MaiUserError(f"no loadable checkpoint in {root}: {errors[0]}")
    return None

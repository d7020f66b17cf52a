"""Checkpoints with megatron.core.dist_checkpointing: model and AdamW state are saved as sharded
tensors keyed by the model's global parameter names, so a checkpoint saved with one parallel layout
loads into another (EP=2 -> EP=1, TP=2 x PP=2 -> one process, one chunk per rank -> interleaved
virtual stages): Megatron keys every layer by its global index, whatever stage or chunk holds it. The
model is a list of chunks (one per virtual pipeline stage). Each checkpoint is written to a temporary
directory and renamed when complete, so a run killed mid-save never leaves a half checkpoint under
its final name.

Nothing in a checkpoint is a pickled object: per-rank RNG streams are stored as tensors, and the
modules' ``_extra_state`` entries (which Megatron stores as pickled ``ShardedObject``s) are left out,
so tensors and the common state load ``weights_only`` (only torch.distributed.checkpoint's own
``.metadata`` index is a pickle). Model weights load strictly on resume: a checkpoint missing one of
the model's tensors is an error, never a silently fresh initialisation. A warm start (``warm_start``)
is the one partial load, and it reports every tensor it took and every one it left fresh."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import random
import shutil
import signal
import warnings
from collections.abc import Iterator
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mai_models.errors import MaiUserError
from mai_models.lm.optimizers import init_param_state

log = logging.getLogger(__name__)
_PREFIX = "iter_"
_EXCLUDED_OPTIM_KEYS = ("step",)  # a scalar per parameter; restored from the train state instead
# Transformer Engine keeps FP8 scaling metadata in ``_extra_state`` (None on the local spec). The
# trainer never enables FP8, so there is nothing in it to keep, and Megatron would pickle it.
_EXTRA_STATE = "._extra_state"


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


def model_sharded_state(model: torch.nn.Module, prefix: str = "") -> dict[str, Any]:
    """The model's sharded tensors as checkpointed: its sharded state dict without ``_extra_state``."""
    state = model.sharded_state_dict(prefix=prefix)
    return {k: v for k, v in state.items() if not k.endswith(_EXTRA_STATE)}


def load_model_state(model: torch.nn.Module, loaded: dict[str, Any], prefix: str, source: Path) -> None:
    """Strictly load the tensors ``dist_checkpointing.load`` returned for ``model_sharded_state``.

    Sharded keys carry ``prefix`` (``module.`` under Megatron DDP), ``model.state_dict()`` keys do
    not. The ``_extra_state`` entries, never checkpointed, keep the values the model was built with.
    """
    state = {k.removeprefix(prefix): v for k, v in loaded.items()}
    built = model.state_dict()
    state.update({k: v for k, v in built.items() if k.endswith(_EXTRA_STATE)})
    missing = sorted(set(built) - set(state))
    unexpected = sorted(set(state) - set(built))
    if missing or unexpected:
        raise MaiUserError(
            f"checkpoint {source} does not match the model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(state, strict=True)


Chunks = torch.nn.Module | list[torch.nn.Module]


def _chunk_list(model: Chunks) -> list[torch.nn.Module]:
    return model if isinstance(model, list) else [model]


def _model_state(model: Chunks) -> dict[str, Any]:
    """One chunk's sharded state as it is, several nested per chunk (their local names repeat; the
    checkpoint keys inside are global, so the nesting does not tie the checkpoint to this layout)."""
    states = [model_sharded_state(chunk) for chunk in _chunk_list(model)]
    return states[0] if len(states) == 1 else {f"chunk{i}": state for i, state in enumerate(states)}


def _per_chunk(model: Chunks, state: dict[str, Any]) -> list[dict[str, Any]]:
    return [state] if len(_chunk_list(model)) == 1 else [state[f"chunk{i}"] for i in range(len(model))]


def _sharded_state(model: Chunks, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        optim_state_to_sharding_state,
    )

    model_state = _model_state(model)
    flat = {f"{i}/{k}": v for i, part in enumerate(_per_chunk(model, model_state)) for k, v in part.items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optim_state = optimizer.state_dict()
    id_map = get_param_id_to_sharded_param_map(flat, params)
    optim_state_to_sharding_state(optim_state, id_map, exclude_keys=_EXCLUDED_OPTIM_KEYS)
    return {"model": model_state, "optimizer": optim_state, "rng": _sharded_rng(_rng_state())}


def _sharded_rng(streams: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One row per rank of a ``[world, ...]`` tensor per stream: each rank owns its own row."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    return {
        name: ShardedTensor.from_rank_offsets(
            f"rng_state/{name}", value, (0, _rank(), _world()), replica_id=0, prepend_axis_num=1
        )
        for name, value in streams.items()
    }


def _rng_state() -> dict[str, torch.Tensor]:
    """Python, NumPy and torch generator states as plain tensors, so they load ``weights_only``."""
    _, python_mt, gauss_next = random.getstate()
    _, numpy_mt, numpy_pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python_mt": torch.tensor(python_mt, dtype=torch.int64),
        # gauss_next is None or a float: [is set, value]
        "python_gauss": torch.tensor([gauss_next is not None, gauss_next or 0.0], dtype=torch.float64),
        "numpy_mt": torch.from_numpy(numpy_mt.astype(np.int64)),
        "numpy_pos": torch.tensor([numpy_pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached_gaussian], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    gauss_set, gauss_next = state["python_gauss"].tolist()
    python_mt = tuple(state["python_mt"].tolist())
    random.setstate((random.Random.VERSION, python_mt, gauss_next if gauss_set else None))
    numpy_pos, has_gauss = state["numpy_pos"].tolist()
    numpy_mt = state["numpy_mt"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", numpy_mt, numpy_pos, has_gauss, float(state["numpy_gauss"][0])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextlib.contextmanager
def _checkpoint_io() -> Iterator[None]:
    """Around every ``dist_checkpointing`` call: its warnings silenced, and torch at one intra-op
    thread. The save and load gather their metadata as pickled objects (``all_gather_object``);
    on gloo the copy out of that buffer runs on a process-group thread, and a large one there (200 KB
    does, 10 KB does not) starts that thread's own OpenMP team, which lives as long as the process
    group. Once libgomp manages more threads than there are cores it cuts every thread's spin-wait,
    so from the first save on each parallel region of the training waits on a futex: MoE steps (many small
    ops) ran ~50% slower on 2 cores. A thread that starts its pool while torch is at one thread never
    makes a team."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(threads)


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Optimizers create their state lazily; loading needs the tensors to exist with the right shapes."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            init_param_state(optimizer.state[p], p, group)


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
    model: Chunks,
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
    state["rng_streams"] = sorted(state["rng"])  # a CPU-saved checkpoint has no CUDA stream to restore
    with _checkpoint_io():
        dist_checkpointing.save(state, str(tmp))
    _barrier()
    if _rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    _barrier()
    return final


def load_checkpoint(path: Path, model: Chunks, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG in place and return the train state; one-line error if corrupt."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    init_optimizer_state(optimizer)
    state = _sharded_state(model, optimizer)
    try:
        with _checkpoint_io():
            common = dist_checkpointing.load_common_state_dict(str(path))
            if common["train_state"].get("world_size") != _world():
                # RNG streams are per rank: they cannot be resharded, so a new layout starts fresh ones.
                del state["rng"]
            else:
                state["rng"] = {k: v for k, v in state["rng"].items() if k in common["rng_streams"]}
            loaded = dist_checkpointing.load(state, str(path))
    # torch/megatron raise many types for truncated or garbled files; torch.distributed.checkpoint
    # wraps a rank's failure (a shape that does not match) in a BaseException whose text is the
    # rank's traceback: its last line is the cause.
    except (Exception, CheckpointException) as exc:
        lines = str(exc).strip().splitlines() or [""]
        cause = lines[-1] if isinstance(exc, CheckpointException) else " ".join(lines)
        raise MaiUserError(
            f"checkpoint {path} is corrupt or incompatible: {type(exc).__name__}: {cause}"[:400]
        ) from exc
    for chunk, part in zip(_chunk_list(model), _per_chunk(model, loaded["model"]), strict=True):
        load_model_state(chunk, part, "module.", path)  # trainer checkpoints come from Megatron DDP
    loaded_optim = loaded["optimizer"]
    loaded_optim["param_groups"] = optimizer.state_dict()["param_groups"]
    train_state = common["train_state"]
    for param_state in loaded_optim["state"].values():
        param_state["step"] = torch.tensor(float(train_state["optimizer_steps"]))
    optimizer.load_state_dict(loaded_optim)
    if "rng" in loaded:
        _set_rng_state(loaded["rng"])
    return train_state


def load_latest(root: Path, model: Chunks, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
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


def _leaf_shapes(entry: Any) -> set[tuple[str, tuple[int, ...]]]:
    """(checkpoint key, global shape) of the tensors one sharded entry is saved as: a factory (the
    gated MLP's fc1) is saved as the tensors it builds."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    built = entry.build() if isinstance(entry, ShardedTensorFactory) else entry
    leaves = nested_values(built) if isinstance(built, dict | list) else [built]
    return {(t.key, tuple(t.global_shape)) for t in leaves if isinstance(t, ShardedTensor)}


def warm_start(path: Path, model: Chunks, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a parent checkpoint (another run's) into a new run wherever shapes agree, and say which
    tensors were taken and which keep their fresh initialisation.

    A model tensor is taken when the checkpoint holds its key with the same global shape; its AdamW
    moments come with it, with the parent's optimizer step count so that Adam's bias correction
    stays consistent with them. Fresh tensors start with empty moments. Nothing else is restored:
    the new run's RNG streams, step count and learning-rate schedule start from its own beginning.
    """
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint import FileSystemReader

    try:
        saved = {
            key: tuple(meta.size)
            for key, meta in FileSystemReader(str(path)).read_metadata().state_dict_metadata.items()
            if hasattr(meta, "size")
        }
        common = dist_checkpointing.load_common_state_dict(str(path))
    except Exception as exc:  # a missing or garbled checkpoint: torch raises many types
        raise MaiUserError(
            f"parent checkpoint {path} is unreadable: {type(exc).__name__}: {exc}"[:400]
        ) from exc

    def agrees(entry: Any) -> bool:
        shapes = _leaf_shapes(entry)
        return bool(shapes) and all(saved.get(key) == shape for key, shape in shapes)

    init_optimizer_state(optimizer)
    state = _sharded_state(model, optimizer)
    parts = _per_chunk(model, state["model"])
    taken = [{k: v for k, v in part.items() if agrees(v)} for part in parts]
    fresh = sorted(
        k.removeprefix("module.") for part, t in zip(parts, taken, strict=True) for k in part if k not in t
    )
    optim = state["optimizer"]
    moments = {pid: entries for pid, entries in optim["state"].items() if all(map(agrees, entries.values()))}
    request = {
        "model": {str(i): t for i, t in enumerate(taken)},
        "optimizer": {"state": moments, "param_groups": optim["param_groups"]},
    }
    with _checkpoint_io():
        loaded = dist_checkpointing.load(request, str(path))
    for i, chunk in enumerate(_chunk_list(model)):
        weights = {k.removeprefix("module."): v for k, v in loaded["model"].get(str(i), {}).items()}
        unexpected = sorted(set(weights) - set(chunk.state_dict()))
        if unexpected:
            raise MaiUserError(f"parent checkpoint {path} names tensors the model lacks: {unexpected[:5]}")
        chunk.load_state_dict(weights, strict=False)
    parent_steps = float(common["train_state"]["optimizer_steps"])
    loaded_optim = loaded["optimizer"]
    loaded_optim["param_groups"] = optimizer.state_dict()["param_groups"]
    for param_state in loaded_optim["state"].values():
        param_state["step"] = torch.tensor(parent_steps)
    optimizer.load_state_dict(loaded_optim)
    return {
        "tensors_taken": sorted(k.removeprefix("module.") for t in taken for k in t),
        "tensors_fresh": fresh,
        "optimizer_moments_taken": len(moments),
        "optimizer_moments_fresh": len(optim["state"]) - len(moments),
        "parent_optimizer_steps": int(parent_steps),
    }

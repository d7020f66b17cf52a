"""One rank of MoE pretraining on Megatron-Core: the loop torchrun starts on every process.

Data comes from GPTDataset over the token_shards asset; each step's micro-batches run through
Megatron's pipeline schedules (``schedule.py``: no pipelining, 1F1B or interleaved 1F1B); AdamW, or
Muon on the hidden matrices (``lm.optimizer``, ``optimizers.py``), steps Megatron DDP's ``main_grad``;
warmup, then a cosine or warmup-stable-decay (WSD) learning rate; global-norm clipping across tensor,
pipeline, expert and data parallel groups; periodic validation loss and bits per byte; sharded
checkpoints with exact resume, which load under another layout.

A warm start (``spec.init.checkpoint``, the champion's checkpoint) loads the parent's weights and AdamW
moments where shapes agree, then trains on the new data with this run's own schedule from step 0:
warmup again, then decay over ``lm.steps``. Re-warming and re-decaying the learning rate is what
continual pretraining studies recommend when a trained model meets new data (Ibrahim et al., "Simple
and Scalable Strategies to Continually Pre-train Large Language Models", 2024), and it keeps a
retraining run's curve comparable with a scratch run of the same config.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mai_models.errors import MaiUserError
from mai_models.lm import schedule
from mai_models.lm.data import build_datasets, inspect_shards
from mai_models.lm.dist_checkpoint import checkpoint_dirs, load_latest, save_checkpoint, warm_start
from mai_models.lm.optimizers import build_optimizer
from mai_models.lm.run_spec import METRICS_FILE, SUMMARY_FILE, WARM_START_FILE, InitSpec, RunSpec
from mai_models.lm.telemetry import (
    MfuMeter,
    Peak,
    RouterMonitor,
    collect_aux_losses,
    flatten_router_stats,
    plot_expert_load,
    plot_loss_curve,
    resolve_peak,
)
from mai_models.lm.train_config import TrainConfig, resolve_model_config
from mai_models.precision import autocast as precision_autocast
from mai_models.precision import resolve_precision
from mai_models.tracking.sinks import FanOut, JsonLinesSink, MLflowSink
from mai_models.tracking.warm_start import TAG_INIT_FROM, TAG_PARENT_VERSION


class TrainingDiverged(MaiUserError):
    """The loss stopped being finite; the last good checkpoint is kept."""


@dataclass
class TrainSummary:
    steps: int
    final_train_loss: float
    final_valid_loss: float | None
    final_valid_bpb: float | None
    tokens_seen: int
    checkpoint: str
    parameters: dict[str, int]
    resumed_from: int | None
    init: dict[str, Any] = field(default_factory=dict)  # how the weights started (see _initialise)
    plots: list[str] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig, decoupled: bool = False) -> float:
    """Linear warmup to ``lr``, then decay to ``min_lr`` at the last step: cosine from the end of warmup,
    or (``wsd``) the peak held and a linear decay over the last ``lr_wsd_decay_fraction``; for the input
    embedding and output layer (``decoupled``), the same shape between ``decoupled_lr`` and
    ``decoupled_min_lr`` when set (Megatron-LM's --decoupled-lr)."""
    peak, floor = cfg.lr, cfg.min_lr
    if decoupled and cfg.decoupled_lr is not None:
        peak = cfg.decoupled_lr
        floor = cfg.decoupled_min_lr if cfg.decoupled_min_lr is not None else cfg.min_lr * peak / cfg.lr
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay_style == "wsd":
        decay_steps = max(round(cfg.lr_wsd_decay_fraction * cfg.steps), 1)
        progress = min(max(step - (cfg.steps - decay_steps), 0) / decay_steps, 1.0)
        return peak - (peak - floor) * progress
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def grad_norm_and_clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Global L2 norm over every rank's share of the gradients, counting each parameter once:
    dense shards are summed over the model-parallel group (TP x PP); expert parameters (different on
    each expert-parallel rank) over the expert group (expert TP x EP x PP). A parameter replicated
    over its tensor-parallel group counts on that group's rank 0 only, and a tied output layer's copy
    of the embedding (``shared``, on the last stage) not at all."""
    from megatron.core import parallel_state

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    etp_rank = parallel_state.get_expert_tensor_parallel_rank()
    dense_grads, expert_grads = [], []
    for p in params:
        expert = not getattr(p, "allreduce", True)
        rank_in_tp = etp_rank if expert else tp_rank
        if p.grad is None or getattr(p, "shared", False):
            continue
        if not getattr(p, "tensor_model_parallel", False) and rank_in_tp != 0:
            continue
        (expert_grads if expert else dense_grads).append(p.grad)

    def sum_of_squares(grads: list[torch.Tensor]) -> torch.Tensor:
        if not grads:
            return torch.zeros(1, dtype=torch.float64, device=_device())
        norms = torch._foreach_norm(grads)  # one fused pass instead of a kernel per tensor
        return torch.stack(norms).double().pow(2).sum().reshape(1)

    dense = sum_of_squares(dense_grads)
    expert = sum_of_squares(expert_grads)
    if dist.is_initialized():
        dist.all_reduce(dense, group=parallel_state.get_model_parallel_group())
        dist.all_reduce(expert, group=parallel_state.get_expert_tensor_model_pipeline_parallel_group())
    norm = float((dense + expert).sqrt())
    if math.isfinite(norm) and norm > max_norm:
        torch._foreach_mul_([p.grad for p in params if p.grad is not None], max_norm / (norm + 1e-6))
    return norm


def train(spec: RunSpec, extra_sinks: list[Any] | None = None) -> TrainSummary:
    from mai_models.lm.megatron_import import import_megatron

    import_megatron()  # first, so that no other import brings Megatron in with TorchInductor
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from mai_models.lm.layout_init import init_layout_invariant
    from mai_models.lm.model import build_model_chunks
    from mai_models.lm.process_groups import init_parallel
    from mai_models.lm.sizing import count_parameters, flops_per_token

    cfg = spec.train
    world = int(os.environ.get("WORLD_SIZE", "1"))
    threads = cfg.launch.rank_threads
    torch.set_num_threads(threads)
    info = inspect_shards(spec.shards_dir, spec.tokenizer_dir)
    model_cfg = resolve_model_config(cfg, vocab_size=info.vocab_size)
    seq = model_cfg.seq_length
    parallel = cfg.parallel.megatron()
    parallel.validate(world, model_cfg)
    if not torch.cuda.is_available() and parallel.ep > 1 and parallel.etp > 1:
        # The dispatcher all-gathers uneven token counts over expert-TP: NCCL can, gloo cannot.
        raise MaiUserError("on CPU (gloo) expert parallelism needs lm.parallel.expert_tensor=1")
    num_micro = cfg.micro_batches_per_step(world)
    init_parallel(parallel, cfg.seed)
    rank = _rank()
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()

    chunks = build_model_chunks(model_cfg, parallel)
    init_layout_invariant(chunks, cfg.seed)  # the same initial model under every layout
    ddp = [
        DistributedDataParallel(
            config=chunk.config,
            ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
            module=chunk,
            disable_bucketing=index > 0,  # as Megatron-LM: only the first chunk's buckets overlap
        )
        for index, chunk in enumerate(chunks)
    ]
    schedule.configure(ddp)
    optimizer = build_optimizer(ddp, cfg.optimizer, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    spec.work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = spec.work_dir / "checkpoints"
    samples = {
        "train": cfg.steps * cfg.global_batch_size,
        "valid": cfg.eval_iters * cfg.micro_batch_size * dp_size,
    }
    cache = spec.work_dir / "index-cache"
    if rank == 0:  # Megatron's index cache is shared: build it once, then everyone reads it
        datasets = build_datasets(spec.shards_dir, spec.tokenizer_dir, seq, samples, cfg.seed, cache)
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        datasets = build_datasets(spec.shards_dir, spec.tokenizer_dir, seq, samples, cfg.seed, cache)

    resumed = load_latest(ckpt_root, ddp, optimizer)
    start_step = resumed["step"] if resumed else 0
    init = _initialise(spec, ddp, optimizer, resumed is not None, rank)
    counts = count_parameters(model_cfg)
    sink = _sinks(spec, rank, extra_sinks or [])
    history = _read_history(spec.work_dir, start_step) if rank == 0 else {"train": [], "valid": []}
    load_history: list[tuple[int, list[list[float]]]] = []
    monitor = RouterMonitor(chunks, model_cfg.moe_router_topk if model_cfg.num_experts else 1)
    flops_token = flops_per_token(model_cfg)
    device = _device()
    precision = resolve_precision(cfg.precision, device.type)
    peak = None
    if rank == 0:
        peak = resolve_peak(spec.peak_flops_per_device, threads, spec.peak_cache, precision)
    if dist.is_initialized():
        dist.barrier()  # the other ranks wait here, leaving the cores idle while rank 0 may time a GEMM
    meter = MfuMeter(peak or Peak(None, "rank 0 reports MFU", ""), flops_token, world)
    autocast = precision_autocast(precision, device.type)
    if rank == 0:
        known = {"perf/peak_flops_per_device": meter.peak.flops} if meter.peak.flops else {}
        sink.log(start_step, {**known, "perf/model_flops_per_token": flops_token})
        sink.event(
            "start", {"resumed_from": start_step if resumed else None, "parameters": counts, "world": world}
        )
        sink.event("tags", meter.peak.tags())
        sink.event("warm_start", {k: v for k, v in init.items() if k != "tensors_taken"})
        sink.event("tags", _init_tags(init))

    # A relaunch of a finished run trains no step; its summary still reports the last logged losses.
    last_loss = history["train"][-1][1] if history["train"] else float("nan")
    valid_loss = history["valid"][-1][1] if history["valid"] else None
    valid_bpb = valid_loss / math.log(2) / info.bytes_per_token("valid") if valid_loss is not None else None
    for step in range(start_step, cfg.steps):
        started = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, group["decoupled"])
        for chunk in ddp:
            chunk.zero_grad_buffer()
        optimizer.zero_grad(set_to_none=True)
        firsts = [
            step * cfg.global_batch_size + (micro * dp_size + dp_rank) * cfg.micro_batch_size
            for micro in range(num_micro)
        ]
        # Backward runs inside the autocast as well: on a CPU, Megatron's linear layers compute their
        # gradients with plain matmuls of the bf16 output gradient and the fp32 weight.
        with autocast:
            records = schedule.run(
                ddp,
                datasets["train"],
                firsts,
                cfg.micro_batch_size,
                seq,
                device,
                poison=spec.fault_nan_at_step == step,
            )
        for p in params:
            p.grad = p.main_grad.to(p.dtype) if getattr(p, "main_grad", None) is not None else p.grad
        mean_loss = schedule.train_loss(records, num_micro, device)
        if not math.isfinite(mean_loss):
            last = checkpoint_dirs(ckpt_root)
            kept = last[-1].name if last else "none (no checkpoint yet)"
            sink.close()  # the curve up to the divergence reaches MLflow
            raise TrainingDiverged(
                f"loss became {mean_loss} at step {step + 1}; last good checkpoint kept: {kept}"
            )
        norm = grad_norm_and_clip(params, cfg.grad_clip)
        optimizer.step()
        last_loss = mean_loss
        elapsed = time.perf_counter() - started
        done = step + 1

        metrics: dict[str, float] = {}
        if done % cfg.log_interval == 0 or done == cfg.steps:
            tokens_s = cfg.global_batch_size * seq / elapsed
            metrics = {
                "train/loss": mean_loss,
                "train/lr": lr,
                "train/grad_norm": norm,
                "perf/tokens_per_s": tokens_s,
                "perf/step_seconds": elapsed,
                **meter.observe(done, tokens_s),
            }
            metrics.update(collect_aux_losses(num_micro))
            router = monitor.collect()
            metrics.update(flatten_router_stats(router))
            if router:
                load_history.append((done, router["tokens_per_expert"]))
        if done % cfg.eval_interval == 0 or done == cfg.steps:
            valid_loss = _evaluate(ddp, datasets.get("valid"), cfg, seq, dp_rank, dp_size, device, autocast)
            monitor.reset()
            if valid_loss is not None:
                valid_bpb = valid_loss / math.log(2) / info.bytes_per_token("valid")
                metrics.update({"valid/loss": valid_loss, "valid/bits_per_byte": valid_bpb})
        if done % cfg.checkpoint_interval == 0 or done == cfg.steps:
            save_checkpoint(ckpt_root, done, ddp, optimizer, {"optimizer_steps": done, "world_size": world})
        if rank == 0 and metrics:
            sink.log(done, metrics)
            _append_history(spec.work_dir, done, metrics, history)
        if done % cfg.checkpoint_interval == 0:
            sink.flush()  # a run killed later resumes here: MLflow then has every step before it
        if spec.fault_kill_after_step == done:
            os.kill(os.getpid(), signal.SIGKILL)

    monitor.remove()
    final = checkpoint_dirs(ckpt_root)[-1]
    plots: list[str] = []
    if rank == 0 and meter.waiting:
        # The cores were busy when training started; with this run's own work done they may be idle.
        for late_step, late in meter.late(
            resolve_peak(spec.peak_flops_per_device, threads, spec.peak_cache, precision)
        ):
            sink.log(late_step, late)
            _append_history(spec.work_dir, late_step, late, history)
        sink.event("tags", meter.peak.tags())
    if rank == 0:
        plots = [str(p) for p in _write_plots(spec.work_dir, history, load_history) if p]
        for plot in plots:
            sink.event("artifact", {"path": plot, "artifact_path": "plots"})
        sink.close()
    summary = TrainSummary(
        steps=cfg.steps,
        final_train_loss=last_loss,
        final_valid_loss=valid_loss,
        final_valid_bpb=valid_bpb,
        tokens_seen=cfg.steps * cfg.global_batch_size * seq,
        checkpoint=str(final),
        parameters=counts,
        resumed_from=start_step if resumed else None,
        init=init,
        plots=plots,
    )
    if rank == 0:
        (spec.work_dir / SUMMARY_FILE).write_text(json.dumps(summary.__dict__, indent=2) + "\n")
    return summary


def _initialise(
    spec: RunSpec, model: list[torch.nn.Module], optimizer: torch.optim.Optimizer, resumed: bool, rank: int
) -> dict[str, Any]:
    """How this run's weights started. A new run loads its parent's checkpoint when it has one (a warm
    start); a resumed run already holds those weights and reads back what its first attempt recorded."""
    path = spec.work_dir / WARM_START_FILE
    if resumed and path.exists():
        return json.loads(path.read_text())
    init = spec.init or InitSpec(init_from="scratch", reason="trained from scratch")
    record: dict[str, Any] = {"init_from": init.init_from, "parent": init.parent, "reason": init.reason}
    if init.checkpoint is not None and not resumed:
        record.update(warm_start(init.checkpoint, model, optimizer))
    if rank == 0:
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def _init_tags(init: dict[str, Any]) -> dict[str, str]:
    """The start as MLflow tags: the parent version, and how much of it the new run took."""
    tags = {TAG_INIT_FROM: init["init_from"], TAG_PARENT_VERSION: init["parent"] or "none"}
    if "tensors_taken" in init:
        tags["mai.warm_start.tensors_taken"] = str(len(init["tensors_taken"]))
        tags["mai.warm_start.tensors_fresh"] = str(len(init["tensors_fresh"]))
    return tags


def _evaluate(
    chunks: list[torch.nn.Module],
    dataset: Any,
    cfg: TrainConfig,
    seq: int,
    dp_rank: int,
    dp_size: int,
    device: torch.device,
    autocast: Any,
) -> float | None:
    """Validation loss: ``eval_iters`` micro-batches per replica through the forward-only schedule."""
    if dataset is None:
        return None
    for chunk in chunks:
        chunk.eval()
    firsts = [(i * dp_size + dp_rank) * cfg.micro_batch_size for i in range(cfg.eval_iters)]
    with torch.no_grad(), autocast:
        records = schedule.run(chunks, dataset, firsts, cfg.micro_batch_size, seq, device, forward_only=True)
    for chunk in chunks:
        chunk.train()
    return schedule.eval_loss(records, device)


def _sinks(spec: RunSpec, rank: int, extra: list[Any]) -> Any:
    """Only rank 0 reports: the other ranks' numbers are already reduced into its metrics."""
    if rank != 0:
        return FanOut()
    mlflow_sink = None
    if spec.mlflow_tracking_uri and spec.mlflow_run_id:
        mlflow_sink = MLflowSink(spec.mlflow_tracking_uri, spec.mlflow_run_id)
    return FanOut(JsonLinesSink(), mlflow_sink, *extra)


def _read_history(work_dir: Path, upto: int) -> dict[str, list[tuple[int, float]]]:
    """Metrics logged before a resume, cut at the resumed step so the curve has no replayed points."""
    history: dict[str, list[tuple[int, float]]] = {"train": [], "valid": []}
    path = work_dir / METRICS_FILE
    if not path.exists():
        return history
    kept = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["step"] > upto:
            continue
        kept.append(line)
        if "train/loss" in row:
            history["train"].append((row["step"], row["train/loss"]))
        if "valid/loss" in row:
            history["valid"].append((row["step"], row["valid/loss"]))
    path.write_text("".join(k + "\n" for k in kept))
    return history


def _append_history(work_dir: Path, step: int, metrics: dict[str, float], history: dict) -> None:
    with (work_dir / METRICS_FILE).open("a") as fh:
        fh.write(json.dumps({"step": step, **metrics}) + "\n")
    if "train/loss" in metrics:
        history["train"].append((step, metrics["train/loss"]))
    if "valid/loss" in metrics:
        history["valid"].append((step, metrics["valid/loss"]))


def _write_plots(work_dir: Path, history: dict, load_history: list) -> list[Path | None]:
    plots = work_dir / "plots"
    plots.mkdir(exist_ok=True)
    return [
        plot_loss_curve(history, plots / "loss_curve.png"),
        plot_expert_load(load_history, plots / "expert_load_heatmap.png"),
    ]

"""Training telemetry: MFU against a known peak, router health from forward hooks, and the run's plots."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mai_models.precision import ResolvedPrecision

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peak:
    """The MFU denominator of one device and where it came from (both go to MLflow as tags)."""

    flops: float | None  # None: no trustworthy peak, so no MFU
    source: str
    device: str

    def tags(self) -> dict[str, str]:
        return {
            "mai.mfu.peak_flops_per_device": f"{self.flops:.6g}" if self.flops else "unavailable",
            "mai.mfu.peak_source": self.source,
            "mai.mfu.device": self.device,
        }


def resolve_peak(
    given: float | None, threads: int, store: Path | None, precision: ResolvedPrecision = "fp32"
) -> Peak:
    """A stated peak, else the GPU model's datasheet figure, else the CPU's GEMM rate of these threads
    at the training ``precision`` on idle cores (stored per host, thread count and dtype in ``store``):
    a bf16 run over an fp32 peak would read up to 4x high on a CPU with native bf16."""
    from mai_models.lm.cpu_peak import cpu_peak
    from mai_models.lm.gpu_peaks import gpu_peak

    if given:
        return Peak(given, "given in the run spec", "cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        entry = gpu_peak(name)
        if entry is None:
            return Peak(None, f"unavailable: {name} is not in the GPU peak table", name)
        return Peak(entry.flops, f"datasheet dense bf16 of {entry.model}", name)
    found = cpu_peak(threads, store, precision)
    return Peak(found.flops, found.source, f"cpu, {threads} threads, {precision}")


class MfuMeter:
    """MFU = model FLOPs per token x tokens/s / (devices x peak). Above 1 the peak must be wrong, so
    such a figure is clamped to 1 and reported once as a warning. Steps logged while no peak is
    known are kept, so that a peak found later can give them their MFU."""

    def __init__(self, peak: Peak, flops_per_token: float, devices: int) -> None:
        self.peak = peak
        self.flops_per_token = flops_per_token
        self.devices = devices
        self.waiting: list[tuple[int, float]] = []
        self._warned = False

    def mfu(self, tokens_per_s: float) -> float | None:
        if not self.peak.flops:
            return None
        raw = self.flops_per_token * tokens_per_s / (self.peak.flops * self.devices)
        if raw > 1.0:
            if not self._warned:
                LOG.warning(
                    "MFU %.3f is above 1: the peak of %.4g FLOP/s per device (%s) is too low; "
                    "MFU is clamped to 1",
                    raw,
                    self.peak.flops,
                    self.peak.source,
                )
                self._warned = True
            return 1.0
        return raw

    def observe(self, step: int, tokens_per_s: float) -> dict[str, float]:
        value = self.mfu(tokens_per_s)
        if value is None:
            self.waiting.append((step, tokens_per_s))
            return {}
        return {"perf/mfu": value}

    def late(self, peak: Peak) -> list[tuple[int, dict[str, float]]]:
        """Adopt a peak found after some steps were logged without one; their MFU, if it is known now."""
        self.peak = peak
        if not peak.flops:
            return []
        done, self.waiting = self.waiting, []
        return [(step, {"perf/mfu": value}) for step, tps in done if (value := self.mfu(tps)) is not None]


class RouterMonitor:
    """Counts, per MoE layer, tokens routed to each expert, router entropy and dropped assignments.

    A forward hook on each router reads its routing map and recomputes its logits for the entropy.
    Rows are the model's MoE layers in global order, wherever their pipeline stage is: each rank
    fills the rows of the routers it holds, and ``collect`` sums over every rank. That sum counts each
    token once: data-parallel replicas, and with sequence parallelism (always on with TP > 1) the
    tensor-parallel ranks, route disjoint tokens, and pipeline stages fill disjoint rows.
    """

    def __init__(self, chunks: list[torch.nn.Module] | torch.nn.Module, topk: int) -> None:
        from megatron.core.transformer.moe.router import TopKRouter

        chunks = chunks if isinstance(chunks, list) else [chunks]
        self.topk = topk
        # Every rank knows every MoE layer, routers or not, so that all of them join collect's sum.
        config = chunks[0].config
        self.num_experts = config.num_moe_experts or 0
        self.rows = _moe_rows(config) if self.num_experts else {}
        routers = [m for chunk in chunks for m in chunk.modules() if isinstance(m, TopKRouter)]
        self.routers = routers
        self._handles = []
        self.reset()
        for router in routers:
            # layer_number is global and 1-based (Megatron offsets it by the stage's first layer).
            row = self.rows[router.layer_number]
            self._handles.append(router.register_forward_hook(self._on_routing(row)))

    def reset(self) -> None:
        n = max(self.num_experts, 1)
        layers = len(self.rows)
        self.counts = torch.zeros(layers, n, dtype=torch.float64)
        self.entropy_sum = torch.zeros(layers, dtype=torch.float64)
        self.tokens = torch.zeros(layers, dtype=torch.float64)

    def _on_routing(self, index: int):
        def hook(module: Any, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> None:
            with torch.no_grad():
                # Re-running the gating matmul ([tokens, hidden] x [hidden, experts]) is cheap next to
                # the experts, and it yields the full distribution that entropy needs.
                logits = module.gating(args[0]).float().reshape(-1, self.num_experts)
                probs = torch.softmax(logits, dim=-1)
                entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
                self.entropy_sum[index] += entropy.sum().double().cpu()
                routing_map = output[1].detach()
                self.counts[index] += routing_map.sum(0).double().cpu()
                self.tokens[index] += routing_map.shape[0]

        return hook

    def collect(self) -> dict[str, Any]:
        """Sum over every rank and summarise (every rank must call it); resets the counters."""
        if not self.rows:
            return {}
        stats = torch.cat([self.counts.flatten(), self.entropy_sum, self.tokens])
        if torch.distributed.is_initialized():
            stats = stats.to(_comm_device())
            torch.distributed.all_reduce(stats)
            stats = stats.cpu()
        layers, n = self.counts.shape
        counts = stats[: layers * n].view(layers, n)
        entropy_sum = stats[layers * n : layers * n + layers]
        tokens = stats[layers * n + layers :].clamp_min(1)
        mean = counts.mean(1).clamp_min(1e-12)
        self.reset()
        return {
            "tokens_per_expert": counts.tolist(),
            "load_imbalance": (counts.max(1).values / mean).tolist(),  # max/mean; 1.0 is perfect balance
            "router_entropy": (entropy_sum / tokens / math.log(n)).tolist(),  # normalised to [0, 1]
            "dropped_token_rate": (1 - counts.sum(1) / (tokens * self.topk)).clamp_min(0).tolist(),
        }

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _moe_rows(config: Any) -> dict[int, int]:
    """Global 1-based layer number -> row among the MoE layers, from ``moe_layer_freq``."""
    freq = config.moe_layer_freq
    pattern = list(freq) if isinstance(freq, list) else [int(i % freq == 0) for i in range(config.num_layers)]
    moe_layers = [i + 1 for i, is_moe in enumerate(pattern) if is_moe]
    return {layer: row for row, layer in enumerate(moe_layers)}


def _comm_device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def flatten_router_stats(stats: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in ("load_imbalance", "router_entropy", "dropped_token_rate"):
        values = stats.get(name, [])
        for layer, value in enumerate(values):
            out[f"router/{name}/layer_{layer}"] = float(value)
        if values:
            out[f"router/{name}"] = float(sum(values) / len(values))
    return out


def plot_loss_curve(history: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in history.items():
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=name, marker="o" if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("MoE pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_expert_load(load_history: list[tuple[int, list[list[float]]]], path: Path) -> Path | None:
    """Heatmap of each MoE layer's share of routed tokens per expert, one row per logged step."""
    if not load_history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = [s for s, _ in load_history]
    counts = np.array([c for _, c in load_history], dtype=float)  # [steps, layers, experts]
    shares = counts / np.clip(counts.sum(-1, keepdims=True), 1e-12, None)
    layers = shares.shape[1]
    fig, axes = plt.subplots(1, layers, figsize=(3 * layers + 1, 4), squeeze=False)
    for layer in range(layers):
        ax = axes[0][layer]
        image = ax.imshow(shares[:, layer, :], aspect="auto", cmap="viridis", vmin=0)
        ax.set_title(f"MoE layer {layer}")
        ax.set_xlabel("expert")
        ax.set_ylabel("logged step" if layer == 0 else "")
        ax.set_yticks(range(0, len(steps), max(1, len(steps) // 8)))
        ax.set_yticklabels([steps[i] for i in range(0, len(steps), max(1, len(steps) // 8))])
    fig.colorbar(image, ax=axes.ravel().tolist(), label="share of routed tokens")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def collect_aux_losses(num_micro: int) -> dict[str, float]:
    """Per-layer load-balancing and z-losses from Megatron's tracker, averaged over micro-batches."""
    from megatron.core.transformer.moe.moe_utils import (
        clear_aux_losses_tracker,
        get_moe_layer_wise_logging_tracker,
        reduce_aux_losses_tracker_across_ranks,
    )

    tracker = get_moe_layer_wise_logging_tracker()
    if not tracker:
        return {}
    reduce_aux_losses_tracker_across_ranks()
    out: dict[str, float] = {}
    per_name: dict[str, list[float]] = defaultdict(list)
    for name, entry in tracker.items():
        values = (entry["values"].float() / num_micro).tolist()
        for layer, value in enumerate(values):
            if value != 0.0:
                out[f"moe/{name}/layer_{layer}"] = value
                per_name[name].append(value)
    for name, values in per_name.items():
        out[f"moe/{name}"] = sum(values) / len(values)
    clear_aux_losses_tracker()
    return out

"""Training telemetry: router health from forward hooks, metric sinks, and the run's plots."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch


class RouterMonitor:
    """Counts, per MoE layer, tokens routed to each expert, router entropy and dropped assignments.

    A forward hook on each router reads its routing map and recomputes its logits for the entropy.
    """

    def __init__(self, model: torch.nn.Module, topk: int) -> None:
        from megatron.core.transformer.moe.router import TopKRouter

        self.topk = topk
        self.routers = [m for m in model.modules() if isinstance(m, TopKRouter)]
        self.num_experts = self.routers[0].config.num_moe_experts if self.routers else 0
        self._handles = []
        self.reset()
        for index, router in enumerate(self.routers):
            self._handles.append(router.register_forward_hook(self._on_routing(index)))

    def reset(self) -> None:
        n = max(self.num_experts, 1)
        self.counts = torch.zeros(len(self.routers), n, dtype=torch.float64)
        self.entropy_sum = torch.zeros(len(self.routers), dtype=torch.float64)
        self.tokens = torch.zeros(len(self.routers), dtype=torch.float64)

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

    def collect(self, group: Any = None) -> dict[str, Any]:
        """Reduce over the data-parallel group and summarise; resets the counters."""
        if not self.routers:
            return {}
        stats = torch.cat([self.counts.flatten(), self.entropy_sum, self.tokens])
        if torch.distributed.is_initialized():
            stats = stats.to(_comm_device())
            torch.distributed.all_reduce(stats, group=group)
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

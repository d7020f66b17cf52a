"""The LM optimizers: AdamW (Megatron-LM's default) or Muon for the hidden matrices with AdamW for the
rest (the modded-nanogpt speedrun's split). Parameter groups: no weight decay on norms and biases;
the input embedding and output layer apart (``decoupled``) so that ``lm.decoupled_lr`` can give them
their own learning rate; under Muon, every 2-D weight of the transformer layers except the router in
``muon`` groups.

Muon keeps one momentum buffer per matrix; its update is that momentum (Nesterov) orthogonalised by
five Newton-Schulz iterations, scaled to the RMS of an AdamW update (0.2 * sqrt(max(rows, cols)), as
Moonlight does) so that both kinds of group follow the same learning-rate schedule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from mai_models.errors import MaiUserError
from mai_models.lm.train_config import OptimizerName

# Megatron-LM's decoupled learning rate covers these: the input embedding and the output layer.
_DECOUPLED = ("embedding.word_embeddings.", "output_layer.")
# The router is a small classifier over experts, not a hidden map: Adam, as the speedruns keep
# every non-hidden weight.
_NOT_MUON = (*_DECOUPLED, ".router.")
# Keller Jordan's quintic Newton-Schulz coefficients (also torch.optim.Muon's defaults).
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_NS_STEPS = 5
_RMS_MATCH = 0.2


def optimizer_param_groups(
    model: torch.nn.Module, weight_decay: float, muon: bool = False
) -> list[dict[str, Any]]:
    """Groups over ``model``'s trainable parameters, each with ``weight_decay``, ``decoupled`` and
    ``muon`` flags."""
    groups: dict[tuple[bool, bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim < 2 or name.endswith(".bias"))
        decoupled = any(part in name for part in _DECOUPLED)
        orthogonal = muon and p.ndim == 2 and not any(part in name for part in _NOT_MUON)
        groups.setdefault((decay, decoupled, orthogonal), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decay else 0.0,
            "decoupled": decoupled,
            "muon": orthogonal,
        }
        for (decay, decoupled, orthogonal), params in sorted(groups.items(), reverse=True)
    ]


def orthogonalise(matrix: torch.Tensor, steps: int = _NS_STEPS) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to ``matrix``, approximately (Newton-Schulz, fp32)."""
    a, b, c = _NS_COEFFICIENTS
    x = matrix.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def init_param_state(state: dict[str, Any], p: torch.Tensor, group: dict[str, Any]) -> None:
    """Fill an empty ``state`` as the first step would: a momentum buffer for a ``muon`` group,
    AdamW's two moments otherwise (torch's AdamW and MuonAdamW's AdamW groups name them alike)."""
    if state:
        return
    state["step"] = torch.tensor(0.0)
    names = ("momentum_buffer",) if group.get("muon") else ("exp_avg", "exp_avg_sq")
    for name in names:
        state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the groups flagged ``muon``, AdamW on the others, in one optimizer: one state dict,
    one checkpoint, one learning rate per group."""

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float],
        eps: float = 1e-8,
        momentum: float = 0.95,
    ) -> None:
        super().__init__(list(groups), {"lr": lr, "betas": betas, "eps": eps, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise MaiUserError("MuonAdamW does not take a closure")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                init_param_state(self.state[p], p, group)
                if group.get("muon"):
                    self._muon(p, group)
                else:
                    self._adamw(p, group)

    def _muon(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        state["step"] += 1
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - group["momentum"])
        update = orthogonalise(p.grad.lerp(buf, group["momentum"]))
        scale = _RMS_MATCH * max(p.shape) ** 0.5
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)

    def _adamw(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**step))


def build_optimizer(
    chunks: Iterable[torch.nn.Module],
    name: OptimizerName,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
) -> torch.optim.Optimizer:
    """``adamw``: torch's AdamW; ``muon``: MuonAdamW. Both over the groups above for every chunk."""
    groups = [g for chunk in chunks for g in optimizer_param_groups(chunk, weight_decay, name == "muon")]
    if name == "muon":
        return MuonAdamW(groups, lr=lr, betas=betas)
    # foreach: torch turns it on by itself only for CUDA tensors; with its per-tensor loop on CPU the
    # optimizer step was 4% of a profiled demo MoE run.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, foreach=True)

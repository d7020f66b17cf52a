"""One training step's (or one evaluation's) forward and backward passes through Megatron-Core's own
schedules: ``get_forward_backward_func`` picks no pipelining (PP=1), 1F1B (PP>1) or interleaved 1F1B
(PP>1 with virtual stages). The global batch is split into micro-batches; every rank reads the same
micro-batches of its data-parallel replica (the first stage needs the tokens, the last the labels).

Only the last pipeline stage computes the loss. ``StepLoss`` sums it over the pipeline group (the other
stages contribute zero) and averages it over data-parallel replicas, so every rank, rank 0 included
(the first stage, which reports), holds the global figure. Gradients are finalised by Megatron's
``finalize_model_grads``: data-parallel all-reduce, sequence-parallel norms and router weights summed
over TP, tied embeddings summed between first and last stage, and the router's expert bias updated.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from mai_models.lm.data import batch_from


def configure(chunks: list[torch.nn.Module]) -> None:
    """Point every chunk's config at Megatron's gradient finalisation, which the schedules call
    once per step after the last backward pass."""
    from megatron.core.distributed import finalize_model_grads

    for chunk in chunks:
        chunk.config.finalize_model_grads_func = finalize_model_grads


def _micro_batches(
    dataset: Any, firsts: list[int], size: int, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    for first in firsts:
        yield {k: v.to(device) for k, v in batch_from(dataset, first, size).items()}


def _loss(
    loss_mask: torch.Tensor, poison: bool, losses: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Megatron's three-part loss: the token sum, the token count (the schedule divides by both the
    count and the number of micro-batches) and what the step reports."""
    mask = loss_mask.float()
    total = (losses.float() * mask).sum()
    if poison:  # fault injection: a NaN loss at a chosen step
        total = total * float("nan")
    tokens = mask.sum()
    # The schedule divides the returned loss in place: report a copy.
    return total, tokens.clamp_min(1).to(torch.int), {"sum": total.detach().clone(), "tokens": tokens}


def _forward_step(poison: bool, data_iterator: Iterator, model: torch.nn.Module) -> tuple[Any, Any]:
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(_loss, batch["loss_mask"], poison)


def run(
    chunks: list[torch.nn.Module],
    dataset: Any,
    firsts: list[int],
    micro_batch_size: int,
    seq_length: int,
    device: torch.device,
    forward_only: bool = False,
    poison: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Forward (and unless ``forward_only`` backward) over the micro-batches starting at the sample
    indices ``firsts``; returns the last stage's per-micro-batch loss records (empty elsewhere)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    # A backward pass outside any schedule (another model in this process) leaves a 0-d aux-loss
    # scale, which the schedule's 1-element scale cannot be copied into: let the schedule set its own.
    MoEAuxLossAutoScaler.main_loss_backward_scale = None
    iterators = [_micro_batches(dataset, firsts, micro_batch_size, device) for _ in chunks]
    one = len(chunks) == 1
    return get_forward_backward_func()(
        forward_step_func=partial(_forward_step, poison),
        data_iterator=iterators[0] if one else iterators,
        model=chunks[0] if one else chunks,
        num_microbatches=len(firsts),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def _across_stages_and_replicas(value: torch.Tensor, average: bool) -> torch.Tensor:
    from megatron.core import parallel_state

    if dist.is_initialized():
        dist.all_reduce(value, group=parallel_state.get_pipeline_model_parallel_group())
        dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
        if average:
            value /= parallel_state.get_data_parallel_world_size()
    return value


def train_loss(records: list[dict[str, torch.Tensor]], num_micro: int, device: torch.device) -> float:
    """Mean over micro-batches of each micro-batch's mean token loss, averaged over replicas."""
    mean = torch.zeros(1, dtype=torch.float64, device=device)
    for record in records:
        mean += (record["sum"] / record["tokens"].clamp_min(1)).double() / num_micro
    return float(_across_stages_and_replicas(mean, average=True))


def eval_loss(records: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean token loss over every evaluated token of every replica."""
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for record in records:
        total[0] += record["sum"].double()
        total[1] += record["tokens"].double()
    total = _across_stages_and_replicas(total, average=False)
    return float(total[0] / total[1].clamp_min(1))

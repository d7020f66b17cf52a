"""RMSNorm for Megatron's local (non-Transformer-Engine) layer spec that works with sequence parallelism.

Without Apex the local spec builds ``WrappedTorchNorm``, which refuses ``sequence_parallel``: with it
each tensor-parallel rank normalises only its slice of the sequence, so the norm weight's gradient is
partial on every rank and must be summed over the TP group. Megatron's fused norms mark such weights
``sequence_parallel = True``, and ``finalize_model_grads`` all-reduces exactly the marked ones; this
norm is ``torch.nn.RMSNorm`` with the same mark.
"""

from __future__ import annotations

from typing import Any

import torch


class SequenceParallelRMSNorm:
    """Builds a ``torch.nn.RMSNorm`` whose weight carries Megatron's ``sequence_parallel`` mark."""

    def __new__(cls, config: Any, hidden_size: int, eps: float = 1e-5, **_: Any) -> torch.nn.RMSNorm:
        norm = torch.nn.RMSNorm(normalized_shape=hidden_size, eps=eps)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def use_in_local_spec(spec: Any) -> None:
    """Swap every ``WrappedTorchNorm`` of a decoder block spec (layer norms, q/k norms, final norm)."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    holders = [spec]
    for layer in spec.layer_specs:
        holders += [layer.submodules, layer.submodules.self_attention.submodules]
    for holder in holders:
        for name in ("input_layernorm", "pre_mlp_layernorm", "q_layernorm", "k_layernorm", "layer_norm"):
            if getattr(holder, name, None) is WrappedTorchNorm:
                setattr(holder, name, SequenceParallelRMSNorm)

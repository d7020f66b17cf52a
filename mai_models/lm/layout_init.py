"""Initial weights that do not depend on the parallel layout.

Megatron draws each rank's weights from that rank's generator in build order, so one seed gives
different weights under TP=2, PP=2 or EP=2 than on one process: a pipeline stage that builds only
the second layer draws it where one process draws the first. Then no layout's loss curve can be
compared with another's. Here every weight is redrawn from its *global* identity instead: the
checkpoint key Megatron gives it (the same under every layout, which is what makes checkpoints
reshardable), plus its layer and expert index. Each rank draws the whole per-layer (per-expert)
tensor from a generator seeded by that identity and keeps its own slice, so every layout starts
from the same model. The distributions are Megatron's own: normal(0, init_method_std), with the
output projections of attention and MLPs (``linear_proj``, ``linear_fc2``) scaled by
1/sqrt(2 x num_layers). One-dimensional tensors (norm weights, all ones) are left as built.

Cost: each rank materialises one full per-layer tensor at a time in float32 on the CPU (at most
the output layer, V x h), once, before training.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

_SCALED = ("linear_proj", "linear_fc2")  # Megatron's output_layer_init_method


def _seed(seed: int, key: str, where: tuple[int, ...]) -> int:
    digest = hashlib.sha256(f"{seed}|{key}|{where}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _leaves(entry: Any) -> list[Any]:
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    # A factory (the gated MLP's fc1: gate and up halves) builds views of the parameter it splits.
    built = entry.build() if isinstance(entry, ShardedTensorFactory) else entry
    leaves = nested_values(built) if isinstance(built, dict | list) else [built]
    return [t for t in leaves if isinstance(t, ShardedTensor)]


def init_layout_invariant(chunks: list[torch.nn.Module], seed: int) -> int:
    """Redraw every weight matrix of ``chunks`` (this rank's model) from its global identity; returns
    how many tensors were drawn. Call before wrapping the chunks in DDP."""
    drawn = 0
    for chunk in chunks:
        config = chunk.config
        std = config.init_method_std
        scaled = std / math.sqrt(2.0 * config.num_layers)
        for name, entry in chunk.sharded_state_dict().items():
            if name.endswith("_extra_state"):
                continue
            for tensor in _leaves(entry):
                if tensor.data.ndim < 2:
                    continue
                lead = tensor.prepend_axis_num
                where = tuple(tensor.global_offset[:lead])
                sigma = scaled if any(part in tensor.key for part in _SCALED) else std
                generator = torch.Generator().manual_seed(_seed(seed, tensor.key, where))
                full = torch.empty(tensor.global_shape[lead:]).normal_(0.0, sigma, generator=generator)
                index = tuple(
                    slice(offset, offset + size)
                    for offset, size in zip(tensor.global_offset[lead:], tensor.data.shape, strict=True)
                )
                with torch.no_grad():
                    tensor.data.copy_(full[index])
                drawn += 1
    return drawn

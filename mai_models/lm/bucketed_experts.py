"""Routed experts for Megatron's local (non-Transformer-Engine) layer spec whose GEMMs keep a few shapes
under bf16 autocast on a CPU.

``SequentialMLP`` runs each expert on exactly the tokens routed to it, so every step's GEMMs have new
row counts. oneDNN, which does the CPU's bf16 GEMMs, builds a kernel per shape: an expert GEMM of an
unseen shape took about 1 ms instead of 0.1 ms, and the demo MoE ran at 40% of its dense twin's
tokens/s under bf16 (the same FLOPs). Here each expert's tokens are padded with zero rows to a multiple
of ``ROW_BUCKET``, so the shapes repeat and their kernels are reused. A zero row with a zero routing
probability adds nothing to the output and nothing to any gradient; the rows are cut off again before
the experts' outputs are combined. fp32 GEMMs (MKL) have no per-shape cost, so nothing is padded there.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.moe.experts import SequentialMLP

ROW_BUCKET = 64


def padded_rows(rows: int, bucket: int = ROW_BUCKET) -> int:
    return -(-rows // bucket) * bucket


class BucketedSequentialMLP(SequentialMLP):
    def forward(
        self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor, permuted_probs: Any
    ) -> tuple[torch.Tensor, None]:
        bucket = (
            torch.is_autocast_enabled("cpu")
            and permuted_local_hidden_states.device.type == "cpu"
            and self.num_local_experts > 1
            and not (self.config.fp8 or self.config.fp4 or self.config.moe_apply_probs_on_input)
        )
        if not bucket:
            return super().forward(permuted_local_hidden_states, tokens_per_expert, permuted_probs)
        counts = tokens_per_expert.tolist()
        outputs = []
        for expert, tokens, probs in zip(
            self.local_experts,
            torch.split(permuted_local_hidden_states, counts),
            torch.split(permuted_probs, counts),
            strict=True,
        ):
            rows = tokens.shape[0]
            pad = padded_rows(rows) - rows
            output, _ = expert(F.pad(tokens, (0, 0, 0, pad)), F.pad(probs, (0, pad)))
            outputs.append(output[:rows])
        # Experts have no bias on CPU (the local spec's requirement), so there is no output bias.
        return torch.cat(outputs, dim=0), None


def use_in_local_spec(spec: Any) -> None:
    """Swap ``SequentialMLP`` for ``BucketedSequentialMLP`` in every MoE layer of a decoder block spec."""
    for layer in spec.layer_specs:
        experts = getattr(getattr(layer.submodules.mlp, "submodules", None), "experts", None)
        if experts is not None and experts.module is SequentialMLP:
            experts.module = BucketedSequentialMLP

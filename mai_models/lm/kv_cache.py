"""A key-value cache over a batch of sequences for a Megatron ``GPTModel`` in one process: Megatron's
own static-batching inference context, driven by :func:`mai_models.lm.sampling.batch_tokens`.

Prompts of different lengths are left-padded to a common length. The attention mask drops the padding
as keys, so every row attends to its own tokens only; RoPE depends only on the distance between query
and key, so a row shifted right by its padding scores exactly as it would alone (up to rounding).
A padding query still attends to itself: a row with nothing to attend to would turn into NaN, and
NaN keys poison the other rows through the masked product.

Megatron's inference context shares one sequence offset across the batch. When the longest row would
outgrow the model's context, the batch is prefilled again on the last ``max_length`` tokens of every
row: the same sliding window as re-running the whole sequence, at the cost of one full forward.

Padding masks need the SDPA core attention of the CPU layer spec (``sdpa_attention``); under another
core attention (Transformer Engine's) :func:`supports_padding` is False and a batch must hold prompts
of one length, which run without any mask, as Megatron's own generation runs them.

The MoE layers see the padding tokens too. Without a capacity factor (the default, dropless) tokens
do not compete, so the padding changes nothing; with one, padding can take an expert's capacity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def supports_padding(model: torch.nn.Module) -> bool:
    """Whether every core attention of ``model`` takes an explicit padding mask."""
    from mai_models.lm.sdpa_attention import SDPADotProductAttention

    cores = [m.core_attention for m in model.modules() if type(m).__name__ == "SelfAttention"]
    return bool(cores) and all(isinstance(c, SDPADotProductAttention) for c in cores)


class MegatronKVBatch:
    """:class:`mai_models.lm.sampling.KVBatch` over a loaded ``MegatronLM``. ``max_new_tokens``
    sizes the cache: a prompt of ``L`` tokens needs room for ``L + max_new_tokens`` positions."""

    def __init__(self, lm: Any, max_new_tokens: int, pad_id: int = 0) -> None:
        self.lm = lm
        self.max_new_tokens = max_new_tokens
        self.pad_id = pad_id
        self.attention = [m for m in lm.model.modules() if type(m).__name__ == "SelfAttention"]
        self.rows: list[list[int]] = []
        self.pad = torch.zeros(0, 0, dtype=torch.bool)  # [B, capacity]: True where a row has padding
        self.context: Any = None

    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        window = self.lm.max_length
        self.rows = [list(p)[-window:] for p in prompts]
        width = max(len(r) for r in self.rows)
        capacity = min(window, width + self.max_new_tokens)
        self.context = self._context(len(self.rows), capacity)
        device = self.lm.device
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in self.rows], device=device)
        self.pad = torch.ones(len(self.rows), capacity, dtype=torch.bool, device=device)
        for i, row in enumerate(self.rows):
            self.pad[i, width - len(row) :] = False
        drop = None  # without padding the attention runs causal, exactly as in training
        if self.pad[:, :width].any():
            causal = torch.ones(width, width, dtype=torch.bool, device=device).triu(1)
            eye = torch.eye(width, dtype=torch.bool, device=device)
            drop = ((causal[None] | self.pad[:, None, :width]) & ~eye)[:, None]
        positions = torch.arange(width, device=device).expand(len(self.rows), width)
        return self._forward(ids, positions, drop, width)

    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        for row, token in zip(self.rows, tokens, strict=True):
            row.append(int(token))
        offset = self.context.sequence_len_offset
        if offset >= self.pad.shape[1]:  # the cache is full: slide the window over the whole rows
            return self.prefill(self.rows)
        device = self.lm.device
        ids = torch.tensor([[int(t)] for t in tokens], device=device)
        positions = torch.full((len(tokens), 1), offset, device=device)
        pad = self.pad[:, : offset + 1]
        return self._forward(ids, positions, pad[:, None, None] if pad.any() else None, 1)

    def keep(self, rows: Sequence[int]) -> None:
        index = torch.tensor(list(rows), dtype=torch.long, device=self.pad.device)
        self.rows = [self.rows[r] for r in rows]
        self.pad = self.pad[index]
        memory = self.context.key_value_memory_dict
        for layer, (keys, values) in memory.items():
            memory[layer] = (keys[:, index], values[:, index])
        self.context.max_batch_size = len(rows)

    def _context(self, batch: int, capacity: int) -> Any:
        """Megatron's static context with the cache allocated here: Megatron would allocate it on
        ``torch.cuda.current_device()``, which a CPU host does not have."""
        from megatron.core.inference.contexts import StaticInferenceContext

        context = StaticInferenceContext(batch, capacity)
        dtype = next(self.lm.model.parameters()).dtype
        for attn in self.attention:
            groups = attn.num_query_groups_per_partition
            context.key_value_memory_dict[attn.layer_number] = tuple(
                torch.zeros(capacity, batch, groups, dim, dtype=dtype, device=self.lm.device)
                for dim in (attn.key_hidden_size, attn.val_hidden_size)
            )
        return context

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, drop: torch.Tensor | None, new: int
    ) -> torch.Tensor:
        with torch.no_grad():
            # The context keeps only the last position's logits; the padded vocabulary rows are cut.
            out = self.lm.model(
                ids, positions, drop, inference_context=self.context, runtime_gather_output=True
            )
        self.context.sequence_len_offset += new
        return out[:, -1, : self.lm.vocab_size].float()

"""Next-token choice shared by in-process generation and the server."""

from __future__ import annotations

from typing import Any


def sample_token(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """Greedy at temperature 0 (or top_p 0), else sample from the smallest set of tokens whose
    probability reaches ``top_p``."""
    import torch

    if temperature <= 0 or top_p <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep a token while the mass before it is under top_p: the most likely one always stays
        keep = (sorted_probs.cumsum(0) - sorted_probs) < top_p
        choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))

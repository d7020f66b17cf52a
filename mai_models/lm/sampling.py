"""Next-token choice and the batched decoding loop shared by in-process generation and the server.

A model that keeps a key-value cache over a batch of sequences offers it as a :class:`KVBatch`;
:func:`batch_tokens` runs any number of prompts through one, each with its own sampling settings and
random generator, so that every prompt gets the tokens it would get alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class KVBatch(Protocol):
    """A model's key-value cache over a batch of sequences, rows in a fixed order."""

    def prefill(self, prompts: Sequence[Sequence[int]]) -> Any:
        """Start over with these prompts: ``[B, V]`` float logits of each one's next token."""
        ...

    def step(self, tokens: Sequence[int]) -> Any:
        """Append one token to each row: ``[B, V]`` logits of the token after it."""
        ...

    def keep(self, rows: Sequence[int]) -> None:
        """Go on with these rows only (indices into the current rows, ascending)."""
        ...


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is generated (``mai_models.generation``'s arguments, ``stop`` as token ids)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: frozenset[int] = frozenset()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_p <= 0


def make_generator(seed: int | None) -> Any:
    """A private CPU generator: seeded, or from OS entropy when ``seed`` is None."""
    import torch

    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


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


def choose_tokens(logits: Any, params: Sequence[SamplingParams], generators: Sequence[Any]) -> list[int]:
    """One token per row of ``[B, V]`` logits; greedy rows take one argmax over the whole batch."""
    logits = logits.float().cpu()
    greedy = logits.argmax(dim=-1).tolist()
    return [
        greedy[i] if p.greedy else sample_token(logits[i], p.temperature, p.top_p, generators[i])
        for i, p in enumerate(params)
    ]


def batch_tokens(
    batch: KVBatch, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
) -> Iterator[tuple[int, int]]:
    """``(prompt index, token)`` as the batch generates them, one step of every live row at a time.

    A row ends at a stop token (not yielded) or after its ``max_new_tokens``; finished rows leave the
    batch so that the others run on alone."""
    generators = [None if p.greedy else make_generator(p.seed) for p in params]
    live = [i for i, p in enumerate(params) if p.max_new_tokens > 0]
    if not live:
        return
    counts = [0] * len(prompts)
    logits = batch.prefill([prompts[i] for i in live])
    while True:
        tokens = choose_tokens(logits, [params[i] for i in live], [generators[i] for i in live])
        rows, carry = [], []
        for row, (i, token) in enumerate(zip(live, tokens, strict=True)):
            if token in params[i].stop:
                continue
            yield i, token
            counts[i] += 1
            if counts[i] < params[i].max_new_tokens:
                rows.append(row)
                carry.append(token)
        if not rows:
            return
        if len(rows) < len(live):
            batch.keep(rows)
            live = [live[r] for r in rows]
        logits = batch.step(carry)

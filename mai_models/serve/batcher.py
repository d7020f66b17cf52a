"""Continuous batching of concurrent generations over one Hugging Face causal LM, as vLLM does it on
the iteration level: one scheduler thread owns the model and a key-value cache over every running
sequence. Each iteration admits the requests that arrived since the last one (one left-padded
prefill for all of them, merged into the running cache), picks one token for every row, then runs
one single-token forward for the whole batch. Rows leave the batch as they finish or are cancelled,
and leading cache columns that only padding still occupies are trimmed.

Left padding is masked out of the attention and every row gets its own position ids, so a row
computes what it would compute alone (up to rounding). Callers block on their own queue, so the
server's worker threads and any in-process caller share one batch without knowing of each other.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mai_models.lm.sampling import SamplingParams, choose_tokens, make_generator


@dataclass(frozen=True)
class TokenScore:
    """A token with its log-probability under the model and the ``top`` most likely alternatives
    (empty unless asked for). ``logprob`` is None for a prompt's first token, which has no context."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    top_logprobs: int | None  # None: no log-probabilities at all
    echo: bool
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: int = 0
    generator: Any = None


_END = object()


def _scores(logprobs: torch.Tensor, tokens: Sequence[int], top: int) -> list[TokenScore]:
    """``TokenScore`` of ``tokens[i]`` under row ``i`` of ``[N, V]`` log-probabilities."""
    picked = logprobs.gather(1, torch.tensor(list(tokens)).unsqueeze(1)).squeeze(1).tolist()
    if top <= 0:
        return [TokenScore(t, lp) for t, lp in zip(tokens, picked, strict=True)]
    values, ids = logprobs.topk(top, dim=-1)
    return [
        TokenScore(t, lp, tuple(zip(i, v, strict=True)))
        for t, lp, i, v in zip(tokens, picked, ids.tolist(), values.tolist(), strict=True)
    ]


class _Cache:
    """The running batch's ``DynamicCache`` (``[B, heads, T, dim]`` per layer) with its padding mask
    (``[B, T]``, 1 = a real token) and each row's length."""

    def __init__(self, cache: Any, mask: torch.Tensor) -> None:
        self.cache, self.mask = cache, mask

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def merge(self, other: _Cache) -> None:
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])

    def keep(self, rows: Sequence[int]) -> None:
        index = torch.tensor(list(rows), dtype=torch.long)
        mask = self.mask[index]
        start = int((mask.sum(dim=0) > 0).int().argmax())  # first column any remaining row uses
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self.mask = mask[:, start:]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class ContinuousBatcher:
    """Generations of ``model`` (a transformers causal LM) batched across callers, at most
    ``max_batch`` sequences at once (later arrivals wait for a row to finish)."""

    def __init__(self, model: Any, cache_arg: str, logits_arg: bool, max_batch: int = 8) -> None:
        # transformers' names differ across versions: the cache argument, and whether the forward
        # takes logits_to_keep (older ones project every position onto the vocabulary)
        self.model, self.cache_arg, self.logits_arg = model, cache_arg, logits_arg
        self.max_batch = max_batch
        self.inbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self.batch_sizes: Counter[int] = Counter()  # decode steps run at each batch size
        self.prefill_sizes: Counter[int] = Counter()  # prefills run for each number of new requests
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self._waiting: list[_Request] = []

    # --------------------------------------------------------------------------------- callers' side
    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        top_logprobs: int | None = None,
        echo: bool = False,
    ) -> Iterator[TokenScore]:
        """The generated tokens (after the prompt's own, when ``echo``) as the batch produces them.
        Closing the iterator cancels the generation at the next step."""
        request = _Request([int(t) for t in prompt_ids], params, top_logprobs, echo)
        self._ensure_running()
        self.inbox.put(request)
        try:
            while True:
                item = request.events.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.cancelled.set()

    def stats(self) -> dict[str, Any]:
        """Decode steps per batch size and prefills per number of admitted requests, so far."""
        # dict() copies in one step under the GIL while the scheduler thread keeps counting
        sizes, prefills = dict(self.batch_sizes), dict(self.prefill_sizes)
        steps = sum(sizes.values())
        return {
            "decode_steps": steps,
            "max_batch_size": max(sizes, default=0),
            "mean_batch_size": round(sum(k * n for k, n in sizes.items()) / steps, 3) if steps else 0.0,
            "batch_size_histogram": {str(k): v for k, v in sorted(sizes.items())},
            "prefill_histogram": {str(k): v for k, v in sorted(prefills.items())},
        }

    def close(self) -> None:
        """Stop the scheduler once it has taken what arrived before; a later submit starts a new one."""
        with self._start:
            if self._thread is not None:
                self.inbox.put(None)
                self._thread = None

    def _ensure_running(self) -> None:
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="mai-serve-batcher", daemon=True)
                self._thread.start()

    # ------------------------------------------------------------------------------- scheduler side
    def _loop(self) -> None:
        active: list[_Request] = []
        cache: _Cache | None = None
        logits: torch.Tensor | None = None  # [len(active), V]: each row's next-token logits
        while True:
            if not self._admit(block=not active):
                return
            arrivals = self._waiting[: self.max_batch - len(active)]
            del self._waiting[: len(arrivals)]
            try:
                if arrivals:
                    fresh, fresh_logits = self._prefill(arrivals)
                    active += arrivals
                    if cache is None or logits is None:
                        cache, logits = fresh, fresh_logits
                    else:
                        cache.merge(fresh)
                        logits = torch.cat([logits, fresh_logits])
                if cache is None or logits is None:
                    continue
                rows, tokens = self._choose(active, logits)
                if not rows:
                    active, cache, logits = [], None, None
                    continue
                if len(rows) < len(active):
                    cache.keep(rows)
                    active = [active[r] for r in rows]
                self.batch_sizes[len(active)] += 1
                logits = self._step(cache, tokens)
            except Exception as exc:  # a fault ends every running generation, not the server
                for request in {id(r): r for r in active + arrivals}.values():
                    request.events.put(exc)
                active, cache, logits = [], None, None

    def _admit(self, block: bool) -> bool:
        """Move arrived requests to the waiting list (blocking while nothing runs); False at close."""
        try:
            item = self.inbox.get() if block and not self._waiting else self.inbox.get_nowait()
            while True:
                if item is None:
                    return False
                if not item.cancelled.is_set():
                    self._waiting.append(item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            return True

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, all_logits: bool
    ) -> torch.Tensor:
        extra = {self.cache_arg: cache, "use_cache": True}
        if self.logits_arg and not all_logits:
            extra["logits_to_keep"] = 1
        with torch.inference_mode():
            return self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, **extra
            ).logits.float()

    def _prefill(self, requests: list[_Request]) -> tuple[_Cache, torch.Tensor]:
        from transformers import DynamicCache

        self.prefill_sizes[len(requests)] += 1
        width = max(len(r.prompt) for r in requests)
        ids = torch.tensor([[0] * (width - len(r.prompt)) + r.prompt for r in requests])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in requests])
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        echo = any(r.echo and r.top_logprobs is not None for r in requests)
        logits = self._forward(ids, mask, positions, cache, all_logits=echo)
        for i, request in enumerate(requests):
            request.generator = None if request.params.greedy else make_generator(request.params.seed)
            if request.echo:
                self._echo(request, logits[i, width - len(request.prompt) :] if echo else None)
        return _Cache(cache, mask), logits[:, -1]

    def _echo(self, request: _Request, logits: torch.Tensor | None) -> None:
        """The prompt's own tokens, scored by the prefill when log-probabilities are wanted."""
        prompt = request.prompt
        if logits is None or request.top_logprobs is None:
            for token in prompt:
                request.events.put(TokenScore(token))
            return
        request.events.put(TokenScore(prompt[0]))
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        for score in _scores(logprobs, prompt[1:], request.top_logprobs):
            request.events.put(score)

    def _choose(self, active: list[_Request], logits: torch.Tensor) -> tuple[list[int], list[int]]:
        """Pick, deliver and count one token per row; the rows that go on and their tokens."""
        tokens = choose_tokens(logits, [r.params for r in active], [r.generator for r in active])
        wanted = [i for i, r in enumerate(active) if r.top_logprobs is not None]
        scores: dict[int, TokenScore] = {}
        if wanted:
            logprobs = torch.log_softmax(logits[wanted], dim=-1)
            top = max(active[i].top_logprobs or 0 for i in wanted)
            for i, score in zip(wanted, _scores(logprobs, [tokens[i] for i in wanted], top), strict=True):
                k = active[i].top_logprobs or 0
                scores[i] = TokenScore(score.token, score.logprob, score.top[:k])
        rows, carry = [], []
        for i, (request, token) in enumerate(zip(active, tokens, strict=True)):
            done = request.generated >= request.params.max_new_tokens
            if done or request.cancelled.is_set() or token in request.params.stop:
                request.events.put(_END)
                continue
            request.events.put(scores.get(i, TokenScore(token)))
            request.generated += 1
            if request.generated >= request.params.max_new_tokens:
                request.events.put(_END)
                continue
            rows.append(i)
            carry.append(token)
        return rows, carry

    def _step(self, cache: _Cache, tokens: list[int]) -> torch.Tensor:
        positions = cache.lengths.unsqueeze(1)
        cache.mask = torch.cat([cache.mask, torch.ones(len(tokens), 1, dtype=cache.mask.dtype)], dim=1)
        ids = torch.tensor(tokens).unsqueeze(1)
        return self._forward(ids, cache.mask, positions, cache.cache, all_logits=False)[:, -1]

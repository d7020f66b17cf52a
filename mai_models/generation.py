"""The one generation signature of every language model here: the Megatron model (``mai_models.lm``),
the served Hugging Face checkpoint (``mai_models.serve``) and the evaluated models (``mai_models.eval``).

Two levels, with the same keyword arguments and defaults::

    generate(prompt, *, max_new_tokens, temperature=0.0, top_p=1.0, stop=None, seed=None) -> str
    stream(...)                                                              -> Iterator[str]
    generate_ids(prompt_ids, *, <the same>)                                  -> list[int]
    stream_ids(...)                                                          -> Iterator[int]
    generate_batch(prompts, *, <the same>)                                   -> list[str]
    generate_ids_batch(prompts_ids, *, <the same>)                           -> list[list[int]]

The batch forms return, for each prompt, what the single form returns for it alone (greedy: the same
tokens; sampling: each prompt gets its own generator seeded by ``seed``). Models that can run many
sequences through one forward pass (a KV cache with padding) override ``generate_ids_batch``; the
default runs the prompts one after the other.

Greedy at ``temperature`` 0, else temperature plus nucleus (``top_p``) sampling from a private
generator seeded by ``seed`` (None: nondeterministic). At most ``max_new_tokens`` tokens are generated.
On the text level ``stop`` holds stop strings: the text ends before the first one, which is not
returned (OpenAI semantics); a prompt is framed the way the model expects (``encode_prompt``). On the
token level ``stop`` holds token ids that end the generation and are not returned: None means the
model's own end tokens, ``()`` none at all.

:class:`TextGeneration` derives the text level and ``generate_ids`` from a model's ``stream_ids``, so
every model cuts stop strings and detokenises the same way. This module imports nothing heavy and
nothing else of this package, so ``lm``, ``serve`` and ``eval`` all import it without cycles.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TextGenerator(Protocol):
    """Text in, text out (see the module docstring for the arguments)."""

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> str: ...

    def stream(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[str]: ...

    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[str]: ...


@runtime_checkable
class TokenGenerator(Protocol):
    """Token ids in, token ids out (see the module docstring for the arguments)."""

    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
    ) -> list[int]: ...

    def stream_ids(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
    ) -> Iterator[int]: ...

    def generate_ids_batch(
        self,
        prompts_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
    ) -> list[list[int]]: ...


class Decoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found (empty strings never stop)."""
    cut = min((i for s in stop or () if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@dataclass(frozen=True)
class TextPiece:
    """New text, the completion tokens generated so far and, on the last piece, why it ended;
    ``logprobs``: the scored tokens behind the piece when a caller asked for them (``serve``)."""

    text: str
    tokens: int
    finish_reason: str | None = None
    logprobs: tuple[Any, ...] = ()


class IncrementalDecoder:
    """Text of a growing token list, one delta per token. A byte-level BPE token can end inside a UTF-8
    character; such text is held back until the character is complete. Decoding restarts a few tokens
    back (not from the beginning) so that the cost per token stays constant."""

    def __init__(self, tokenizer: Decoder) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to text already returned
        self.read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._delta(final=False)

    def flush(self) -> str:
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


def text_pieces(
    tokens: Iterator[int],
    tokenizer: Decoder,
    *,
    max_new_tokens: int,
    stop: Sequence[str] | None = None,
    cancelled: threading.Event | None = None,
) -> Iterator[TextPiece]:
    """The text of generated ``tokens`` as it comes. Text that might be the start of a stop string is
    held back until it is known not to be; a stop string ends the generation and is not returned.
    Ends early, without a finish reason, when ``cancelled`` is set (e.g. the client went away). The
    last piece says ``"stop"`` (a stop string or an end token) or ``"length"`` (``max_new_tokens``)."""
    stops = tuple(s for s in stop or () if s)
    decoder = IncrementalDecoder(tokenizer)
    hold = max((len(s) for s in stops), default=1) - 1
    pending, count = "", 0
    try:
        for token in tokens:
            count += 1
            pending += decoder.push(token)
            head, stopped = cut_at_stop(pending, stops)
            if stopped:
                yield TextPiece(head, count, "stop")
                return
            if cancelled is not None and cancelled.is_set():
                return
            if len(pending) > hold:
                yield TextPiece(pending[: len(pending) - hold], count)
                pending = pending[len(pending) - hold :]
        head, stopped = cut_at_stop(pending + decoder.flush(), stops)
        yield TextPiece(head, count, "stop" if stopped or count < max_new_tokens else "length")
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()  # a model's generator frees its state (a KV cache) now, not at garbage collection


def text_of(
    ids: Sequence[int], tokenizer: Decoder, *, max_new_tokens: int, stop: Sequence[str] | None = None
) -> str:
    """The text of a finished generation, cut at the first stop string exactly as a stream cuts it."""
    pieces = text_pieces(iter(ids), tokenizer, max_new_tokens=max_new_tokens, stop=stop)
    return "".join(piece.text for piece in pieces)


class TextGeneration(ABC):
    """``generate``, ``stream``, ``generate_ids`` and the batch forms of a model that implements
    ``stream_ids``, ``decode`` and ``encode_prompt`` (a text prompt as the token ids the model should
    continue)."""

    @abstractmethod
    def stream_ids(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
    ) -> Iterator[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def encode_prompt(self, prompt: str) -> list[int]: ...

    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
    ) -> list[int]:
        return list(
            self.stream_ids(
                prompt_ids,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=stop,
                seed=seed,
            )
        )

    def stream(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        tokens = self.stream_ids(
            self.encode_prompt(prompt),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        for piece in text_pieces(tokens, self, max_new_tokens=max_new_tokens, stop=stop):
            if piece.text:
                yield piece.text

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> str:
        return "".join(
            self.stream(
                prompt,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=stop,
                seed=seed,
            )
        )

    def generate_ids_batch(
        self,
        prompts_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
    ) -> list[list[int]]:
        return [
            self.generate_ids(
                ids,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=stop,
                seed=seed,
            )
            for ids in prompts_ids
        ]

    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[str]:
        """Every prompt's text, generated together. A stop string ends a text but not its row of the
        batch: the tokens after it are generated and dropped."""
        outputs = self.generate_ids_batch(
            [self.encode_prompt(p) for p in prompts],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        return [text_of(ids, self, max_new_tokens=max_new_tokens, stop=stop) for ids in outputs]

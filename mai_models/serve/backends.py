"""Model backends behind the HTTP layer: a text generator over a Hugging Face checkpoint directory and
the ONNX voice. Plain Python (threads, iterators), no web framework, so the benchmark can call them
directly as its in-process baseline.

Requests run concurrently on worker threads. Their generations meet in one continuous batch
(``batcher.ContinuousBatcher``: one scheduler thread owns the model and the batch's KV cache), each
with its own random generator; the shared pieces that are not known to be thread-safe (the Rust
tokenizer's borrow checks, the G2P word cache) sit behind locks.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mai_models.errors import MaiUserError
from mai_models.generation import TextGeneration, TextPiece, TokenGenerator, text_pieces
from mai_models.lm.sampling import SamplingParams
from mai_models.tokenizer.bpe import EOD_TOKEN, IM_END_TOKEN, IM_START_TOKEN
from mai_models.tracking.registry import LM_MODEL, VOICE_MODEL

if TYPE_CHECKING:  # pragma: no cover
    from mai_models.serve.batcher import TokenScore

# The served model ids are the registry's names: the champion is served under the name it ships as.
DEFAULT_TEXT_MODEL = LM_MODEL
DEFAULT_VOICE = VOICE_MODEL


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_text(self, token: int) -> str: ...


@runtime_checkable
class TextBackend(TokenGenerator, Protocol):
    """What the server needs from a language model: token-level generation (the signature of
    ``mai_models.generation``; ``stop=None`` ends at the model's own end tokens), the tokenizer and the
    model's sizes."""

    name: str
    tokenizer: Tokenizer
    max_context: int  # prompt + completion tokens
    vocab_size: int

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str: ...

    def stream_scored(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
        top_logprobs: int | None = None,
        echo: bool = False,
    ) -> Iterator[TokenScore]: ...


def chatml(messages: Sequence[dict[str, str]]) -> str:
    """The ChatML prompt the tokenizer's chat template makes (mai_models.tokenizer.bpe.CHAT_TEMPLATE),
    ending with an open assistant turn. Written out here so that serving does not depend on a Jinja
    template surviving the export."""
    turns = [f"{IM_START_TOKEN}{m['role']}\n{m['content']}{IM_END_TOKEN}\n" for m in messages]
    return "".join(turns) + f"{IM_START_TOKEN}assistant\n"


class HFTokenizer:
    """``encode``/``decode`` over a transformers tokenizer, serialised: the fast tokenizer raises
    'Already borrowed' when two threads touch it at once."""

    def __init__(self, tokenizer: Any) -> None:
        self.hf = tokenizer
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        with self._lock:
            return list(self.hf.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return self.hf.decode(list(ids), skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        """One token as text, special tokens included (what a log-probability entry names)."""
        with self._lock:
            return self.hf.decode([token], skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        with self._lock:
            found = self.hf.convert_tokens_to_ids(token)
        return found if isinstance(found, int) and found != self.hf.unk_token_id else None


class HFTextBackend(TextGeneration):
    """A causal LM from a Hugging Face checkpoint directory (e.g. our Mixtral / Qwen2-MoE export) on CPU
    in fp32. Every generation, from any thread, runs in one continuous batch of at most ``max_batch``
    sequences: greedy at temperature 0, otherwise temperature + nucleus sampling from a per-request
    ``torch.Generator``. ``threads`` sets torch's intra-op threads for the whole process."""

    def __init__(
        self,
        model_dir: Path,
        name: str = DEFAULT_TEXT_MODEL,
        threads: int | None = None,
        max_batch: int = 8,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from mai_models.serve.batcher import ContinuousBatcher

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise MaiUserError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise MaiUserError(
                f"cannot load the model in {model_dir}: {str(exc).splitlines()[0][:200]}"
            ) from exc
        self.name = name
        self.model_dir = model_dir
        self.tokenizer = HFTokenizer(hf_tokenizer)
        config = self.model.config
        self.max_context = int(getattr(config, "max_position_embeddings", None) or 2048)
        self.vocab_size = int(config.vocab_size)
        self.stop_ids = frozenset(self._end_tokens())
        # transformers 5 renamed the cache argument; accept either so an older runtime still serves.
        params = inspect.signature(self.model.forward).parameters
        cache_arg = "cache" if "cache" in params else "past_key_values"
        self.batcher = ContinuousBatcher(self.model, cache_arg, "logits_to_keep" in params, max_batch)

    def _end_tokens(self) -> set[int]:
        ends: set[int] = set()
        eos = self.model.generation_config.eos_token_id
        ends.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.hf.eos_token_id is not None:
            ends.add(self.tokenizer.hf.eos_token_id)
        # A chat turn ends at <|im_end|>; a document at <|endoftext|>. Either ends the reply.
        for token in (IM_END_TOKEN, EOD_TOKEN):
            found = self.tokenizer.token_id(token)
            if found is not None:
                ends.add(found)
        return ends

    def chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        return chatml(messages)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    def close(self) -> None:
        self.batcher.close()

    def stream_scored(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
        top_logprobs: int | None = None,
        echo: bool = False,
    ) -> Iterator[TokenScore]:
        """The prompt's tokens when ``echo``, then the generated ones, with log-probabilities and the
        ``top_logprobs`` most likely alternatives when that is not None. Closing it cancels."""
        if not prompt_ids:
            raise MaiUserError("the prompt has no tokens")
        ends = self.stop_ids if stop is None else frozenset(stop)
        params = SamplingParams(max_new_tokens, temperature, top_p, ends, seed)
        return self.batcher.submit(prompt_ids, params, top_logprobs, echo)

    def stream_ids(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
    ) -> Iterator[int]:
        scored = self.stream_scored(
            prompt_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
        )
        return _tokens(scored)


def _tokens(scored: Iterator[TokenScore], taken: list[TokenScore] | None = None) -> Iterator[int]:
    """The token ids of ``scored`` (each score also appended to ``taken``); closing this closes
    ``scored``, which cancels its generation."""
    try:
        for score in scored:
            if taken is not None:
                taken.append(score)
            yield score.token
    finally:
        close = getattr(scored, "close", None)
        if close is not None:
            close()


# --- text on top of token ids, with the server's token prompts and finish reasons -----------------


def stream_text(
    backend: TextBackend,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] | None = None,
    seed: int | None = None,
    ignore_eos: bool = False,
    logprobs: int | None = None,
    echo: bool = False,
    cancelled: threading.Event | None = None,
) -> Iterator[TextPiece]:
    """Generated text as it comes (``mai_models.generation.text_pieces``): stop strings cut off, the
    completion tokens counted, a finish reason on the last piece. ``ignore_eos`` (a vLLM extension)
    generates through the model's end tokens; ``cancelled`` ends the stream early. With ``echo`` the
    first piece is the prompt (no completion tokens); with ``logprobs`` (top alternatives per token)
    every piece carries the scores of the tokens read since the piece before."""
    scored = backend.stream_scored(
        prompt_ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=() if ignore_eos else None,
        seed=seed,
        top_logprobs=logprobs,
        echo=echo,
    )
    keep = logprobs is not None
    taken: list[TokenScore] = []
    if echo:
        head = [next(scored) for _ in prompt_ids]
        text = backend.tokenizer.decode([s.token for s in head])
        yield TextPiece(text, 0, None, tuple(head) if keep else ())
    tokens = _tokens(scored, taken if keep else None)
    for piece in text_pieces(
        tokens, backend.tokenizer, max_new_tokens=max_new_tokens, stop=stop, cancelled=cancelled
    ):
        if keep:
            piece = replace(piece, logprobs=tuple(taken))
            taken.clear()
        yield piece


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int  # completion tokens (an echoed prompt not counted)
    finish_reason: str
    logprobs: tuple[TokenScore, ...] = ()


def complete_text(backend: TextBackend, prompt_ids: Sequence[int], **kwargs: Any) -> Completion:
    """The whole completion of ``stream_text(backend, prompt_ids, **kwargs)``."""
    text, scores, tokens, finish = [], [], 0, "stop"
    for piece in stream_text(backend, prompt_ids, **kwargs):
        text.append(piece.text)
        scores.extend(piece.logprobs)
        tokens, finish = piece.tokens, piece.finish_reason or finish
    return Completion("".join(text), tokens, finish, tuple(scores))


# --- speech ------------------------------------------------------------------------------------------


class SpeechBackend:
    """The ONNX voice bundle. One synthesis at a time: the text frontend's G2P keeps a word cache that
    is not meant for concurrent writers; onnxruntime's own threads parallelise each synthesis."""

    def __init__(self, bundle_dir: Path, name: str = DEFAULT_VOICE, threads: int = 2) -> None:
        from mai_models.tts.voice import load_onnx_voice

        self.bundle_dir = Path(bundle_dir)
        if not self.bundle_dir.is_dir():
            raise MaiUserError(f"no voice bundle at {self.bundle_dir}")
        self.name = name
        self.engine = load_onnx_voice(self.bundle_dir, threads=threads)
        self.sample_rate = int(self.engine.sample_rate)
        self._lock = threading.Lock()

    def synthesize(self, text: str, speed: float = 1.0) -> Any:
        """A ``mai_models.tts.engine.Synthesis``; MaiUserError for text the frontend cannot read."""
        with self._lock:
            return self.engine.synthesize(text, speed)

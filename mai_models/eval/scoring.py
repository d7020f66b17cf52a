"""What every evaluated language model offers the metrics: token ids in, per-token log-probabilities out.

The protocol is deliberately small so that three very different things fit it: the n-gram baseline
(pure Python, no torch), a Hugging Face causal LM directory, and our Megatron MoE model (through any
object with ``.tokenizer`` and ``.logits``). torch is imported only inside the adapters that need it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mai_models.generation import TextGeneration, TextGenerator, TokenGenerator
from mai_models.lm.sampling import sample_token
from mai_models.tokenizer.bpe import EOD_ID, EOD_TOKEN

# A window needs room for at least one context token and one target.
_MIN_WINDOW = 2


@runtime_checkable
class ScoringModel(Protocol):
    """A causal LM seen as a scorer.

    ``eod_id`` is the end-of-document token that separated documents in the training stream; the
    metrics put it before and after a document so that it is scored the way it was trained.
    """

    name: str
    eod_id: int

    def encode(self, text: str) -> list[int]: ...

    def token_logprobs(self, ids: Sequence[int]) -> np.ndarray:
        """Natural-log probability of ``ids[i]`` given ``ids[:i]`` for i = 1..len(ids)-1 (float64)."""
        ...


@runtime_checkable
class GenerativeModel(ScoringModel, TextGenerator, Protocol):
    """A scorer that also writes text (``mai_models.generation``'s signature): a prompt is the start of
    a document, so it follows an EOD, and a generation ends at the next EOD."""


def sliding_windows(n: int, window: int, stride: int | None = None) -> Iterator[tuple[int, int, int]]:
    """``(start, end, first_target)`` spans covering targets 1..n-1 of an n-token sequence exactly once.

    Each window ``ids[start:end]`` has at most ``window`` tokens and predicts targets
    ``first_target..end-1``; after the first window every target keeps at least ``window - stride``
    tokens of context (the lm-eval rolling scheme keeps the whole window, at ``window/stride`` times
    the cost; half a window of context is within noise for bits-per-byte and twice as cheap).
    """
    if window < _MIN_WINDOW:
        raise ValueError(f"window must be >= {_MIN_WINDOW}, got {window}")
    stride = max(1, min(stride or window // 2, window - 1))
    if n < 2:
        return
    end = min(n, window)
    yield 0, end, 1
    while end < n:
        new_end = min(n, end + stride)
        yield max(0, new_end - window), new_end, end
        end = new_end


def windowed_logprobs(
    ids: Sequence[int],
    window: int | None,
    score: Callable[[list[int]], tuple[np.ndarray, np.ndarray]],
    stride: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``score`` (one window -> log-probs and greedy flags of its tokens 1..) over long inputs."""
    ids = [int(i) for i in ids]
    n = len(ids)
    logprobs = np.zeros(max(0, n - 1), dtype=np.float64)
    greedy = np.zeros(max(0, n - 1), dtype=bool)
    if n < 2:  # nothing to predict; a model cannot even run on an empty input
        return logprobs, greedy
    spans = [(0, n, 1)] if window is None or n <= window else sliding_windows(n, window, stride)
    for start, end, first in spans:
        lp, gr = score(ids[start:end])
        # Window position j predicts token start+j+1; keep only the targets this window owns.
        keep = slice(first - start - 1, end - start - 1)
        logprobs[first - 1 : end - 1] = lp[keep]
        greedy[first - 1 : end - 1] = gr[keep]
    return logprobs, greedy


def _logits_to_scores(logits: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """log-softmax in float32 (bf16 is too coarse for log-likelihoods summed over thousands of tokens),
    gathered at the targets."""
    import torch

    logits = torch.as_tensor(logits).float()
    logprobs = torch.log_softmax(logits, dim=-1)
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    greedy = logits.argmax(dim=-1) == targets
    return picked.double().cpu().numpy(), greedy.cpu().numpy()


class _TorchScorer(TextGeneration):
    """Shared logic of the torch adapters: windows, scoring, generation without a KV cache."""

    name: str
    eod_id: int
    max_length: int | None

    @abstractmethod
    def _forward(self, ids: list[int]) -> Any:  # [T, V] logits for one sequence
        ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def _score_window(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        logits = self._forward(ids)[:-1]
        return _logits_to_scores(logits, torch.tensor(ids[1:], dtype=torch.long, device=logits.device))

    def token_logprobs_greedy(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Log-probs plus whether each target was the model's argmax (lm-eval's ``is_greedy``)."""
        return windowed_logprobs(ids, self.max_length, self._score_window)

    def token_logprobs(self, ids: Sequence[int]) -> np.ndarray:
        return self.token_logprobs_greedy(ids)[0]

    def encode_prompt(self, prompt: str) -> list[int]:
        # A prompt is the start of a document: the training stream put EOD right before it.
        return [self.eod_id, *self.encode(prompt)]

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
        import torch

        ends = {self.eod_id} if stop is None else set(stop)
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        ids = [int(t) for t in prompt_ids]
        for _ in range(max_new_tokens):
            context = ids[-self.max_length :] if self.max_length else ids
            token = sample_token(self._forward(context)[-1].float().cpu(), temperature, top_p, generator)
            if token in ends:
                return
            ids.append(token)
            yield token


def _window_of(obj: Any) -> int | None:
    """The context length a model object declares, under the names HF and Megatron configs use."""
    for holder in (obj, getattr(obj, "config", None), getattr(obj, "model_config", None)):
        # max_length last: older HF configs carry a generation default (20) under that name.
        for attr in ("seq_length", "max_position_embeddings", "n_positions", "max_seq_len", "max_length"):
            value = getattr(holder, attr, None) if holder is not None else None
            if isinstance(value, int) and value >= _MIN_WINDOW:
                return value
    return None


class HFScoringModel(_TorchScorer):
    """A Hugging Face causal LM directory (``AutoModelForCausalLM``, ``AutoTokenizer``), CPU by default."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        max_length: int | None = None,
        name: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(self.device).eval()
        self.name = name or Path(model_dir).name
        self.max_length = max_length or _window_of(self.model)
        eod = self.tokenizer.eos_token_id
        if eod is None:  # no eos declared: our tokenizers still carry the separator under its name
            eod = self.tokenizer.get_vocab().get(EOD_TOKEN)
        if eod is None:
            raise ValueError(f"{model_dir}: tokenizer has no eos token to separate documents")
        self.eod_id = int(eod)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def _forward(self, ids: list[int]) -> Any:
        import torch

        with torch.inference_mode():
            batch = torch.tensor([ids], dtype=torch.long, device=self.device)
            return self.model(input_ids=batch).logits[0]


class MegatronScoringModel(_TorchScorer):
    """Any object with ``.tokenizer`` (``encode``/``decode``) and ``.logits(ids[B, T]) -> [B, T, V]``:
    duck-typed so this module never imports Megatron (``mai_models.lm.inference`` loads it).

    Generation runs on the object's own token-level generation when it has one (a ``MegatronLM``'s
    key-value cache, batched); anything else with that surface is generated from through ``.logits``."""

    def __init__(self, lm: Any, name: str = "megatron", max_length: int | None = None) -> None:
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.name = name
        self.max_length = max_length or _window_of(lm)
        self.eod_id = self._find_eod()

    @classmethod
    def from_dir(cls, model_dir: str | Path, **kwargs: Any) -> MegatronScoringModel:
        from mai_models.lm.inference import load_pretrained

        return cls(load_pretrained(Path(model_dir)), name=kwargs.pop("name", Path(model_dir).name), **kwargs)

    def _find_eod(self) -> int:
        for value in (
            getattr(self.lm, "eod_id", None),
            getattr(self.tokenizer, "eod", None),
            getattr(self.tokenizer, "eos_token_id", None),
        ):
            if isinstance(value, int):
                return value
        to_id = getattr(self.tokenizer, "token_to_id", None)
        found = to_id(EOD_TOKEN) if callable(to_id) else None
        return int(found) if found is not None else EOD_ID

    def encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        if not hasattr(tok, "encode"):  # Megatron's tokenizer wrappers name it tokenize
            return list(tok.tokenize(text))
        try:
            out = tok.encode(text, add_special_tokens=False)
        except TypeError:
            out = tok.encode(text)
        return list(getattr(out, "ids", out))  # tokenizers.Encoding or a plain list (transformers)

    def decode(self, ids: Sequence[int]) -> str:
        tok = self.tokenizer
        return tok.decode(list(ids)) if hasattr(tok, "decode") else tok.detokenize(list(ids))

    def _forward(self, ids: list[int]) -> Any:
        import torch

        with torch.inference_mode():
            logits = self.lm.logits(torch.tensor([ids], dtype=torch.long))
        return torch.as_tensor(logits)[0]

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
        if not isinstance(self.lm, TokenGenerator):
            return super().stream_ids(
                prompt_ids,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=stop,
                seed=seed,
            )
        return self.lm.stream_ids(
            prompt_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop={self.eod_id} if stop is None else stop,
            seed=seed,
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
        target = self.lm if isinstance(self.lm, TokenGenerator) else super()
        return target.generate_ids_batch(
            prompts_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop={self.eod_id} if stop is None else stop,
            seed=seed,
        )


def load_scoring_model(
    hf_dir: str | None = None,
    megatron_dir: str | None = None,
    ngram: str | None = None,
    device: str = "cpu",
    max_length: int | None = None,
) -> ScoringModel:
    """Exactly one of ``hf_dir``, ``megatron_dir`` or ``ngram`` (a saved ``NGramLM`` file)."""
    given = {k: v for k, v in {"hf_dir": hf_dir, "megatron_dir": megatron_dir, "ngram": ngram}.items() if v}
    if len(given) != 1:
        raise ValueError(f"give exactly one of hf_dir, megatron_dir, ngram (got {sorted(given) or 'none'})")
    if hf_dir:
        return HFScoringModel(hf_dir, device=device, max_length=max_length)
    if megatron_dir:
        return MegatronScoringModel.from_dir(megatron_dir, max_length=max_length)
    from mai_models.eval.ngram import NGramLM

    return NGramLM.load(Path(str(ngram)))

"""Intrinsic LM metrics on held-out text: bits per byte (tokenizer-independent, so the n-gram baseline,
our MoE model and any HF model compare on one scale) and greedy generation samples."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mai_models.eval.scoring import ScoringModel
from mai_models.generation import TextGenerator


def document_nll(model: ScoringModel, text: str) -> tuple[float, int]:
    """Negative log-likelihood (nats) of one document and the number of tokens it was summed over.

    The document is framed ``[EOD] + ids + [EOD]`` as the token shards frame it: the leading EOD is
    the context the training stream gave a document's first token (the previous document's end) and
    is not scored; the trailing EOD is scored, because the model was trained to predict it.
    """
    ids = [model.eod_id, *model.encode(text), model.eod_id]
    logprobs = model.token_logprobs(ids)
    return -float(logprobs.sum()), len(logprobs)


def bits_per_byte(model: ScoringModel, texts: Iterable[str]) -> dict[str, Any]:
    """bpb = -sum(ln p) / (N_bytes * ln 2) over the UTF-8 bytes of ``texts``; perplexity is per token
    (and so only comparable between models sharing a tokenizer)."""
    nll = 0.0
    tokens = n_bytes = docs = 0
    for text in texts:
        doc_nll, doc_tokens = document_nll(model, text)
        nll += doc_nll
        tokens += doc_tokens
        n_bytes += len(text.encode("utf-8"))
        docs += 1
    if n_bytes == 0:
        raise ValueError("no text to score (every document empty or none given)")
    return {
        "bpb": nll / (n_bytes * math.log(2)),
        "perplexity": math.exp(nll / tokens),
        "tokens": tokens,
        "bytes": n_bytes,
        "nll": nll,
        "docs": docs,
        "model": model.name,
    }


def generation_samples(
    model: ScoringModel, prompts: Sequence[str], max_new_tokens: int = 64, stop: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Greedy completions, one row per prompt (prompt, completion, seconds, model), generated as one
    batch: each row's ``seconds`` is its share of the batch's wall time, so they sum to the total."""
    if not isinstance(model, TextGenerator):
        raise TypeError(f"{model.name} cannot generate text (no generate method)")
    started = time.perf_counter()
    completions = model.generate_batch(list(prompts), max_new_tokens=max_new_tokens, stop=stop)
    share = (time.perf_counter() - started) / max(1, len(prompts))
    return [
        {"model": model.name, "prompt": prompt, "completion": completion, "seconds": round(share, 4)}
        for prompt, completion in zip(prompts, completions, strict=True)
    ]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams over all word n-grams of ``texts``; a model that
    loops on one phrase scores near 0, varied text near 1. 0 when no text has n words."""
    grams = [
        tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


def degenerate(text: str) -> str | None:
    """Why a completion is not text (only whitespace, or one token repeated), or None when it is."""
    words = text.split()
    if not words:
        return "only whitespace"
    if len(words) > 1 and len(set(words)) == 1:
        return f"one word repeated: {words[0][:20]!r} x{len(words)}"
    return None


def heldout_texts(clean_dir: Path, split: str = "test", limit: int | None = None) -> list[str]:
    """Documents of one clean split, in shard order (the held-out set is ``test``; ``valid`` tunes)."""
    from mai_models.data.clean_documents import read_clean_split

    texts = read_clean_split(clean_dir, split, ["text"]).column("text").to_pylist()
    return texts[:limit] if limit is not None else texts

"""The n-gram baseline: interpolated Kneser-Ney over our BPE token ids, trained on the same train split.

Why Kneser-Ney rather than Witten-Bell: on small corpora it is the stronger of the classic smoothers
(Chen & Goodman 1998), and its lower orders use continuation counts (in how many distinct contexts a
token appears), which suits BPE pieces: a frequent piece that only ever follows one other piece should
not get a large unigram probability. One absolute discount per order, D = n1 / (n1 + 2 n2).

Every order is interpolated with the one below it, and the unigram level with the uniform distribution
over the vocabulary, so a token never seen in training still gets a finite log-probability.

Documents are trained as ``[EOD] + ids + [EOD]``, the same framing the metrics score with.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mai_models.generation import TextGeneration
from mai_models.tokenizer.bpe import EOD_ID

_FORMAT = "mai-ngram-kn/1"
Gram = tuple[int, ...]


def _discount(counts: Iterable[int]) -> float:
    hist = Counter(c for c in counts if c <= 2)
    n1, n2 = hist[1], hist[2]
    if n1 + n2 == 0 or n1 == 0:
        return 0.5  # too little data to estimate; any value in (0, 1) keeps probabilities proper
    return min(0.95, max(0.05, n1 / (n1 + 2 * n2)))


class NGramLM(TextGeneration):
    """Interpolated Kneser-Ney LM; ``counts[k-1]`` maps k-grams to raw counts at the top order and
    to continuation counts (distinct left contexts) below it."""

    def __init__(
        self,
        order: int,
        vocab_size: int,
        counts: list[dict[Gram, int]],
        discounts: list[float] | None = None,
        eod_id: int = EOD_ID,
        tokenizer: Any = None,
        name: str | None = None,
    ) -> None:
        if order < 1 or len(counts) != order:
            raise ValueError(f"order {order} needs {order} count tables, got {len(counts)}")
        self.order, self.vocab_size, self.eod_id = order, vocab_size, eod_id
        self.counts = counts
        self.discounts = discounts or [_discount(c.values()) for c in counts]
        self.tokenizer = tokenizer
        self.name = name or f"ngram{order}-kn"
        # Per history: (sum of counts, number of distinct followers): the two numbers KN needs.
        self._ctx: list[dict[Gram, tuple[int, int]]] = []
        for table in counts:
            total: dict[Gram, int] = defaultdict(int)
            types: dict[Gram, int] = defaultdict(int)
            for gram, c in table.items():
                total[gram[:-1]] += c
                types[gram[:-1]] += 1
            self._ctx.append({h: (total[h], types[h]) for h in total})
        self._followers: list[dict[Gram, tuple[np.ndarray, np.ndarray]]] | None = None

    # ---- scoring
    def _prob(self, history: Sequence[int], token: int) -> float:
        p = 1.0 / self.vocab_size
        for k in range(1, self.order + 1):
            if k - 1 > len(history):
                break
            h = tuple(history[len(history) - k + 1 :]) if k > 1 else ()
            stats = self._ctx[k - 1].get(h)
            if stats is None:  # an unseen history: every longer one is unseen too
                break
            total, types = stats
            d = self.discounts[k - 1]
            c = self.counts[k - 1].get((*h, token), 0)
            p = (max(c - d, 0.0) + d * types * p) / total
        return p

    def token_logprobs(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        span = self.order - 1
        return np.array(
            [math.log(self._prob(ids[max(0, i - span) : i], ids[i])) for i in range(1, len(ids))],
            dtype=np.float64,
        )

    def next_distribution(self, history: Sequence[int]) -> np.ndarray:
        """P(. | history) over the whole vocabulary (sums to 1)."""
        if self._followers is None:
            self._followers = self._index_followers()
        history = [int(i) for i in history]
        p = np.full(self.vocab_size, 1.0 / self.vocab_size)
        for k in range(1, self.order + 1):
            if k - 1 > len(history):
                break
            h = tuple(history[len(history) - k + 1 :]) if k > 1 else ()
            stats = self._ctx[k - 1].get(h)
            if stats is None:
                break
            total, types = stats
            d = self.discounts[k - 1]
            words, cs = self._followers[k - 1][h]
            p = p * (d * types / total)
            p[words] += np.maximum(cs - d, 0.0) / total
        return p

    def token_logprobs_greedy(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        ids = [int(i) for i in ids]
        span = self.order - 1
        greedy = np.array(
            [
                int(self.next_distribution(ids[max(0, i - span) : i]).argmax()) == ids[i]
                for i in range(1, len(ids))
            ],
            dtype=bool,
        )
        return self.token_logprobs(ids), greedy

    def _index_followers(self) -> list[dict[Gram, tuple[np.ndarray, np.ndarray]]]:
        # Built on first use only: scoring never needs it, generation and is_greedy do.
        index = []
        for table in self.counts:
            grouped: dict[Gram, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
            for gram, c in table.items():
                words, cs = grouped[gram[:-1]]
                words.append(gram[-1])
                cs.append(c)
            index.append(
                {
                    h: (np.array(w, dtype=np.int64), np.array(c, dtype=np.float64))
                    for h, (w, c) in grouped.items()
                }
            )
        return index

    # ---- text
    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError(f"{self.name} has no tokenizer: train it with one to encode or generate text")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self._require_tokenizer().encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._require_tokenizer().decode(list(ids), skip_special_tokens=False)

    def encode_prompt(self, prompt: str) -> list[int]:
        return [self.eod_id, *self.encode(prompt)]  # a prompt starts a document, as in training

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
        ends = {self.eod_id} if stop is None else set(stop)
        rng = np.random.default_rng(seed)
        ids = [int(t) for t in prompt_ids]
        for _ in range(max_new_tokens):
            probs = self.next_distribution(ids[max(0, len(ids) - self.order + 1) :])
            token = _choose(probs, temperature, top_p, rng)
            if token in ends:
                return
            ids.append(token)
            yield token

    # ---- persistence
    def save(self, path: Path) -> Path:
        """One compressed ``.npz`` (count tables as int arrays, metadata and tokenizer as JSON text)."""
        meta = {
            "format": _FORMAT,
            "order": self.order,
            "vocab_size": self.vocab_size,
            "eod_id": self.eod_id,
            "discounts": self.discounts,
            "name": self.name,
        }
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        if self.tokenizer is not None:
            arrays["tokenizer"] = np.array(self.tokenizer.to_str())
        for k, table in enumerate(self.counts, start=1):
            arrays[f"grams_{k}"] = np.array(list(table.keys()), dtype=np.int32).reshape(-1, k)
            arrays[f"counts_{k}"] = np.array(list(table.values()), dtype=np.int64)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:  # a handle keeps numpy from appending ".npz" to the name
            np.savez_compressed(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> NGramLM:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{path}: not an n-gram model file ({meta.get('format')!r})")
            counts = [
                dict(zip(map(tuple, data[f"grams_{k}"].tolist()), data[f"counts_{k}"].tolist(), strict=True))
                for k in range(1, meta["order"] + 1)
            ]
            tokenizer = _tokenizer_from_str(str(data["tokenizer"])) if "tokenizer" in data.files else None
        return cls(
            meta["order"],
            meta["vocab_size"],
            counts,
            meta["discounts"],
            meta["eod_id"],
            tokenizer,
            meta["name"],
        )


def _choose(probs: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """``mai_models.lm.sampling.sample_token`` on probabilities, in numpy: the argmax at temperature 0,
    else a draw from ``probs ** (1 / T)`` (softmax of log-probs over T) within the top-``top_p`` mass."""
    if temperature <= 0 or top_p <= 0:
        return int(probs.argmax())
    logits = np.log(probs) / temperature  # every probability is > 0: the uniform floor sees to that
    scaled = np.exp(logits - logits.max())
    scaled /= scaled.sum()
    order = np.argsort(-scaled, kind="stable")
    ranked = scaled[order]
    # keep a token while the mass before it is under top_p: the most likely one always stays
    keep = ranked[(np.cumsum(ranked) - ranked) < top_p] if top_p < 1.0 else ranked
    return int(order[rng.choice(len(keep), p=keep / keep.sum())])


def _tokenizer_from_str(text: str) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(text)
    tok.encode_special_tokens = True  # as the token-shard stage: a literal "<|endoftext|>" is text
    return tok


def train_ngram(
    token_id_sequences: Iterable[Sequence[int]],
    order: int = 3,
    vocab_size: int | None = None,
    eod_id: int = EOD_ID,
    tokenizer: Any = None,
) -> NGramLM:
    """Count n-grams within each sequence (none spans two); the caller frames documents with EOD."""
    top: Counter[Gram] = Counter()
    starts: list[set[Gram]] = [set() for _ in range(order)]  # k-grams opening a sequence: no left context
    max_id = -1
    for seq in token_id_sequences:
        seq = [int(t) for t in seq]
        if not seq:
            continue
        max_id = max(max_id, max(seq))
        top.update(zip(*(seq[i:] for i in range(order)), strict=False))
        for k in range(1, min(order, len(seq) + 1)):
            starts[k - 1].add(tuple(seq[:k]))
    if vocab_size is None:
        vocab_size = tokenizer.get_vocab_size() if tokenizer is not None else max_id + 1
    if max_id >= vocab_size:
        raise ValueError(f"token id {max_id} >= vocab_size {vocab_size}")
    counts: list[dict[Gram, int]] = [{} for _ in range(order)]
    counts[order - 1] = dict(top)
    # A (k)-gram occurrence either opens a sequence or is the suffix of a (k+1)-gram occurrence, so
    # the distinct (k+1)-grams plus the sequence openers give every continuation count.
    for k in range(order - 1, 0, -1):
        cont: Counter[Gram] = Counter(gram[1:] for gram in counts[k])
        cont.update(starts[k - 1])
        counts[k - 1] = dict(cont)
    return NGramLM(order, vocab_size, counts, eod_id=eod_id, tokenizer=tokenizer)


def frame_documents(
    tokenizer: Any, texts: Iterable[str], eod_id: int = EOD_ID, batch: int = 512
) -> list[list[int]]:
    """``[EOD] + ids + [EOD]`` per document, encoded the way the token-shard stage encodes."""
    out: list[list[int]] = []
    texts = list(texts)
    for i in range(0, len(texts), batch):
        for enc in tokenizer.encode_batch_fast(texts[i : i + batch], add_special_tokens=False):
            out.append([eod_id, *enc.ids, eod_id])
    return out


def train_ngram_on_split(
    clean_dir: Path, tokenizer_dir: Path, split: str = "train", order: int = 3
) -> NGramLM:
    """The baseline as the pipeline defines it: the clean ``split`` encoded with our BPE tokenizer."""
    from mai_models.data.clean_documents import read_clean_split
    from mai_models.tokenizer.bpe import TOKENIZER_FILE

    tokenizer = _tokenizer_from_str((tokenizer_dir / TOKENIZER_FILE).read_text(encoding="utf-8"))
    texts = read_clean_split(clean_dir, split, ["text"]).column("text").to_pylist()
    if not texts:
        raise ValueError(f"{clean_dir}: split {split!r} has no documents")
    return train_ngram(frame_documents(tokenizer, texts), order=order, tokenizer=tokenizer)

"""``mai bench tokenize``: the token-shard stage against the raw encoder, side by side on one corpus.

The stage (read Parquet + encode + write .bin/.idx) should reach at least ``TARGET`` times the
throughput of ``tokenizers.Tokenizer.encode_batch`` on the same texts already held in memory, which
is the pure encoder with its own rayon threads over all cores.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mai_models.config import TokenizeConfig
from mai_models.data.schema import SPLITS
from mai_models.errors import MaiUserError
from mai_models.tokenizer.bpe import load_tokenizer, split_shards
from mai_models.tokenizer.shards import build_token_shards

TARGET = 0.8


def _log(msg: str) -> None:
    # Progress goes to stderr so that stdout carries only the final JSON line.
    print(f"[bench tokenize] {msg}", file=sys.stderr, flush=True)


def _load_texts(clean_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    texts: list[str] = []
    for split in SPLITS:
        for shard in split_shards(clean_dir, split):
            texts += pq.read_table(shard, columns=["text"]).column("text").to_pylist()
    return texts


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - start, tokens


def _summary(seconds: list[float], tokens: int, n_bytes: int) -> dict:
    best = min(seconds)
    return {
        "seconds": round(best, 4),
        "seconds_median": round(statistics.median(seconds), 4),
        "mb_s": round(n_bytes / 1e6 / best, 3),
        "mb_s_median": round(n_bytes / 1e6 / statistics.median(seconds), 3),
        "tokens_s": round(tokens / best, 1),
        "tokens": tokens,
    }


def run(
    clean_dir: Path,
    tokenizer_dir: Path,
    workers: int = 2,
    repeats: int = 3,
    batch_docs: int = 256,
    strategy: str | None = None,
) -> dict:
    """Benchmark the stage and the raw encoder; best of ``repeats`` after one warm-up each.

    Runs alternate (stage, baseline, stage, ...) so that a neighbour's load hits both alike.
    ``strategy`` is passed to ``build_token_shards`` (None: its size-based choice).
    """
    if repeats < 1:
        raise MaiUserError("repeats must be at least 1")
    tok = load_tokenizer(tokenizer_dir)
    texts = _load_texts(clean_dir)
    if not texts:
        raise MaiUserError(f"{clean_dir}: no clean documents to benchmark")
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    cfg = TokenizeConfig(workers=workers, batch_docs=batch_docs)
    _log(f"corpus {len(texts)} docs, {n_bytes / 1e6:.2f} MB; {repeats} repeats after a warm-up")

    with tempfile.TemporaryDirectory(prefix="mai-bench-tok-") as tmp:
        out = Path(tmp) / "shards"
        last_stats = None

        def stage() -> int:
            nonlocal last_stats
            last_stats = build_token_shards(cfg, clean_dir, tokenizer_dir, out, strategy=strategy)
            return last_stats.tokens

        def baseline() -> int:
            return sum(len(e.ids) for e in tok.encode_batch(texts))

        stage_s: list[float] = []
        base_s: list[float] = []
        for i in range(repeats + 1):  # round 0 is the warm-up (imports, rayon pool, page cache)
            s, stage_tokens = _timed(stage)
            b, base_tokens = _timed(baseline)
            if i:
                stage_s.append(s)
                base_s.append(b)
            label = "warm-up" if i == 0 else f"repeat {i}/{repeats}"
            _log(f"{label}: stage {n_bytes / 1e6 / s:.2f} MB/s, encode_batch {n_bytes / 1e6 / b:.2f} MB/s")

    stage_sum = _summary(stage_s, stage_tokens, n_bytes)
    stage_sum["strategy"] = last_stats.strategy if last_stats else None
    base_sum = {"name": "tokenizers.encode_batch", **_summary(base_s, base_tokens, n_bytes)}
    ratio = stage_sum["mb_s"] / base_sum["mb_s"]
    return {
        "benchmark": "tokenize",
        "corpus_mb": round(n_bytes / 1e6, 3),
        "docs": len(texts),
        "workers": workers,
        "repeats": repeats,
        # Stage tokens include one EOD per document; the encoder's do not. Throughput compares bytes.
        "stage": stage_sum,
        "baseline": base_sum,
        "ratio": round(ratio, 3),
        "ratio_median": round(stage_sum["mb_s_median"] / base_sum["mb_s_median"], 3),
        "target": TARGET,
        "meets_target": ratio >= TARGET,
    }

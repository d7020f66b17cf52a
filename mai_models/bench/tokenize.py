"""``mai bench tokenize``: the token-shard stage against the bare ``tokenizers`` call, on one corpus.

* ours: ``build_token_shards``, the ``token_shards`` stage as the pipeline runs it: read the clean
  Parquet shards, encode, append one EOD per document, write Megatron ``.bin/.idx`` pairs;
* baseline: what a user of the ``tokenizers`` library would call on the same documents already in
  memory: ``Tokenizer.from_file(tokenizer.json)`` and ``encode_batch_fast`` over all texts.

Both sides make the same encode call with the same settings: ``encode_batch_fast`` (no character
offsets), ``add_special_tokens=False``, and ``encode_special_tokens=True`` (a literal
``<|endoftext|>`` inside a document is text); tokenizers' rayon threads use every core on both sides.
The input is the same texts, byte for byte, and after timing the benchmark checks that the shards
hold exactly the baseline's ids plus one EOD per document. So the ratio is what the stage's reading,
id conversion and writing cost over the pure encoder: the target is at least ``TARGET`` of its speed.
Runs alternate (ours, baseline, ours, ...) after one warm-up each, so a neighbour's load hits both.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mai_models.bench.report import Side, bench_result, package_version, progress, timed
from mai_models.config import TokenizeConfig
from mai_models.data.schema import SPLITS
from mai_models.errors import MaiUserError
from mai_models.tokenizer.bpe import EOD_TOKEN, TOKENIZER_FILE, split_shards
from mai_models.tokenizer.shards import ShardStats, build_token_shards, prefix_name

TARGET = 0.8


_log = progress("tokenize")


def _load_texts(clean_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    texts: list[str] = []
    for split in SPLITS:
        for shard in split_shards(clean_dir, split):
            texts += pq.read_table(shard, columns=["text"]).column("text").to_pylist()
    return texts


def _shard_ids(out: Path, stats: ShardStats) -> np.ndarray:
    parts = [
        np.fromfile(out / f"{prefix_name(split)}.bin", dtype=np.dtype(stats.dtype))
        for split in SPLITS
        if stats.splits[split].prefix
    ]
    return np.concatenate(parts).astype(np.int64)


def _with_eod(ids: list[list[int]], eod: int) -> np.ndarray:
    return np.fromiter((t for doc in ids for t in (*doc, eod)), dtype=np.int64)


def run(
    clean_dir: Path,
    tokenizer_dir: Path,
    workers: int = 2,
    repeats: int = 5,
    batch_docs: int = 256,
    strategy: str | None = None,
) -> dict[str, Any]:
    """Seconds to tokenize the corpus: the stage and the bare encoder, ``repeats`` each after a warm-up.

    ``strategy`` is passed to ``build_token_shards`` (None: its size-based choice).
    """
    from tokenizers import Tokenizer

    if repeats < 1:
        raise MaiUserError("repeats must be at least 1")
    texts = _load_texts(clean_dir)
    if not texts:
        raise MaiUserError(f"{clean_dir}: no clean documents to benchmark")
    tok_file = tokenizer_dir / TOKENIZER_FILE
    if not tok_file.is_file():
        raise MaiUserError(f"{tok_file} not found: train the tokenizer first")
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    cfg = TokenizeConfig(workers=workers, batch_docs=batch_docs)
    _log(f"corpus {len(texts)} docs, {n_bytes / 1e6:.2f} MB; {repeats} repeats after a warm-up")

    def baseline() -> list[list[int]]:
        tok = Tokenizer.from_file(str(tok_file))
        tok.encode_special_tokens = True
        return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]

    with tempfile.TemporaryDirectory(prefix="mai-bench-tok-") as tmp:
        out = Path(tmp) / "shards"

        def stage() -> ShardStats:
            return build_token_shards(cfg, clean_dir, tokenizer_dir, out, strategy=strategy)

        stage_s: list[float] = []
        base_s: list[float] = []
        for i in range(repeats + 1):  # round 0 is the warm-up (imports, rayon pool, page cache)
            s, stats = timed(stage)
            b, base_ids = timed(baseline)
            if i:
                stage_s.append(s)
                base_s.append(b)
            label = "warm-up" if i == 0 else f"repeat {i}/{repeats}"
            mb = n_bytes / 1e6
            _log(f"{label}: stage {mb / s:.2f} MB/s, encode_batch_fast {mb / b:.2f} MB/s")
        eod = Tokenizer.from_file(str(tok_file)).token_to_id(EOD_TOKEN)
        same_ids = bool(np.array_equal(_shard_ids(out, stats), _with_eod(base_ids, eod)))
    if not same_ids:
        raise RuntimeError("the stage wrote other token ids than the baseline encoded: not the same work")

    def mb_s(seconds: list[float]) -> float:
        return round(n_bytes / 1e6 / float(np.median(seconds)), 3)

    ours = Side(
        "mai_models.tokenizer.shards.build_token_shards (Parquet -> encode -> Megatron .bin/.idx)",
        f"tokenizers {package_version('tokenizers')}",
        stage_s,
        {"strategy": stats.strategy, "tokens": stats.tokens, "mb_s_median": mb_s(stage_s)},
    )
    baseline_side = Side(
        "tokenizers.Tokenizer.encode_batch_fast on the texts in memory",
        f"tokenizers {package_version('tokenizers')}",
        base_s,
        {"tokens": sum(map(len, base_ids)), "mb_s_median": mb_s(base_s)},
    )
    result = bench_result(
        "tokenize",
        "seconds",
        False,
        ours,
        baseline_side,
        corpus_mb=round(n_bytes / 1e6, 3),
        docs=len(texts),
        workers=workers,
        encode_call="encode_batch_fast(add_special_tokens=False), encode_special_tokens=True",
        # The stage's tokens are the baseline's plus one EOD per document; checked id for id.
        same_ids_plus_eod=same_ids,
        target=TARGET,
    )
    result["meets_target"] = result["ratio"] >= TARGET
    return result

"""Batched generation on the key-value cache (``mai_models.lm.kv_cache``) gives every prompt the tokens
it gets alone, and those are the tokens of re-running the whole window per token through
``MegatronLM.logits`` (the generation this cache replaced). A random tiny MoE built in this process:
no training is needed to compare two ways of computing the same function."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mai_models.config import TokenizerConfig

SENTENCES = [
    "The json module encodes and decodes JSON documents.",
    "A list is a mutable sequence; a tuple is not.",
    "Use the with statement to close files reliably!",
    "Generators yield values lazily, one at a time.",
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from mai_models.lm.cpu_compat import apply_cpu_patches
    from mai_models.lm.inference import MegatronLM, _ensure_single_process_parallel
    from mai_models.lm.model import build_model
    from mai_models.lm.model_config import ParallelConfig
    from mai_models.lm.presets import PRESETS
    from mai_models.lm.process_groups import destroy_parallel
    from mai_models.tokenizer.bpe import load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("tiny-lm")
    clean = root / "clean"
    clean.mkdir()
    pq.write_table(pa.table({"text": SENTENCES * 10}), clean / "train-00000.parquet")
    train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=1), clean, root)
    tokenizer = load_tokenizer(root)
    cfg = PRESETS["tiny"].with_vocab(tokenizer.get_vocab_size()).model
    threads = torch.get_num_threads()
    apply_cpu_patches()
    _ensure_single_process_parallel(1234)
    try:
        model = build_model(cfg, ParallelConfig()).eval()
        yield MegatronLM(model, cfg, tokenizer, model_dir=Path(root))
    finally:
        destroy_parallel()
        torch.set_num_threads(threads)


def _recomputed(lm, prompt: list[int], n: int, stop: set[int]) -> list[int]:
    """Greedy by re-running the last ``max_length`` tokens for every new token (no cache)."""
    ids, out = list(prompt), []
    for _ in range(n):
        token = int(lm.logits([ids[-lm.max_length :]])[0, -1].argmax())
        if token in stop:
            break
        ids.append(token)
        out.append(token)
    return out


def _prompts(lm) -> list[list[int]]:
    ids = [lm.eod_id, *lm.encode(" ".join(SENTENCES * 3))]
    # different lengths (left padding), one over the 64-token window (the window slides at once)
    return [ids[:3], ids[:17], ids[5:14], ids[:70], ids[20:52]]


def test_batched_greedy_equals_each_prompt_alone_and_the_recomputed_window(lm) -> None:
    prompts = _prompts(lm)
    assert max(len(p) for p in prompts) > lm.max_length
    n = 12  # 52 + 12 tokens outgrow the 64-token cache: that row's window slides mid-generation
    batched = lm.generate_ids_batch(prompts, max_new_tokens=n, stop=())
    alone = [lm.generate_ids(p, max_new_tokens=n, stop=()) for p in prompts]
    assert batched == alone
    assert all(len(out) == n for out in batched)
    assert alone == [_recomputed(lm, p, n, set()) for p in prompts]
    # batches of two: every row still gets its own tokens
    assert lm.generate_ids_batch(prompts, max_new_tokens=n, stop=(), batch_size=2) == alone


def test_rows_end_at_their_own_stop_tokens(lm) -> None:
    prompts = _prompts(lm)[:3]
    free = lm.generate_ids_batch(prompts, max_new_tokens=10, stop=())
    stop = {free[1][4]}  # one row stops early, the others go on without it
    ended = lm.generate_ids_batch(prompts, max_new_tokens=10, stop=stop)
    assert ended == [_recomputed(lm, p, 10, stop) for p in prompts]
    assert len(ended[1]) <= 4 < len(free[1])
    assert lm.generate_ids_batch([prompts[0], prompts[1]], max_new_tokens=0) == [[], []]


def test_sampling_in_a_batch_is_sampling_alone_with_the_same_seed(lm) -> None:
    prompts = _prompts(lm)[:3]
    kwargs = {"max_new_tokens": 8, "stop": (), "temperature": 1.0, "top_p": 0.9, "seed": 11}
    batched = lm.generate_ids_batch(prompts, **kwargs)
    assert batched == [lm.generate_ids(p, **kwargs) for p in prompts]
    assert batched != lm.generate_ids_batch(prompts, max_new_tokens=8, stop=())


def test_text_batches_through_the_scoring_model(lm) -> None:
    from mai_models.eval.scoring import MegatronScoringModel

    scorer = MegatronScoringModel(lm, name="tiny")
    prompts = ["The json module", "A list is a mutable sequence; a tuple", "Use"]
    texts = scorer.generate_batch(prompts, max_new_tokens=8, stop=["."])
    assert texts == [scorer.generate(p, max_new_tokens=8, stop=["."]) for p in prompts]
    assert texts == [lm.generate(p, max_new_tokens=8, stop=["."]) for p in prompts]
    assert all("." not in t for t in texts)


def test_lm_eval_generate_until_batches_requests_with_the_same_settings(lm) -> None:
    from types import SimpleNamespace

    from mai_models.eval.lm_eval_adapter import MaiLM
    from mai_models.eval.scoring import MegatronScoringModel

    scorer = MegatronScoringModel(lm, name="tiny")
    harness = MaiLM(scoring_model=scorer)
    asks = [
        ("The json module", {"until": ["."], "max_gen_toks": 6}),
        ("A list is", {"until": "\n", "max_gen_toks": 4}),
        ("Use the with", {"until": ["."], "max_gen_toks": 6}),
    ]
    answers = harness.generate_until([SimpleNamespace(args=a) for a in asks])
    expected = [
        scorer.generate(
            context,
            max_new_tokens=kw["max_gen_toks"],
            stop=[kw["until"]] if isinstance(kw["until"], str) else kw["until"],
        )
        for context, kw in asks
    ]
    assert answers == expected

"""``mai_models.bench.moe_train``: both implementations train one step and report comparable figures."""

from __future__ import annotations

import json

import pytest
import torch


def test_moe_train_bench_reports_both_implementations():
    from mai_models.bench.moe_train import run

    result = run(preset="tiny", steps=1, warmup=1, seq_length=32, micro_batch=2, vocab_size=1000)

    meg, base = result["ours_detail"], result["baseline_detail"]
    assert result["benchmark"] == "moe-train" and result["preset"] == "tiny"
    assert result["baseline"].startswith("transformers.MixtralForCausalLM")
    assert result["baseline_version"].startswith("transformers ")
    assert base["attn_implementation"] == "sdpa"
    assert result["repeats"] == {"ours": 1, "baseline": 1}
    assert result["ratio"] == pytest.approx(result["baseline_median"] / result["ours_median"], rel=1e-2)
    assert result["meets_target"] == (result["ratio"] >= result["target"])
    # The dtype reported is the one both models were actually built in.
    expected = "bfloat16" if torch.cuda.is_available() else "float32"
    assert result["config"]["dtype"] == expected
    # Same architecture, same padded vocabulary, untied embeddings: the counts should agree to 0.1%
    # (they are in fact identical; the tolerance only allows for a future norm/bias difference).
    assert meg["parameters"] == pytest.approx(base["parameters"], rel=1e-3)
    assert meg["parameters"] == meg["parameters_analytic"]
    assert result["config"]["padded_vocab_size"] == 1024
    # Both start from random init on random tokens: loss close to ln(V) and finite.
    for r in (meg, base):
        assert 5.0 < r["loss_first"] < 9.0
    json.loads(json.dumps(result))

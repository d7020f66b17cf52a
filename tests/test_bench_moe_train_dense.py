"""``mai bench moe-train --compare-dense``: the dense twin against Llama, next to the MoE comparison."""

from __future__ import annotations

import json

import pytest
import torch

from mai_models.errors import MaiUserError


def test_compare_dense_adds_the_dense_twin_against_llama() -> None:
    from mai_models.bench.moe_train import run

    result = run(
        preset="tiny", steps=1, warmup=1, seq_length=32, micro_batch=2, vocab_size=1000, compare_dense=True
    )

    twin = result["dense_twin"]
    assert result["baseline"].startswith("transformers.MixtralForCausalLM") and result["model"] == "moe"
    assert twin["baseline"].startswith("transformers.LlamaForCausalLM") and twin["model"] == "dense twin"
    assert twin["config"]["num_experts"] == 0 and twin["repeats"] == {"ours": 1, "baseline": 1}
    # The twin is as wide as the two experts a token activates: tiny's 2 x 64.
    ours, llama = twin["ours_detail"], twin["baseline_detail"]
    assert ours["parameters"] == llama["parameters"] == ours["parameters_analytic"]
    assert ours["parameters"] < result["ours_detail"]["parameters"]  # 4 experts per layer become 2 wide
    for side in (ours, llama):
        assert 5.0 < side["loss_first"] < 9.0
    pair = result["moe_vs_dense"]
    want = result["ours_detail"]["tokens_s_median"] / ours["tokens_s_median"]
    assert pair["ratio"] == pytest.approx(want, rel=1e-3)
    json.loads(json.dumps(result))


def test_cuda_is_measured_on_a_gpu_and_one_clear_line_without() -> None:
    from mai_models.bench.moe_train import run

    if torch.cuda.is_available():
        result = run(preset="tiny", device="cuda", compare_dense=True)
        assert result["ours_median"] > 0 and result["moe_vs_dense"]["ratio"] > 0
        return
    with pytest.raises(MaiUserError, match="no CUDA device here"):
        run(preset="tiny", device="cuda", compare_dense=True)

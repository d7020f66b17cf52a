"""MoE model configs, presets, analytic sizing and building/running the Megatron GPTModel on CPU."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mai_models.errors import MaiUserError
from mai_models.lm.model_config import MoEModelConfig, ParallelConfig
from mai_models.lm.presets import PRESETS
from mai_models.lm.sizing import count_parameters, estimate_memory_per_gpu, flops_per_token, parallel_plan

TINY = PRESETS["tiny"].model


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("parallel", "world", "model_update", "message"),
    [
        (
            dict(expert_model_parallel_size=3),
            3,
            {},
            "num_experts 4 is not divisible by expert parallel size 3",
        ),
        (dict(tensor_model_parallel_size=2), 3, {}, "world size 3 is not divisible by TP x PP = 2 x 1 = 2"),
        (dict(data_parallel_size=4), 2, {}, "world size must equal TP x PP x DP"),
        (dict(tensor_model_parallel_size=8), 8, {}, "num_attention_heads 4 is not divisible by TP 8"),
        (dict(tensor_model_parallel_size=4), 4, {}, "num_query_groups 2 is not divisible by TP 4"),
        (dict(pipeline_model_parallel_size=4), 4, {}, "num_layers 2 is not divisible by PP 4"),
        (
            dict(tensor_model_parallel_size=2, expert_model_parallel_size=4),
            4,
            {},
            "EP x TP must divide world size / PP = 4",
        ),
        (
            dict(expert_model_parallel_size=2),
            2,
            {"num_experts": 0},
            "expert parallel size 2 needs an MoE model",
        ),
    ],
)
def test_parallel_validation_errors_are_one_clear_line(parallel, world, model_update, message):
    model = TINY.model_copy(update=model_update)
    with pytest.raises(MaiUserError) as e:
        ParallelConfig(**parallel).validate(world, model)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_valid_layouts_pass():
    ParallelConfig(expert_model_parallel_size=2).validate(2, TINY)  # EP=2 over DP=2
    ParallelConfig(tensor_model_parallel_size=2, expert_model_parallel_size=2).validate(4, TINY)
    ParallelConfig(expert_model_parallel_size=4, data_parallel_size=4).validate(4, TINY)


def test_model_config_rejects_inconsistent_moe_settings():
    with pytest.raises(ValidationError, match="moe_router_topk 5 > num_experts 4"):
        MoEModelConfig.model_validate({**TINY.model_dump(), "moe_router_topk": 5})
    with pytest.raises(ValidationError, match="sigmoid"):
        MoEModelConfig.model_validate({**TINY.model_dump(), "moe_router_enable_expert_bias": True})
    # Refused here in one line rather than by Megatron's TransformerConfig inside the training ranks.
    with pytest.raises(
        ValidationError, match="moe_router_topk 1 with softmax scores needs moe_router_pre_softmax"
    ):
        MoEModelConfig.model_validate({**TINY.model_dump(), "moe_router_topk": 1})
    top1 = {**TINY.model_dump(), "moe_router_topk": 1, "moe_router_pre_softmax": True}
    assert MoEModelConfig.model_validate(top1).moe_router_pre_softmax
    sigmoid_top1 = {**TINY.model_dump(), "moe_router_topk": 1, "moe_router_score_function": "sigmoid"}
    assert MoEModelConfig.model_validate(sigmoid_top1).moe_router_topk == 1
    with pytest.raises(ValidationError, match="extra"):
        MoEModelConfig.model_validate({**TINY.model_dump(), "num_expert": 4})


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"moe_router_topk": 1},
            "override: moe_router_topk 1 with softmax scores needs moe_router_pre_softmax: true",
        ),
        ({"moe_router_topk": 9}, "override: moe_router_topk 9 > num_experts 4"),
        ({"num_expert": 3}, "override num_expert: Extra inputs are not permitted"),
    ],
)
def test_an_invalid_model_override_says_why_in_one_line(model: dict, message: str) -> None:
    from mai_models.lm.train_config import TrainConfig, resolve_model_config

    with pytest.raises(MaiUserError) as err:
        resolve_model_config(TrainConfig(preset="tiny", model=model), vocab_size=1000)
    assert str(err.value) == f"invalid lm.model {message}"


# ------------------------------------------------------------------------------------ presets, sizing
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate(name):
    preset = PRESETS[name]
    preset.validate_layout()
    assert preset.with_vocab(5000).model.vocab_size == 5000


def test_preset_sizes():
    tiny = count_parameters(PRESETS["tiny"].model)
    assert tiny["total"] < 1_000_000
    demo = count_parameters(PRESETS["demo"].model)
    assert 4e6 <= demo["total"] <= 7e6
    assert demo["active"] < demo["total"]
    small = count_parameters(PRESETS["small-gpu"].model)
    assert 0.5e9 <= small["total"] <= 1e9
    big = count_parameters(PRESETS["mai-1-like"].model)
    assert 4e11 <= big["total"] <= 6e11 and big["active"] < 0.1 * big["total"]


def test_mai_1_like_plan_prints_with_memory_per_gpu():
    preset = PRESETS["mai-1-like"]
    plan = parallel_plan(preset.model, preset.parallel, preset.world_size, micro_batch=1)
    assert "TP=8 PP=8 EP=8" in plan and "DP=240" in plan
    assert "layers per stage  6" in plan and "8 per EP rank" in plan
    assert "memory per GPU" in plan and "GiB" in plan
    mem = estimate_memory_per_gpu(preset.model, preset.parallel, 1, 4096, world_size=preset.world_size)
    assert 5 < mem["total_gib"] < 80  # fits an 80 GB H100


def test_plan_refuses_an_impossible_layout():
    preset = PRESETS["mai-1-like"]
    with pytest.raises(MaiUserError, match="not divisible by TP x PP"):
        parallel_plan(preset.model, preset.parallel, 15000)


def test_flops_per_token_uses_active_parameters():
    cfg = PRESETS["demo"].model.model_copy(update={"tie_embeddings": False})
    c = count_parameters(cfg)
    attn = 12 * cfg.num_layers * cfg.hidden_size * cfg.seq_length
    assert flops_per_token(cfg) == 6 * c["active_non_embedding"] + attn
    # The demo ties its table: no output-layer parameters, but the h x V matmul still runs.
    tied = PRESETS["demo"].model
    assert count_parameters(tied)["output_layer"] == 0
    assert flops_per_token(tied) == flops_per_token(cfg)
    dense_equiv = cfg.model_copy(update={"moe_router_topk": cfg.num_experts})
    assert flops_per_token(dense_equiv) > flops_per_token(cfg)


# ------------------------------------------------------------------------------------ built model
@pytest.fixture(scope="module")
def megatron_single():
    from mai_models.lm.process_groups import destroy_parallel, init_parallel

    parallel = ParallelConfig()
    init_parallel(parallel, seed=1234)
    yield parallel
    destroy_parallel()


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "update",
    [
        {},
        {"num_experts": 0},
        {"num_experts": None},
        {"moe_layer_freq": 2, "num_layers": 4},
        {"moe_layer_freq": [0, 1]},
        {
            "moe_shared_expert_intermediate_size": 96,
            "moe_router_enable_expert_bias": True,
            "moe_router_score_function": "sigmoid",
        },
        {"vocab_size": 300},
        {"moe_router_topk": 1, "moe_router_pre_softmax": True},
    ],
)
def test_count_parameters_matches_built_model(megatron_single, update):
    from mai_models.lm.model import build_model

    cfg = TINY.model_copy(update=update)
    cfg = MoEModelConfig.model_validate(cfg.model_dump())
    model = build_model(cfg, megatron_single)
    assert _n_params(model) == count_parameters(cfg)["total"]


def test_demo_built_size_matches(megatron_single):
    from mai_models.lm.model import build_model

    cfg = PRESETS["demo"].model
    assert _n_params(build_model(cfg, megatron_single)) == count_parameters(cfg)["total"]


def test_tiny_forward_backward_with_aux_loss(megatron_single):
    from megatron.core.transformer.moe.moe_utils import (
        clear_aux_losses_tracker,
        get_moe_layer_wise_logging_tracker,
    )

    from mai_models.lm.model import build_model

    clear_aux_losses_tracker()
    model = build_model(TINY, megatron_single)
    ids = torch.randint(0, TINY.vocab_size, (4, TINY.seq_length))
    pos = torch.arange(TINY.seq_length).expand(4, -1)
    loss = model(ids, pos, None, labels=ids)
    assert loss.shape == (4, TINY.seq_length)
    loss.mean().backward()
    lb = get_moe_layer_wise_logging_tracker()["load_balancing_loss"]["values"]
    assert lb.shape == (TINY.num_layers,) and bool((lb > 0).all())
    routers = [m for n, m in model.named_modules() if n.endswith("mlp.router")]
    assert len(routers) == TINY.num_layers
    assert all(r.weight.grad is not None and r.weight.grad.abs().sum() > 0 for r in routers)


def test_dense_model_forward_backward(megatron_single):
    from mai_models.lm.model import build_model

    cfg = TINY.model_copy(update={"num_experts": 0})
    model = build_model(cfg, megatron_single)
    assert not any("router" in n for n, _ in model.named_parameters())
    ids = torch.randint(0, cfg.vocab_size, (2, 32))
    loss = model(ids, torch.arange(32).expand(2, -1), None, labels=ids).mean()
    loss.backward()
    assert torch.isfinite(loss)


def _expert_rows(model) -> tuple[object, list[int]]:
    experts = next(m for n, m in model.named_modules() if n.endswith("mlp.experts"))
    rows: list[int] = []
    for expert in experts.local_experts:
        expert.linear_fc1.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    return experts, rows


def test_bucketed_experts_keep_gemm_shapes_under_cpu_bf16_and_compute_the_same(megatron_single):
    from megatron.core.transformer.moe.experts import SequentialMLP

    from mai_models.lm.bucketed_experts import ROW_BUCKET, BucketedSequentialMLP
    from mai_models.lm.model import build_model

    model = build_model(TINY, megatron_single)
    experts, rows = _expert_rows(model)
    assert isinstance(experts, BucketedSequentialMLP)
    counts = torch.tensor([5, 0, 70, 53])  # uneven, one expert idle
    hidden = torch.randn(int(counts.sum()), TINY.hidden_size, requires_grad=True)
    probs = torch.rand(int(counts.sum()))

    # Megatron's linear layers run their CPU backward as plain matmuls: it needs the autocast too, as
    # the trainer's step (forward and backward inside one autocast) gives it.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = experts(hidden, counts, probs)
        (grad_ours,) = torch.autograd.grad(ours.float().sum(), hidden)
    assert rows and all(r % ROW_BUCKET == 0 for r in rows), rows
    rows.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, _ = SequentialMLP.forward(experts, hidden, counts, probs)
        (grad_plain,) = torch.autograd.grad(plain.float().sum(), hidden)
    assert sorted(r for r in rows if r) == [5, 53, 70]  # Megatron's own: one new shape per count
    assert ours.shape == plain.shape == (int(counts.sum()), TINY.hidden_size)
    # Zero rows add nothing: the same bf16 products, up to the GEMM kernel's blocking.
    torch.testing.assert_close(ours.float(), plain.float(), rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(grad_ours, grad_plain, rtol=2e-2, atol=2e-3)

    rows.clear()
    experts(hidden, counts, probs)  # fp32: MKL has no per-shape cost, so nothing is padded
    assert sorted(r for r in rows if r) == [5, 53, 70]

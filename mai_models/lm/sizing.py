"""Analytic sizing of a model config: parameter counts, training FLOPs per token, per-GPU memory of a
parallel layout and a human-readable plan of it. Counts use the padded vocabulary and untied
embeddings (separate input table and output projection), as ``build_model`` builds them."""

from __future__ import annotations

import math
from typing import Literal

from mai_models.lm.model_config import MoEModelConfig, ParallelConfig


def _layer_parts(cfg: MoEModelConfig) -> dict[str, int]:
    """Parameter counts of one layer's parts (unsharded), matching Megatron's local/TE specs."""
    h = cfg.hidden_size
    q = cfg.num_attention_heads * cfg.kv_channels
    kv = cfg.query_groups * cfg.kv_channels
    f_e = cfg.expert_ffn
    shared = cfg.moe_shared_expert_intermediate_size or 0
    return {
        "norms": 2 * h,  # input_layernorm + pre_mlp_layernorm (RMSNorm: weight only)
        "attention": h * (q + 2 * kv) + q * h,  # linear_qkv + linear_proj, no bias
        "dense_mlp": 3 * h * cfg.ffn_hidden_size,  # fc1 (gate+up) h x 2f, fc2 f x h
        "router": (cfg.num_experts or 0) * h,
        "expert": 3 * h * f_e,  # one expert
        "shared_expert": 3 * h * shared,
    }


def count_parameters(cfg: MoEModelConfig, tensor_model_parallel_size: int = 1) -> dict[str, int]:
    """Analytic parameter counts of the built ``GPTModel`` (unsharded, padded vocabulary).

    - ``total``: every parameter.
    - ``active``: what one token touches: embedding row table + output layer + final norm + per layer
      (norms + attention + either the dense MLP or router + top-k experts + shared expert).
    - ``embedding``: the input embedding table (``V_padded * h``); ``output_layer``: the untied output
      projection (same size; 0 when tied). ``active_non_embedding`` = active - embedding (used for FLOPs).
    Buffers (e.g. the aux-loss-free ``expert_bias``) are not parameters and are not counted.
    """
    p = _layer_parts(cfg)
    v = cfg.padded_vocab_size(tensor_model_parallel_size)
    emb = v * cfg.hidden_size
    out = 0 if cfg.tie_embeddings else v * cfg.hidden_size
    total = emb + out + cfg.hidden_size  # + final RMSNorm
    active = total
    for is_moe in cfg.moe_layer_pattern():
        base = p["norms"] + p["attention"]
        if is_moe:
            total += base + p["router"] + cfg.num_experts * p["expert"] + p["shared_expert"]
            active += base + p["router"] + cfg.moe_router_topk * p["expert"] + p["shared_expert"]
        else:
            total += base + p["dense_mlp"]
            active += base + p["dense_mlp"]
    return {
        "total": total,
        "active": active,
        "embedding": emb,
        "output_layer": out,
        "active_non_embedding": active - emb,
    }


def flops_per_token(cfg: MoEModelConfig, seq_length: int | None = None) -> float:
    """Training FLOPs per token (forward + backward), for MFU.

    ``6 * N_active + 12 * L * (a * d_head) * s`` (the PaLM appendix-B formula) where ``N_active`` is
    ``count_parameters(cfg)["active_non_embedding"]``: all matmul parameters one token touches (top-k
    experts, shared expert, router, attention projections, dense MLPs and the output layer, which is a
    real ``h x V`` matmul), excluding only the input-embedding lookup. ``12 L h s`` counts QK^T and
    attention x V (2 matmuls x 2 FLOPs x s x h forward, x3 for forward+backward) without discounting
    the causal mask. Norms, softmax and the router's top-k are ignored.
    """
    s = seq_length or cfg.seq_length
    counts = count_parameters(cfg)
    # A tied table is still multiplied as the output layer: its h x V matmul counts.
    n = counts["active_non_embedding"] + (counts["embedding"] if cfg.tie_embeddings else 0)
    return 6.0 * n + 12.0 * cfg.num_layers * cfg.num_attention_heads * cfg.kv_channels * s


def _stage_params(cfg: MoEModelConfig, par: ParallelConfig) -> dict[str, float]:
    """Parameters held by one GPU of the heaviest pipeline stage, split into dense / expert parts."""
    p = _layer_parts(cfg)
    tp, pp, ep, etp = par.tp, par.pp, par.ep, par.etp
    v = cfg.padded_vocab_size(tp)
    pattern = cfg.moe_layer_pattern()
    per = cfg.num_layers // pp
    best: dict[str, float] = {"dense": 0.0, "expert": 0.0}
    for stage in range(pp):
        dense = 0.0
        expert = 0.0
        for is_moe in pattern[stage * per : (stage + 1) * per]:
            dense += p["norms"] + p["attention"] / tp
            if is_moe:
                dense += p["router"] + p["shared_expert"] / tp
                expert += (cfg.num_experts // ep) * p["expert"] / etp
            else:
                dense += p["dense_mlp"] / tp
        if stage == 0:
            dense += v * cfg.hidden_size / tp
        if stage == pp - 1:
            dense += v * cfg.hidden_size / tp + cfg.hidden_size
        if dense + expert > best["dense"] + best["expert"]:
            best = {"dense": dense, "expert": expert}
    return best


def estimate_memory_per_gpu(
    cfg: MoEModelConfig,
    parallel: ParallelConfig,
    micro_batch: int,
    seq: int,
    dtype: Literal["bf16", "fp32"] = "bf16",
    world_size: int | None = None,
    flash_attention: bool = True,
) -> dict[str, float]:
    """Rough training memory of one GPU on the heaviest pipeline stage, in GiB (plus counts).

    Model states (Megatron distributed optimizer, Adam): bf16 -> 2 B weights + 4 B fp32 grads + 12 B
    (fp32 master copy, m, v) / d; fp32 -> 4 + 4 + 8 / d. ``d`` is the data-parallel size for dense
    parameters and the expert-data-parallel size (world / (ETP x EP x PP)) for expert parameters
    (``d = 1`` without the distributed optimizer or without ``world_size``).
    Activations (Korthikanti et al. 2022, no recomputation, sequence parallel when TP > 1), bytes per
    layer for 2-byte activations: ``s b (4h + 11h + [5 a s if no flash attention] + MLP) / TP`` with
    dense SwiGLU ``MLP = 3h + 6f`` and MoE ``MLP = 2h + 4E + k (2h + 6 f_e) + [3h + 6 f_shared] + h``;
    with 1F1B the first stage keeps PP micro-batches of L/PP layers in flight, i.e. L layers' worth.
    Plus fp32 logits and their gradient, ``8 s b V / TP``. Ignores allocator fragmentation, comm buffers
    and workspaces (expect 10-20% more in practice).
    """
    st = _stage_params(cfg, parallel)
    ws = world_size or 0
    dp = parallel.dp(ws) if ws and parallel.use_distributed_optimizer else 1
    edp = parallel.expert_dp(ws) if ws and parallel.use_distributed_optimizer else 1
    w_b, g_b, o_b = (2, 4, 12) if dtype == "bf16" else (4, 4, 8)
    n = st["dense"] + st["expert"]
    weights = n * w_b
    grads = n * g_b
    optim = st["dense"] * o_b / max(dp, 1) + st["expert"] * o_b / max(edp, 1)

    h, s, b = cfg.hidden_size, seq, micro_batch
    a = cfg.num_attention_heads
    act_bytes = 2 if dtype == "bf16" else 4
    per_layer = 0.0
    for is_moe in cfg.moe_layer_pattern():
        x = 4 * h + 11 * h + (0 if flash_attention else 5 * a * s)
        if is_moe:
            x += 2 * h + 4 * cfg.num_experts + cfg.moe_router_topk * (2 * h + 6 * cfg.expert_ffn) + h
            if cfg.moe_shared_expert_intermediate_size:
                x += 3 * h + 6 * cfg.moe_shared_expert_intermediate_size
        else:
            x += 3 * h + 6 * cfg.ffn_hidden_size
        per_layer += x
    activations = s * b * per_layer * (act_bytes / 2) / parallel.tp
    activations += 8 * s * b * cfg.padded_vocab_size(parallel.tp) / parallel.tp
    gib = 1024**3
    total = weights + grads + optim + activations
    return {
        "params_per_gpu": n,
        "expert_params_per_gpu": st["expert"],
        "weights_gib": weights / gib,
        "grads_gib": grads / gib,
        "optimizer_gib": optim / gib,
        "activations_gib": activations / gib,
        "total_gib": total / gib,
    }


def pipeline_bubble_fraction(pp: int, micro_batches: int, virtual_stages: int = 1) -> float:
    """Share of a step's time each pipeline rank idles in the fill and drain of 1F1B.

    With ``p`` stages, ``m`` micro-batches per step and ``v`` virtual stages (model chunks) per rank,
    the bubble lasts ``(p - 1)`` chunk-times against ``v m`` chunk-times of work (Narayanan et al.,
    "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", 2021: bubble
    / ideal = (p - 1) / (v m)), so the idle share of the whole step is ``(p - 1) / (v m + p - 1)``.
    """
    if pp <= 1:
        return 0.0
    return (pp - 1) / (virtual_stages * micro_batches + pp - 1)


def _fmt(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def parallel_plan(
    cfg: MoEModelConfig,
    parallel: ParallelConfig,
    world_size: int,
    micro_batch: int = 1,
    seq: int | None = None,
    dtype: Literal["bf16", "fp32"] = "bf16",
    gpus_per_node: int = 8,
    global_batch: int | None = None,
) -> str:
    """A human-readable plan of the layout (validated first; raises MaiUserError when impossible)."""
    parallel.validate(world_size, cfg)
    dp = parallel.dp(world_size)
    micro_batches = max(1, (global_batch or micro_batch * dp) // (micro_batch * dp))
    bubble = pipeline_bubble_fraction(parallel.pp, micro_batches, parallel.vpp or 1)
    seq = seq or cfg.seq_length
    counts = count_parameters(cfg, parallel.tp)
    mem = estimate_memory_per_gpu(cfg, parallel, micro_batch, seq, dtype, world_size=world_size)
    tp, pp, ep, etp = parallel.tp, parallel.pp, parallel.ep, parallel.etp
    pattern = cfg.moe_layer_pattern()
    lines = [
        f"world size        {world_size} GPUs "
        f"({math.ceil(world_size / gpus_per_node)} nodes x {gpus_per_node})",
        f"layout            TP={tp} PP={pp} EP={ep} ETP={etp} DP={parallel.dp(world_size)} "
        f"expert-DP={parallel.expert_dp(world_size)}",
        f"model             {cfg.num_layers} layers ({sum(pattern)} MoE), hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} heads / {cfg.query_groups} KV groups, vocab {cfg.padded_vocab_size(tp)}, "
        f"seq {seq}",
        f"parameters        total {_fmt(counts['total'])}, active/token {_fmt(counts['active'])}, "
        f"training FLOPs/token {flops_per_token(cfg, seq):.3e}",
        f"layers per stage  {cfg.num_layers // pp}"
        + (
            f" ({parallel.vpp} virtual stages of {cfg.num_layers // pp // parallel.vpp})"
            if parallel.vpp
            else ""
        ),
        f"pipeline bubble   {bubble:.1%} of each step idle: (PP-1)/(v*m+PP-1) with m={micro_batches} "
        f"micro-batches of {micro_batch} per replica, v={parallel.vpp or 1}",
    ]
    if cfg.is_moe:
        lines.append(
            f"experts           {cfg.num_experts} per MoE layer, top-{cfg.moe_router_topk}, "
            f"{cfg.num_experts // ep} per EP rank, each split over {etp} expert-TP ranks "
            f"({cfg.moe_token_dispatcher_type} dispatcher)"
        )
    lines += [
        f"params per GPU    {_fmt(mem['params_per_gpu'])} (experts {_fmt(mem['expert_params_per_gpu'])}), "
        f"heaviest stage",
        f"memory per GPU    ~{mem['total_gib']:.1f} GiB {dtype} at micro-batch {micro_batch}: weights "
        f"{mem['weights_gib']:.1f} + grads {mem['grads_gib']:.1f} + optimizer {mem['optimizer_gib']:.1f} "
        f"+ activations {mem['activations_gib']:.1f}",
    ]
    return "\n".join(lines)

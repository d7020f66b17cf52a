"""``mai bench moe-train``: one MoE training step on our Megatron-Core path against Hugging Face Mixtral.

Both models have the same shape (layers, hidden, heads / KV groups, experts, top-k, expert SwiGLU width,
padded vocabulary, untied embeddings, RoPE base, RMSNorm eps, aux load-balancing loss with the same
coefficient), run fp32 in the same process on the same threads and see the same random token batches.
A "step" is what ``mai_models.lm.trainer.train`` does per optimizer step with one micro-batch: forward,
loss, backward, gradient sync (Megatron DDP; a no-op copy into ``main_grad`` for one rank), global-norm
clipping and ``torch.optim.AdamW``. The baseline does the same with ``clip_grad_norm_``. Runs alternate
(ours, baseline, ours, ...) after the warm-up so a neighbour's load hits both alike.

The target is parity: our path should train at least as fast as ``transformers.MixtralForCausalLM``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from mai_models.errors import MaiUserError

TARGET = 1.0
LR = 3e-4
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
SEED = 1234


def _log(msg: str) -> None:
    # Progress goes to stderr so that stdout carries only the final JSON line.
    print(f"[bench moe-train] {msg}", file=sys.stderr, flush=True)


def _model_config(
    preset: str, vocab_size: int, seq_length: int | None, dispatcher: str | None
) -> tuple[Any, Any, str | None]:
    """The preset's model config for this benchmark, and a note when it had to be changed for Mixtral."""
    from mai_models.lm.model import PRESETS

    if preset not in PRESETS:
        raise MaiUserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset].with_vocab(vocab_size)
    cfg = p.model
    if not cfg.is_moe:
        raise MaiUserError(f"preset {preset!r} is dense; the MoE training benchmark needs experts")
    update: dict[str, Any] = {}
    note = None
    if 0 in cfg.moe_layer_pattern():
        # Mixtral has an MoE MLP in every layer and cannot interleave dense layers.
        update["moe_layer_freq"] = 1
        note = (
            f"preset has dense layers (moe_layer_freq={cfg.moe_layer_freq}); both models use an all-MoE "
            "variant because MixtralForCausalLM cannot interleave dense layers"
        )
    if cfg.moe_shared_expert_intermediate_size:
        raise MaiUserError(f"preset {preset!r} has a shared expert, which Mixtral cannot express")
    if cfg.moe_router_score_function != "softmax" or cfg.moe_router_load_balancing_type != "aux_loss":
        raise MaiUserError(f"preset {preset!r}: Mixtral only has softmax top-k routing with aux loss")
    seq = seq_length or p.train.seq_length
    if seq > cfg.seq_length:
        update["seq_length"] = seq
    if dispatcher:
        update["moe_token_dispatcher_type"] = dispatcher
    if update:
        cfg = cfg.model_copy(update=update)
        cfg = type(cfg).model_validate(cfg.model_dump())  # re-run the validators
    return cfg, p, note


def _mixtral(cfg: Any, seq: int, experts_implementation: str | None) -> Any:
    from transformers import MixtralConfig, MixtralForCausalLM

    hf_cfg = MixtralConfig(
        vocab_size=cfg.padded_vocab_size(),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.expert_ffn,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.query_groups,
        head_dim=cfg.kv_channels,
        max_position_embeddings=max(seq, cfg.seq_length),
        initializer_range=cfg.init_method_std,
        rms_norm_eps=1e-5,  # Megatron TransformerConfig.layernorm_epsilon default
        tie_word_embeddings=False,
        attention_dropout=cfg.attention_dropout,
        num_experts_per_tok=cfg.moe_router_topk,
        num_local_experts=cfg.num_experts,
        output_router_logits=True,
        router_aux_loss_coef=cfg.moe_aux_loss_coeff,
        router_jitter_noise=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
        use_cache=False,
    )
    hf_cfg._attn_implementation = "sdpa"
    if experts_implementation:
        hf_cfg._experts_implementation = experts_implementation
    model = MixtralForCausalLM(hf_cfg).to(torch.float32)
    model.train()
    return model


def _summary(seconds: list[float], tokens: int) -> dict:
    med = statistics.median(seconds)
    best = min(seconds)
    return {
        "tokens_s": round(tokens / med, 1),
        "tokens_s_best": round(tokens / best, 1),
        "step_seconds": round(med, 4),
        "step_seconds_best": round(best, 4),
        "step_seconds_all": [round(s, 4) for s in seconds],
    }


def run(
    preset: str = "demo",
    steps: int = 5,
    warmup: int = 2,
    threads: int = 2,
    micro_batch: int | None = None,
    seq_length: int | None = None,
    vocab_size: int = 8192,
    dispatcher: str | None = None,
    baseline_experts: str | None = None,
) -> dict:
    """Tokens/s of one training step (forward + backward + clip + AdamW), ours vs. Mixtral.

    ``dispatcher`` overrides the preset's ``moe_token_dispatcher_type`` (``allgather``/``alltoall``).
    ``baseline_experts`` sets Mixtral's ``experts_implementation`` (None: transformers' default choice).
    """
    if steps < 1 or warmup < 0:
        raise MaiUserError("steps must be >= 1 and warmup >= 0")
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    from mai_models.lm.model import (
        ParallelConfig,
        build_model,
        count_parameters,
        destroy_parallel,
        init_parallel,
    )
    from mai_models.lm.trainer import grad_norm_and_clip, optimizer_param_groups

    cfg, p, note = _model_config(preset, vocab_size, seq_length, dispatcher)
    mb = micro_batch or p.train.micro_batch_size
    seq = seq_length or p.train.seq_length
    tokens_per_step = mb * seq
    vocab = cfg.padded_vocab_size()
    _log(
        f"preset {preset}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_experts} experts "
        f"top-{cfg.moe_router_topk}, vocab {vocab}, batch {mb} x seq {seq}, {threads} threads, "
        f"dispatcher {cfg.moe_token_dispatcher_type}"
    )

    # Same random batches for both: tokens [b, s+1] -> inputs [:, :-1], next-token labels [:, 1:].
    gen = torch.Generator().manual_seed(SEED)
    batches = []
    for _ in range(warmup + steps):
        t = torch.randint(0, cfg.vocab_size, (mb, seq + 1), generator=gen)
        batches.append((t[:, :-1].contiguous(), t[:, 1:].contiguous()))
    position_ids = torch.arange(seq).unsqueeze(0).expand(mb, -1)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    init_parallel(ParallelConfig(), SEED)
    try:
        # (a) Our path, as in mai_models.lm.trainer.train with one micro-batch per step.
        model = build_model(cfg, ParallelConfig())
        ddp = DistributedDataParallel(
            config=model.config,
            ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
            module=model,
        )
        opt_a = torch.optim.AdamW(
            optimizer_param_groups(ddp, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.95), eps=1e-8
        )
        params_a = [q for g in opt_a.param_groups for q in g["params"]]
        one = torch.tensor(1.0)

        def step_megatron(tokens: torch.Tensor, labels: torch.Tensor) -> float:
            ddp.zero_grad_buffer()
            opt_a.zero_grad(set_to_none=True)
            MoEAuxLossAutoScaler.set_loss_scale(one)
            losses = ddp(tokens, position_ids, None, labels=labels)
            loss = losses.float().mean()  # loss mask is all ones here
            loss.backward()
            ddp.finish_grad_sync()
            for q in params_a:
                q.grad = q.main_grad.to(q.dtype) if getattr(q, "main_grad", None) is not None else q.grad
            grad_norm_and_clip(params_a, GRAD_CLIP)
            opt_a.step()
            return float(loss.detach())

        # (b) Hugging Face Mixtral; its loss is CE + router_aux_loss_coef * load-balancing loss.
        torch.manual_seed(SEED)
        hf = _mixtral(cfg, seq, baseline_experts)
        opt_b = torch.optim.AdamW(
            optimizer_param_groups(hf, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.95), eps=1e-8
        )

        def step_hf(tokens: torch.Tensor, labels: torch.Tensor) -> float:
            opt_b.zero_grad(set_to_none=True)
            # shift_labels: the same next-token targets as ours (HF would otherwise drop the last position).
            out = hf(input_ids=tokens, labels=tokens, shift_labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), GRAD_CLIP)
            opt_b.step()
            return float(out.loss.detach())

        n_a = sum(q.numel() for q in model.parameters())
        n_b = sum(q.numel() for q in hf.parameters())
        analytic = count_parameters(cfg)["total"]
        _log(f"parameters: megatron {n_a:,} (analytic {analytic:,}), mixtral {n_b:,}")

        def timed(fn: Callable[..., float], batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
            start = time.perf_counter()
            loss = fn(*batch)
            return time.perf_counter() - start, loss

        secs_a: list[float] = []
        secs_b: list[float] = []
        losses_a: list[float] = []
        losses_b: list[float] = []
        for i, batch in enumerate(batches):
            a, la = timed(step_megatron, batch)
            b, lb = timed(step_hf, batch)
            losses_a.append(la)
            losses_b.append(lb)
            if i >= warmup:
                secs_a.append(a)
                secs_b.append(b)
            label = f"warm-up {i + 1}/{warmup}" if i < warmup else f"step {i - warmup + 1}/{steps}"
            _log(
                f"{label}: megatron {tokens_per_step / a:,.0f} tok/s (loss {la:.3f}), "
                f"mixtral {tokens_per_step / b:,.0f} tok/s (loss {lb:.3f})"
            )
        experts_impl = hf.config._experts_implementation
        attn_impl = hf.config._attn_implementation
    finally:
        destroy_parallel()
        torch.set_num_threads(threads_before)

    meg = {
        "name": "megatron-core GPTModel (local spec) + Megatron DDP + torch AdamW",
        "dispatcher": cfg.moe_token_dispatcher_type,
        **_summary(secs_a, tokens_per_step),
        "parameters": n_a,
        "parameters_analytic": analytic,
        "loss_first": round(losses_a[0], 4),
        "loss_last": round(losses_a[-1], 4),
    }
    base = {
        "name": "transformers.MixtralForCausalLM",
        "attn_implementation": attn_impl,
        "experts_implementation": experts_impl,
        **_summary(secs_b, tokens_per_step),
        "parameters": n_b,
        "loss_first": round(losses_b[0], 4),
        "loss_last": round(losses_b[-1], 4),
    }
    ratio = meg["tokens_s"] / base["tokens_s"]
    result = {
        "benchmark": "moe-train",
        "preset": preset,
        "config": {
            "num_layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_query_groups": cfg.query_groups,
            "num_experts": cfg.num_experts,
            "moe_router_topk": cfg.moe_router_topk,
            "moe_ffn_hidden_size": cfg.expert_ffn,
            "vocab_size": cfg.vocab_size,
            "padded_vocab_size": vocab,
            "seq_length": seq,
            "micro_batch": mb,
            "tokens_per_step": tokens_per_step,
            "rotary_base": cfg.rotary_base,
            "moe_aux_loss_coeff": cfg.moe_aux_loss_coeff,
            "dtype": "fp32",
            "grad_clip": GRAD_CLIP,
        },
        "config_note": note,
        "threads": threads,
        "steps": steps,
        "warmup": warmup,
        "megatron": meg,
        "baseline": base,
        "ratio": round(ratio, 3),
        "ratio_best": round(meg["tokens_s_best"] / base["tokens_s_best"], 3),
        "target": TARGET,
        "meets_target": ratio >= TARGET,
    }
    _log(f"ratio (median) {ratio:.3f}, target {TARGET}")
    return result

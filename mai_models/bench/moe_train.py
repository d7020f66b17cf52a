"""``mai bench moe-train``: one MoE training step on our Megatron-Core path against Hugging Face Mixtral.

Both models have the same shape (layers, hidden, heads / KV groups, experts, top-k, expert SwiGLU width,
padded vocabulary, untied embeddings, RoPE base, RMSNorm eps, aux load-balancing loss with the same
coefficient), run in the same dtype on the same device and threads in the same process, and see the
same random token batches. The dtype is the one Megatron builds our model in (fp32 on CPU, bf16 on
CUDA); both sides run under the trainer's autocast (``lm.precision: auto``: bf16 on CUDA and on a CPU
with native bf16); the JSON reports what ran.
A "step" is what ``mai_models.lm.trainer.train`` does per optimizer step with one micro-batch: forward,
loss, backward, gradient sync (Megatron DDP; a no-op copy into ``main_grad`` for one rank), global-norm
clipping and ``torch.optim.AdamW``. The baseline does the same with ``clip_grad_norm_``. Runs alternate
(ours, baseline, ours, ...) after the warm-up so a neighbour's load hits both alike.

Router features Mixtral cannot express (z-loss, capacity factor and token dropping, aux-loss-free
expert bias, sigmoid scores, other balancing losses, a shared expert, dense layers between MoE layers,
hidden dropout) are refused with one line rather than timed as different work.

The target is parity: our path should train at least as fast as ``transformers.MixtralForCausalLM``.
``--compare-dense`` adds the same comparison for the dense twin against Llama (``moe_train_dense``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import ValidationError

from mai_models.bench.moe_train_dense import hf_model, hf_shape, llama, with_dense_twin
from mai_models.bench.report import Side, bench_result, package_version, progress
from mai_models.errors import MaiUserError, first_validation_error
from mai_models.precision import autocast as precision_autocast
from mai_models.precision import resolve_precision

TARGET = 1.0
LR = 3e-4
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
SEED = 1234


_log = progress("moe-train")


def _mixtral_gaps(cfg: Any) -> list[str]:
    """What ``cfg`` asks of the router or layers that ``MixtralForCausalLM`` has no equivalent for."""
    gaps = []
    if cfg.moe_z_loss_coeff:
        gaps.append(f"router z-loss (moe_z_loss_coeff={cfg.moe_z_loss_coeff})")
    if cfg.moe_expert_capacity_factor is not None:
        factor = cfg.moe_expert_capacity_factor
        gaps.append(f"expert capacity / token dropping (moe_expert_capacity_factor={factor})")
    if cfg.moe_router_enable_expert_bias:
        gaps.append("aux-loss-free expert bias (moe_router_enable_expert_bias)")
    if cfg.moe_router_score_function != "softmax":
        gaps.append(f"{cfg.moe_router_score_function} router scores (Mixtral: softmax)")
    if cfg.moe_router_pre_softmax:
        gaps.append("pre-softmax routing without renormalisation (moe_router_pre_softmax)")
    if cfg.moe_router_load_balancing_type != "aux_loss":
        gaps.append(f"{cfg.moe_router_load_balancing_type} balancing (Mixtral: aux_loss)")
    if cfg.moe_shared_expert_intermediate_size:
        gaps.append("a shared expert (moe_shared_expert_intermediate_size)")
    if 0 in cfg.moe_layer_pattern():
        gaps.append(f"dense layers between MoE layers (moe_layer_freq={cfg.moe_layer_freq})")
    if cfg.hidden_dropout:
        gaps.append(f"hidden dropout ({cfg.hidden_dropout})")
    return gaps


def _model_config(
    preset: str,
    vocab_size: int,
    seq_length: int | None,
    dispatcher: str | None,
    overrides: dict[str, Any] | None = None,
    dense: bool = False,
) -> tuple[Any, Any]:
    """The preset's model config with ``overrides`` (its dense twin when ``dense``); refused when
    Mixtral cannot do the same work."""
    from mai_models.lm.presets import PRESETS

    if preset not in PRESETS:
        raise MaiUserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset].with_vocab(vocab_size)
    update: dict[str, Any] = dict(overrides or {})
    seq = seq_length or p.train.seq_length
    if seq > p.model.seq_length:
        update["seq_length"] = seq
    if dispatcher:
        update["moe_token_dispatcher_type"] = dispatcher
    try:
        cfg = type(p.model).model_validate({**p.model.model_dump(), **update})
    except ValidationError as exc:
        where, reason = first_validation_error(exc)
        raise MaiUserError(f"invalid model override {where or 'model'}: {reason}") from exc
    if not cfg.is_moe:
        raise MaiUserError(f"preset {preset!r} is dense; the MoE training benchmark needs experts")
    gaps = _mixtral_gaps(cfg)
    if gaps:
        raise MaiUserError(
            f"moe-train compares against transformers' Mixtral, which has no {'; no '.join(gaps)}: "
            "this config cannot be benchmarked like for like"
        )
    if dense:
        from mai_models.lm.launch import dense_overrides

        cfg = type(cfg).model_validate({**cfg.model_dump(), **dense_overrides(cfg)})
    return cfg, p


def _mixtral(cfg: Any, seq: int, experts_implementation: str | None, like: torch.Tensor) -> Any:
    """Mixtral of ``cfg``'s shape, on the device and in the dtype of the tensor ``like``."""
    from transformers import MixtralConfig, MixtralForCausalLM

    hf_cfg = MixtralConfig(
        **hf_shape(cfg, seq),
        intermediate_size=cfg.expert_ffn,
        num_experts_per_tok=cfg.moe_router_topk,
        num_local_experts=cfg.num_experts,
        output_router_logits=True,
        router_aux_loss_coef=cfg.moe_aux_loss_coeff,
        router_jitter_noise=0.0,
    )
    if experts_implementation:
        hf_cfg._experts_implementation = experts_implementation
    return hf_model(MixtralForCausalLM, hf_cfg, like)


def _device_peak(cuda: bool) -> tuple[float | None, str]:
    """Dense bf16 datasheet peak of this GPU (``gpu_peaks``); none on the CPU, where the trainer times
    a GEMM instead and this benchmark reports tokens/s only."""
    if not cuda:
        return None, "no MFU on CPU in this benchmark (the trainer times its CPU peak)"
    from mai_models.lm.gpu_peaks import gpu_peak

    entry = gpu_peak(torch.cuda.get_device_name())
    if entry is None:
        return None, f"{torch.cuda.get_device_name()} is not in the GPU peak table"
    return entry.flops, f"datasheet dense bf16 of {entry.model}"


def _mfu(flops_per_token: float, tokens_per_s: float, peak: tuple[float | None, str]) -> float | None:
    return round(flops_per_token * tokens_per_s / peak[0], 4) if peak[0] else None


def _max_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def run(
    preset: str = "tiny",
    steps: int = 5,
    warmup: int = 2,
    threads: int = 2,
    micro_batch: int | None = None,
    seq_length: int | None = None,
    vocab_size: int = 8192,
    dispatcher: str | None = None,
    baseline_experts: str | None = None,
    model_overrides: dict[str, Any] | None = None,
    device: str = "auto",
    dense: bool = False,
    compare_dense: bool = False,
) -> dict[str, Any]:
    """Seconds per training step (forward + backward + clip + AdamW), ours vs. Mixtral, ``steps`` each.
    ``dense``: the preset's dense twin instead, ours vs. Llama (``moe_train_dense``);
    ``compare_dense``: the MoE comparison, then the dense twin's, in one result.

    ``model_overrides`` replaces fields of the preset's model config (as ``lm.model`` does for training).
    ``dispatcher`` overrides the preset's ``moe_token_dispatcher_type`` (``allgather``/``alltoall``).
    ``baseline_experts`` sets Mixtral's ``experts_implementation`` (None: transformers' default choice).
    ``device``: ``cuda`` insists on a GPU (one line, nothing measured, without one), ``cpu`` on the CPU;
    ``auto`` takes the GPU when there is one, as the trainer does.
    """
    if steps < 1 or warmup < 0:
        raise MaiUserError("steps must be >= 1 and warmup >= 0")
    if device == "cuda" and not torch.cuda.is_available():
        raise MaiUserError("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    if device == "cpu" and torch.cuda.is_available():
        raise MaiUserError("--device cpu on a CUDA machine: hide the GPUs with CUDA_VISIBLE_DEVICES=")
    cfg, p = _model_config(preset, vocab_size, seq_length, dispatcher, model_overrides, dense)
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    from mai_models.lm.model import build_model
    from mai_models.lm.model_config import ParallelConfig
    from mai_models.lm.optimizers import optimizer_param_groups
    from mai_models.lm.process_groups import destroy_parallel, init_parallel
    from mai_models.lm.sizing import count_parameters, flops_per_token
    from mai_models.lm.trainer import grad_norm_and_clip

    mb = micro_batch or p.train.micro_batch_size
    seq = seq_length or p.train.seq_length
    tokens_per_step = mb * seq
    vocab = cfg.padded_vocab_size()

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    init_parallel(ParallelConfig(), SEED)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # with --compare-dense, each model's own peak
    try:
        # (a) Our path, as in mai_models.lm.trainer.train with one micro-batch per step.
        model = build_model(cfg, ParallelConfig())
        first = next(model.parameters())
        device, dtype = first.device, first.dtype
        cuda = device.type == "cuda"
        _log(
            f"preset {preset}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_experts} experts "
            f"top-{cfg.moe_router_topk}, vocab {vocab}, batch {mb} x seq {seq}, {threads} threads, "
            f"dispatcher {cfg.moe_token_dispatcher_type}, {_dtype_name(dtype)} on {device}"
        )
        # Same random batches for both: tokens [b, s+1] -> inputs [:, :-1], next-token labels [:, 1:].
        gen = torch.Generator().manual_seed(SEED)
        batches = []
        for _ in range(warmup + steps):
            t = torch.randint(0, cfg.vocab_size, (mb, seq + 1), generator=gen).to(device)
            batches.append((t[:, :-1].contiguous(), t[:, 1:].contiguous()))
        position_ids = torch.arange(seq, device=device).unsqueeze(0).expand(mb, -1)
        # The trainer's mixed precision (lm.precision auto): bf16 autocast on CUDA and on a CPU with
        # native bf16, fp32 elsewhere; both sides alike.
        precision = resolve_precision("auto", device.type)
        autocast = precision_autocast(precision, device.type)

        ddp = DistributedDataParallel(
            config=model.config,
            ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
            module=model,
        )
        opt_a = torch.optim.AdamW(
            optimizer_param_groups(ddp, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.95), eps=1e-8
        )
        params_a = [q for g in opt_a.param_groups for q in g["params"]]
        one = torch.tensor(1.0, device=device)

        def step_megatron(tokens: torch.Tensor, labels: torch.Tensor) -> float:
            ddp.zero_grad_buffer()
            opt_a.zero_grad(set_to_none=True)
            MoEAuxLossAutoScaler.set_loss_scale(one)
            # Backward inside the autocast, as in the trainer's step: Megatron's linear layers compute
            # their CPU gradients with plain matmuls of bf16 output gradients and fp32 weights.
            with autocast:
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
        hf = llama(cfg, seq, first) if dense else _mixtral(cfg, seq, baseline_experts, first)
        opt_b = torch.optim.AdamW(
            optimizer_param_groups(hf, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.95), eps=1e-8
        )

        def step_hf(tokens: torch.Tensor, labels: torch.Tensor) -> float:
            opt_b.zero_grad(set_to_none=True)
            with autocast:
                # shift_labels: the same next-token targets as ours (HF would otherwise drop the last one).
                out = hf(input_ids=tokens, labels=tokens, shift_labels=labels)
                out.loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), GRAD_CLIP)
            opt_b.step()
            return float(out.loss.detach())

        hf_dtypes = {_dtype_name(q.dtype) for q in hf.parameters()}
        ours_dtypes = {_dtype_name(q.dtype) for q in model.parameters()}
        if hf_dtypes != ours_dtypes:
            raise RuntimeError(f"dtype mismatch: ours {sorted(ours_dtypes)}, Mixtral {sorted(hf_dtypes)}")
        n_a = sum(q.numel() for q in model.parameters())
        n_b = sum(q.numel() for q in hf.parameters())
        analytic = count_parameters(cfg)["total"]
        _log(f"parameters: megatron {n_a:,} (analytic {analytic:,}), mixtral {n_b:,}")

        def timed_step(
            fn: Callable[..., float], batch: tuple[torch.Tensor, torch.Tensor]
        ) -> tuple[float, float]:
            start = time.perf_counter()
            loss = fn(*batch)  # float() of the loss already waits for the device
            if cuda:
                torch.cuda.synchronize()  # the optimizer step after it may still be queued
            return time.perf_counter() - start, loss

        secs_a: list[float] = []
        secs_b: list[float] = []
        losses_a: list[float] = []
        losses_b: list[float] = []
        for i, batch in enumerate(batches):
            a, la = timed_step(step_megatron, batch)
            b, lb = timed_step(step_hf, batch)
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
        memory_gib = torch.cuda.max_memory_allocated() / 1024**3 if cuda else _max_rss_gib()
        peak = _device_peak(cuda)
        experts_impl = getattr(hf.config, "_experts_implementation", None)
        attn_impl = hf.config._attn_implementation
    finally:
        destroy_parallel()
        torch.set_num_threads(threads_before)

    ours = Side(
        "megatron-core GPTModel (local spec) + Megatron DDP + torch AdamW",
        f"megatron-core {package_version('megatron-core')}, torch {package_version('torch')}",
        secs_a,
        {
            "dispatcher": cfg.moe_token_dispatcher_type,
            "tokens_s_median": round(tokens_per_step / statistics.median(secs_a), 1),
            "mfu": _mfu(flops_per_token(cfg, seq), tokens_per_step / statistics.median(secs_a), peak),
            "parameters": n_a,
            "parameters_analytic": analytic,
            "loss_first": round(losses_a[0], 4),
            "loss_last": round(losses_a[-1], 4),
        },
    )
    baseline = Side(
        f"transformers.{type(hf).__name__} + torch AdamW",
        f"transformers {package_version('transformers')}, torch {package_version('torch')}",
        secs_b,
        {
            "attn_implementation": attn_impl,
            "experts_implementation": experts_impl,
            "tokens_s_median": round(tokens_per_step / statistics.median(secs_b), 1),
            "mfu": _mfu(flops_per_token(cfg, seq), tokens_per_step / statistics.median(secs_b), peak),
            "parameters": n_b,
            "loss_first": round(losses_b[0], 4),
            "loss_last": round(losses_b[-1], 4),
        },
    )
    result = bench_result(
        "moe-train",
        "seconds per step",
        False,
        ours,
        baseline,
        preset=preset,
        model="dense twin" if dense else "moe",
        config={
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
            "dtype": _dtype_name(dtype),
            "autocast": "bfloat16" if precision == "bf16" else None,
            "device": str(device),
            "device_name": torch.cuda.get_device_name() if cuda else "cpu",
            "peak_flops_per_device": peak[0],
            "peak_source": peak[1],
            # Both models stay resident and alternate steps: the peak covers the two together.
            "memory_peak_gib": round(memory_gib, 3),
            "memory_kind": "torch.cuda.max_memory_allocated" if cuda else "process max RSS",
            "grad_clip": GRAD_CLIP,
        },
        threads=threads,
        warmup=warmup,
        target=TARGET,
    )
    result["meets_target"] = result["ratio"] >= TARGET
    _log(f"ratio (median) {result['ratio']:.3f}, target {TARGET}")
    if compare_dense:
        twin_args = (preset, steps, warmup, threads, micro_batch, seq_length, vocab_size, dispatcher)
        twin = run(*twin_args, model_overrides=model_overrides, device=device, dense=True)
        return with_dense_twin(result, twin)
    return result

"""The model side of MoE pretraining on Megatron-Core: typed configs, presets, analytic sizing, and
building a ``GPTModel`` that runs on a 2-core CPU (gloo, fp32, CPU patches) and on GPUs (nccl, bf16).

Architecture (all presets): decoder-only GPT with RoPE, SwiGLU MLPs (``gated_linear_unit`` + SiLU),
RMSNorm, no biases (``add_bias_linear=False``, also required for experts on CPU), MoE layers where
``moe_layer_freq`` says so. Embeddings are **untied** (separate input table and output projection),
as in Mixtral / DeepSeek-V3: with pipeline parallelism a tied table would need an extra all-reduce
between the first and last stage, and at large scale the output layer's extra ``V*h`` parameters are
negligible. The vocabulary is padded to a multiple of ``make_vocab_size_divisible_by * TP`` (Megatron's
rule) so the embedding shards evenly; counts below use the padded size.

Megatron is imported lazily (``init_parallel``/``build_model``): importing this module is cheap.
"""

from __future__ import annotations

import math
import os
import random
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mai_models.errors import MaiUserError

if TYPE_CHECKING:  # pragma: no cover
    from megatron.core.models.gpt import GPTModel


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MoEModelConfig(_Strict):
    """Shape of a GPT decoder with optional Mixture-of-Experts layers (``num_experts`` 0/None = dense)."""

    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_query_groups: int | None = Field(None, ge=1, description="GQA key/value heads; None = MHA")
    ffn_hidden_size: int = Field(ge=1, description="SwiGLU width of dense (non-MoE) layers")
    vocab_size: int = Field(ge=1, description="Tokenizer vocabulary; normally set with Preset.with_vocab")
    seq_length: int = Field(ge=1)
    make_vocab_size_divisible_by: int = Field(128, ge=1)

    num_experts: int | None = Field(None, ge=0, description="0 or None: dense model")
    moe_router_topk: int = Field(2, ge=1)
    moe_ffn_hidden_size: int | None = Field(None, ge=1, description="Per-expert SwiGLU width")
    moe_layer_freq: int | list[int] = Field(1, description="k: every k-th layer is MoE; or a 0/1 list")
    moe_aux_loss_coeff: float = Field(1e-2, ge=0)
    moe_z_loss_coeff: float | None = Field(None, ge=0)
    moe_router_load_balancing_type: Literal["aux_loss", "seq_aux_loss", "global_aux_loss", "none"] = (
        "aux_loss"
    )
    moe_router_score_function: Literal["softmax", "sigmoid"] = "softmax"
    moe_router_enable_expert_bias: bool = Field(False, description="Aux-loss-free balancing (sigmoid)")
    moe_router_bias_update_rate: float = Field(1e-3, gt=0)
    moe_expert_capacity_factor: float | None = Field(None, gt=0, description="None: no token dropping")
    moe_token_drop_policy: Literal["probs", "position"] = "probs"
    moe_shared_expert_intermediate_size: int | None = Field(None, ge=1, description="None: no shared")
    moe_token_dispatcher_type: Literal["allgather", "alltoall"] = "alltoall"
    moe_grouped_gemm: bool = Field(False, description="GPU only (needs grouped_gemm/TE); forced off on CPU")

    init_method_std: float = Field(0.02, gt=0)
    rotary_base: int = Field(10000, ge=1)
    hidden_dropout: float = Field(0.0, ge=0, lt=1)
    attention_dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self) -> MoEModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.num_query_groups and self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by num_query_groups "
                f"{self.num_query_groups}"
            )
        if self.is_moe:
            if self.moe_router_topk > self.num_experts:
                raise ValueError(f"moe_router_topk {self.moe_router_topk} > num_experts {self.num_experts}")
            if self.moe_router_enable_expert_bias and self.moe_router_score_function != "sigmoid":
                raise ValueError(
                    "moe_router_enable_expert_bias (aux-loss-free balancing) needs "
                    "moe_router_score_function='sigmoid'"
                )
            if isinstance(self.moe_layer_freq, list):
                if len(self.moe_layer_freq) != self.num_layers or set(self.moe_layer_freq) - {0, 1}:
                    raise ValueError(
                        f"moe_layer_freq list must be {self.num_layers} entries of 0/1, "
                        f"got {self.moe_layer_freq}"
                    )
            elif self.moe_layer_freq < 1:
                raise ValueError("moe_layer_freq must be >= 1")
        return self

    # ----------------------------------------------------------------------------------------- derived
    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    @property
    def kv_channels(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def expert_ffn(self) -> int:
        return self.moe_ffn_hidden_size or self.ffn_hidden_size

    def moe_layer_pattern(self) -> list[int]:
        """1 for an MoE layer, 0 for a dense one (Megatron's rule for ``moe_layer_freq``)."""
        if not self.is_moe:
            return [0] * self.num_layers
        if isinstance(self.moe_layer_freq, list):
            return list(self.moe_layer_freq)
        return [1 if i % self.moe_layer_freq == 0 else 0 for i in range(self.num_layers)]

    def padded_vocab_size(self, tensor_model_parallel_size: int = 1) -> int:
        """Vocabulary padded like Megatron-LM: a multiple of ``make_vocab_size_divisible_by * TP``."""
        m = self.make_vocab_size_divisible_by * tensor_model_parallel_size
        return math.ceil(self.vocab_size / m) * m

    def with_vocab(self, vocab_size: int) -> MoEModelConfig:
        return self.model_copy(update={"vocab_size": vocab_size})


class ParallelConfig(_Strict):
    """Megatron parallel layout. ``data_parallel_size`` None = derived as world / (TP x PP)."""

    tensor_model_parallel_size: int = Field(1, ge=1)
    pipeline_model_parallel_size: int = Field(1, ge=1)
    expert_model_parallel_size: int = Field(1, ge=1)
    expert_tensor_parallel_size: int | None = Field(None, ge=1, description="None: same as TP")
    data_parallel_size: int | None = Field(None, ge=1)
    use_distributed_optimizer: bool = Field(True, description="Optimizer states sharded over DP (memory)")

    @property
    def tp(self) -> int:
        return self.tensor_model_parallel_size

    @property
    def pp(self) -> int:
        return self.pipeline_model_parallel_size

    @property
    def ep(self) -> int:
        return self.expert_model_parallel_size

    @property
    def etp(self) -> int:
        return self.expert_tensor_parallel_size or self.tensor_model_parallel_size

    def dp(self, world_size: int) -> int:
        """Data-parallel size as Megatron defines it: world / (TP x PP) (context parallel = 1)."""
        return world_size // (self.tp * self.pp)

    def expert_dp(self, world_size: int) -> int:
        """Expert data-parallel size: world / (ETP x EP x PP)."""
        return world_size // (self.etp * self.ep * self.pp)

    def validate_world(self, world_size: int) -> None:
        """The checks ``parallel_state.initialize_model_parallel`` makes, as one-line MaiUserErrors."""
        if world_size < 1:
            raise MaiUserError(f"world size must be >= 1, got {world_size}")
        tp, pp, ep, etp = self.tp, self.pp, self.ep, self.etp
        if world_size % (tp * pp):
            raise MaiUserError(
                f"world size {world_size} is not divisible by TP x PP = {tp} x {pp} = {tp * pp}"
            )
        dp = world_size // (tp * pp)
        if self.data_parallel_size is not None and self.data_parallel_size != dp:
            raise MaiUserError(
                f"data_parallel_size {self.data_parallel_size} != world size / (TP x PP) = "
                f"{world_size} / {tp * pp} = {dp}; world size must equal TP x PP x DP"
            )
        if world_size % (etp * ep * pp):
            raise MaiUserError(
                f"world size {world_size} is not divisible by expert TP x EP x PP = {etp} x {ep} x {pp} "
                f"= {etp * ep * pp} (EP x TP must divide world size / PP = {world_size // pp})"
            )

    def validate(self, world_size: int, model: MoEModelConfig) -> None:
        """Raise a one-line MaiUserError for the first layout problem, before anything launches."""
        self.validate_world(world_size)
        tp, pp, ep, etp = self.tp, self.pp, self.ep, self.etp
        if ep > 1 and not model.is_moe:
            raise MaiUserError(
                f"expert parallel size {ep} needs an MoE model (num_experts is {model.num_experts})"
            )
        if model.is_moe and model.num_experts % ep:
            raise MaiUserError(
                f"num_experts {model.num_experts} is not divisible by expert parallel size {ep}"
            )
        if model.is_moe and model.moe_router_topk > model.num_experts:
            raise MaiUserError(f"moe_router_topk {model.moe_router_topk} > num_experts {model.num_experts}")
        if model.num_attention_heads % tp:
            raise MaiUserError(f"num_attention_heads {model.num_attention_heads} is not divisible by TP {tp}")
        if model.query_groups % tp:
            raise MaiUserError(f"num_query_groups {model.query_groups} is not divisible by TP {tp}")
        if model.num_layers % pp:
            raise MaiUserError(f"num_layers {model.num_layers} is not divisible by PP {pp}")
        if model.ffn_hidden_size % tp:
            raise MaiUserError(f"ffn_hidden_size {model.ffn_hidden_size} is not divisible by TP {tp}")
        if model.is_moe and model.expert_ffn % etp:
            raise MaiUserError(f"moe_ffn_hidden_size {model.expert_ffn} is not divisible by expert TP {etp}")
        shared = model.moe_shared_expert_intermediate_size
        if model.is_moe and shared and shared % tp:
            raise MaiUserError(f"moe_shared_expert_intermediate_size {shared} is not divisible by TP {tp}")
        if tp > 1 and model.seq_length % tp:
            # Sequence parallelism (required with MoE + TP, used whenever TP > 1) splits the sequence.
            raise MaiUserError(
                f"seq_length {model.seq_length} is not divisible by TP {tp} (sequence parallel)"
            )


class TrainingHint(_Strict):
    """Default batch shape for a preset (the trainer may override)."""

    micro_batch_size: int = Field(ge=1)
    global_batch_size: int = Field(ge=1)
    seq_length: int = Field(ge=1)


class Preset(_Strict):
    model: MoEModelConfig
    parallel: ParallelConfig
    train: TrainingHint
    world_size: int = Field(1, ge=1, description="GPUs/processes the layout is meant for")
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Preset:
        if self.train.seq_length > self.model.seq_length:
            raise ValueError(f"train.seq_length {self.train.seq_length} > model.seq_length")
        dp = self.parallel.dp(self.world_size) or 1
        if self.train.global_batch_size % (self.train.micro_batch_size * dp):
            raise ValueError(
                f"global_batch_size {self.train.global_batch_size} is not divisible by micro batch x DP "
                f"= {self.train.micro_batch_size} x {dp}"
            )
        return self

    def with_vocab(self, vocab_size: int) -> Preset:
        """The same preset for a tokenizer with ``vocab_size`` tokens."""
        return self.model_copy(update={"model": self.model.with_vocab(vocab_size)})

    def validate_layout(self) -> None:
        self.parallel.validate(self.world_size, self.model)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        description="unit tests: < 1M parameters, well under a second per step on CPU",
        model=MoEModelConfig(
            num_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            num_query_groups=2,
            ffn_hidden_size=128,
            vocab_size=1000,
            seq_length=64,
            num_experts=4,
            moe_router_topk=2,
            moe_ffn_hidden_size=64,
        ),
        parallel=ParallelConfig(),
        train=TrainingHint(micro_batch_size=4, global_batch_size=8, seq_length=64),
    ),
    "demo": Preset(
        description="~20M parameters (vocab 8192): a few CPU minutes of real MoE training",
        model=MoEModelConfig(
            num_layers=4,
            hidden_size=256,
            num_attention_heads=8,
            num_query_groups=4,
            ffn_hidden_size=1024,
            vocab_size=8192,
            seq_length=256,
            num_experts=8,
            moe_router_topk=2,
            moe_ffn_hidden_size=640,
        ),
        parallel=ParallelConfig(),
        train=TrainingHint(micro_batch_size=8, global_batch_size=32, seq_length=256),
    ),
    "small-gpu": Preset(
        description="~0.9B total / ~0.2B active (vocab 32768): one H100, bf16",
        model=MoEModelConfig(
            num_layers=16,
            hidden_size=1024,
            num_attention_heads=16,
            num_query_groups=4,
            ffn_hidden_size=4096,
            vocab_size=32768,
            seq_length=2048,
            num_experts=16,
            moe_router_topk=2,
            moe_ffn_hidden_size=1024,
            moe_grouped_gemm=True,
        ),
        parallel=ParallelConfig(),
        train=TrainingHint(micro_batch_size=8, global_batch_size=256, seq_length=2048),
    ),
    "mai-1-like": Preset(
        description=(
            "documented many-node layout, never run here: ~0.5T-parameter MoE (64 experts, top-2, "
            "~20B active) on 15,360 H100s = 1,920 nodes x 8; TP=8 inside a node, PP=8, EP=8, DP=240"
        ),
        model=MoEModelConfig(
            num_layers=48,
            hidden_size=6144,
            num_attention_heads=48,
            num_query_groups=8,
            ffn_hidden_size=24576,
            vocab_size=131072,
            seq_length=4096,
            num_experts=64,
            moe_router_topk=2,
            moe_ffn_hidden_size=8704,
            moe_aux_loss_coeff=1e-3,
            moe_z_loss_coeff=1e-3,
            moe_grouped_gemm=True,
            rotary_base=500000,
            init_method_std=0.008,
        ),
        parallel=ParallelConfig(
            tensor_model_parallel_size=8, pipeline_model_parallel_size=8, expert_model_parallel_size=8
        ),
        world_size=15360,
        train=TrainingHint(micro_batch_size=1, global_batch_size=3840, seq_length=4096),
    ),
}


# --------------------------------------------------------------------------------------------- sizing
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
      projection (same size). ``active_non_embedding`` = active - embedding (used for FLOPs).
    Buffers (e.g. the aux-loss-free ``expert_bias``) are not parameters and are not counted.
    """
    p = _layer_parts(cfg)
    v = cfg.padded_vocab_size(tensor_model_parallel_size)
    emb = v * cfg.hidden_size
    out = v * cfg.hidden_size
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
    n = count_parameters(cfg)["active_non_embedding"]
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
) -> str:
    """A human-readable plan of the layout (validated first; raises MaiUserError when impossible)."""
    parallel.validate(world_size, cfg)
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
        f"layers per stage  {cfg.num_layers // pp}",
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


# --------------------------------------------------------------------------------------------- runtime
def init_parallel(parallel: ParallelConfig, seed: int) -> None:
    """Initialise torch.distributed (if needed), Megatron's parallel groups and all RNGs.

    gloo on CPU, nccl on GPU. Under torchrun the usual environment rendezvous is used; a single process
    without it gets an in-memory store (rank 0 of 1). On a CPU-only torch the CPU patches are applied.
    Seeds ``random``/``numpy``/``torch`` and Megatron's tracker (``model_parallel_cuda_manual_seed``).
    """
    import numpy as np
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    cuda = torch.cuda.is_available()
    if not cuda:
        from mai_models.lm.cpu_compat import apply_cpu_patches

        apply_cpu_patches()
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        if "WORLD_SIZE" in os.environ:  # launched by torchrun (or a scheduler exporting its variables)
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend=backend)
        else:
            # One process needs no rendezvous: an in-memory store avoids probing for a free TCP port,
            # which races with other jobs' ephemeral ports.
            if cuda:
                torch.cuda.set_device(0)
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    parallel.validate_world(dist.get_world_size())
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        expert_model_parallel_size=parallel.ep,
        expert_tensor_parallel_size=parallel.etp,
    )
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def destroy_parallel() -> None:
    """Tear down Megatron's groups and the default process group (tests, re-initialisation)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def transformer_config(cfg: MoEModelConfig, parallel: ParallelConfig) -> Any:
    """Megatron ``TransformerConfig`` for ``cfg``: CPU-safe (fp32, fusions off) without CUDA, bf16 on GPU."""
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    moe: dict[str, Any] = {}
    if cfg.is_moe:
        moe = dict(
            num_moe_experts=cfg.num_experts,
            moe_router_topk=cfg.moe_router_topk,
            moe_ffn_hidden_size=cfg.expert_ffn,
            moe_layer_freq=cfg.moe_layer_freq,
            moe_aux_loss_coeff=cfg.moe_aux_loss_coeff,
            moe_z_loss_coeff=cfg.moe_z_loss_coeff,
            moe_router_load_balancing_type=cfg.moe_router_load_balancing_type,
            moe_router_score_function=cfg.moe_router_score_function,
            moe_router_enable_expert_bias=cfg.moe_router_enable_expert_bias,
            moe_router_bias_update_rate=cfg.moe_router_bias_update_rate,
            moe_expert_capacity_factor=cfg.moe_expert_capacity_factor,
            moe_token_drop_policy=cfg.moe_token_drop_policy,
            moe_shared_expert_intermediate_size=cfg.moe_shared_expert_intermediate_size,
            moe_token_dispatcher_type=cfg.moe_token_dispatcher_type,
            moe_grouped_gemm=cfg.moe_grouped_gemm and cuda,
            moe_router_dtype="fp32",
            moe_permute_fusion=False,
        )
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        ffn_hidden_size=cfg.ffn_hidden_size,
        kv_channels=cfg.kv_channels,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        init_method_std=cfg.init_method_std,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        # Must equal initialize_model_parallel's value, or expert weights are not marked expert-only
        # and DDP silently averages different experts together.
        expert_model_parallel_size=parallel.ep,
        expert_tensor_parallel_size=parallel.etp,
        sequence_parallel=parallel.tp > 1,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=cuda,
        use_cpu_initialization=not cuda,
        bias_activation_fusion=cuda,
        gradient_accumulation_fusion=False,
        masked_softmax_fusion=cuda,
        bias_dropout_fusion=cuda,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        **moe,
    )


def _transformer_engine_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


def build_model(cfg: MoEModelConfig, parallel: ParallelConfig) -> GPTModel:
    """This rank's ``GPTModel`` (its pipeline stage, its experts). Call ``init_parallel`` first.

    Layer specs come from ``get_gpt_decoder_block_spec`` (honours ``moe_layer_freq``): the local
    (pure PyTorch) spec on CPU, the Transformer Engine spec on GPU when ``transformer_engine`` imports.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    if not parallel_state.model_parallel_is_initialized():
        raise MaiUserError("build_model needs init_parallel(parallel, seed) first")
    parallel.validate(dist.get_world_size(), cfg)
    for name, want in (
        ("tensor", parallel.tp),
        ("pipeline", parallel.pp),
        ("expert", parallel.ep),
    ):
        got = getattr(parallel_state, f"get_{name}_model_parallel_world_size")()
        if got != want:
            raise MaiUserError(f"{name} parallel size is {got} in parallel_state but {want} in the config")
    config = transformer_config(cfg, parallel)
    use_te = torch.cuda.is_available() and _transformer_engine_available()
    spec = get_gpt_decoder_block_spec(config, use_transformer_engine=use_te, normalization="RMSNorm")
    if not use_te:
        from mai_models.lm.sdpa_attention import SDPADotProductAttention

        for layer_spec in spec.layer_specs:
            layer_spec.submodules.self_attention.submodules.core_attention = SDPADotProductAttention
    return GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=cfg.padded_vocab_size(parallel.tp),
        max_sequence_length=cfg.seq_length,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=cfg.rotary_base,
    )

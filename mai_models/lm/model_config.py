"""Typed configs of the MoE model (shape, MoE routing) and of its Megatron parallel layout, with the
layout checks ``parallel_state.initialize_model_parallel`` would make, as one-line MaiUserErrors.

The vocabulary is padded to a multiple of ``make_vocab_size_divisible_by * TP`` (Megatron's rule) so
the embedding shards evenly.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mai_models.errors import MaiUserError


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
    moe_router_pre_softmax: bool = Field(
        False, description="Scores over all experts before the top-k, unrenormalised (top-1 needs it)"
    )
    moe_router_enable_expert_bias: bool = Field(False, description="Aux-loss-free balancing (sigmoid)")
    moe_router_bias_update_rate: float = Field(1e-3, gt=0)
    moe_expert_capacity_factor: float | None = Field(None, gt=0, description="None: no token dropping")
    moe_token_drop_policy: Literal["probs", "position"] = "probs"
    moe_shared_expert_intermediate_size: int | None = Field(None, ge=1, description="None: no shared")
    moe_token_dispatcher_type: Literal["allgather", "alltoall"] = "alltoall"
    moe_grouped_gemm: bool = Field(False, description="GPU only (needs grouped_gemm/TE); forced off on CPU")

    tie_embeddings: bool = Field(
        False, description="One table for input embedding and output layer (PP > 1: a copy on the last stage)"
    )
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
            top1_softmax = self.moe_router_topk == 1 and self.moe_router_score_function == "softmax"
            if top1_softmax and not self.moe_router_pre_softmax:
                # A softmax over the one selected logit is always 1: the router would get no gradient.
                raise ValueError("moe_router_topk 1 with softmax scores needs moe_router_pre_softmax: true")
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
    virtual_pipeline_model_parallel_size: int | None = Field(
        None, ge=1, description="model chunks per pipeline rank (interleaved 1F1B); None: one"
    )
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
    def vpp(self) -> int | None:
        """Virtual stages per pipeline rank as Megatron takes it: None unless interleaving (> 1)."""
        v = self.virtual_pipeline_model_parallel_size
        return v if v and v > 1 and self.pp > 1 else None

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
        if (self.virtual_pipeline_model_parallel_size or 1) > 1 and pp == 1:
            raise MaiUserError("virtual pipeline stages need PP > 1")
        chunks = pp * (self.vpp or 1)
        if model.num_layers % chunks:
            raise MaiUserError(
                f"num_layers {model.num_layers} is not divisible by PP x virtual stages = {chunks}"
            )
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

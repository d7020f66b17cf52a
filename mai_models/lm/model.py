"""Building a Megatron-Core ``GPTModel`` that runs on a 2-core CPU (gloo, fp32, CPU patches) and on
GPUs (nccl, bf16).

Architecture (all presets): decoder-only GPT with RoPE, SwiGLU MLPs (``gated_linear_unit`` + SiLU),
RMSNorm, no biases (``add_bias_linear=False``, also required for experts on CPU), MoE layers where
``moe_layer_freq`` says so. Embeddings are **untied** by default (separate input table and output
projection), as in Mixtral / DeepSeek-V3: at large scale the output layer's extra ``V*h`` parameters
are negligible. ``tie_embeddings`` ties them as Megatron does: with pipeline parallelism the last stage
holds a copy of the first stage's table, and their gradients are summed between the two stages
(``finalize_model_grads``) so both copies take the same step. The vocabulary is padded to a
multiple of ``make_vocab_size_divisible_by * TP`` (Megatron's rule) so the embedding shards evenly.

Megatron is imported lazily (in ``build_model``): importing this module is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from mai_models.errors import MaiUserError
from mai_models.lm.model_config import MoEModelConfig, ParallelConfig

if TYPE_CHECKING:  # pragma: no cover
    from megatron.core.models.gpt import GPTModel


def transformer_config(cfg: MoEModelConfig, parallel: ParallelConfig) -> Any:
    """Megatron ``TransformerConfig`` for ``cfg``: CPU-safe (fp32, fusions off) without CUDA, bf16 on GPU."""
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    cuda = torch.cuda.is_available()
    # Fused kernels that need Transformer Engine (RoPE, MoE permutation) only where it imports.
    te = cuda and _transformer_engine_available()
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
            moe_router_pre_softmax=cfg.moe_router_pre_softmax,
            moe_router_enable_expert_bias=cfg.moe_router_enable_expert_bias,
            moe_router_bias_update_rate=cfg.moe_router_bias_update_rate,
            moe_expert_capacity_factor=cfg.moe_expert_capacity_factor,
            moe_token_drop_policy=cfg.moe_token_drop_policy,
            moe_shared_expert_intermediate_size=cfg.moe_shared_expert_intermediate_size,
            moe_token_dispatcher_type=cfg.moe_token_dispatcher_type,
            moe_grouped_gemm=cfg.moe_grouped_gemm and cuda and (te or _importable("grouped_gemm")),
            moe_router_dtype="fp32",
            moe_permute_fusion=te,
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
        virtual_pipeline_model_parallel_size=parallel.vpp,
        # Batched isend/irecv needs torch.cuda.synchronize() after it; plain isend/irecv runs on gloo.
        batch_p2p_comm=cuda,
        deallocate_pipeline_outputs=True,
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
        apply_rope_fusion=te,
        persist_layer_norm=False,
        **moe,
    )


def _importable(name: str) -> bool:
    import importlib

    try:
        importlib.import_module(name)
    except Exception:  # a broken CUDA extension raises more than ImportError
        return False
    return True


def _transformer_engine_available() -> bool:
    return _importable("transformer_engine")


def build_model_chunks(cfg: MoEModelConfig, parallel: ParallelConfig) -> list[GPTModel]:
    """This rank's model chunks: one ``GPTModel`` per virtual pipeline stage (one without interleaving)."""
    if not parallel.vpp:
        return [build_model(cfg, parallel)]
    return [build_model(cfg, parallel, vp_stage=v) for v in range(parallel.vpp)]


def build_model(cfg: MoEModelConfig, parallel: ParallelConfig, vp_stage: int | None = None) -> GPTModel:
    """This rank's ``GPTModel`` (its pipeline stage or virtual stage ``vp_stage``, its experts).
    Call ``init_parallel`` first. The first stage holds the embedding, the last the output layer.

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
    spec = get_gpt_decoder_block_spec(
        config, use_transformer_engine=use_te, normalization="RMSNorm", vp_stage=vp_stage
    )
    if not use_te:
        from mai_models.lm import bucketed_experts, local_norm
        from mai_models.lm.sdpa_attention import SDPADotProductAttention

        local_norm.use_in_local_spec(spec)
        bucketed_experts.use_in_local_spec(spec)
        for layer_spec in spec.layer_specs:
            layer_spec.submodules.self_attention.submodules.core_attention = SDPADotProductAttention
    return GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=cfg.padded_vocab_size(parallel.tp),
        max_sequence_length=cfg.seq_length,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        share_embeddings_and_output_weights=cfg.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.rotary_base,
        vp_stage=vp_stage,
    )

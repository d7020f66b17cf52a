"""``mai bench moe-train --compare-dense``: the dense twin's side of the comparison.

The dense twin (``lm.launch.dense_overrides``: every MoE layer a SwiGLU as wide as the experts a token
activates) is timed the same way as the MoE, ours (Megatron-Core GPTModel without experts) against
``transformers.LlamaForCausalLM`` of the same shape (Mixtral without experts is Llama: RMSNorm, RoPE,
SwiGLU, GQA, no biases, untied embeddings). Both comparisons run in one process one after the other
and land in one JSON line: the MoE one at the top, the dense one under ``dense_twin``, and what the
experts cost per token against the same active parameters (``moe_vs_dense``).
"""

from __future__ import annotations

from typing import Any

import torch


def hf_shape(cfg: Any, seq: int) -> dict[str, Any]:
    """The Hugging Face config fields Mixtral and Llama share, for ``cfg``'s shape."""
    return dict(
        vocab_size=cfg.padded_vocab_size(),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.query_groups,
        head_dim=cfg.kv_channels,
        max_position_embeddings=max(seq, cfg.seq_length),
        initializer_range=cfg.init_method_std,
        rms_norm_eps=1e-5,  # Megatron TransformerConfig.layernorm_epsilon default
        tie_word_embeddings=False,
        attention_dropout=cfg.attention_dropout,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
        use_cache=False,
    )


def hf_model(model_class: Any, hf_cfg: Any, like: torch.Tensor) -> Any:
    """``model_class(hf_cfg)`` with SDPA attention, in training mode, on the device and in the dtype
    of the tensor ``like``."""
    hf_cfg._attn_implementation = "sdpa"
    model = model_class(hf_cfg).to(device=like.device, dtype=like.dtype)
    model.train()
    return model


def llama(cfg: Any, seq: int, like: torch.Tensor) -> Any:
    """Llama of the dense ``cfg``'s shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        **hf_shape(cfg, seq), intermediate_size=cfg.ffn_hidden_size, attention_bias=False, mlp_bias=False
    )
    return hf_model(LlamaForCausalLM, hf_cfg, like)


def with_dense_twin(moe: dict[str, Any], dense: dict[str, Any]) -> dict[str, Any]:
    """The MoE result with the dense twin's under ``dense_twin`` and the two of ours side by side."""
    moe_tokens = moe["ours_detail"]["tokens_s_median"]
    dense_tokens = dense["ours_detail"]["tokens_s_median"]
    return {
        **moe,
        "dense_twin": dense,
        "moe_vs_dense": {
            "moe_tokens_s_median": moe_tokens,
            "dense_tokens_s_median": dense_tokens,
            # Below 1: what routing, dispatch and the experts' smaller GEMMs cost per token.
            "ratio": round(moe_tokens / dense_tokens, 4),
            "meaning": "ours MoE tokens/s / ours dense twin tokens/s (same active parameters per token)",
        },
    }

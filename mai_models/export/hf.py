"""Megatron MoE checkpoint -> Hugging Face checkpoint that ``AutoModelForCausalLM`` loads as is.

Layout (the first that expresses the model exactly):

- ``MixtralForCausalLM``: every layer is MoE and there is no shared expert (our presets).
- ``Qwen2MoeForCausalLM``: a shared expert and/or dense layers interleaved (``mlp_only_layers``).
- ``LlamaForCausalLM``: a dense model (no experts).

What makes the conversion exact (logits equal up to fp32 rounding):

- Attention: Megatron's fused ``linear_qkv`` rows are grouped per KV group, ``[q_1..q_{n/g}, k, v]``
  for each of the ``g`` groups; they are regrouped into ``q_proj``/``k_proj``/``v_proj`` with query
  head ``j`` of group ``i`` at HF head ``i * n/g + j``, which is the KV head HF's GQA gives it.
  No biases, RoPE over the whole head (``rotary_percent`` 1, non-interleaved halves, as HF), same base.
- MLPs: SwiGLU ``linear_fc1`` is ``[gate; up]`` (Megatron applies SiLU to the first half).
- Router: Megatron (``moe_router_pre_softmax=False``) takes the top-k logits and softmaxes over them;
  HF softmaxes over all experts, takes the top-k and renormalises (Mixtral always, Qwen2-MoE with
  ``norm_topk_prob=True``). Same experts (softmax is monotonic), same weights: ``e^{l_i}/sum_topk e^{l}``.
  With ``moe_router_pre_softmax`` Megatron keeps the top-k of the softmax over all experts without
  renormalising, which is Qwen2-MoE with ``norm_topk_prob=False`` (Mixtral cannot express it).
- Shared expert: Megatron adds it ungated. Qwen2-MoE always multiplies it by
  ``sigmoid(shared_expert_gate(x))``, which no finite gate weight makes 1; the gate weight is set to 0
  (``sigmoid(0) = 0.5`` for every token) and the shared expert's ``down_proj`` is doubled. Scaling by
  powers of two is exact in floating point, so the product is bit-for-bit Megatron's.
- Qwen2-MoE without a shared expert: a 1-wide all-zero shared expert (it adds exactly 0).
- Qwen2-MoE attention: ``qkv_bias=True`` with zero biases, because transformers 4 always creates these
  biases and would initialise missing ones randomly.
- Vocabulary: Megatron pads the embedding and output layer; the padding rows (never a real token) are
  dropped so ``vocab_size`` equals the tokenizer's.
- Embeddings: untied ones as ``embed_tokens`` and ``lm_head``; a tied model (``tie_embeddings``) has no
  ``output_layer.weight``, so only ``embed_tokens`` is written and ``tie_word_embeddings`` makes it
  ``lm_head`` too.

Training-only settings (aux/z-loss coefficients, jitter, dropout) do not affect logits. Not exported:
sigmoid routing and aux-loss-free expert bias (neither Mixtral nor Qwen2-MoE has them), so such a model
is refused; with ``moe_expert_capacity_factor`` set Megatron may drop tokens that HF would route, which
is reported as a note. Weights are written in fp32 (bf16 GPU weights upcast exactly).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mai_models.errors import MaiUserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mai_models.lm.inference import MegatronLM
    from mai_models.lm.model_config import MoEModelConfig

MIXTRAL = "MixtralForCausalLM"
QWEN2_MOE = "Qwen2MoeForCausalLM"
LLAMA = "LlamaForCausalLM"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 4 * 1024**3


def choose_layout(cfg: MoEModelConfig) -> str:
    """The Hugging Face architecture that expresses ``cfg`` exactly; MaiUserError if none does."""
    if not cfg.is_moe:
        return LLAMA
    if cfg.moe_router_score_function != "softmax" or cfg.moe_router_enable_expert_bias:
        raise MaiUserError(
            "sigmoid routing / aux-loss-free expert bias has no Mixtral or Qwen2-MoE equivalent; "
            "export needs moe_router_score_function='softmax'"
        )
    if cfg.moe_shared_expert_intermediate_size or cfg.moe_router_pre_softmax or 0 in cfg.moe_layer_pattern():
        return QWEN2_MOE
    return MIXTRAL


def export_notes(cfg: MoEModelConfig, layout: str) -> list[str]:
    """What a reader of the exported checkpoint should know: emulations and approximations."""
    notes = []
    padded = cfg.padded_vocab_size()
    if padded != cfg.vocab_size:
        notes.append(
            f"Megatron vocabulary padding dropped: {padded} -> {cfg.vocab_size} rows (tokenizer size)"
        )
    if layout == QWEN2_MOE:
        notes.append("q/k/v biases written as zeros (qkv_bias=True, for transformers 4 loaders)")
        if cfg.moe_shared_expert_intermediate_size:
            notes.append(
                "ungated shared expert: shared_expert_gate = 0 (sigmoid 0.5) and down_proj x 2, exact"
            )
        else:
            notes.append("no shared expert in the source: a 1-wide all-zero shared expert (adds exactly 0)")
        dense = [i for i, moe in enumerate(cfg.moe_layer_pattern()) if not moe]
        if dense:
            notes.append(f"dense layers {dense} as mlp_only_layers")
    if cfg.is_moe and cfg.moe_expert_capacity_factor is not None:
        notes.append(
            f"moe_expert_capacity_factor={cfg.moe_expert_capacity_factor}: Megatron drops tokens over an "
            "expert's capacity, Hugging Face never does; logits differ where Megatron drops"
        )
    return notes


class _Source:
    """A Megatron state dict read by name; remembers what was used so nothing is silently left out."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        import torch

        self.state = {k: v for k, v in state.items() if torch.is_tensor(v) and not k.endswith("_extra_state")}
        self.used: set[str] = set()

    def has(self, *names: str) -> bool:
        return any(n in self.state for n in names)

    def take(self, *names: str) -> torch.Tensor:
        """The first present of ``names`` (local spec first, Transformer Engine spec names after)."""
        import torch

        for name in names:
            if name in self.state:
                self.used.add(name)
                return self.state[name].detach().to("cpu", torch.float32)
        raise MaiUserError(f"checkpoint has no {' / '.join(names)}")

    def leftovers(self) -> list[str]:
        return sorted(k for k in self.state if k not in self.used)


def convert_state_dict(state: Mapping[str, Any], cfg: MoEModelConfig, layout: str) -> dict[str, torch.Tensor]:
    """Megatron ``GPTModel.state_dict()`` (TP = PP = EP = 1) -> Hugging Face tensors for ``layout``."""
    import torch

    src = _Source(state)
    v, h, d = cfg.vocab_size, cfg.hidden_size, cfg.kv_channels
    groups = cfg.query_groups
    per_group = cfg.num_attention_heads // groups
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": src.take("embedding.word_embeddings.weight")[:v],
        "model.norm.weight": src.take("decoder.final_layernorm.weight"),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = src.take("output_layer.weight")[:v]

    def swiglu(prefix: str, *names: str) -> tuple[torch.Tensor, torch.Tensor]:
        fc1 = src.take(*(prefix + n for n in names))
        gate, up = fc1.chunk(2, dim=0)  # Megatron's glu: SiLU(first half) * second half
        return gate, up

    pattern = cfg.moe_layer_pattern()
    for i, is_moe in enumerate(pattern):
        m = f"decoder.layers.{i}."
        hf = f"model.layers.{i}."
        out[hf + "input_layernorm.weight"] = src.take(
            m + "input_layernorm.weight", m + "self_attention.linear_qkv.layer_norm_weight"
        )
        out[hf + "post_attention_layernorm.weight"] = src.take(
            m + "pre_mlp_layernorm.weight", m + "mlp.linear_fc1.layer_norm_weight"
        )
        qkv = src.take(m + "self_attention.linear_qkv.weight").view(groups, per_group + 2, d, h)
        out[hf + "self_attn.q_proj.weight"] = qkv[:, :per_group].reshape(groups * per_group * d, h)
        out[hf + "self_attn.k_proj.weight"] = qkv[:, per_group].reshape(groups * d, h)
        out[hf + "self_attn.v_proj.weight"] = qkv[:, per_group + 1].reshape(groups * d, h)
        out[hf + "self_attn.o_proj.weight"] = src.take(m + "self_attention.linear_proj.weight")
        if layout == QWEN2_MOE:
            for name, rows in (("q", groups * per_group * d), ("k", groups * d), ("v", groups * d)):
                out[hf + f"self_attn.{name}_proj.bias"] = torch.zeros(rows)

        if is_moe != src.has(m + "mlp.router.weight"):
            raise MaiUserError(f"layer {i}: checkpoint and config disagree on whether it is an MoE layer")
        if not is_moe:
            gate, up = swiglu(m, "mlp.linear_fc1.weight")
            out[hf + "mlp.gate_proj.weight"] = gate
            out[hf + "mlp.up_proj.weight"] = up
            out[hf + "mlp.down_proj.weight"] = src.take(m + "mlp.linear_fc2.weight")
            continue

        moe = hf + ("block_sparse_moe." if layout == MIXTRAL else "mlp.")
        # Mixtral's legacy per-expert names (w1 gate, w3 up, w2 down) are what transformers 4 and 5
        # and other loaders all read; transformers 5 fuses them into its 3-D expert tensors on load.
        w_gate, w_up, w_down = (
            ("w1", "w3", "w2") if layout == MIXTRAL else ("gate_proj", "up_proj", "down_proj")
        )
        out[moe + "gate.weight"] = src.take(m + "mlp.router.weight")
        for j in range(cfg.num_experts):
            gate, up = swiglu(
                m, f"mlp.experts.local_experts.{j}.linear_fc1.weight", f"mlp.experts.linear_fc1.weight{j}"
            )
            out[moe + f"experts.{j}.{w_gate}.weight"] = gate
            out[moe + f"experts.{j}.{w_up}.weight"] = up
            out[moe + f"experts.{j}.{w_down}.weight"] = src.take(
                m + f"mlp.experts.local_experts.{j}.linear_fc2.weight",
                m + f"mlp.experts.linear_fc2.weight{j}",
            )
        if layout != QWEN2_MOE:
            continue
        shared = moe + "shared_expert."
        if cfg.moe_shared_expert_intermediate_size:
            gate, up = swiglu(m, "mlp.shared_experts.linear_fc1.weight")
            down = src.take(m + "mlp.shared_experts.linear_fc2.weight")
            if src.has(m + "mlp.shared_experts.gate_weight"):  # Megatron's own sigmoid gate: same form
                gate_weight = src.take(m + "mlp.shared_experts.gate_weight")
            else:
                # sigmoid(0) = 0.5 on every token, undone by doubling down_proj: both exact.
                gate_weight = torch.zeros(1, h)
                down = down * 2
        else:
            gate, up, down = torch.zeros(1, h), torch.zeros(1, h), torch.zeros(h, 1)
            gate_weight = torch.zeros(1, h)
        out[shared + "gate_proj.weight"] = gate
        out[shared + "up_proj.weight"] = up
        out[shared + "down_proj.weight"] = down
        out[moe + "shared_expert_gate.weight"] = gate_weight

    left = src.leftovers()
    if left:
        raise MaiUserError(f"export does not know these checkpoint tensors: {', '.join(left[:5])}")
    # Slices share storage with the source; safetensors wants each tensor on its own.
    return {k: t.contiguous().clone() for k, t in out.items()}


def hf_config(
    cfg: MoEModelConfig, layout: str, rms_norm_eps: float, special: Mapping[str, int | None]
) -> Any:
    """The transformers config object for ``layout`` (saved as ``config.json``)."""
    common: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.query_groups,
        hidden_act="silu",
        max_position_embeddings=cfg.seq_length,
        initializer_range=cfg.init_method_std,
        rms_norm_eps=rms_norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
        attention_dropout=0.0,
        use_cache=True,
        bos_token_id=special.get("bos"),
        eos_token_id=special.get("eos"),
        pad_token_id=special.get("pad"),
    )
    if layout == MIXTRAL:
        from transformers import MixtralConfig

        config = MixtralConfig(
            **common,
            head_dim=cfg.kv_channels,
            intermediate_size=cfg.expert_ffn,
            num_local_experts=cfg.num_experts,
            num_experts_per_tok=cfg.moe_router_topk,
            router_aux_loss_coef=cfg.moe_aux_loss_coeff,
            router_jitter_noise=0.0,
            output_router_logits=False,
            sliding_window=None,
        )
    elif layout == QWEN2_MOE:
        from transformers import Qwen2MoeConfig

        config = Qwen2MoeConfig(
            **common,
            intermediate_size=cfg.ffn_hidden_size,
            moe_intermediate_size=cfg.expert_ffn,
            shared_expert_intermediate_size=cfg.moe_shared_expert_intermediate_size or 1,
            num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.moe_router_topk,
            norm_topk_prob=not cfg.moe_router_pre_softmax,
            decoder_sparse_step=1,
            mlp_only_layers=[i for i, moe in enumerate(cfg.moe_layer_pattern()) if not moe],
            router_aux_loss_coef=cfg.moe_aux_loss_coeff,
            output_router_logits=False,
            qkv_bias=True,
            use_sliding_window=False,
        )
    else:
        from transformers import LlamaConfig

        config = LlamaConfig(
            **common,
            head_dim=cfg.kv_channels,
            intermediate_size=cfg.ffn_hidden_size,
            attention_bias=False,
            mlp_bias=False,
        )
    config.architectures = [layout]
    return config


def _write_config(config: Any, rotary_base: int, out: Path) -> None:
    config.save_pretrained(str(out))
    path = out / "config.json"
    data = json.loads(path.read_text())
    # transformers 4 loaders (vLLM, lm-eval) read these two keys, transformers 5 writes neither;
    # without rope_theta Mixtral would silently fall back to a base of 1e6.
    data.setdefault("rope_theta", float(rotary_base))
    data.setdefault("torch_dtype", "float32")
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_weights(tensors: dict[str, torch.Tensor], out: Path, max_shard_bytes: int) -> list[str]:
    """``model.safetensors``, or numbered shards plus the standard index when over ``max_shard_bytes``."""
    from safetensors.torch import save_file

    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total <= max_shard_bytes:
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        return [WEIGHTS_FILE]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    files, weight_map = [], {}
    for index, shard in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update(dict.fromkeys(shard, name))
    index_doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / WEIGHTS_INDEX).write_text(json.dumps(index_doc, indent=2, sort_keys=True) + "\n")
    return [*files, WEIGHTS_INDEX]


def _write_tokenizer(model_dir: Path, out: Path, vocab_size: int) -> dict[str, int | None]:
    """Tokenizer files as ``data/bpe_tokenizer`` has them; returns the special token ids."""
    from transformers import AutoTokenizer

    from mai_models.tokenizer.bpe import EOD_TOKEN, PAD_TOKEN, _save_hf, load_tokenizer

    tok = load_tokenizer(model_dir)
    # The same writer as the tokenizer step (ChatML template, transformers 4 compatible config) ...
    _save_hf(tok, out)
    # ... and the very tokenizer.json the model was trained with, byte for byte.
    shutil.copyfile(model_dir / "tokenizer.json", out / "tokenizer.json")
    loaded = AutoTokenizer.from_pretrained(str(out))
    if len(loaded) != vocab_size:
        raise MaiUserError(f"exported tokenizer has {len(loaded)} tokens, the model {vocab_size}")
    eod, pad = tok.token_to_id(EOD_TOKEN), tok.token_to_id(PAD_TOKEN)
    return {"bos": eod, "eos": eod, "pad": pad}


def export_hf(
    model_dir: Path,
    out: Path,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    verify_tokens: int = 0,
) -> dict[str, Any]:
    """Convert the ``moe_pretrain`` model in ``model_dir`` into a Hugging Face checkpoint at ``out``.

    Writes ``model.safetensors`` (or shards + index), ``config.json``, ``generation_config.json``,
    ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``; ``out`` is replaced
    as a whole once complete. With ``verify_tokens > 0``, reloads the export with
    ``AutoModelForCausalLM`` and reports the max-abs logits difference on that many seeded random
    tokens. Returns architecture, model_type, parameters, files, notes (and the difference).
    """
    import torch
    from transformers import GenerationConfig

    from mai_models.lm.inference import load_pretrained

    model_dir, out = Path(model_dir), Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        # out is replaced as a whole: never wipe a directory that is not a previous export.
        raise MaiUserError(f"{out} exists and is not a Hugging Face checkpoint; choose an empty directory")
    lm = load_pretrained(model_dir)
    cfg = lm.config
    layout = choose_layout(cfg)
    notes = export_notes(cfg, layout)
    tensors = convert_state_dict(lm.model.state_dict(), cfg, layout)
    eps = float(lm.model.config.layernorm_epsilon)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files = _write_weights(tensors, tmp, max_shard_bytes)
        special = _write_tokenizer(model_dir, tmp, cfg.vocab_size)
        config = hf_config(cfg, layout, eps, special)
        _write_config(config, cfg.rotary_base, tmp)
        GenerationConfig(
            bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"]
        ).save_pretrained(str(tmp))
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors creates its files owner-only; the rest are world-readable
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result: dict[str, Any] = {
        "architecture": layout,
        "model_type": config.model_type,
        "parameters": sum(t.numel() for t in tensors.values()),
        "vocab_size": cfg.vocab_size,
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
        "weights": files,
        "notes": notes,
    }
    if verify_tokens > 0:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, cfg.vocab_size, (1, min(verify_tokens, cfg.seq_length)), generator=generator)
        result["max_abs_logits_diff"] = compare_logits(lm, out, ids)
    return result


def load_hf(hf_dir: Path) -> Any:
    """``AutoModelForCausalLM`` in fp32 eval mode; MaiUserError if any weight was missing or unused
    (transformers would otherwise initialise missing ones randomly and only log it)."""
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        str(hf_dir), dtype=torch.float32, output_loading_info=True
    )
    problems = {
        k: sorted(v)
        for k, v in info.items()
        if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if problems:
        raise MaiUserError(f"{hf_dir}: weights do not match the architecture: {problems}"[:400])
    return model.eval()


def compare_logits(
    model_dir: Path | MegatronLM,
    hf_dir: Path,
    token_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
) -> float:
    """Max absolute difference between our Megatron logits and the exported model's (fp32, eval).

    ``token_ids`` is ``[B, T]`` (or one sequence). On a CUDA machine our model runs in bf16, so expect
    bf16-sized differences there; on CPU both sides are fp32.
    """
    import torch

    from mai_models.lm.inference import MegatronLM, load_pretrained

    lm = model_dir if isinstance(model_dir, MegatronLM) else load_pretrained(Path(model_dir))
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    ours = lm.logits(ids).cpu()
    hf = load_hf(Path(hf_dir))
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits.float()
    if theirs.shape != ours.shape:
        raise MaiUserError(f"logits shapes differ: megatron {tuple(ours.shape)}, hf {tuple(theirs.shape)}")
    return float((ours - theirs).abs().max())

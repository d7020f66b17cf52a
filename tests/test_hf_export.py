"""Inference on a pretrained MoE and its Hugging Face export.

Three `tiny` models are trained for two steps by the real trainer and finalised into the real
``moe_pretrain`` layout (``checkpoint/`` + ``model.json`` + ``tokenizer.json``): the preset itself
(every layer MoE -> Mixtral), a variant with a shared expert and a dense second layer (-> Qwen2-MoE)
and top-1 pre-softmax routing (-> Qwen2-MoE without renormalisation). Every export must reload with
``AutoModelForCausalLM``/``AutoTokenizer`` and give Megatron's logits on real text to within ``TOL``
(measured: ~2e-7; the conversion is exact up to fp32 rounding of reordered sums).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mai_models.errors import MaiUserError

TOL = 1e-4
TRAIN = [
    "lm.preset=tiny",
    "lm.steps=2",
    "lm.micro_batch_size=2",
    "lm.global_batch_size=2",
    "lm.eval_interval=2",
    "lm.eval_iters=1",
    "lm.checkpoint_interval=2",
    "lm.warmup_steps=1",
    "lm.launch.threads_per_rank=2",
]
VARIANTS = {
    "tiny": None,
    "shared_dense": "{moe_shared_expert_intermediate_size: 32, moe_layer_freq: [1, 0]}",
    "top1": "{moe_router_topk: 1, moe_router_pre_softmax: true}",
}


def _train_and_finalize(root: Path, model: str | None) -> Path:
    """The moe_pretrain step, its trainer in this process (one rank: no torchrun start-up)."""
    from conftest import InProcessTrainer

    from mai_models.config import load_params
    from mai_models.graph import project
    from mai_models.settings import load_settings

    settings = load_settings(root=root)
    overrides = TRAIN + ([f"lm.model={model}"] if model else [])
    # A stated peak skips the trainer's GEMM timing (only the MFU metric uses it).
    launcher = InProcessTrainer(peak_flops_per_device=1e12)
    graph = project(settings, load_params(settings.params_file, overrides), launcher=launcher)
    graph.run("moe_pretrain")
    return graph.out_dir("moe_pretrain")


@pytest.fixture(scope="module")
def model_dirs(lm_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    from mai_models.lm.process_groups import destroy_parallel

    threads = torch.get_num_threads()
    dirs = {}
    try:
        for name, model in VARIANTS.items():
            root = tmp_path_factory.mktemp(name) / "proj"
            shutil.copytree(lm_project, root, symlinks=True)
            dirs[name] = _train_and_finalize(root, model)
        yield dirs
    finally:
        destroy_parallel()  # the trainer and the loader leave one-rank groups up; later tests start clean
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lms(model_dirs: dict[str, Path]) -> dict[str, object]:
    from mai_models.lm.inference import load_pretrained

    return {name: load_pretrained(path) for name, path in model_dirs.items()}


@pytest.fixture(scope="module")
def text(lm_project: Path) -> str:
    from mai_models.tokenizer.bpe import iter_texts, split_shards

    clean = lm_project / "data" / "clean_documents"
    shards = split_shards(clean, "valid") + split_shards(clean, "train")
    docs = [t for batch in iter_texts(shards) for t in batch]
    return "\n".join(docs[:20])


@pytest.fixture(scope="module")
def batch(lms: dict, text: str) -> torch.Tensor:
    """Two full-length windows of real tokenized text, the first starting a document as in training."""
    lm = lms["tiny"]
    ids = [lm.eod_id, *lm.encode(text)]
    n = lm.max_length
    assert len(ids) >= 2 * n
    return torch.tensor([ids[:n], ids[n : 2 * n]])


def _check_tokenizer(hf_dir: Path, lm, text: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    assert len(tok) == lm.vocab_size
    assert tok(text[:2000], add_special_tokens=False)["input_ids"] == lm.encode(text[:2000])
    assert tok.eos_token_id == lm.eod_id


def _hf_greedy(hf_dir: Path, prompt: list[int], n: int) -> list[int]:
    from mai_models.export.hf import load_hf

    model = load_hf(hf_dir)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)[0, len(prompt) :].tolist()
    eos = model.generation_config.eos_token_id
    return out[: out.index(eos)] if eos in out else out


@pytest.mark.slow
def test_loaded_weights_are_the_trained_checkpoint(model_dirs: dict[str, Path], lms: dict) -> None:
    from megatron.core import dist_checkpointing

    lm = lms["tiny"]
    saved = dist_checkpointing.load_plain_tensors(str(model_dirs["tiny"] / "checkpoint"))
    state = lm.model.state_dict()
    for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        assert torch.equal(saved[f"module.{name}"], state[name])  # the trainer saved through DDP
    experts = saved["module.decoder.layers.mlp.experts.experts.linear_fc1.weight"]  # [layer, expert, ...]
    assert torch.equal(experts[1, 3], state["decoder.layers.1.mlp.experts.local_experts.3.linear_fc1.weight"])
    assert not lm.model.training
    assert lm.config.vocab_size == 1000 and lm.config.padded_vocab_size() == 1024


@pytest.mark.slow
def test_tiny_preset_exports_to_mixtral_with_the_same_logits(
    model_dirs: dict[str, Path], lms: dict, batch: torch.Tensor, text: str, tmp_path: Path
) -> None:
    from mai_models.export.hf import compare_logits, export_hf

    lm = lms["tiny"]
    out = tmp_path / "hf"
    result = export_hf(model_dirs["tiny"], out)
    assert result["architecture"] == "MixtralForCausalLM" and result["model_type"] == "mixtral"
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    } <= set(result["files"])
    # The padded vocabulary rows are dropped: untied 1000 x 64 embedding and head, not 1024.
    assert result["parameters"] == 254_784 - 2 * 24 * 64
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 1000 and config["tie_word_embeddings"] is False
    assert config["num_key_value_heads"] == 2 and config["rope_theta"] == 10000.0
    _check_tokenizer(out, lm, text)

    logits = lm.logits(batch)
    assert logits.shape == (2, 64, 1000) and logits.dtype == torch.float32
    diff = compare_logits(lm, out, batch)
    assert diff <= TOL, diff

    prompt = batch[0, :16].tolist()
    assert _hf_greedy(out, prompt, 8) == lm.generate_ids(prompt, max_new_tokens=8)  # ends at EOD, as HF

    # Over the shard limit: numbered shards and the standard index, same model.
    sharded = export_hf(model_dirs["tiny"], tmp_path / "hf_sharded", max_shard_bytes=300_000)
    assert "model.safetensors.index.json" in sharded["files"] and len(sharded["weights"]) > 2
    assert compare_logits(lm, tmp_path / "hf_sharded", batch) <= TOL


@pytest.mark.slow
def test_shared_expert_and_dense_layer_export_to_qwen2_moe_with_the_same_logits(
    model_dirs: dict[str, Path], lms: dict, batch: torch.Tensor, text: str, tmp_path: Path
) -> None:
    from mai_models.export.hf import compare_logits, export_hf

    lm = lms["shared_dense"]
    assert lm.config.moe_layer_pattern() == [1, 0] and lm.config.moe_shared_expert_intermediate_size == 32
    out = tmp_path / "hf"
    result = export_hf(model_dirs["shared_dense"], out, verify_tokens=64)
    assert result["architecture"] == "Qwen2MoeForCausalLM"
    assert any("shared expert" in note for note in result["notes"])
    assert result["max_abs_logits_diff"] <= TOL
    config = json.loads((out / "config.json").read_text())
    assert config["mlp_only_layers"] == [1] and config["shared_expert_intermediate_size"] == 32
    assert config["norm_topk_prob"] is True
    _check_tokenizer(out, lm, text)

    diff = compare_logits(lm, out, batch)
    assert diff <= TOL, diff
    prompt = batch[1, :16].tolist()
    assert _hf_greedy(out, prompt, 8) == lm.generate_ids(prompt, max_new_tokens=8)  # ends at EOD, as HF


@pytest.mark.slow
def test_top1_pre_softmax_routing_exports_to_qwen2_moe_without_renormalising(
    model_dirs: dict[str, Path], lms: dict, batch: torch.Tensor, tmp_path: Path
) -> None:
    """Mixtral renormalises the top-k weights, so its one expert would get weight 1; Megatron's
    pre-softmax top-1 keeps the expert's softmax probability over all experts, which is Qwen2-MoE's
    norm_topk_prob=False."""
    from mai_models.export.hf import compare_logits, export_hf

    lm = lms["top1"]
    out = tmp_path / "hf"
    result = export_hf(model_dirs["top1"], out, verify_tokens=64)
    config = json.loads((out / "config.json").read_text())
    assert result["architecture"] == "Qwen2MoeForCausalLM" and config["num_experts_per_tok"] == 1
    assert config["norm_topk_prob"] is False
    assert compare_logits(lm, out, batch) <= TOL
    _, stats = lm.logits_with_router_stats(batch)
    assert [sum(counts) for counts in stats["tokens_per_expert"]] == [batch.numel()] * 2  # one expert each


@pytest.mark.slow
def test_generation_is_deterministic_and_stream_yields_the_same_ids(lms: dict, batch: torch.Tensor) -> None:
    lm = lms["tiny"]
    prompt = batch[0, :20].tolist()
    eight = {"max_new_tokens": 8, "stop": ()}  # no end token: exactly 8 ids
    greedy = lm.generate_ids(prompt, **eight)
    assert len(greedy) == 8 and greedy == lm.generate_ids(prompt, **eight)
    assert list(lm.stream_ids(prompt, **eight)) == greedy
    assert greedy[0] == int(lm.logits([prompt])[0, -1].argmax())

    # A stop id ends the generation before it; it is not returned.
    stop = greedy[3]
    assert lm.generate_ids(prompt, max_new_tokens=8, stop={stop}) == greedy[: greedy.index(stop)]

    sampled = lm.generate_ids(prompt, **eight, temperature=1.0, top_p=0.9, seed=7)
    assert sampled == lm.generate_ids(prompt, **eight, temperature=1.0, top_p=0.9, seed=7)
    assert list(lm.stream_ids(prompt, **eight, temperature=1.0, top_p=0.9, seed=7)) == sampled
    assert sampled != greedy  # at temperature 1 a two-step model is near uniform
    # A nucleus that keeps only the most likely token is greedy decoding.
    assert lm.generate_ids(prompt, **eight, temperature=1.0, top_p=1e-9, seed=1) == greedy

    # Text in, text out: the prompt follows an EOD and the text is the decoded ids up to the next one.
    text_prompt = lm.decode(prompt)
    ids = lm.generate_ids(lm.encode_prompt(text_prompt), max_new_tokens=8)
    assert lm.encode_prompt(text_prompt)[0] == lm.eod_id
    assert (
        lm.generate(text_prompt, max_new_tokens=8)
        == lm.decode(ids)
        == "".join(lm.stream(text_prompt, max_new_tokens=8))
    )

    # A prompt longer than the model's window is cut to its last max_length tokens.
    long = batch.flatten().tolist()[:100]
    assert lm.generate_ids(long, max_new_tokens=3) == lm.generate_ids(
        long[-lm.max_length :], max_new_tokens=3
    )
    with pytest.raises(ValueError, match="exceeds"):
        lm.logits([long])


@pytest.mark.slow
def test_router_stats_describe_the_batch(lms: dict, batch: torch.Tensor) -> None:
    for name, moe_layers in (("tiny", 2), ("shared_dense", 1)):
        lm = lms[name]
        logits, stats = lm.logits_with_router_stats(batch)
        assert torch.equal(logits, lm.logits(batch))
        assert len(stats["tokens_per_expert"]) == moe_layers
        for counts in stats["tokens_per_expert"]:
            assert sum(counts) == batch.numel() * lm.config.moe_router_topk
        assert stats["dropped_token_rate"] == [0.0] * moe_layers
        assert all(0 < e <= 1 for e in stats["router_entropy"])


def test_layouts_and_refusals(tmp_path: Path) -> None:
    from mai_models.export.hf import choose_layout
    from mai_models.lm.inference import load_pretrained
    from mai_models.lm.presets import PRESETS

    def variant(**update: object):
        base = PRESETS["tiny"].model
        return type(base).model_validate({**base.model_dump(), **update})

    assert choose_layout(PRESETS["tiny"].model) == "MixtralForCausalLM"
    assert choose_layout(PRESETS["demo"].model) == "Qwen2MoeForCausalLM"  # top-1 pre-softmax + shared
    assert choose_layout(variant(moe_layer_freq=2)) == "Qwen2MoeForCausalLM"
    assert choose_layout(variant(moe_shared_expert_intermediate_size=16)) == "Qwen2MoeForCausalLM"
    assert choose_layout(variant(num_experts=0)) == "LlamaForCausalLM"
    assert choose_layout(variant(moe_router_topk=1, moe_router_pre_softmax=True)) == "Qwen2MoeForCausalLM"
    with pytest.raises(MaiUserError, match="sigmoid"):
        choose_layout(variant(moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True))
    with pytest.raises(MaiUserError, match="model.json not found"):
        load_pretrained(tmp_path)

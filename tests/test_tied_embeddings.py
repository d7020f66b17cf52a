"""``lm.model.tie_embeddings``: one table for input embedding and output layer, counted once, and
exported to Hugging Face as ``embed_tokens`` with ``tie_word_embeddings`` (the PP=2 training check is
in ``test_parallel_layouts.py``)."""

from __future__ import annotations

from pathlib import Path

import torch

from mai_models.lm.presets import PRESETS
from mai_models.lm.sizing import count_parameters, flops_per_token

TIED = PRESETS["tiny"].model.model_copy(update={"tie_embeddings": True})


def test_a_tied_table_is_counted_once_and_still_multiplied() -> None:
    untied = PRESETS["tiny"].model
    table = untied.padded_vocab_size() * untied.hidden_size
    assert count_parameters(TIED)["output_layer"] == 0
    assert count_parameters(untied)["total"] - count_parameters(TIED)["total"] == table
    assert flops_per_token(TIED) == flops_per_token(untied)  # the h x V output matmul still runs


def test_tied_model_exports_to_hugging_face_with_the_same_logits(tmp_path: Path) -> None:
    from mai_models.export.hf import (
        _write_config,
        _write_weights,
        choose_layout,
        convert_state_dict,
        hf_config,
        load_hf,
    )
    from mai_models.lm.layout_init import init_layout_invariant
    from mai_models.lm.model import build_model
    from mai_models.lm.model_config import ParallelConfig
    from mai_models.lm.process_groups import destroy_parallel, init_parallel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    init_parallel(ParallelConfig(), seed=3)
    try:
        model = build_model(TIED, ParallelConfig())
        init_layout_invariant([model], seed=3)
        state = model.state_dict()
        assert "output_layer.weight" not in state  # the output layer reads the embedding table
        layout = choose_layout(TIED)
        tensors = convert_state_dict(state, TIED, layout)
        assert "lm_head.weight" not in tensors
        _write_weights(tensors, tmp_path, max_shard_bytes=10**9)
        config = hf_config(
            TIED, layout, float(model.config.layernorm_epsilon), {"bos": 0, "eos": 0, "pad": 0}
        )
        assert config.tie_word_embeddings is True
        _write_config(config, TIED.rotary_base, tmp_path)
        hf = load_hf(tmp_path)  # fails on any missing or unused weight
        ids = torch.randint(0, TIED.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
        model.eval()
        with torch.no_grad():
            ours = model(ids, torch.arange(32).unsqueeze(0), None)[..., : TIED.vocab_size]
            theirs = hf(input_ids=ids).logits
        assert torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)
        assert (ours - theirs).abs().max() <= 1e-4
    finally:
        destroy_parallel()
        torch.set_num_threads(threads)

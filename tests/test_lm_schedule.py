"""The learning-rate schedule and AdamW groups of the pretraining loop, with Megatron-LM's decoupled
learning rate for the input embedding and output layer (``lm.decoupled_lr``)."""

from __future__ import annotations

import pytest
import torch

from mai_models.lm.optimizers import optimizer_param_groups
from mai_models.lm.train_config import TrainConfig
from mai_models.lm.trainer import lr_at


class _NamedLikeMegatron(torch.nn.Module):
    """Parameters named as in Megatron's GPTModel, so that the groups see real names."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Module()
        self.embedding.word_embeddings = torch.nn.Embedding(16, 4)
        self.layer = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.output_layer = torch.nn.Linear(4, 16, bias=False)


def test_the_embedding_and_output_layer_have_their_own_group() -> None:
    model = _NamedLikeMegatron()
    groups = optimizer_param_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    by_flags = {
        (g["weight_decay"], g["decoupled"]): sorted(names[id(p)] for p in g["params"]) for g in groups
    }
    assert by_flags == {
        (0.1, True): ["embedding.word_embeddings.weight", "output_layer.weight"],
        (0.1, False): ["layer.weight"],
        (0.0, False): ["layer.bias", "norm.bias", "norm.weight"],
    }


def test_decoupled_lr_follows_the_same_warmup_and_cosine() -> None:
    cfg = TrainConfig(steps=110, lr=2e-3, min_lr=2e-4, warmup_steps=10, decoupled_lr=1e-2)
    assert lr_at(9, cfg) == pytest.approx(2e-3) and lr_at(9, cfg, decoupled=True) == pytest.approx(1e-2)
    assert lr_at(4, cfg, decoupled=True) == pytest.approx(5e-3)
    # Without decoupled_min_lr the floor keeps min_lr's ratio to the peak.
    assert lr_at(110, cfg, decoupled=True) == pytest.approx(1e-3)
    assert lr_at(60, cfg, decoupled=True) / lr_at(60, cfg) == pytest.approx(5.0)
    floor = cfg.model_copy(update={"decoupled_min_lr": 5e-4})
    assert lr_at(110, floor, decoupled=True) == pytest.approx(5e-4)
    plain = TrainConfig(steps=110, lr=2e-3, min_lr=2e-4, warmup_steps=10)
    assert [lr_at(s, plain, decoupled=True) for s in (0, 50, 110)] == [lr_at(s, plain) for s in (0, 50, 110)]


def test_a_decoupled_floor_above_its_peak_is_refused() -> None:
    with pytest.raises(ValueError, match="decoupled_min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-4, decoupled_lr=2e-3, decoupled_min_lr=3e-3)


def test_wsd_holds_the_peak_then_decays_linearly_over_its_last_fraction() -> None:
    cfg = TrainConfig(
        steps=100, lr=2e-3, min_lr=0.0, warmup_steps=10, lr_decay_style="wsd", lr_wsd_decay_fraction=0.4
    )
    assert lr_at(4, cfg) == pytest.approx(1e-3)
    assert [lr_at(s, cfg) for s in (10, 35, 60)] == [pytest.approx(2e-3)] * 3
    assert lr_at(80, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == 0.0
    decoupled = cfg.model_copy(update={"decoupled_lr": 1e-2})
    assert lr_at(80, decoupled, decoupled=True) == pytest.approx(5e-3)

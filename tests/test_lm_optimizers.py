"""The LM optimizers: which parameters Muon takes, its orthogonalised and RMS-matched update, and
the AdamW half of MuonAdamW stepping exactly as torch's AdamW."""

from __future__ import annotations

import pytest
import torch

from mai_models.lm.optimizers import MuonAdamW, build_optimizer, optimizer_param_groups, orthogonalise
from mai_models.lm.train_config import TrainConfig


class _NamedLikeMegatron(torch.nn.Module):
    """Parameter names as in Megatron's GPTModel with an MoE layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Module()
        self.embedding.word_embeddings = torch.nn.Embedding(16, 8)
        self.decoder = torch.nn.Module()
        self.decoder.qkv = torch.nn.Linear(8, 24)
        self.decoder.mlp = torch.nn.Module()
        self.decoder.mlp.router = torch.nn.Linear(8, 4, bias=False)
        self.decoder.mlp.fc1 = torch.nn.Linear(8, 32, bias=False)
        self.norm = torch.nn.LayerNorm(8)
        self.output_layer = torch.nn.Linear(8, 16, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding.word_embeddings(ids)
        x = (
            x
            + self.decoder.qkv(x)[..., :8]
            + self.decoder.mlp.fc1(x)[..., :8] * self.decoder.mlp.router(x).sum(-1, True)
        )
        return self.output_layer(self.norm(x))


def _names(model: torch.nn.Module, groups: list[dict]) -> dict[tuple, list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        (g["weight_decay"], g["decoupled"], g["muon"]): sorted(names[id(p)] for p in g["params"])
        for g in groups
    }


def test_muon_takes_the_hidden_matrices_only() -> None:
    model = _NamedLikeMegatron()
    assert _names(model, optimizer_param_groups(model, 0.1, muon=True)) == {
        (0.1, False, True): ["decoder.mlp.fc1.weight", "decoder.qkv.weight"],
        (0.1, True, False): ["embedding.word_embeddings.weight", "output_layer.weight"],
        (0.1, False, False): ["decoder.mlp.router.weight"],
        (0.0, False, False): ["decoder.qkv.bias", "norm.bias", "norm.weight"],
    }
    assert not any(g["muon"] for g in optimizer_param_groups(model, 0.1))


@pytest.mark.parametrize("shape", [(32, 8), (8, 32), (16, 16)])
def test_newton_schulz_gives_a_near_orthogonal_matrix(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    g = torch.randn(shape) @ torch.diag(torch.logspace(-1, 0, shape[1]))  # condition ~10
    singular = torch.linalg.svdvals(orthogonalise(g))
    assert orthogonalise(g).shape == shape
    # The quintic iteration trades exactness for speed: every singular value lands near 1.
    assert singular.min() > 0.5 and singular.max() < 1.3, singular


def test_a_muon_update_has_the_rms_of_an_adamw_update() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 16))
    before = w.detach().clone()
    w.grad = torch.randn(64, 16) * 1e-3  # the scale of the gradient does not matter to Muon
    opt = MuonAdamW([{"params": [w], "weight_decay": 0.0, "muon": True}], lr=1e-2, betas=(0.9, 0.95))
    opt.step()
    rms = (w.detach() - before).pow(2).mean().sqrt().item()
    assert 0.1 * 1e-2 < rms < 0.3 * 1e-2  # Moonlight's match: 0.2 x lr, as AdamW's typical update
    assert set(opt.state[w]) == {"step", "momentum_buffer"}


def _assert_same_after_steps(*runs: tuple[torch.nn.Module, torch.optim.Optimizer]) -> None:
    """Five steps of each (model, optimizer) on one batch; then every model holds the same weights."""
    ids = torch.randint(0, 16, (4, 6))
    for _ in range(5):
        for model, opt in runs:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
            opt.step()
    (first, _), *others = runs
    for other, _ in others:
        for (name, p), q in zip(first.named_parameters(), other.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_the_adamw_groups_step_exactly_as_torch_adamw() -> None:
    torch.manual_seed(0)
    ours, theirs = _NamedLikeMegatron(), _NamedLikeMegatron()
    theirs.load_state_dict(ours.state_dict())
    a = MuonAdamW(optimizer_param_groups(ours, 0.1), lr=3e-3, betas=(0.9, 0.95))
    b = torch.optim.AdamW(optimizer_param_groups(theirs, 0.1), lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    _assert_same_after_steps((ours, a), (theirs, b))


def test_muon_lowers_the_loss_and_its_state_round_trips() -> None:
    torch.manual_seed(0)
    model = _NamedLikeMegatron()
    opt = build_optimizer([model], "muon", lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    ids = torch.randint(0, 16, (8, 6))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    again = build_optimizer([model], "muon", lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    again.load_state_dict(opt.state_dict())
    assert all(
        torch.equal(again.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])
        for g in opt.param_groups
        if g["muon"]
        for p in g["params"]
    )


def test_muon_refuses_tensor_parallel_slices() -> None:
    with pytest.raises(ValueError, match="muon needs lm.parallel.tensor"):
        TrainConfig(optimizer="muon", parallel={"tensor": 2})
    with pytest.raises(ValueError, match="muon needs lm.parallel.tensor"):
        TrainConfig(optimizer="muon", parallel={"expert_tensor": 2})
    assert TrainConfig(optimizer="muon", parallel={"expert": 2}).optimizer == "muon"


def test_adamw_runs_the_foreach_update_on_cpu_and_steps_as_the_per_tensor_loop() -> None:
    torch.manual_seed(0)
    ours, theirs = _NamedLikeMegatron(), _NamedLikeMegatron()
    theirs.load_state_dict(ours.state_dict())
    a = build_optimizer([ours], "adamw", lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    b = torch.optim.AdamW(optimizer_param_groups(theirs, 0.1), lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    assert a.defaults["foreach"] is True and b.defaults["foreach"] is None  # torch's CPU default: loop
    _assert_same_after_steps((ours, a), (theirs, b))

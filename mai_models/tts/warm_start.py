"""A speech model's warm start: the parent's weights (the champion voice's acoustic model or vocoder)
loaded into a new run wherever shapes agree, with their AdamW moments, and a report of what was
taken and what starts fresh.

The acoustic model's phoneme embedding is matched by phoneme, not by row: the vocabulary is built
from the corpus in sorted order, so one new phoneme in new data shifts every id after it. Rows of
phonemes both vocabularies know are taken, new phonemes' rows start fresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

# Parameter -> for each of its rows, the parent's row that holds the same symbol (None: new symbol).
RowMap = dict[str, list[int | None]]


def optimizer_moments(model: nn.Module, optimizer_state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An AdamW ``state_dict`` keyed by parameter name instead of position, so that another model
    (another size, another order) can find its own parameters in it."""
    names = [name for name, _ in model.named_parameters()]
    return {names[i]: dict(state) for i, state in optimizer_state["state"].items()}


def symbol_rows(current: list[str], parent: list[str]) -> list[int | None]:
    index = {token: i for i, token in enumerate(parent)}
    return [index.get(token) for token in current]


def _by_rows(own: torch.Tensor, theirs: torch.Tensor, rows: list[int | None]) -> torch.Tensor:
    merged = own.detach().clone()
    for i, j in enumerate(rows):
        if j is not None:
            merged[i] = theirs[j]
    return merged


def _moment(own: torch.Tensor, theirs: torch.Tensor, rows: list[int | None] | None) -> torch.Tensor:
    """A parent's moment for ``own``; remapped rows of new symbols start at zero, as fresh ones do."""
    return _by_rows(torch.zeros_like(own), theirs, rows) if rows is not None else theirs.clone()


def load_parent(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    moments: dict[str, dict[str, Any]],
    rows: RowMap | None = None,
) -> dict[str, Any]:
    """Take every tensor of ``weights`` whose name and shape the model shares (``rows``: matched row
    by row instead); their moments keep the parent's step count, so Adam's bias correction stays
    consistent with them. The learning-rate schedule is the new run's own, from its first step."""
    rows = rows or {}
    params = dict(model.named_parameters())
    own = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    taken, fresh, remapped = [], [], {}
    moments_taken = 0
    for name, tensor in own.items():
        theirs = weights.get(name)
        matched = rows.get(name)
        if theirs is not None and matched is not None and theirs.shape[1:] == tensor.shape[1:]:
            loaded[name] = _by_rows(tensor, theirs, matched)
            remapped[name] = f"{sum(j is not None for j in matched)} of {len(matched)} rows"
        elif theirs is not None and theirs.shape == tensor.shape:
            loaded[name] = theirs
            taken.append(name)
        else:
            fresh.append(name)
            continue
        state = moments.get(name)
        if name in params and state and state["exp_avg"].shape == theirs.shape:
            optimizer.state[params[name]] = {
                "step": state["step"].clone(),
                **{k: _moment(tensor, state[k], matched) for k in ("exp_avg", "exp_avg_sq")},
            }
            moments_taken += 1
    model.load_state_dict(loaded, strict=False)
    return {
        "tensors_taken": sorted(taken),
        "tensors_fresh": sorted(fresh),
        "tensors_remapped": remapped,
        "optimizer_moments_taken": moments_taken,
        "optimizer_moments_fresh": len(params) - moments_taken,
    }


def read_parent(parent_dir: Path, weights_file: str, optimizer_file: str) -> tuple[dict, dict]:
    """The parent's weights and named moments (no moments: a voice trained before they were kept)."""
    weights = torch.load(parent_dir / weights_file, map_location="cpu", weights_only=True)
    moments_path = parent_dir / optimizer_file
    moments = torch.load(moments_path, map_location="cpu", weights_only=True) if moments_path.exists() else {}
    return weights, moments

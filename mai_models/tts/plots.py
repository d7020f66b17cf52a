"""Mel-spectrogram figures for MLflow: reference above, model output below, same colour scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_mels(reference: np.ndarray | None, predicted: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        [("reference", reference), ("model", predicted)] if reference is not None else [("model", predicted)]
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), squeeze=False)
    low = min(float(p.min()) for _, p in panels)
    high = max(float(p.max()) for _, p in panels)
    for ax, (name, mel) in zip(axes[:, 0], panels, strict=True):
        image = ax.imshow(mel, origin="lower", aspect="auto", vmin=low, vmax=high, interpolation="none")
        ax.set_ylabel(f"{name}\nmel bin")
    axes[-1, 0].set_xlabel("frame")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="log magnitude")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

"""Importing Megatron-Core on a CPU without loading TorchInductor.

At import, Megatron wraps its fused kernels (bias-GeLU, SwiGLU, ...) in ``torch.compile``
(``megatron.core.jit.jit_fuser``), and the first ``torch.compile`` call imports TorchDynamo and
TorchInductor: measured 11 s of a 15 s Megatron import on 2 shared cores (4 s without), paid by every
rank of every launch. The CPU configuration turns those fusions off (``model.transformer_config``), so
the wrapped kernels are never called there; imported while ``torch.compile`` hands its function back
unchanged, they stay plain functions. On a GPU nothing changes: the fusions run compiled.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def _eager(fn: Callable | None = None, *args: Any, **kwargs: Any) -> Any:
    return fn if fn is not None else (lambda f: f)


def import_megatron() -> None:
    """Import ``megatron.core`` (once per process); on CPU with ``torch.compile`` as the identity."""
    import torch

    if "megatron.core" in sys.modules:
        return
    if torch.cuda.is_available():
        import megatron.core  # noqa: F401

        return
    compile_ = torch.compile
    torch.compile = _eager
    try:
        import megatron.core  # noqa: F401
    finally:
        torch.compile = compile_

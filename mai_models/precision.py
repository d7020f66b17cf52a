"""Training precision shared by the LM and the speech models: ``fp32``, ``bf16`` (autocast: bf16
matmuls and convolutions over fp32 weights, optimizer state and losses) or ``auto``.

``auto`` is bf16 where the hardware multiplies bf16 natively: any CUDA device, or a CPU with AVX-512
BF16 or AMX. On the demo's 2-core EPYC a bf16 GEMM of the demo LM's shapes ran 4x the fp32 rate
(720 against 161 GFLOP/s); on a CPU without those instructions bf16 is emulated and slower than fp32,
so ``auto`` keeps fp32 there.

Config modules import ``Precision`` from here, so torch is imported only where a context is made:
Dagster's definitions load without it.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Literal

Precision = Literal["auto", "fp32", "bf16"]
ResolvedPrecision = Literal["fp32", "bf16"]
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bf16 dot-product instructions (read from Linux's CPU flags)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_NATIVE_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def resolve_precision(precision: Precision, device_type: str) -> ResolvedPrecision:
    """``auto`` made concrete for ``device_type`` ("cpu" or "cuda")."""
    if precision != "auto":
        return precision
    if device_type == "cuda" or cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def autocast(precision: Precision, device_type: str) -> AbstractContextManager:
    """The autocast context of a training step at ``precision`` on ``device_type``."""
    import torch

    if resolve_precision(precision, device_type) == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()


def full_precision(device_type: str) -> AbstractContextManager:
    """Autocast off, for what must stay fp32 inside a bf16 step: losses, alignment scores, and on CPU
    attention, whose fused kernel ran slower in bf16 than in fp32 here."""
    import torch

    return torch.autocast(device_type, enabled=False)

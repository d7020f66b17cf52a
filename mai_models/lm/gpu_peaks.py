"""Datasheet peak of a GPU model for MFU: dense bf16 tensor-core FLOP/s (training runs under bf16
autocast), never the 2:4-sparsity figure datasheets print next to it."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPeak:
    model: str
    flops: float  # dense bf16 FLOP/s of one device


# First match wins, so a variant (PCIe, NVL) comes before its family's default (SXM). Names are
# matched on word boundaries because one model's name can hide in another's ("L4" in "L40S",
# "B200" in "GB200", "H200" in "GH200").
_TABLE: tuple[tuple[str, str, float], ...] = (
    ("GB200", r"\bGB200\b", 2500e12),
    ("B200", r"\bB200\b", 2250e12),
    ("GH200", r"\bGH200\b", 989.4e12),
    ("H200 NVL", r"\bH200\b.*\bNVL\b", 835.5e12),
    ("H200 SXM", r"\bH200\b", 989.4e12),
    ("H100 NVL", r"\bH100\b.*\bNVL\b", 835.5e12),
    ("H100 PCIe", r"\bH100\b.*\bPCIE\b", 756e12),
    ("H100 SXM", r"\bH100\b", 989.4e12),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("A100", r"\bA100\b", 312e12),  # SXM4 and PCIe, 40 and 80 GB alike
    ("L40S", r"\bL40S\b", 362e12),
    ("L40", r"\bL40\b", 181e12),
    ("L4", r"\bL4\b", 121e12),
    # No public A10G datasheet; the A10's figure bounds it from above, so MFU errs low, never high.
    ("A10G", r"\bA10G\b", 125e12),
    ("A10", r"\bA10\b", 125e12),
    ("A40", r"\bA40\b", 149.7e12),
    ("MI300X", r"\bMI300X\b", 1307.4e12),
    ("MI250X", r"\bMI250X\b", 383e12),
)


def gpu_peak(device_name: str) -> GpuPeak | None:
    """The table entry for a ``torch.cuda.get_device_name()`` string, or None for a model not in it."""
    name = device_name.upper().replace("-", " ").replace("_", " ")
    for model, pattern, flops in _TABLE:
        if re.search(pattern, name):
            return GpuPeak(model, flops)
    return None

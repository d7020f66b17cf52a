"""hf_export: the Megatron MoE checkpoint as a Hugging Face checkpoint, logits checked against ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.executor.step import Step, StepContext


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    from mai_models.export.hf import export_hf

    report = export_hf(ctx.input("moe_pretrain"), out, verify_tokens=64)
    return {k: v for k, v in report.items() if k != "files"}


STEP = Step(
    name="hf_export",
    description="The Megatron MoE checkpoint as a Hugging Face checkpoint, logits checked against ours.",
    group="evaluation",
    command="eval build",
    build=build,
    upstream=("moe_pretrain",),
    kinds=frozenset({"huggingface", "safetensors"}),
)

"""moe_pretrain: the Megatron-Core MoE GPT trained by torchrun, registered as a candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.executor.step import Step, StepContext
from mai_models.lm.pretrain import FINAL_METRICS, UPSTREAM, build_pretrain, lm_config
from mai_models.tracking.registry import LM_MODEL

NAME = "moe_pretrain"


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    return build_pretrain(ctx, out, ctx.params.lm)


def register(ctx: StepContext, run_id: str | None, dvc_hash: str | None) -> dict[str, Any]:
    """A version of the registered LM that points at the DVC-tracked checkpoint, alias ``candidate``."""
    checkpoint_uri = (ctx.output / "checkpoint").as_uri()
    if run_id is None:
        return {"checkpoint_uri": checkpoint_uri}
    from mai_models.executor.versioning import read_manifest
    from mai_models.tracking.registry import register_candidate

    stats = (read_manifest(ctx.output) or {})["stats"]
    tags = {
        "mai.checkpoint_uri": checkpoint_uri,
        "mai.data_version": ctx.version,
        **({"mai.dvc_hash": dvc_hash} if dvc_hash else {}),
        **{f"mai.upstream.{k}": v for k, v in ctx.upstream_versions().items()},
    }
    metrics = {k: stats[k] for k in FINAL_METRICS if stats.get(k) is not None}
    params = {"preset": ctx.params.lm.preset, **stats["parameters"]}
    version = register_candidate(ctx.settings, LM_MODEL, run_id, tags, params, metrics)
    return {"model_version": version, "registered_model": LM_MODEL, "checkpoint_uri": checkpoint_uri}


STEP = Step(
    name=NAME,
    description="Megatron-Core MoE GPT trained by torchrun; checkpoint in DVC, `mai-moe` @ candidate.",
    group="lm",
    command="lm train",
    build=build,
    upstream=UPSTREAM,
    params=("lm",),
    config=lambda params: lm_config(params.lm),
    code=("mai_models.lm.entry",),
    kinds=frozenset({"pytorch", "python"}),
    compute="heavy",
    automation="scheduled",
    after_commit=register,
)

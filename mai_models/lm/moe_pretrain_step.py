"""moe_pretrain: the Megatron-Core MoE GPT trained by torchrun, registered as a candidate.

With ``lm.init_from: champion`` it is a retraining: it starts from the ``mai-moe`` champion's weights
and AdamW state (see ``tracking/warm_start`` for which version that is), and that version is part of
this step's version, so a new champion means a new version. The registered candidate records its
parent (``mai.parent_version``), which the submission's lineage shows as v1 -> v2.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mai_models.executor.step import Step, StepContext
from mai_models.lm.pretrain import FINAL_METRICS, UPSTREAM, build_pretrain, lm_config
from mai_models.tracking.champion_output import TAG_TOKENIZER_SHA256
from mai_models.tracking.registry import LM_MODEL
from mai_models.tracking.warm_start import WARM_START_FILE, Start, read_record, step_start

NAME = "moe_pretrain"


def start(ctx: StepContext) -> Start:
    return step_start(ctx, LM_MODEL, ctx.params.lm.init_from, lm_config(ctx.params.lm))


def inputs(ctx: StepContext) -> dict[str, Any] | None:
    """The parent a warm start continues from (nothing for a scratch start: the config says it)."""
    if ctx.params.lm.init_from == "scratch":
        return None
    return {"parent": start(ctx).identity()}


def build(ctx: StepContext, out: Path) -> dict[str, Any]:
    return build_pretrain(ctx, out, ctx.params.lm, start(ctx))


def register(ctx: StepContext, run_id: str | None, dvc_hash: str | None) -> dict[str, Any]:
    """A version of the registered LM that points at the DVC-tracked checkpoint, alias ``candidate``."""
    checkpoint_uri = (ctx.output / "checkpoint").as_uri()
    if run_id is None:
        return {"checkpoint_uri": checkpoint_uri}
    from mai_models.executor.versioning import read_manifest
    from mai_models.tracking.registry import register_candidate
    from mai_models.tracking.warm_start import TAG_INIT_FROM, TAG_PARENT_VERSION

    stats = (read_manifest(ctx.output) or {})["stats"]
    started = read_record(ctx.output) or {}
    tokenizer = hashlib.sha256((ctx.output / "tokenizer.json").read_bytes()).hexdigest()
    tags = {
        "mai.checkpoint_uri": checkpoint_uri,
        "mai.data_version": ctx.version,
        **({"mai.dvc_hash": dvc_hash} if dvc_hash else {}),
        **{f"mai.upstream.{k}": v for k, v in ctx.upstream_versions().items()},
        TAG_TOKENIZER_SHA256: tokenizer,
        TAG_INIT_FROM: started.get("init_from", "scratch"),
        TAG_PARENT_VERSION: started.get("parent") or "none",
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
    inputs=inputs,
    artifacts=(WARM_START_FILE,),
    after_commit=register,
)

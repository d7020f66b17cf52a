"""``mai lm plan --launch``: a preset's TP/PP/EP shape divided down to a few CPU processes, trained for a
few steps on the tiny model with the project's token shards, so that a many-node layout is proven to
run (the same schedules, groups and checkpoints), not only planned."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

from mai_models.errors import MaiUserError
from mai_models.lm.model_config import ParallelConfig
from mai_models.settings import Settings


def smallest_world(tp: int, pp: int, ep: int) -> int:
    """Fewest processes holding TP x PP x EP (expert TP = TP): DP must make TP x DP a multiple of
    EP x TP, Megatron's rule for folding the experts into the data-parallel ranks."""
    dp = math.lcm(tp, ep * tp) // tp
    return tp * pp * dp


def tiny_layout(parallel: ParallelConfig, max_processes: int) -> ParallelConfig:
    """Halve TP, PP and EP together (the layout's shape) until the smallest world fits."""
    tp, pp, ep = parallel.tp, parallel.pp, parallel.ep
    while smallest_world(tp, pp, ep) > max_processes:
        if (tp, pp, ep) == (1, 1, 1):
            raise MaiUserError(f"no layout fits {max_processes} processes")
        tp, pp, ep = max(1, tp // 2), max(1, pp // 2), max(1, ep // 2)
    return ParallelConfig(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, expert_model_parallel_size=ep
    )


def launch_tiny(
    preset_parallel: ParallelConfig,
    settings: Settings,
    shards: Path,
    tokenizer: Path,
    max_processes: int,
    steps: int,
) -> dict:
    """Train the tiny model ``steps`` steps under ``tiny_layout`` on the project's token shards and
    tokenizer; returns the curve."""
    import torch

    from mai_models.lm.launch import ENTRY_MODULE, launch_env, torchrun_prefix
    from mai_models.lm.presets import PRESETS
    from mai_models.lm.run_spec import METRICS_FILE, RunSpec
    from mai_models.lm.train_config import TrainConfig

    layout = tiny_layout(preset_parallel, max_processes)
    world = smallest_world(layout.tp, layout.pp, layout.ep)
    layout.validate(world, PRESETS["tiny"].model)
    dp = layout.dp(world)
    if not (shards / "_manifest.json").exists():
        raise MaiUserError(f"no token shards at {shards}: run `mai data tokenize` first")
    cpu_experts = {} if torch.cuda.is_available() or layout.ep == 1 else {"expert_tensor": 1}
    work = settings.state_dir / "plan-launch" / f"tp{layout.tp}-pp{layout.pp}-ep{layout.ep}-dp{dp}"
    train = TrainConfig.model_validate(
        {
            "preset": "tiny",
            "steps": steps,
            "micro_batch_size": 1,
            "global_batch_size": dp * layout.pp,  # PP micro-batches per replica: the pipeline fills
            "eval_interval": steps,
            "eval_iters": 1,
            "checkpoint_interval": steps,
            "warmup_steps": 1,
            # The world is sized by the preset's rule (expert TP = TP, as on its GPUs); on CPU the
            # experts are not tensor-split: gloo cannot all-gather the dispatcher's uneven token counts.
            "parallel": {"tensor": layout.tp, "pipeline": layout.pp, "expert": layout.ep, **cpu_experts},
            "launch": {"nproc_per_node": world, "threads_per_rank": 1},
        }
    )
    if work.exists():
        shutil.rmtree(work)  # a fresh run each time: a plan launch proves the layout, it resumes nothing
    work.mkdir(parents=True)
    spec = RunSpec(
        train=train, shards_dir=shards, tokenizer_dir=tokenizer, work_dir=work, peak_flops_per_device=1e10
    )
    (work / "spec.json").write_text(spec.model_dump_json(indent=2))
    command = [*torchrun_prefix(train.launch), "-m", ENTRY_MODULE, str(work / "spec.json")]
    env = launch_env(settings)
    done = subprocess.run(command, cwd=settings.root, env=env, capture_output=True, text=True)
    if done.returncode:
        raise MaiUserError(f"the tiny launch failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")
    rows = [json.loads(line) for line in (work / METRICS_FILE).read_text().splitlines()]
    return {
        "layout": f"TP={layout.tp} PP={layout.pp} EP={layout.ep} DP={dp}"
        + (" expert-TP=1" if cpu_experts else ""),
        "processes": world,
        "steps": steps,
        "train_loss": [r["train/loss"] for r in rows if "train/loss" in r],
        "work_dir": str(work),
    }

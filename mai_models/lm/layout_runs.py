"""Several training runs one after another in one torchrun launch, each under its own parallel layout
of the same world: ``torchrun --nproc_per_node N -m mai_models.lm.layout_runs PLAN.json``.

Starting the ranks (imports, rendezvous) costs more than a few tiny steps, so layout comparisons
(the parallel tests, ``mai bench parallel``, ``mai lm plan --launch``) run every layout of one world
size in one launch. A run may start from another run's checkpoint (``resume_from``), which is how a
resharded resume is exercised: the checkpoint saved under one layout is copied into the new run's
checkpoint directory and loaded under this one.

PLAN.json: ``{"runs": [{"spec": "path/spec.json", "resume_from": "path/iter_0000002" | null}, ...]}``.
Rank 0 prints one ``{"event": "layout_run", ...}`` line per finished run.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def _seed_checkpoint(source: Path, work_dir: Path, rank: int) -> None:
    import torch.distributed as dist

    if rank == 0:
        target = work_dir / "checkpoints" / source.name
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target)
    if dist.is_initialized():
        dist.barrier()


def run_plan(plan: dict) -> list[dict]:
    import os

    import torch
    import torch.distributed as dist

    from mai_models.lm.process_groups import destroy_parallel
    from mai_models.lm.run_spec import RunSpec
    from mai_models.lm.trainer import train

    done = []
    try:
        for item in plan["runs"]:
            spec = RunSpec.model_validate_json(Path(item["spec"]).read_text())
            rank = int(os.environ.get("RANK", "0"))
            if item.get("resume_from"):
                if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                    # Every rank waits for rank 0's copy; the trainer reuses this process group.
                    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
                _seed_checkpoint(Path(item["resume_from"]), spec.work_dir, rank)
            started = time.perf_counter()
            summary = train(spec)
            record = {
                "event": "layout_run",
                "work_dir": str(spec.work_dir),
                "parallel": spec.train.parallel.model_dump(),
                "seconds": time.perf_counter() - started,
                "resumed_from": summary.resumed_from,
                "final_train_loss": summary.final_train_loss,
            }
            if rank == 0:
                print(json.dumps(record), flush=True)
            done.append(record)
    finally:
        if dist.is_initialized():
            destroy_parallel()
    return done


def main(argv: list[str] | None = None) -> int:
    from mai_models.lm.entry import json_file_main

    return json_file_main(
        argv, "python -m mai_models.lm.layout_runs PLAN.json", lambda text: run_plan(json.loads(text))
    )


if __name__ == "__main__":
    sys.exit(main())

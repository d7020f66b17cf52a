"""A checkpoint save must not leave OpenMP teams behind on gloo's threads: libgomp then manages more
threads than there are cores and cuts every thread's spin-wait, which made each later MoE step ~55%
slower on 2 cores. Each check runs in a fresh process, whose thread count no other test has touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PRELUDE = """
import json, os, sys
import torch
torch.set_num_threads(2)
from mai_models.lm.megatron_import import import_megatron
import_megatron()
from mai_models.lm.model_config import ParallelConfig
from mai_models.lm.process_groups import init_parallel
init_parallel(ParallelConfig(), seed=1)
import torch.distributed as dist

def tasks():
    # An OpenMP worker a gloo thread starts inherits that thread's name.
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{tid}/comm").read().strip())
        except FileNotFoundError:  # a thread that ended while we listed
            pass
    return names.count("pt_gloo_runloop")
"""

GATHER = """
from contextlib import nullcontext
from mai_models.lm.dist_checkpoint import _checkpoint_io
before = tasks()
with _checkpoint_io() if sys.argv[1] == "guarded" else nullcontext():
    dist.all_gather_object([None], b"x" * 200_000)
print(json.dumps({"new_threads": tasks() - before, "threads_after": torch.get_num_threads()}))
dist.destroy_process_group()
"""

SAVE = """
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from mai_models.lm.dist_checkpoint import save_checkpoint
from mai_models.lm.model import build_model_chunks
from mai_models.lm.optimizers import build_optimizer
from mai_models.lm.presets import PRESETS

chunks = build_model_chunks(PRESETS["demo"].model, ParallelConfig())
ddp = [
    DistributedDataParallel(
        config=c.config, ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True), module=c
    )
    for c in chunks
]
optimizer = build_optimizer(ddp, "adamw", 1e-3, (0.9, 0.95), 0.1)
before = tasks()
save_checkpoint(Path(sys.argv[1]), 1, ddp, optimizer, {"optimizer_steps": 1, "world_size": 1})
print(json.dumps({"new_threads": tasks() - before, "threads_after": torch.get_num_threads()}))
dist.destroy_process_group()
"""


def _run(script: str, arg: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path\n" + PRELUDE + script, arg],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_object_gather_on_gloo_starts_an_openmp_team():
    # Why the guard exists: the copy out of a large gathered object runs on a gloo thread, which
    # starts its own OpenMP worker and keeps it.
    assert _run(GATHER, "bare")["new_threads"] >= 1


def test_the_checkpoint_guard_keeps_gloo_threads_serial():
    result = _run(GATHER, "guarded")
    assert result == {"new_threads": 0, "threads_after": 2}


def test_saving_the_demo_moe_leaves_no_new_threads(tmp_path):
    result = _run(SAVE, str(tmp_path / "ckpt"))
    assert result == {"new_threads": 0, "threads_after": 2}
    assert any((tmp_path / "ckpt").iterdir())

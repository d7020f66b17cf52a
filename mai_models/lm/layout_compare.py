"""The tiny preset trained under every CPU layout of the parallelism plan from the same seed, plus
resharded resumes, in one torchrun launch per world size (``layout_runs``: rank start-up is paid
three times, not once per layout). Shared by ``tests/test_parallel_layouts.py`` and ``mai bench
parallel``, so the benchmark measures exactly the runs the tests check.

Launch order follows the checkpoints the resumes need: 4 processes (TP=2 x PP=2, EP=2 x PP=2,
TP=2 x EP=2), then 1 process (the reference, then TP=2 x PP=2 -> 1), then 2 processes (TP=2, PP=2,
EP=2 x DP=2, then 1 -> PP=2 and EP=2 x DP=2 -> TP=2, the latter from the run just before it).
Micro-batch 1 and global batch 4: every pipeline runs several micro-batches per step (4 on one
process, 2 per replica with DP=2). One thread per rank.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mai_models.lm.run_spec import METRICS_FILE, RunSpec
from mai_models.lm.train_config import LaunchConfig, TrainConfig

# Saved at RESUME_STEP, resumed for the steps after it: two steps show the optimizer state came back
# too (step RESUME_STEP + 1 runs on the loaded weights, the step after it on the loaded moments).
STEPS = 4
RESUME_STEP = 2
REFERENCE = "one"
LAYOUTS: dict[str, tuple[int, dict]] = {  # name -> (processes, lm.parallel)
    REFERENCE: (1, {}),
    "tp2": (2, {"tensor": 2}),
    "pp2": (2, {"pipeline": 2}),
    "ep2_dp2": (2, {"expert": 2}),
    "tp2_pp2": (4, {"tensor": 2, "pipeline": 2}),
    "ep2_pp2": (4, {"expert": 2, "pipeline": 2}),
    # Experts not tensor-split (Megatron's MoE parallel folding): with expert-TP = 2 the alltoall
    # dispatcher all-gathers uneven token counts over TP, which gloo cannot (NCCL can).
    "tp2_ep2": (4, {"tensor": 2, "expert": 2, "expert_tensor": 1}),
}
RESHARDS: dict[str, tuple[str, int, dict]] = {  # name -> (saved by, resumed on processes, lm.parallel)
    "tp2_pp2_to_1": ("tp2_pp2", 1, {}),
    "1_to_pp2": (REFERENCE, 2, {"pipeline": 2}),
    "ep2_dp2_to_tp2": ("ep2_dp2", 2, {"tensor": 2}),
}
WORLD_ORDER = (4, 1, 2)


@dataclass(frozen=True)
class Run:
    """One training run of a launch: its name (work directory), layout and where it starts."""

    name: str
    parallel: dict
    resume_from: str | None = None  # a run's name: its RESUME_STEP checkpoint is loaded
    model: dict = field(default_factory=dict)  # lm.model overrides


@dataclass
class Comparison:
    root: Path
    logs: dict[int, subprocess.CompletedProcess] = field(default_factory=dict)  # world size -> launch

    def events(self, world: int) -> dict[str, dict]:
        """The ``layout_run`` lines rank 0 printed for the runs that finished, by run name."""
        out = {}
        for line in self.logs[world].stdout.splitlines():
            if line.startswith('{"event": "layout_run"'):
                event = json.loads(line)
                out[Path(event["work_dir"]).name] = event
        return out

    def rows(self, name: str) -> list[dict]:
        path = self.root / name / METRICS_FILE
        return [json.loads(line) for line in path.read_text().splitlines()]

    def curve(self, name: str) -> dict[int, tuple[float, float]]:
        """Step -> (train loss, gradient norm)."""
        return {
            r["step"]: (r["train/loss"], r["train/grad_norm"]) for r in self.rows(name) if "train/loss" in r
        }


def standard_runs() -> dict[int, list[Run]]:
    """Every layout and resharded resume, grouped by world size, each group in launch order."""
    runs: dict[int, list[Run]] = {world: [] for world in WORLD_ORDER}
    for name, (procs, parallel) in LAYOUTS.items():
        runs[procs].append(Run(name, parallel))
    for name, (saved_by, procs, parallel) in RESHARDS.items():
        runs[procs].append(Run(name, parallel, resume_from=saved_by))
    return runs


def _resumed_from() -> set[str]:
    return {saved_by for saved_by, _, _ in RESHARDS.values()}


def write_spec(root: Path, shards: Path, tokenizer: Path, run: Run, procs: int) -> Path:
    # Only the runs a resume starts from keep a mid-run checkpoint: each save costs a second or two.
    interval = RESUME_STEP if run.name in _resumed_from() else STEPS
    train: dict = {
        "preset": "tiny",
        "steps": STEPS,
        "micro_batch_size": 1,
        "global_batch_size": 4,
        "eval_interval": STEPS,
        "eval_iters": 1,
        "checkpoint_interval": interval,
        "warmup_steps": 2,
        "parallel": run.parallel,
        "launch": {"nproc_per_node": procs, "threads_per_rank": 1},
        "precision": "fp32",  # layouts agree up to float32 summation order; bf16 rounding would hide that
    }
    if run.model:
        train["model"] = run.model
    spec = RunSpec(
        train=TrainConfig.model_validate(train),
        shards_dir=shards,
        tokenizer_dir=tokenizer,
        work_dir=root / run.name,
        peak_flops_per_device=1e10,  # a stated peak: no GEMM timing on shared cores
    )
    path = root / f"{run.name}.json"
    path.write_text(spec.model_dump_json())
    return path


def run_all(
    root: Path,
    shards: Path,
    tokenizer: Path,
    env: dict[str, str],
    runs: dict[int, list[Run]],
    timeout: float = 1800,
) -> Comparison:
    """Launch every world size's runs in ``WORLD_ORDER``; a failed launch is recorded, not raised
    (a test may expect one to fail), and later launches still run."""
    from mai_models.lm.launch import torchrun_prefix

    root.mkdir(parents=True, exist_ok=True)
    result = Comparison(root)
    for world in WORLD_ORDER:
        items = [
            {
                "spec": str(write_spec(root, shards, tokenizer, run, world)),
                "resume_from": str(checkpoint(root, run.resume_from)) if run.resume_from else None,
            }
            for run in runs.get(world, [])
        ]
        if not items:
            continue
        plan = root / f"plan-{world}.json"
        plan.write_text(json.dumps({"runs": items}))
        prefix = torchrun_prefix(LaunchConfig(nproc_per_node=world))
        command = [*prefix, "-m", "mai_models.lm.layout_runs", str(plan)]
        result.logs[world] = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    return result


def checkpoint(root: Path, name: str) -> Path:
    return root / name / "checkpoints" / f"iter_{RESUME_STEP:07d}"


def relative_deviation(
    curve: dict[int, tuple[float, float]], reference: dict[int, tuple[float, float]]
) -> dict[str, float]:
    """Largest |x - ref| / |ref| over the steps both curves have, for the loss and the gradient norm."""
    steps = sorted(set(curve) & set(reference))
    if not steps:
        raise ValueError("the curves share no step")
    loss = max(abs(curve[s][0] - reference[s][0]) / abs(reference[s][0]) for s in steps)
    norm = max(abs(curve[s][1] - reference[s][1]) / abs(reference[s][1]) for s in steps)
    return {"loss": loss, "grad_norm": norm}

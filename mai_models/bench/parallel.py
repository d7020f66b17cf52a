"""``mai bench parallel``: the tiny preset for the same steps under every CPU layout (1 process; TP=2;
PP=2; EP=2 x DP=2; TP=2 x PP=2; EP=2 x PP=2; TP=2 x EP=2) and three resharded resumes (TP=2 x PP=2 ->
1, 1 -> PP=2, EP=2 x DP=2 -> TP=2), exactly the runs ``tests/test_parallel_layouts.py`` checks
(``lm.layout_compare``: one torchrun launch per world size, one thread per rank).

Baseline: the 1-process run of the same code, in the same benchmark run. Each side's repeats are its
timed steps' tokens/s (the first step, which pays for lazy set-up, is left out); ours is TP=2 x PP=2,
the layout that combines both model-parallel kinds, and every layout is reported against the
baseline. On one host the processes share its cores, so a layout of N processes is not expected to
be faster: what this measures is what the parallel machinery costs on CPU, and that every layout
follows the 1-process curve (the deviations are relative, over every step)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mai_models.bench.report import Side, bench_result, package_version, progress, versus
from mai_models.errors import MaiUserError
from mai_models.lm import layout_compare as lc

if TYPE_CHECKING:  # pragma: no cover
    from mai_models.executor.project import Project

HEADLINE = "tp2_pp2"
_log = progress("parallel")


def _tokens_per_s(comparison: lc.Comparison, name: str) -> list[float]:
    rows = [r for r in comparison.rows(name) if "perf/tokens_per_s" in r]
    return [r["perf/tokens_per_s"] for r in rows if r["step"] > 1]


def _launch_error(comparison: lc.Comparison) -> str | None:
    for world, done in comparison.logs.items():
        if done.returncode:
            return f"the {world}-process launch failed (exit {done.returncode}): {done.stderr.strip()[-600:]}"
    return None


def run(project: Project) -> dict[str, Any]:
    """Every layout and resharded resume on ``project``'s token shards (built first when stale), the
    tokens/s of each and their deviations from the 1-process curve (resumes: from the uninterrupted
    run of the layout that saved)."""
    from mai_models.lm.launch import launch_env

    for name in ("raw_documents", "clean_documents", "bpe_tokenizer", "token_shards"):
        project.run(name)
    shards, tokenizer = project.out_dir("token_shards"), project.out_dir("bpe_tokenizer")
    env = launch_env(project.settings)
    env["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="mai-bench-parallel-") as tmp:
        _log(f"{len(lc.LAYOUTS)} layouts and {len(lc.RESHARDS)} resharded resumes, {lc.STEPS} steps each")
        comparison = lc.run_all(Path(tmp), shards, tokenizer, env, lc.standard_runs())
        failed = _launch_error(comparison)
        if failed:
            raise MaiUserError(failed)
        return summarise(comparison)


def summarise(comparison: lc.Comparison) -> dict[str, Any]:
    """The final JSON line of a finished comparison (its run directories still in place)."""
    reference = comparison.curve(lc.REFERENCE)
    layouts = {name: _tokens_per_s(comparison, name) for name in lc.LAYOUTS}
    deviation = {
        name: lc.relative_deviation(comparison.curve(name), reference)
        for name in lc.LAYOUTS
        if name != lc.REFERENCE
    }
    resumes = {
        name: lc.relative_deviation(comparison.curve(name), comparison.curve(saved_by))
        for name, (saved_by, _, _) in lc.RESHARDS.items()
    }
    seconds = {
        name: round(event["seconds"], 2)
        for world in comparison.logs
        for name, event in comparison.events(world).items()
    }
    version = f"megatron-core {package_version('megatron-core')}, torch {package_version('torch')}"
    base = Side("1 process (lm.trainer, gloo, 1 thread)", version, layouts[lc.REFERENCE])
    ours = Side(f"{HEADLINE} (4 processes, 1 thread each)", version, layouts[HEADLINE])
    per_layout = {
        name: versus(
            Side(name, version, samples),
            base,
            True,
            processes=lc.LAYOUTS[name][0],
            parallel=lc.LAYOUTS[name][1],
            max_loss_deviation=deviation.get(name, {}).get("loss", 0.0),
            max_grad_norm_deviation=deviation.get(name, {}).get("grad_norm", 0.0),
        )
        for name, samples in layouts.items()
    }
    for name, row in per_layout.items():
        _log(f"{name}: {row['median']:,.0f} tokens/s, loss deviation {row['max_loss_deviation']:.2e}")
    return bench_result(
        "parallel",
        "tokens/s per step",
        True,
        ours,
        base,
        preset="tiny",
        steps=lc.STEPS,
        timed_steps=f"2..{lc.STEPS} (step 1 pays lazy set-up)",
        global_batch=4,
        micro_batch=1,
        layouts=per_layout,
        max_loss_deviation=max(d["loss"] for d in deviation.values()),
        max_grad_norm_deviation=max(d["grad_norm"] for d in deviation.values()),
        resharded_resume={
            name: {"saved_by": lc.RESHARDS[name][0], "from_step": lc.RESUME_STEP, **dev}
            for name, dev in resumes.items()
        },
        max_resharded_resume_deviation=max(d["loss"] for d in resumes.values()),
        run_seconds=seconds,
        deviation_meaning="max over steps of |loss - reference| / reference (relative)",
    )

"""How a step starts a program in another process (pretraining under torchrun). Locally that is a plain
child process, or a Slurm job when the program carries one; under Dagster the asset hands in a
launcher that runs it through Dagster Pipes, so the library never imports Dagster."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mai_models.errors import MaiUserError
from mai_models.executor.slurm import SlurmJob, run_job


@dataclass(frozen=True)
class Program:
    """``<prefix> -m <module> <args>``: ``module`` is the entry point a plain process runs; a launcher
    may substitute its own entry point that wraps it (the Pipes one reports to Dagster)."""

    prefix: tuple[str, ...]  # e.g. python -m torch.distributed.run --nproc_per_node=2 ...
    module: str
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    # Set: the command runs as this Slurm batch job (on each of its nodes) instead of a child process.
    slurm: SlurmJob | None = None

    def command(self, module: str | None = None) -> list[str]:
        return [*self.prefix, "-m", module or self.module, *self.args]


class Launcher(Protocol):
    def launch(self, program: Program) -> dict[str, Any]:
        """Run ``program`` to completion; return what it reported (metadata), raise on failure."""
        ...


class ProcessLauncher:
    """Run in the foreground: its output streams to this terminal (a Slurm job's log is followed)."""

    def launch(self, program: Program) -> dict[str, Any]:
        if program.slurm is not None:
            return {"slurm_job_id": run_job(program.slurm, program.command(), program.env, program.cwd)}
        code = subprocess.run(program.command(), cwd=program.cwd, env=program.env).returncode
        if code != 0:
            raise MaiUserError(
                f"{program.module} exited with code {code}; run the same command again to resume "
                "from its last checkpoint"
            )
        return {}

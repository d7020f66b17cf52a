"""A program as a Slurm batch job: the job script (the command on every node, one task each, under
``srun``), ``sbatch``, its log followed while ``scontrol`` says it runs, and ``scancel`` when the
caller is interrupted (Ctrl-C, SIGTERM, a cancelled Dagster run). The CLI's launcher and the Dagster
Pipes one both call ``run_job``; neither the job nor this module knows which one submitted it."""

from __future__ import annotations

import codecs
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mai_models.errors import MaiUserError

# End states (squeue/scontrol JOB STATE CODES); every other state means the job may still run.
FINISHED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
TAIL_LINES = 20
TAIL_BYTES = 1 << 20
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class SlurmJob:
    """How a program runs under Slurm. ``log_dir`` holds the job script and its log (and whatever a
    launcher shares with the job): it must be on a filesystem that every node sees."""

    log_dir: Path
    name: str = "mai"
    nodes: int = 1
    partition: str | None = None
    time_limit: str | None = None  # sbatch --time, e.g. "02:00:00"
    sbatch_args: tuple[str, ...] = ()  # one option per entry, e.g. "--gpus-per-node=8"
    # Shell lines the batch script runs on the first node before ``srun`` (e.g. exporting the
    # rendezvous that every task reads); the job's SLURM_* variables are set by then.
    setup: tuple[str, ...] = ()

    @property
    def script_path(self) -> Path:
        return self.log_dir / f"{self.name}.sbatch"

    def log_path(self, job_id: int) -> Path:
        return self.log_dir / f"{self.name}-{job_id}.log"


@dataclass(frozen=True)
class JobState:
    state: str
    exit_code: str  # "<code>:<signal>"

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def job_script(job: SlurmJob, command: list[str], cwd: Path) -> str:
    options = [
        f"--job-name={job.name}",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",
        f"--output={job.log_dir / job.name}-%j.log",
        *([f"--partition={job.partition}"] if job.partition else []),
        *([f"--time={job.time_limit}"] if job.time_limit else []),
        *job.sbatch_args,
    ]
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {option}" for option in options),
        "set -euo pipefail",
        f"cd {shlex.quote(str(cwd))}",
        *job.setup,
        # One task per node; if one fails, srun stops the others instead of leaving them waiting.
        f"srun --kill-on-bad-exit=1 {shlex.join(command)}",
    ]
    return "\n".join(lines) + "\n"


def _slurm(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise MaiUserError(
            f"{args[0]} not found: lm.launch.engine=slurm needs the Slurm client tools"
        ) from exc
    except subprocess.TimeoutExpired:
        # A busy controller: the caller sees a failed command (sbatch) or an UNKNOWN state (waits on).
        return subprocess.CompletedProcess(args, 1, "", f"{args[0]}: no answer from the controller in 60 s")


def submit(job: SlurmJob, command: list[str], env: dict[str, str], cwd: Path) -> int:
    """Write the job script and ``sbatch`` it; the job inherits ``env`` (sbatch exports it all)."""
    job.log_dir.mkdir(parents=True, exist_ok=True)
    job.script_path.write_text(job_script(job, command, cwd))
    done = _slurm(["sbatch", "--parsable", str(job.script_path)], env)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise MaiUserError(f"sbatch refused {job.script_path}: {reason}")
    return int(done.stdout.strip().split(";")[0])


def job_state(job_id: int, env: dict[str, str]) -> JobState | None:
    """The controller's view of the job; None once it has forgotten it (MinJobAge after its end).
    A controller that does not answer leaves the state UNKNOWN, so the caller keeps waiting."""
    done = _slurm(["scontrol", "show", "job", "-o", str(job_id)], env)
    if done.returncode != 0:
        return None if "Invalid job id" in done.stderr else JobState("UNKNOWN", "?")
    fields = dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)
    return JobState(fields.get("JobState", "UNKNOWN"), fields.get("ExitCode", "?"))


def cancel(job_id: int, env: dict[str, str], timeout: float = 60.0) -> None:
    """``scancel`` and wait until the job has left the queue, so none of its processes outlive us."""
    _slurm(["scancel", str(job_id)], env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job_id, env)
        if state is None or state.finished:
            return
        time.sleep(0.2)


def _log_end(path: Path) -> list[str] | None:
    """The log's last lines, read from its last megabyte (a long run's log can be large)."""
    if not path.exists():
        return None
    with path.open("rb") as log:
        log.seek(max(0, path.stat().st_size - TAIL_BYTES))
        return log.read().decode(errors="replace").rstrip().splitlines()


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    end = _log_end(path)
    if end is None:
        return f"    (no log at {path})"
    return "\n".join(f"    {line}" for line in end[-lines:]) or "    (the log is empty)"


def log_reason(path: Path) -> str | None:
    """The program's own one-line reason (mai's entry points print ``error: ...`` before exiting),
    which a launcher's traceback after it would otherwise push out of the tail."""
    return next((line for line in _log_end(path) or [] if line.startswith("error: ")), None)


class LogFollower:
    """Copies what the job appends to its log onto ``out`` (the terminal, or the step's stdout)."""

    def __init__(self, path: Path, out: TextIO) -> None:
        self.path = path
        self.out = out
        self.offset = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        if chunk:
            self.offset += len(chunk)
            self.out.write(self.decoder.decode(chunk))
            self.out.flush()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM while we wait must cancel the job like Ctrl-C does, not kill us and leave it
    running. Only where nothing else handles SIGTERM (Dagster maps it to its own interrupt)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def _raise(_signo: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_job(
    job: SlurmJob,
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    *,
    on_submit: Callable[[int, Path], None] | None = None,
) -> int:
    """Submit, follow the log until the job ends, return its id. A failed job raises one
    MaiUserError naming the job, its end state and the tail of its log; an interruption of the
    caller (any exception while waiting, KeyboardInterrupt included) cancels the job, then re-raises.
    The log goes to this process's stdout: the terminal, or a Dagster step's captured output."""
    out = sys.stdout
    with _sigterm_as_interrupt():
        job_id = submit(job, command, env, cwd)
        log = job.log_path(job_id)
        try:
            out.write(f"submitted Slurm job {job_id} (log: {log})\n")
            if on_submit is not None:
                on_submit(job_id, log)
            follower = LogFollower(log, out)
            while (state := job_state(job_id, env)) is not None and not state.finished:
                follower.poll()
                time.sleep(POLL_SECONDS)
            follower.poll()
        except BaseException:
            cancel(job_id, env)
            raise
    if state is None:
        raise MaiUserError(
            f"Slurm job {job_id} left the controller before its end was seen; log {log}:\n{log_tail(log)}"
        )
    if state.state != "COMPLETED":
        reason = log_reason(log)
        raise MaiUserError(
            f"Slurm job {job_id} ended {state.state} (exit code {state.exit_code})"
            f"{': ' + reason if reason else ''}; last lines of {log}:\n{log_tail(log)}"
        )
    return job_id

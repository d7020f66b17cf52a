"""What ``mai demo`` prints while it runs: one line as each step starts and one as it ends (status,
duration, main figure), and for a training step a progress bar with its loss and throughput. The
orchestrator side (``pipelines.demo``) feeds the events; this module only keeps the clock and prints.

On a terminal each step is one line: while it runs, it sits in a live block at the bottom (its start
time, or its training bar, redrawn in place) and its end line replaces it, so a whole demo fits on a
screen. In a log or CI nothing is redrawn: a line as the step starts, one as it ends, and a training
bar at every tenth of its run.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

BAR_WIDTH = 24
REDRAW_SECONDS = 0.5
# Without a terminal, a training step prints this many progress lines over its run.
PLAIN_UPDATES = 10


@dataclass
class StepRecord:
    name: str
    started: float
    ended: float | None = None
    status: str = "running"  # running | built | reused | failed
    figure: str = ""
    version: str | None = None
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else round(self.ended - self.started, 1)


@dataclass
class _Training:
    total: int | None
    last: dict[str, float] = field(default_factory=dict)
    step: int = 0
    printed_at: float = 0.0
    plain_mark: int = 0


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:d}:{secs:02d}"


def training_line(name: str, step: int, total: int | None, row: dict[str, float]) -> str:
    """``moe_pretrain [#####......] 60/120 loss 6.372 1,431 tok/s``: the figures one training row has."""
    if total:
        done = min(step / total, 1.0)
        filled = int(round(done * BAR_WIDTH))
        head = f"{name} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {step}/{total}"
    else:
        head = f"{name} step {step}"
    parts = [head]
    if "train/loss" in row:
        parts.append(f"loss {row['train/loss']:.3f}")
    if "valid/bits_per_byte" in row:
        parts.append(f"valid bpb {row['valid/bits_per_byte']:.3f}")
    if "perf/tokens_per_s" in row:
        parts.append(f"{row['perf/tokens_per_s']:,.0f} tok/s")
    elif "train/steps_per_s" in row:
        parts.append(f"{row['train/steps_per_s']:.1f} steps/s")
    return "  ".join(parts)


class DemoProgress:
    """Thread-safe: the event poller and the log tailer may report at the same time."""

    def __init__(
        self,
        totals: dict[str, int] | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
        started: float | None = None,
    ) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.totals = totals or {}
        self.started = time.time() if started is None else started
        self.steps: dict[str, StepRecord] = {}
        self.failed_checks: list[str] = []
        self.checks_passed = 0
        self._training: dict[str, _Training] = {}
        self._live: dict[str, str] = {}  # terminal only: the running steps' lines, oldest first
        self._drawn = 0  # how many live lines are on the screen below the finished ones
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------- the events
    def step_started(self, name: str, at: float) -> None:
        with self._lock:
            self.steps[name] = StepRecord(name, at)
            if self.tty:
                self._live[name] = f"{self._stamp(at)} start  {name}"
                self._redraw()
            else:
                self._print(at, f"start  {name}")

    def step_finished(
        self, name: str, at: float, status: str, figure: str = "", version: str | None = None
    ) -> None:
        with self._lock:
            record = self.steps.setdefault(name, StepRecord(name, at))
            record.ended, record.status, record.figure, record.version = at, status, figure, version
            self._training.pop(name, None)
            self._live.pop(name, None)
            self._print(at, f"{status:6s} {name}  {record.seconds:.1f} s{'  ' + figure if figure else ''}")

    def step_failed(self, name: str, at: float, error: str, status: str = "failed") -> None:
        """A step that failed, or (``status="skipped"``) one that never ran because an upstream failed."""
        with self._lock:
            record = self.steps.setdefault(name, StepRecord(name, at))
            record.ended, record.status, record.error = at, status, error
            self._training.pop(name, None)
            self._live.pop(name, None)
            self._print(at, f"{status.upper():6s} {name}  {record.seconds:.1f} s  {error}")

    def check_evaluated(self, asset: str, check: str, passed: bool, description: str, at: float) -> None:
        with self._lock:
            if passed:
                self.checks_passed += 1
                return
            self.failed_checks.append(f"{asset}.{check}: {description}")
            self._print(at, f"check  {asset}.{check} FAILED: {description}")

    def training_row(self, name: str, row: dict[str, Any]) -> None:
        """One metrics row as the trainers print it (``{"step": n, "train/loss": ...}``)."""
        if not isinstance(row.get("step"), int) or not any(k.startswith("train/") for k in row):
            return  # events, evaluation rows and the step-0 FLOP count carry no progress
        with self._lock:
            training = self._training.setdefault(name, _Training(self.totals.get(name)))
            training.step = row["step"]
            training.last.update({k: v for k, v in row.items() if isinstance(v, int | float)})
            line = training_line(name, training.step, training.total, training.last)
            now = time.time()
            if self.tty:
                if now - training.printed_at >= REDRAW_SECONDS or training.step == training.total:
                    training.printed_at = now
                    self._live[name] = f"{self._stamp(now)} {line}"
                    self._redraw()
                return
            mark = PLAIN_UPDATES * training.step // training.total if training.total else training.step // 20
            if mark > training.plain_mark:
                training.plain_mark = mark
                self._print(now, line)

    # ------------------------------------------------------------------------------ the record
    def record(self) -> dict[str, Any]:
        """Each step's status, seconds, version and figure, for ``.mai/demo_report.json``."""
        with self._lock:
            return {
                name: {
                    "status": r.status,
                    "seconds": r.seconds,
                    "version": r.version,
                    "figure": r.figure,
                    **({"error": r.error} if r.error else {}),
                }
                for name, r in self.steps.items()
            }

    # ---------------------------------------------------------------------------------- printing
    def _stamp(self, at: float) -> str:
        return f"[{clock(max(at - self.started, 0.0)):>5s}]"

    def _print(self, at: float, text: str) -> None:
        if self.tty:
            self._redraw(f"{self._stamp(at)} {text}")
            return
        self.stream.write(f"{self._stamp(at)} {text}\n")
        self.stream.flush()

    def _redraw(self, finished: str | None = None) -> None:
        """Terminal: wipe the live block, print ``finished`` where it began, then the live block again."""
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the block's first line, clear below
        if finished is not None:
            self.stream.write(finished + "\n")
        for line in self._live.values():
            self.stream.write(line + "\n")
        self._drawn = len(self._live)
        self.stream.flush()


def training_totals(params: Any) -> dict[str, int]:
    """How many optimizer steps each training step of the demo runs: the length of its bar."""
    from mai_models.tts.train_model import resolve_budget

    return {
        "moe_pretrain": params.lm.steps,
        "dense_pretrain": params.lm.steps,  # the twin trains on the same schedule
        "tts_acoustic": resolve_budget(params.tts, "acoustic").steps,
        "tts_vocoder": resolve_budget(params.tts, "vocoder").steps,
    }

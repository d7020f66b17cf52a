"""What every local service manager shares: free ports on 127.0.0.1, a child process that leads its own
process group (so its workers stop with it) and is stopped by its PID alone, waiting until it answers,
and one-line failures that carry the tail of its log."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mai_models.errors import MaiUserError

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for an ephemeral bind)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# Lines that say why a server stopped: glog's fatal/error lines (SeaweedFS), PostgreSQL's FATAL/ERROR,
# a Python exception's last line (MLflow).
_TELLING = re.compile(r"^[FE]\d{4} |\b(FATAL|ERROR|PANIC)\b|^[\w.]*(Error|Exception): ")


def log_tail(path: Path, lines: int = 3, offset: int = 0) -> str:
    """The lines of a log (from byte ``offset``: this start's part) that say what went wrong, else its
    last lines, joined into one line."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        text = ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    telling = [line for line in kept if _TELLING.search(line)]
    return " | ".join((telling or kept)[-lines:]) or f"(nothing in {path})"


class ServiceProcess:
    """One server process started by us: stdout and stderr go to ``log``; ``stop`` signals only the
    process group this process leads (its own PID), TERM first and KILL after ``grace`` seconds."""

    def __init__(
        self, name: str, command: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this start's output begins in the (appended) log

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, cwd: Path | None = None) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            try:
                self.proc = subprocess.Popen(
                    self.command,
                    cwd=cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise MaiUserError(f"{self.name} could not be started ({self.command[0]}): {exc}") from exc

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready`` until it holds; fail in one line (with the log tail) if the process exits or
        ``timeout`` passes first. The process is stopped before the error is raised."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                self.stop()
                raise MaiUserError(f"{self.name} exited (code {code}) while starting: {self.tail()}")
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise MaiUserError(f"{self.name} did not answer within {timeout:.0f} s: {self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        return log_tail(self.log, offset=self._log_offset)

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        # Workers the leader left behind in its group (it may exit before they do).
        _signal_group(proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        """Stop at once, as a crash would."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pid, signum)

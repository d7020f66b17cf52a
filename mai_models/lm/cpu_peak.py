"""The CPU's MFU denominator: the GEMM rate of the training threads at the training dtype (fp32, or bf16
under bf16 autocast), timed only on idle cores.

A GEMM timed while other work shares the cores reads low, and an MFU over it reads high (1.2-1.34 was
seen in ``make demo``). So the rate is timed only when no other process is using the cores, both
just before and during the timing, and is kept per host, thread count, dtype and torch build in a
small JSON file that later runs reuse, whatever else is running by then. Without a stored rate and without
idle cores there is no peak: MFU is then left out rather than reported wrong.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import torch

from mai_models.precision import ResolvedPrecision

LOG = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.5
# The sampler, the launcher and the kernel use a little CPU of their own; more than this is work.
IDLE_SLACK_CORES = 0.25
GEMM_TRIALS = 7
TRIAL_SECONDS = 0.1


@dataclass(frozen=True)
class CpuPeak:
    flops: float | None
    source: str


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def allowed_other_load(threads: int, cores: int) -> float:
    """Cores other processes may keep busy while the GEMM of ``threads`` threads is timed. Work on
    cores the GEMM does not use barely changes its rate, but the scheduler moves threads between
    cores, so only half of the spare cores count as room."""
    return IDLE_SLACK_CORES + 0.5 * max(0, cores - threads)


class OtherLoad:
    """Cores kept busy by every process but this one over a ``with`` block (system busy time from
    /proc/stat minus this process's own CPU time, per second of wall time)."""

    cores: float = 0.0

    def __enter__(self) -> OtherLoad:
        self._start = (time.perf_counter(), _system_busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, busy, own = self._start
        elapsed = max(time.perf_counter() - wall, 1e-6)
        self.cores = max(0.0, (_system_busy_seconds() - busy) - (_own_seconds() - own)) / elapsed


def _system_busy_seconds() -> float:
    t = psutil.cpu_times()
    # Guest time is already inside user and nice; steal is time the hypervisor gave to someone else.
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


def _own_seconds() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def gemm_size(threads: int) -> int:
    # 2048 keeps a few threads near their peak; with many threads each one's tile of it gets small.
    return 2048 if threads <= 8 else 4096


def measure_gemm_flops(
    threads: int,
    trials: int = GEMM_TRIALS,
    trial_seconds: float = TRIAL_SECONDS,
    precision: ResolvedPrecision = "fp32",
) -> float:
    """Best GEMM FLOP/s at ``precision`` of ``threads`` threads over ``trials`` timings of at least
    ``trial_seconds`` each; the best, because anything else on the cores only ever slows a trial."""
    size = gemm_size(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        out = torch.empty(size, size, dtype=dtype)
        torch.mm(a, b, out=out)  # thread pool start-up and first-touch page faults stay out of the trials
        best = 0.0
        for _ in range(trials):
            reps, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < trial_seconds:
                torch.mm(a, b, out=out)
                reps += 1
            best = max(best, 2 * size**3 * reps / elapsed)
        return best
    finally:
        torch.set_num_threads(previous)


class PeakStore:
    """Measured peaks in one JSON file, one entry per host, thread count and torch build."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def key(threads: int, precision: ResolvedPrecision = "fp32") -> str:
        dtype = "" if precision == "fp32" else f"/dtype={precision}"
        return f"{socket.gethostname()}/threads={threads}/torch={torch.__version__}{dtype}"

    def get(self, threads: int, precision: ResolvedPrecision = "fp32") -> dict[str, Any] | None:
        entry = self._read().get(self.key(threads, precision))
        return entry if isinstance(entry, dict) and isinstance(entry.get("flops"), int | float) else None

    def put(self, threads: int, entry: dict[str, Any], precision: ResolvedPrecision = "fp32") -> None:
        entries = self._read()
        entries[self.key(threads, precision)] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)  # a reader never sees half a file

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One measurement per store at a time: two runs timing GEMMs at once would halve each other."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            LOG.warning("ignoring unreadable CPU peak store %s (%s); it will be rewritten", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}


def cpu_peak(threads: int, store_path: Path | None, precision: ResolvedPrecision = "fp32") -> CpuPeak:
    """The stored peak for these threads and dtype on this host, else one measured now if the cores are
    idle, else none (with the reason)."""
    store = PeakStore(store_path) if store_path is not None else None
    with store.lock() if store is not None else nullcontext():
        entry = store.get(threads, precision) if store is not None else None
        if entry is not None:
            when = entry.get("measured_at")
            return CpuPeak(float(entry["flops"]), f"stored: measured on idle cores at {when}")
        limit = allowed_other_load(threads, usable_cores())
        with OtherLoad() as before:
            time.sleep(SAMPLE_SECONDS)
        if before.cores > limit:
            return CpuPeak(
                None,
                f"unavailable: other work keeps {before.cores:.2f} cores busy (idle means at most "
                f"{limit:.2f}) and no peak is stored for {PeakStore.key(threads, precision)}",
            )
        with OtherLoad() as during:
            flops = measure_gemm_flops(threads, precision=precision)
        if during.cores > limit:
            return CpuPeak(
                None, f"unavailable: other work took {during.cores:.2f} cores during the GEMM timing"
            )
        if store is not None:
            store.put(
                threads,
                {
                    "flops": flops,
                    "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "gemm": f"{precision} {gemm_size(threads)}^3, best of {GEMM_TRIALS} trials",
                    "other_load_cores": round(max(before.cores, during.cores), 3),
                },
                precision,
            )
        return CpuPeak(flops, "measured on idle cores")

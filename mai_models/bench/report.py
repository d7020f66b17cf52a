"""The final JSON line of every ``mai bench``: one shape, so that results can be read side by side.

Each line names what was measured on both sides (name and package version), how many timed repeats
each side had, every repeat's figure, both medians and the ratio. The ratio always reads the same
way, whatever the unit: above 1 means ours did better (faster, or more throughput).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def progress(benchmark: str) -> Callable[[str], None]:
    """A progress logger for ``benchmark``: stderr, so that stdout carries only the final JSON line."""

    def log(msg: str) -> None:
        print(f"[bench {benchmark}] {msg}", file=sys.stderr, flush=True)

    return log


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def package_version(distribution: str) -> str:
    """Installed version of a distribution, for naming a baseline; "not installed" when absent."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: what ran, which version, and its figure in every timed repeat."""

    name: str
    version: str
    samples: list[float]
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def ratio_of(ours: float, baseline: float, higher_is_better: bool) -> float:
    """Ours relative to the baseline, > 1 when ours is better."""
    num, den = (ours, baseline) if higher_is_better else (baseline, ours)
    return num / den if den else float("inf")


def versus(side: Side, baseline: Side, higher_is_better: bool, **extra: Any) -> dict[str, Any]:
    """A further variant of ours (e.g. another thread count) against the same baseline."""
    return {
        "name": side.name,
        "repeats": len(side.samples),
        "median": _round(side.median),
        "all": [_round(s) for s in side.samples],
        "ratio": _round(ratio_of(side.median, baseline.median, higher_is_better)),
        **extra,
    }


def bench_result(
    benchmark: str,
    metric: str,
    higher_is_better: bool,
    ours: Side,
    baseline: Side,
    **figures: Any,
) -> dict[str, Any]:
    """The result dict (printed as the final JSON line); ``figures`` adds benchmark-specific keys."""
    if not ours.samples or not baseline.samples:
        raise ValueError("both sides need at least one timed repeat")
    ratio = ratio_of(ours.median, baseline.median, higher_is_better)
    if higher_is_better:
        meaning = f"ours_median / baseline_median ({metric}, higher is better): >1 = ours better"
    else:
        meaning = f"baseline_median / ours_median ({metric}, lower is better): >1 = ours better"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {
        "benchmark": benchmark,
        "metric": metric,
        "ours": ours.name,
        "ours_version": ours.version,
        "baseline": baseline.name,
        "baseline_version": baseline.version,
        "repeats": {"ours": len(ours.samples), "baseline": len(baseline.samples)},
        "ours_median": _round(ours.median),
        "baseline_median": _round(baseline.median),
        "ours_all": [_round(s) for s in ours.samples],
        "baseline_all": [_round(s) for s in baseline.samples],
        "ratio": _round(ratio),
        "ratio_meaning": meaning,
        # The figures depend on how busy the machine was; these two say how much it had to give.
        "host": {"cpus": os.cpu_count(), "load_1m": round(load, 2) if load is not None else None},
    }
    if ours.detail:
        result["ours_detail"] = ours.detail
    if baseline.detail:
        result["baseline_detail"] = baseline.detail
    clash = set(figures) & set(result)
    if clash:
        raise ValueError(f"benchmark figures clash with the common fields: {sorted(clash)}")
    return {**result, **figures}


def _round(x: float) -> float:
    # Four significant digits: enough to compare runs, few enough to read.
    return float(f"{x:.4g}")

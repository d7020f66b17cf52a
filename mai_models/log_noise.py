"""The demo's log file: every line the Dagster run prints, except known harmless third-party warnings.

Dagster's own lines, DEBUG events and the Pipes copies of training rows included, all stay: the
file is the full log, the terminal only shows the progress report. This table is the one place
warnings are filtered. Each entry names what prints it and why it is safe to drop; the end of the
log counts what was dropped, so nothing disappears silently.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass(frozen=True)
class Noise:
    name: str
    pattern: re.Pattern[str]


KNOWN_NOISE: tuple[Noise, ...] = (
    # Megatron-Core on a machine without NVIDIA Apex / Transformer Engine, once per import per rank:
    # it falls back to the torch norm, optimizer and multi-tensor kernels, which is what a CPU uses.
    Noise("Megatron: Apex not installed", re.compile(r"Apex is not installed|and Apex are not installed")),
    # Megatron's TransformerConfig on its default CUDA-graph scope; the demo captures no CUDA graphs.
    Noise("Megatron: cuda_graph_scope deprecation", re.compile(r"full scope is deprecated")),
    # lm-evaluation-harness, once per task, advertising --metadata; our tasks take no such kwargs.
    Noise(
        "lm-eval: --metadata hint",
        re.compile(r"Custom kwargs can be passed to `--metadata`|For example --metadata="),
    ),
    # Dagster's CLI about itself: `dagster asset materialize` is superseded by `dg launch` (which
    # needs a dg project), and its asset selection parser passes a beta parameter.
    Noise(
        "Dagster CLI SupersessionWarning/BetaWarning",
        re.compile(
            r"SupersessionWarning: Function `asset_materialize_command`"
            r"|BetaWarning: Parameter `include_sources`"
        ),
    ),
    # Dagster Pipes calls its own preview API (expected_writer_count) on every Pipes session.
    Noise("Dagster Pipes PreviewWarning", re.compile(r"PreviewWarning: Function `PipesMessageReader")),
    # MLflow's system-metrics sampler announcing start, stop and "no GPU" on every training run.
    Noise(
        "MLflow system-metrics monitor",
        re.compile(r"mlflow\.system_metrics\.system_metrics_monitor: "),
    ),
)
# After a Python warning line, the warnings module prints the offending source line, indented.
_SOURCE_LINE = re.compile(r"^\s+\S")


def known_noise(line: str) -> str | None:
    """The name of the known harmless noise ``line`` is, or None."""
    for noise in KNOWN_NOISE:
        if noise.pattern.search(line):
            return noise.name
    return None


class FilteredLog:
    """Writes lines to ``path``, dropping known harmless warnings (and a dropped warning's source line)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.dropped: Counter[str] = Counter()
        self._file: TextIO = path.open("w", encoding="utf-8", errors="replace")
        self._after_warning = False

    def write(self, line: str) -> None:
        name = known_noise(line)
        if name is None and self._after_warning and _SOURCE_LINE.match(line):
            name = "source lines of filtered warnings"
        self._after_warning = name is not None and "Warning: " in line
        if name is not None:
            self.dropped[name] += 1
            return
        self._file.write(line if line.endswith("\n") else line + "\n")
        self._file.flush()

    def close(self) -> None:
        if self.dropped:
            self._file.write("\n# known harmless lines filtered (mai_models/log_noise.py):\n")
            for name, count in self.dropped.most_common():
                self._file.write(f"#   {count:6d}  {name}\n")
        self._file.close()

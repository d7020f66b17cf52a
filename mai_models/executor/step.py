"""What a step is: one declaration from which the Dagster asset, the DVC stage, the CLI's ``--only``
choice, the demo report and the submission's lineage are all derived.

A step is a name, its upstream steps, the parameters it reads and a ``build(ctx, out)`` function, as
in Marin's executor. Its code version is not a hand-kept list: it is the hash of the module that
declares it and of every ``mai_models`` module that one imports (see ``code_closure``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from mai_models.config import PipelineParams
    from mai_models.executor.launch import Program
    from mai_models.settings import Settings
    from mai_models.tracking.mlflow_runs import DatasetInput


class StepContext(Protocol):
    """What a step's code sees while it builds (or while one of its checks runs)."""

    name: str
    settings: Settings
    params: PipelineParams
    track: bool
    progress: bool
    options: dict[str, Any]  # test and fault-injection switches the caller passed
    memo: dict[str, Any]  # shared by every step of one project: one lookup, reused by the next step
    metadata: dict[str, Any]  # reported to the orchestrator with this materialisation, never stored

    @property
    def version(self) -> str: ...

    @property
    def output(self) -> Path:
        """This step's stored output (the one a build replaces, or a check reads)."""
        ...

    @property
    def work_dir(self) -> Path:
        """Scratch space kept across attempts of this version: an interrupted training resumes here."""
        ...

    def has_input(self, name: str) -> bool: ...

    def input(self, name: str) -> Path:
        """The output directory of upstream step ``name``."""
        ...

    def state(self, name: str) -> dict[str, Any]:
        """What was recorded after ``name`` (upstream, or this step) was materialised."""
        ...

    def upstream_versions(self) -> dict[str, str]: ...

    def lineage(self) -> list[dict[str, Any]]:
        """Each ancestor's data version, upstream versions, DVC hash and MLflow run, raw data first."""
        ...

    def launch(self, program: Program) -> dict[str, Any]: ...

    def start_run(self, tags: dict[str, str] | None = None) -> str | None:
        """The step's MLflow run, opened while it runs (None when not tracking)."""
        ...


# ``build(ctx, out)`` returns deterministic stats (kept in the manifest, hence in the DVC hash), or a
# pair (stats, timings) whose timings stay out of the manifest so that a rebuild is byte-identical.
BuildFn = Callable[["StepContext", Path], "dict[str, Any] | tuple[dict[str, Any], dict[str, float]]"]
Upstream = tuple[str, ...] | Callable[["PipelineParams"], tuple[str, ...]]


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """A check on the step's output. A blocking one stops everything downstream when it fails; a
    warning only flags the output (e.g. a champion getting old)."""

    name: str
    description: str
    run: Callable[[StepContext], CheckResult]
    blocking: bool = True
    severity: Literal["error", "warn"] = "error"


@dataclass(frozen=True)
class Step:
    name: str
    description: str
    group: str  # the plane: Dagster group, and the CLI's family of commands
    command: str  # the `mai` command that builds it, e.g. "data ingest"; `--only <name>` picks it
    build: BuildFn
    upstream: Upstream = ()
    # Dotted params.yaml sections the output depends on: the version hashes them, DVC watches them.
    params: tuple[str, ...] = ()
    # A narrower view of those sections when only part of one matters (e.g. the LM minus its launch).
    config: Callable[[PipelineParams], dict[str, Any]] | None = None
    # Modules that run in another process (a torchrun entry point): their imports count too.
    code: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset({"python"})
    # "heavy" steps (trainings, model evaluations) run one at a time: they compete for the same cores.
    compute: Literal["light", "heavy"] = "light"
    # When an orchestrator reruns it by itself: "eager" as soon as an upstream output changed, or
    # "scheduled" (trainings) at the next `automation.training_cron` tick after an upstream change, so
    # that a trickle of landing drops does not retrain on every file.
    automation: Literal["eager", "scheduled"] = "eager"
    enabled: Callable[[PipelineParams], bool] | None = None
    # What else the step reads that must change its version (files outside the graph, the champion).
    inputs: Callable[[StepContext], Any] | None = None
    datasets: Callable[[StepContext], list[DatasetInput]] | None = None
    # Files of the output worth browsing in MLflow beside the manifest (plots, tables), relative to it.
    artifacts: tuple[str, ...] = ()
    # Work that needs the committed output (registry, aliases); returns what to remember in the state.
    after_commit: Callable[[StepContext, str | None, str | None], dict[str, Any]] | None = None
    checks: tuple[Check, ...] = ()
    # Who answers for the output (Dagster owners: "team:name" or an e-mail); default the plane's team.
    owners: tuple[str, ...] = ()
    # Paths outside the graph that DVC must watch (the sources' folders), relative to the project root.
    watch: Callable[[PipelineParams], tuple[str, ...]] | None = None

    @property
    def module(self) -> str:
        """The module that declares the step (where its build function lives)."""
        return self.build.__module__

    def upstream_for(self, params: PipelineParams) -> tuple[str, ...]:
        return self.upstream(params) if callable(self.upstream) else self.upstream

    def watched(self, params: PipelineParams) -> tuple[str, ...]:
        return self.watch(params) if self.watch else ()

    def is_enabled(self, params: PipelineParams) -> bool:
        return self.enabled is None or self.enabled(params)

    def config_for(self, params: PipelineParams) -> dict[str, Any]:
        if self.config is not None:
            return self.config(params)
        return {key: section(params, key) for key in self.params}


def section(params: PipelineParams, dotted: str) -> Any:
    """The JSON value of one dotted params.yaml section, e.g. ``speech.demo``."""
    value: Any = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

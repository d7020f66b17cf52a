"""What the text and speech planes share: named steps whose outputs live in ``<data_dir>/<step>/``,
each versioned by its config, code and upstream versions and built only when that version changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mai_models.config import PipelineParams
from mai_models.errors import MaiUserError
from mai_models.settings import Settings
from mai_models.steps import StepResult, code_version, current_version, run_step, step_version
from mai_models.tracking.mlflow_runs import DatasetInput

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Step:
    name: str
    upstream: tuple[str, ...]
    code_paths: tuple[str, ...]  # relative to the mai_models package
    description: str

    def code_version(self) -> str:
        return code_version(PACKAGE_DIR / p for p in self.code_paths)


class StepPipeline:
    """Subclasses name their ``steps`` and say, per step, which parameters matter and how to build."""

    steps: ClassVar[dict[str, Step]]

    def __init__(self, settings: Settings, params: PipelineParams) -> None:
        self.settings = settings
        self.params = params
        self.track = False

    def out_dir(self, name: str) -> Path:
        return self.settings.data_dir / name

    def code_version(self, name: str) -> str:
        return self.steps[name].code_version()

    def config_of(self, name: str) -> dict[str, Any]:
        """The parameters that change a step's output."""
        raise NotImplementedError

    def inputs(self, name: str) -> Any:
        """What else a step reads that must change its version (files outside the DVC graph)."""
        return None

    def builder(self, name: str, progress: bool) -> Callable[[Path], Any]:
        raise NotImplementedError

    def upstream(self, name: str) -> tuple[str, ...]:
        """The steps ``name`` reads; a subclass narrows them when its parameters leave one unused."""
        return self.steps[name].upstream

    def upstream_versions(self, name: str) -> dict[str, str]:
        versions = {}
        for up in self.upstream(name):
            version = current_version(self.out_dir(up))
            if version is None:
                raise MaiUserError(f"{name} needs {up}, which is not materialised at {self.out_dir(up)}")
            versions[up] = version
        return versions

    def version(self, name: str) -> str:
        upstream = self.upstream_versions(name)
        return step_version(name, self.config_of(name), self.code_version(name), upstream, self.inputs(name))

    def run(self, name: str, force: bool = False, progress: bool = False, track: bool = False) -> StepResult:
        """``track``: a step that logs while it runs (training) may open its MLflow run."""
        self.track = track
        lineage = {"upstream": self.upstream_versions(name), "code_version": self.code_version(name)}
        build = self.builder(name, progress)
        return run_step(name, self.out_dir(name), self.version(name), build, lineage=lineage, force=force)

    def datasets(self, name: str) -> list[DatasetInput]:
        return []

    def artifacts(self, name: str) -> list[Path]:
        """Files of the step's output worth browsing in MLflow beside its manifest (plots, tables)."""
        return []

    def tracked_run_id(self, name: str) -> str | None:
        """The MLflow run the step already logged into while it ran (training), if any."""
        return None

    def after_commit(self, name: str, run_id: str | None, dvc_hash: str | None) -> dict[str, Any]:
        """Work that needs the committed output (model registration); returns what to remember."""
        return {}

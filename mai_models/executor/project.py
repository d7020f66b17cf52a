"""The steps of one project (settings + parameters): their versions, and materialising one of them with
its bookkeeping (DVC commit and push, one MLflow run, a small state record kept outside DVC outputs so
that a reused step still reports its run, its DVC hash and what was registered after the commit).

This is the one place that runs a step: the CLI, ``dvc repro`` (through the CLI) and the Dagster
assets all call ``Project.materialize``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mai_models.config import PipelineParams
from mai_models.errors import MaiUserError
from mai_models.executor.code_closure import code_version
from mai_models.executor.launch import Launcher, ProcessLauncher, Program
from mai_models.executor.step import CheckResult, Step
from mai_models.executor.versioning import StepResult, current_version, read_manifest, run_step, step_version
from mai_models.settings import Settings
from mai_models.tracking.mlflow_runs import TAG_DVC_HASH, StepRun, log_step_run, run_experiment_id
from mai_models.tracking.state import read_state, write_state

RUN_ID_FILE = "mlflow_run_id"


@dataclass(frozen=True)
class Materialization:
    result: StepResult
    code_version: str
    mlflow_run_id: str | None
    dvc_hash: str | None
    extra: dict[str, Any] | None = None
    live: dict[str, Any] | None = None  # what the build reported while it ran (not stored)
    mlflow_experiment_id: str | None = None

    def metadata(self) -> dict[str, Any]:
        return {
            "data_version": self.result.version,
            "code_version": self.code_version,
            "reused": self.result.reused,
            "summary": self.result.summary,
            "path": str(self.result.out_dir),
            "mlflow_run_id": self.mlflow_run_id,
            "dvc_hash": self.dvc_hash,
            **(self.extra or {}),
            **(self.live or {}),
            **{f"timing_{k}": v for k, v in self.result.timings.items()},
        }


class Project:
    def __init__(
        self,
        settings: Settings,
        params: PipelineParams,
        steps: Iterable[Step],
        *,
        launcher: Launcher | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.params = params
        self.all_steps = {s.name: s for s in steps}
        self.steps = {n: s for n, s in self.all_steps.items() if s.is_enabled(params)}
        self.launcher = launcher or ProcessLauncher()
        self.options = options or {}
        self.memo: dict[str, Any] = {}
        self.tracked_runs: dict[str, str] = {}
        self._code_versions: dict[str, str] = {}

    # ------------------------------------------------------------------------------------- the graph
    def step(self, name: str) -> Step:
        if name not in self.all_steps:
            raise MaiUserError(f"unknown step '{name}' (steps: {', '.join(self.all_steps)})")
        if name not in self.steps:
            raise MaiUserError(f"step '{name}' is not part of this project under its parameters")
        return self.steps[name]

    def upstream(self, name: str) -> tuple[str, ...]:
        return self.step(name).upstream_for(self.params)

    def ancestors(self, name: str) -> list[str]:
        """Every step ``name`` depends on, in declaration order (raw data first)."""
        found: set[str] = set()
        todo = list(self.upstream(name))
        while todo:
            up = todo.pop()
            if up not in found:
                found.add(up)
                todo.extend(self.upstream(up))
        return [n for n in self.steps if n in found]

    def out_dir(self, name: str) -> Path:
        return self.settings.data_dir / name

    def code_version(self, name: str) -> str:
        if name not in self._code_versions:
            step = self.step(name)
            self._code_versions[name] = code_version((step.module, *step.code))
        return self._code_versions[name]

    def config_of(self, name: str) -> dict[str, Any]:
        return self.step(name).config_for(self.params)

    def upstream_versions(self, name: str) -> dict[str, str]:
        versions = {}
        for up in self.upstream(name):
            version = current_version(self.out_dir(up))
            if version is None:
                raise MaiUserError(f"{name} needs {up}, which is not materialised at {self.out_dir(up)}")
            versions[up] = version
        return versions

    def version(self, name: str) -> str:
        step = self.step(name)
        inputs = step.inputs(self.context(name)) if step.inputs else None
        upstream = self.upstream_versions(name)
        return step_version(name, self.config_of(name), self.code_version(name), upstream, inputs)

    def upstream_tags(self, name: str) -> dict[str, str]:
        """MLflow tags naming the data versions (and DVC hashes) a step's run read."""
        tags = {f"mai.upstream.{k}": v for k, v in self.upstream_versions(name).items()}
        for up in self.upstream(name):
            dvc_hash = read_state(self.settings, up).get("dvc_hash")
            if dvc_hash:
                tags[f"mai.upstream.{up}.dvc_hash"] = dvc_hash
        return tags

    def lineage(self, name: str) -> list[dict[str, Any]]:
        """Each ancestor's data version, upstream versions, DVC hash and MLflow run, raw data first."""
        chain = []
        for step in self.ancestors(name):
            manifest = read_manifest(self.out_dir(step)) or {}
            state = read_state(self.settings, step)
            chain.append(
                {
                    "step": step,
                    "version": manifest.get("version") or state.get("version"),
                    "upstream": (manifest.get("lineage") or {}).get("upstream", {}),
                    "dvc_hash": state.get("dvc_hash"),
                    "mlflow_run_id": state.get("mlflow_run_id"),
                }
            )
        return chain

    # ----------------------------------------------------------------------------------- running one
    def context(self, name: str, *, track: bool = False, progress: bool = False) -> BoundContext:
        return BoundContext(self, self.step(name), track=track, progress=progress)

    def run(
        self, name: str, *, force: bool = False, progress: bool = False, track: bool = False
    ) -> tuple[StepResult, BoundContext]:
        """Build ``name`` unless its version is stored; ``track`` lets a step that logs while it runs
        (training) open its MLflow run."""
        ctx = self.context(name, track=track, progress=progress)
        step = ctx.step
        lineage = {"upstream": self.upstream_versions(name), "code_version": self.code_version(name)}
        result = run_step(
            name, self.out_dir(name), ctx.version, lambda out: step.build(ctx, out), lineage, force=force
        )
        return result, ctx

    def materialize(
        self,
        name: str,
        *,
        dvc: Any = None,
        track: bool = True,
        tags: dict[str, str] | None = None,
        force: bool = False,
        progress: bool = False,
    ) -> Materialization:
        result, ctx = self.run(name, force=force, progress=progress, track=track)
        code = self.code_version(name)
        state = read_state(self.settings, name)
        bookkept = state.get("version") == result.version and (dvc is None or state.get("dvc_hash"))
        if result.reused and bookkept:
            if track and state.get("mlflow_run_id") and not state.get("mlflow_experiment_id"):
                # A state written before it kept the experiment id: looked up once, then stored.
                experiment = run_experiment_id(self.settings, state["mlflow_run_id"])
                state = {**state, "mlflow_experiment_id": experiment}
                write_state(self.settings, name, state)
            return Materialization(
                result,
                code,
                state.get("mlflow_run_id"),
                state.get("dvc_hash"),
                state.get("extra"),
                mlflow_experiment_id=state.get("mlflow_experiment_id"),
            )

        dvc_hash = dvc.commit_and_push(name) if dvc is not None else None
        run_id = experiment_id = None
        if track:
            step = ctx.step
            run = StepRun(
                step=name,
                plane=step.group,
                data_version=result.version,
                code_version=code,
                params=self.config_of(name),
                stats=result.stats,
                timings=result.timings,
                tags={**(tags or {}), **({TAG_DVC_HASH: dvc_hash} if dvc_hash else {})}
                | self.upstream_tags(name),
                datasets=step.datasets(ctx) if step.datasets else [],
                artifacts=[
                    result.out_dir / "_manifest.json",
                    *(p for a in step.artifacts if (p := result.out_dir / a).exists()),
                ],
            )
            run_id = log_step_run(self.settings, run, run_id=self.tracked_runs.get(name))
            experiment_id = run_experiment_id(self.settings, run_id)
        extra = ctx.step.after_commit(ctx, run_id, dvc_hash) if ctx.step.after_commit else {}
        state = {
            "version": result.version,
            "mlflow_run_id": run_id,
            "mlflow_experiment_id": experiment_id,
            "dvc_hash": dvc_hash,
            "extra": extra,
        }
        write_state(self.settings, name, state)
        return Materialization(result, code, run_id, dvc_hash, extra, ctx.metadata, experiment_id)

    def run_check(self, name: str, check_name: str) -> CheckResult:
        check = next((c for c in self.step(name).checks if c.name == check_name), None)
        if check is None:
            raise MaiUserError(f"{name} has no check '{check_name}'")
        if read_manifest(self.out_dir(name)) is None:
            raise MaiUserError(f"{name} is not materialised at {self.out_dir(name)}")
        return check.run(self.context(name))


class BoundContext:
    """The context of one step of one project (see ``StepContext``)."""

    def __init__(self, project: Project, step: Step, *, track: bool = False, progress: bool = False) -> None:
        self.project = project
        self.step = step
        self.name = step.name
        self.track = track
        self.progress = progress
        # Reported to the orchestrator with this materialisation (live telemetry), never stored.
        self.metadata: dict[str, Any] = {}
        self._version: str | None = None

    @property
    def settings(self) -> Settings:
        return self.project.settings

    @property
    def params(self) -> PipelineParams:
        return self.project.params

    @property
    def options(self) -> dict[str, Any]:
        """Test and fault-injection switches the caller passed to the project."""
        return self.project.options

    @property
    def memo(self) -> dict[str, Any]:
        """Shared by every step of one project: what one lookup found, the next step reuses."""
        return self.project.memo

    @property
    def launcher(self) -> Launcher:
        return self.project.launcher

    @property
    def upstream(self) -> tuple[str, ...]:
        return self.project.upstream(self.name)

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = self.project.version(self.name)
        return self._version

    @property
    def output(self) -> Path:
        """This step's stored output (the one a build replaces, or a check reads)."""
        return self.project.out_dir(self.name)

    @property
    def work_dir(self) -> Path:
        """Scratch space kept across attempts of this version: an interrupted training resumes here."""
        return self.settings.home / "work" / self.name / self.version

    def has_input(self, name: str) -> bool:
        return name in self.upstream

    def input(self, name: str) -> Path:
        """The output directory of upstream step ``name``; reading anything else is a wiring bug."""
        if name not in self.upstream:
            raise MaiUserError(f"{self.name} reads {name}, which is not one of its upstream steps")
        return self.project.out_dir(name)

    def state(self, name: str) -> dict[str, Any]:
        """What was recorded after ``name`` (an upstream step, or this one) was materialised."""
        if name != self.name and name not in self.upstream:
            raise MaiUserError(f"{self.name} reads the state of {name}, which is not upstream of it")
        return read_state(self.settings, name)

    def upstream_versions(self) -> dict[str, str]:
        return self.project.upstream_versions(self.name)

    def lineage(self) -> list[dict[str, Any]]:
        return self.project.lineage(self.name)

    def launch(self, program: Program) -> dict[str, Any]:
        reported = self.launcher.launch(program)
        self.metadata.update(reported)
        return reported

    def start_run(self, tags: dict[str, str] | None = None) -> str | None:
        """Open (or, for a resumed version, reopen) this step's MLflow run while it runs, so curves and
        samples land in the run that the materialisation then completes. None when not tracking."""
        if not self.track:
            return None
        import mlflow

        from mai_models.tracking.mlflow_runs import (
            TAG_ASSET_KEY,
            TAG_CODE_VERSION,
            TAG_DATA_VERSION,
            TAG_STEP,
            ensure_experiment,
            run_exists,
            tracking_server,
        )

        self.work_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.work_dir / RUN_ID_FILE
        with tracking_server(self.settings):  # a server that does not answer: one line
            client = mlflow.MlflowClient(self.settings.mlflow_tracking_uri)
            run_id = id_file.read_text().strip() if id_file.exists() else None
            if run_id is None or not run_exists(client, run_id):
                run_tags = {
                    TAG_STEP: self.name,
                    TAG_ASSET_KEY: self.name,
                    TAG_CODE_VERSION: self.project.code_version(self.name),
                    TAG_DATA_VERSION: self.version,
                    **self.project.upstream_tags(self.name),
                    **(tags or {}),
                }
                experiment_id = ensure_experiment(self.settings, self.step.group)
                run_name = f"{self.name}-{self.version[:8]}"
                run_id = client.create_run(experiment_id, run_name=run_name, tags=run_tags).info.run_id
                id_file.write_text(run_id)
        self.project.tracked_runs[self.name] = run_id
        return run_id

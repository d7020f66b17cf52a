"""Shared fixtures: a throwaway project root with the real dvc.yaml, a small demo corpus and
every piece of state (MLflow, Dagster, DVC remote) under tmp_path."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mai_models.config import apply_overrides

pytest_plugins = ["services_fixtures"]  # the production stack (Postgres, S3, MLflow server)

REPO = Path(__file__).resolve().parents[1]
DVC_BIN = REPO / ".venv-dvc" / "bin" / "dvc"

# Small but real: ~250 KB of the demo corpus keeps an end-to-end run to seconds.
SMALL_OVERRIDES = [
    "ingest.sources=[{kind: demo, limit_bytes: 250000}, {kind: landing, path: data/landing}]",
    "validation.min_source_share=0.01",
    "tokenizer.vocab_size=1000",
    "tokenize.workers=1",
]


def project_params(overrides: list[str] | None = None) -> dict:
    """The repository's params.yaml (every section DVC expects) with overrides applied."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    return apply_overrides(data, SMALL_OVERRIDES + list(overrides or []))


def make_project(root: Path, overrides: list[str] | None = None, git: bool = False) -> Path:
    """A project root as a user would have it: code dirs DVC hashes, dvc.yaml, params.yaml, landing dir."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "mai_models", root / "mai_models", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(
        REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local")
    )
    (root / "data" / "landing").mkdir(parents=True)
    (root / "data" / "landing" / ".gitkeep").touch()
    (root / "params.yaml").write_text(yaml.safe_dump(project_params(overrides), sort_keys=False))
    if git:
        shutil.copy(REPO / ".gitignore", root / ".gitignore")  # the real one: DVC must accept it
        shutil.copy(REPO / "data" / ".gitignore", root / "data" / ".gitignore")
        for args in (
            ["init", "-q"],
            ["add", "-A"],
            ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
        ):
            subprocess.run(["git", *args], cwd=root, check=True)
    return root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_project(tmp_path / "proj")
    monkeypatch.chdir(root)
    monkeypatch.setenv("MAI_ROOT", str(root))
    monkeypatch.setenv("DAGSTER_HOME", str(root / ".mai" / "dagster"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / '.mai' / 'mlflow.db'}")
    monkeypatch.setenv("MAI_DVC_BIN", str(DVC_BIN))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.delenv("MAI_CONFIG", raising=False)
    (root / ".mai" / "dagster").mkdir(parents=True)
    return root


def build_text_data(root: Path) -> None:
    """Materialise the four text steps for a project (no tracking): the input LM tests need."""
    from mai_models.config import load_params
    from mai_models.graph import COMMANDS, project
    from mai_models.settings import load_settings

    settings = load_settings(root=root)
    graph = project(settings, load_params(settings.params_file))
    for name in (*COMMANDS["data ingest"], *COMMANDS["data tokenize"]):
        graph.run(name)


@pytest.fixture(scope="session")
def lm_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with tokenized data, built once per session; tests copy it before writing."""
    root = make_project(tmp_path_factory.mktemp("lm") / "proj")
    build_text_data(root)
    return root


def enter_project(mp: pytest.MonkeyPatch, root: Path) -> None:
    """Make ``root`` the current project: cwd, settings root, and its own MLflow, Dagster and DVC."""
    mp.chdir(root)
    mp.setenv("MAI_ROOT", str(root))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / '.mai' / 'mlflow.db'}")
    mp.setenv("DAGSTER_HOME", str(root / ".mai" / "dagster"))
    mp.setenv("MAI_DVC_BIN", str(DVC_BIN))
    mp.delenv("MAI_CONFIG", raising=False)


@pytest.fixture
def lm_workspace(lm_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(lm_project, root, symlinks=True)
    enter_project(monkeypatch, root)
    (root / ".mai" / "dagster").mkdir(parents=True, exist_ok=True)
    return root


class InProcessTrainer:
    """A launcher that runs the trainer of a pretraining step's program in this process, as one rank:
    no torchrun start-up, and the test can pass extra metric sinks or a stated peak."""

    def __init__(self, extra_sinks: list | None = None, **spec_updates) -> None:
        self.extra_sinks = extra_sinks or []
        self.spec_updates = spec_updates
        self.spec = None

    def launch(self, program) -> dict:
        from mai_models.lm.run_spec import RunSpec
        from mai_models.lm.trainer import train

        spec = RunSpec.model_validate_json(Path(program.args[0]).read_text())
        self.spec = spec.model_copy(update=self.spec_updates)
        train(self.spec, extra_sinks=self.extra_sinks)
        return {}


def materialize_with_resources(assets: list, instance, raise_on_error: bool = True):
    """Materialise Dagster assets and checks in-process with the project's real resources."""
    from dagster import PipesSubprocessClient, materialize

    from assets.resources import DvcVersioning, FoundrySettings, MLflowTracking

    resources = {
        "foundry": FoundrySettings(),
        "mlflow": MLflowTracking(),
        "dvc": DvcVersioning(),
        "pipes_subprocess_client": PipesSubprocessClient(),
    }
    return materialize(
        assets,
        instance=instance,
        resources=resources,
        raise_on_error=raise_on_error,
    )


def materializations(result) -> dict[str, dict]:
    """Asset key -> materialisation metadata, in the order the run produced them."""
    mats = [
        ev.step_materialization_data.materialization for ev in result.all_events if ev.is_step_materialization
    ]
    return {m.asset_key.to_user_string(): m.metadata for m in mats}

"""One typed settings layer: environment variables (``MAI_*`` plus the standard ``DAGSTER_HOME`` and
``MLFLOW_TRACKING_URI``), optionally a ``mai.yaml`` at the project root, then embedded defaults.

The embedded defaults keep every piece of state under ``<root>/.mai``; production points the same
fields at Postgres, an S3 bucket and an MLflow server without code changes.
"""

from __future__ import annotations

import os
import shutil
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mai_models.errors import MaiUserError, first_validation_error


class Settings(BaseSettings):
    """Where the factory keeps its state. Every path field is resolved against ``root``."""

    model_config = SettingsConfigDict(env_prefix="MAI_", extra="forbid")

    root: Path = Field(default_factory=Path.cwd, description="Project root: params.yaml, dvc.yaml, data/")
    home: Path | None = Field(None, description="Embedded state directory; default <root>/.mai")
    params_file: Path | None = Field(None, description="Pipeline parameters; default <root>/params.yaml")
    data_dir: Path | None = Field(None, description="Stage outputs (DVC outs); default <root>/data")
    dagster_home: Path | None = Field(
        None, validation_alias=AliasChoices("MAI_DAGSTER_HOME", "DAGSTER_HOME", "dagster_home")
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "MAI_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "mlflow_tracking_uri"
        ),
    )
    mlflow_artifact_uri: str | None = Field(
        None,
        description="Artifact root for new experiments (s3://... ok); default <home>/mlartifacts, or "
        "with a tracking server (http://...) the server's own artifact store",
    )
    mlflow_experiment: str = Field("mai-foundry", description="Experiments are <this>/<plane>")
    mlflow_ui_url: str | None = Field(
        None,
        description="Where people open the MLflow UI, for the links on Dagster's asset pages; default the "
        "tracking server (http://...), else `mai ui`'s http://127.0.0.1:5000",
    )
    dvc_enabled: bool = True
    dvc_bin: str | None = Field(
        None, description="DVC executable; default <root>/.venv-dvc/bin/dvc, then PATH"
    )
    dvc_remote: str | None = Field(
        None, description="DVC remote URL; default <home>/dvc-remote (s3://... ok)"
    )
    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "MAI_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "s3_endpoint_url"
        ),
        description="An S3-compatible store (SeaweedFS, MinIO, Ceph) for s3:// remotes; credentials come "
        "from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an instance role",
    )
    dvc_git: bool | None = Field(
        None,
        description="DVC's git integration (dvc.lock committed, `dvc exp`); default: on for a shared "
        "remote, off for a machine-local one, whose dvc.lock then stays out of git",
    )
    failure_webhook: str | None = Field(
        None, description="Failed runs are also POSTed here as JSON (they always go to <home>/failures.jsonl)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments, then the environment, then mai.yaml.
        return init_settings, env_settings, _YamlSource(settings_cls)

    def model_post_init(self, __context: Any) -> None:
        self.root = self.root.expanduser().resolve()
        self.home = self._under_root(self.home, ".mai")
        self.params_file = self._under_root(self.params_file, "params.yaml")
        self.data_dir = self._under_root(self.data_dir, "data")
        self.dagster_home = self._under_root(self.dagster_home, str(Path(".mai") / "dagster"))
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{self.home / 'mlflow.db'}"
        if self.mlflow_artifact_uri is None and not self.tracks_to_server:
            self.mlflow_artifact_uri = (self.home / "mlartifacts").as_uri()
        if self.dvc_remote is None:
            self.dvc_remote = str(self.home / "dvc-remote")

    def _under_root(self, value: Path | None, default: str) -> Path:
        path = Path(value).expanduser() if value is not None else Path(default)
        return path if path.is_absolute() else self.root / path

    @property
    def tracks_to_server(self) -> bool:
        """An MLflow tracking server, which stores (or proxies) artifacts itself."""
        return str(self.mlflow_tracking_uri).startswith(("http://", "https://"))

    @property
    def state_dir(self) -> Path:
        """Bookkeeping that must not live inside DVC-tracked outputs."""
        return self.home / "state"

    def resolve_dvc_bin(self) -> str:
        if self.dvc_bin:
            return self.dvc_bin
        local = self.root / ".venv-dvc" / "bin" / "dvc"
        if local.exists():
            return str(local)
        found = shutil.which("dvc")
        if found is None:
            raise MaiUserError("DVC is not installed: run `make .venv-dvc` or set MAI_DVC_BIN")
        return found

    def subprocess_env(self) -> dict[str, str]:
        """Environment for child processes (dagster, mlflow, dvc) that must agree with these settings."""
        env = dict(os.environ)
        env.update(
            MAI_ROOT=str(self.root),
            DAGSTER_HOME=str(self.dagster_home),
            MLFLOW_TRACKING_URI=str(self.mlflow_tracking_uri),
        )
        return env


class _YamlSource(PydanticBaseSettingsSource):
    """Values of the mai.yaml that ``load_settings`` found (lowest priority after the defaults)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _YAML_VALUES.get({}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        # Key each value as the environment source does (a field's first alias), so that a value from
        # both sources merges into one key and the environment's wins.
        out = {}
        for name, value in _YAML_VALUES.get({}).items():
            alias = Settings.model_fields[name].validation_alias
            out[alias.choices[0] if isinstance(alias, AliasChoices) else name] = value
        return out


_YAML_VALUES: ContextVar[dict[str, Any]] = ContextVar("mai_yaml_values")


def load_settings(**overrides: Any) -> Settings:
    """Settings from explicit arguments, then the environment, then ``mai.yaml`` (``MAI_CONFIG`` or
    ``<root>/mai.yaml``), then the embedded defaults."""
    root = Path(overrides.get("root") or os.environ.get("MAI_ROOT") or Path.cwd())
    config_path = Path(os.environ.get("MAI_CONFIG") or root / "mai.yaml")
    values: dict[str, Any] = {}
    if config_path.exists():
        try:
            loaded = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MaiUserError(f"{config_path}: not valid YAML ({exc.__class__.__name__})") from exc
        if not isinstance(loaded, dict):
            raise MaiUserError(f"{config_path}: expected a mapping of settings")
        values.update(loaded)
    unknown = set(values) - set(Settings.model_fields)
    if unknown:
        raise MaiUserError(
            f"invalid settings in {config_path}: unknown field(s) {', '.join(sorted(unknown))}"
        )
    explicit = {k: v for k, v in overrides.items() if v is not None}
    explicit.setdefault("root", root)
    token = _YAML_VALUES.set(values)
    try:
        return Settings(**explicit)
    except ValueError as exc:
        raise MaiUserError(f"invalid settings: {_first_error(exc)}") from exc
    finally:
        _YAML_VALUES.reset(token)


def _first_error(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return ": ".join(first_validation_error(exc))
    return str(exc).splitlines()[0]

from __future__ import annotations

from pathlib import Path

import pytest

from mai_models.config import load_params
from mai_models.errors import MaiUserError
from mai_models.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "MAI_ROOT",
        "MAI_CONFIG",
        "DAGSTER_HOME",
        "MLFLOW_TRACKING_URI",
        "MAI_DVC_REMOTE",
        "MAI_HOME",
    ):
        monkeypatch.delenv(var, raising=False)


def test_embedded_defaults_live_under_dot_mai(tmp_path: Path) -> None:
    s = load_settings(root=tmp_path)
    assert s.dagster_home == tmp_path / ".mai" / "dagster"
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / '.mai' / 'mlflow.db'}"
    assert s.mlflow_artifact_uri == (tmp_path / ".mai" / "mlartifacts").as_uri()
    assert s.dvc_remote == str(tmp_path / ".mai" / "dvc-remote")
    assert s.params_file == tmp_path / "params.yaml"


def test_yaml_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mai.yaml").write_text(
        "mlflow_tracking_uri: http://mlflow.internal:5000\n"
        "dvc_remote: s3://bucket/dvc\n"
        "mlflow_experiment: prod\n"
    )
    s = load_settings(root=tmp_path)
    assert s.mlflow_tracking_uri == "http://mlflow.internal:5000" and s.dvc_remote == "s3://bucket/dvc"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow@db/mlflow")
    monkeypatch.setenv("DAGSTER_HOME", "/srv/dagster")
    s = load_settings(root=tmp_path)
    assert s.mlflow_tracking_uri == "postgresql://mlflow@db/mlflow"
    assert s.dagster_home == Path("/srv/dagster") and s.mlflow_experiment == "prod"


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "mai.yaml").write_text("no_such_setting: 1\n")
    with pytest.raises(MaiUserError, match="no_such_setting"):
        load_settings(root=tmp_path)
    (tmp_path / "mai.yaml").write_text("root: [unclosed\n")
    with pytest.raises(MaiUserError, match="not valid YAML"):
        load_settings(root=tmp_path)


def test_params_overrides_use_dvc_syntax(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("clean:\n  min_chars: 100\n")
    params = load_params(tmp_path / "params.yaml", ["clean.min_chars=50", "dedup.near_dup_threshold=0.9"])
    assert params.clean.min_chars == 50 and params.dedup.near_dup_threshold == 0.9
    with pytest.raises(MaiUserError, match="key.sub=value"):
        load_params(None, ["nonsense"])
    with pytest.raises(MaiUserError, match="clean.bogus"):
        load_params(None, ["clean.bogus=1"])


def test_explicit_arguments_beat_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAI_ROOT", str(tmp_path / "from_env"))
    s = load_settings(root=tmp_path / "explicit")
    assert s.root == tmp_path / "explicit" and s.home == tmp_path / "explicit" / ".mai"

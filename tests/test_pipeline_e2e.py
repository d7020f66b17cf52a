"""The text data plane through real Dagster, MLflow, great-expectations and DVC, on a small demo corpus."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import make_project, materializations, materialize_with_resources
from dagster import DagsterInstance

from assets.catalog import in_groups
from mai_models.settings import load_settings
from mai_models.tracking.dvc import Dvc
from mai_models.tracking.mlflow_runs import find_runs

pytestmark = pytest.mark.slow
STEPS = ["raw_documents", "clean_documents", "bpe_tokenizer", "token_shards"]


def _materialize(instance: DagsterInstance, raise_on_error: bool = True):
    assets, checks = in_groups("text")
    return materialize_with_resources([*assets, *checks], instance, raise_on_error)


@pytest.fixture
def git_project(tmp_path: Path, project: Path) -> Path:
    """The conftest project, plus git (DVC experiments need a commit to branch from)."""
    root = make_project(tmp_path / "gitproj", git=True)
    return root


def test_materialise_track_version_and_reproduce(git_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = git_project
    monkeypatch.chdir(root)
    monkeypatch.setenv("MAI_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / '.mai' / 'mlflow.db'}")
    instance = DagsterInstance.ephemeral()

    first = _materialize(instance)
    assert first.success
    meta = materializations(first)
    assert list(meta) == STEPS
    checks = [
        e.event_specific_data for e in first.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert len(checks) == 2 and all(c.passed for c in checks)
    assert all(m["reused"].value is False for m in meta.values())
    assert meta["raw_documents"]["docs"].value > 50
    assert meta["token_shards"]["totals"].value["tokens"] > 0

    # MLflow: one run per materialisation, tagged with the Dagster run, versions, DVC hash and its data.
    settings = load_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    runs = find_runs(settings)
    assert sorted(r.data.tags["mai.asset_key"] for r in runs) == sorted(STEPS)
    for run in runs:
        step = run.data.tags["mai.asset_key"]
        assert run.data.tags["dagster.run_id"] == first.run_id
        assert run.data.tags["mai.data_version"] == meta[step]["data_version"].value
        assert run.data.tags["mai.dvc_hash"] == meta[step]["dvc_hash"].value
        assert run.data.tags["mai.code_version"]
        assert run.inputs.dataset_inputs, f"{step} logged no dataset"

    # DVC: outputs committed and pushed; the workspace matches dvc.lock.
    dvc = Dvc(settings)
    assert "up to date" in dvc.status("token_shards")  # and its upstream stages
    assert any((settings.home / "dvc-remote").rglob("*")), "nothing was pushed to the remote"
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STEPS)

    # Unchanged inputs: every step is a no-op that says so, and no MLflow run is added.
    second = _materialize(instance)
    assert all(m["reused"].value is True for m in materializations(second).values())
    assert len(find_runs(settings)) == 4

    # `dvc repro` rebuilds every stage through the CLI without Dagster, byte for byte.
    hashes = {s: lock["stages"][s]["outs"][0]["md5"] for s in STEPS}
    dvc.run("repro", "--force", "token_shards")  # the data stages; pretraining has its own tests
    relock = yaml.safe_load((root / "dvc.lock").read_text())
    assert {s: relock["stages"][s]["outs"][0]["md5"] for s in STEPS} == hashes

    # With the embedded remote, dvc.lock stays machine-local: the clone is as clean as before the run.
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    assert status.stdout == "", status.stdout

    # A DVC experiment with a parameter override runs in the same project, in DVC's git mode.
    monkeypatch.setenv("MAI_DVC_GIT", "1")
    dvc = Dvc(load_settings())
    dvc.ensure_remote()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    assert status.stdout.split() == ["??", "dvc.lock"]
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], cwd=root, check=True
    )
    dvc.run("exp", "run", "-S", "clean.min_chars=400", "token_shards")
    shown = dvc.run("exp", "show", "--csv", "--no-pager").stdout
    assert "400" in shown


def test_failing_check_blocks_downstream(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["validation"]["max_dedup_rate"] = 0.0  # the demo corpus has real duplicates
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = _materialize(DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    assert set(materializations(result)) == {"raw_documents", "clean_documents"}
    evaluations = {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    failed = evaluations["clean_documents_expectations"]
    assert not failed.passed
    assert "dedup rate" in failed.description

"""The production stack, started for real (tests/services_fixtures.py): Dagster's storage and the MLflow
backend in PostgreSQL, the DVC remote and the MLflow artifacts in SeaweedFS's S3 gateway, an MLflow
tracking server. The whole chain runs through Dagster on it with the tiny presets; then a fresh clone
pulls its outputs back, and four faults each have one clear outcome."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import make_project, materializations, materialize_with_resources
from dagster import DagsterInstance
from services_fixtures import enter_stack
from test_eval_pipeline import SETTINGS

import mai_models.tracking.dvc as dvc_module
from assets.catalog import in_groups
from mai_models.config import load_params
from mai_models.errors import MaiUserError, ServiceUnavailable
from mai_models.executor.versioning import read_manifest
from mai_models.graph import STEPS, project
from mai_models.services.object_store import ObjectStore
from mai_models.services.stack import DAGSTER_DB, MLFLOW_ARTIFACTS, MLFLOW_DB, Stack
from mai_models.settings import load_settings
from mai_models.tracking.dvc import Dvc
from mai_models.tracking.mlflow_runs import find_runs
from mai_models.tracking.registry import LM_MODEL, VOICE_MODEL

pytestmark = pytest.mark.slow

GROUPS = ("text", "lm", "speech", "evaluation")
SPEECH = [
    "speech.demo.sentences=20",
    "speech.demo.heldout_sentences=3",
    "speech_validation.min_utterances=10",
    "speech_validation.min_total_minutes=0.5",
]
OVERRIDES = [
    f"{section}.{key}={value}" for section, values in SETTINGS.items() for key, value in values.items()
]
E2E = "e2e"


@dataclass
class ProductionRun:
    root: Path
    result: object  # dagster ExecuteInProcessResult
    meta: dict


def _tree_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _lock(root: Path) -> dict[str, str]:
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: stage["outs"][0]["md5"] for name, stage in stages.items()}


def _object_key(prefix: str, md5: str) -> str:
    return f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"


@pytest.fixture(scope="module")
def production_run(service_stack: Stack, tmp_path_factory: pytest.TempPathFactory):
    root = make_project(tmp_path_factory.mktemp("prod") / "proj", OVERRIDES + SPEECH, git=True)
    with pytest.MonkeyPatch.context() as mp:
        enter_stack(mp, root, service_stack, E2E)
        instance = DagsterInstance.get()  # DAGSTER_HOME: the stack's dagster.yaml, on Postgres
        try:
            assets, checks = in_groups(*GROUPS)
            result = materialize_with_resources([*assets, *checks], instance)
        finally:
            instance.dispose()
    return ProductionRun(root, result, materializations(result))


def test_the_chain_runs_through_dagster_on_postgres_s3_and_an_mlflow_server(
    production_run: ProductionRun, service_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, pg, store = production_run, service_stack.postgres, service_stack.object_store
    assert run.result.success
    assert set(run.meta) == {s.name for s in STEPS}
    assert all(m["reused"].value is False for m in run.meta.values())
    # The gate decided for both models, and its blocking check let the champion step run.
    decisions = json.loads((run.root / "data" / "arena" / "decision.json").read_text())
    assert {decisions[m]["outcome"] for m in (LM_MODEL, VOICE_MODEL)} <= {"promote", "keep", "below_floor"}
    gate = [
        e.event_specific_data
        for e in run.result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.event_specific_data.check_name == "champion_gate"
    ]
    assert len(gate) == 1 and gate[0].passed

    # Dagster: the run, its events and every materialisation are rows in the stack's Postgres.
    rows = pg.query(DAGSTER_DB, "SELECT status FROM runs WHERE run_id = %s", (run.result.run_id,))
    assert rows == [("SUCCESS",)]
    materialized = pg.query(
        DAGSTER_DB,
        "SELECT DISTINCT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
        (run.result.run_id, "ASSET_MATERIALIZATION"),
    )
    assert {key for (key,) in materialized} == {f'["{s.name}"]' for s in STEPS}
    # infra/dagster/dagster.yaml (the production instance file, settings from DAGSTER_PG_*) reads them.
    home = tmp_path / "dagster-home"
    home.mkdir()
    shutil.copy(Path(__file__).parents[1] / "infra" / "dagster" / "dagster.yaml", home / "dagster.yaml")
    for key, value in {"HOST": "127.0.0.1", "PORT": str(pg.port), "USER": pg.user, "DB": DAGSTER_DB}.items():
        monkeypatch.setenv(f"DAGSTER_PG_{key}", value)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "")
    production = DagsterInstance.from_config(str(home))
    try:
        assert production.get_run_by_id(run.result.run_id).is_success
    finally:
        production.dispose()

    # MLflow: every step's run and both registered models are rows in the server's Postgres.
    run_ids = {m["mlflow_run_id"].value for m in run.meta.values()}
    stored = pg.query(
        MLFLOW_DB,
        "SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        "WHERE e.name LIKE %s",
        (f"{E2E}/%",),
    )
    assert run_ids <= {run_id for (run_id,) in stored}
    versions = pg.query(MLFLOW_DB, "SELECT name, run_id FROM model_versions")
    assert (LM_MODEL, run.meta["moe_pretrain"]["mlflow_run_id"].value) in versions
    assert (VOICE_MODEL, run.meta["mai_voice"]["mlflow_run_id"].value) in versions

    # The bucket: MLflow's artifacts (proxied by the server) and every DVC object of every stage.
    keys = set(store.keys(service_stack.bucket))
    arena_run = run.meta["arena"]["mlflow_run_id"].value
    assert any(
        k.startswith(f"{MLFLOW_ARTIFACTS}/") and k.endswith(f"/{arena_run}/artifacts/text/leaderboard.csv")
        for k in keys
    )
    lock = _lock(run.root)
    assert set(lock) == {s.name for s in STEPS}
    cache = run.root / ".dvc" / "cache" / "files" / "md5"
    for name, md5 in lock.items():
        assert _object_key(E2E, md5) in keys, name
        listing = json.loads((cache / md5[:2] / md5[2:]).read_text())
        missing = [e["relpath"] for e in listing if _object_key(E2E, e["md5"]) not in keys]
        assert not missing, f"{name}: not in the bucket: {missing}"
    assert not list((run.root / ".mai").glob("mlartifacts")), "artifacts were written locally"

    # A fresh clone (dvc.lock committed, as DVC expects with a shared remote) pulls every output back.
    subprocess.run(["git", "add", "dvc.lock", "data"], cwd=run.root, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], cwd=run.root, check=True
    )
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(run.root), str(clone)], check=True)
    assert not any((clone / "data" / name).exists() for name in lock)
    with pytest.MonkeyPatch.context() as mp:
        enter_stack(mp, clone, service_stack, E2E)  # the same settings: remote, endpoint, credentials
        pulled = subprocess.run(
            [str(Path(sys.executable).parent / "mai"), "dvc", "pull"],
            cwd=clone,
            capture_output=True,
            text=True,
        )
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    for name in lock:
        assert _tree_hashes(clone / "data" / name) == _tree_hashes(run.root / "data" / name), name


def _copy_of(run: ProductionRun, dest: Path) -> Path:
    """The chain's project as it stands (outputs, DVC cache, state), for a fault to break."""
    shutil.copytree(run.root, dest, symlinks=True)
    return dest


def _graph(overrides: list[str] | None = None, **options):
    settings = load_settings()
    return settings, project(settings, load_params(settings.params_file, overrides), options=options)


def test_object_store_down_during_a_push_retries_then_fails_in_one_line_and_keeps_the_outputs(
    production_run: ProductionRun, service_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy_of(production_run, tmp_path / "proj")
    enter_stack(monkeypatch, root, service_stack, "fault-store")
    # botocore's own retries and the backoff between attempts only stretch the wait: the attempts count.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setattr(dvc_module, "PUSH_BACKOFF_S", 0.2)
    changed = ["ingest.max_doc_bytes=7000000"]
    settings, graph = _graph(changed)
    store = service_stack.object_store
    store.kill()
    try:
        with pytest.raises(ServiceUnavailable) as failed:
            graph.materialize("raw_documents", dvc=Dvc(settings))
    finally:
        store.start()
    message = str(failed.value)
    assert "\n" not in message and f"remote {settings.dvc_remote} failed 3 times" in message
    assert "outputs and DVC cache kept" in message

    # The new version's outputs and its DVC cache entry are there; nothing was recorded as pushed.
    version = graph.version("raw_documents")
    assert read_manifest(root / "data" / "raw_documents")["version"] == version
    md5 = _lock(root)["raw_documents"]
    assert (root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).exists()
    assert _object_key("fault-store", md5) not in store.keys(service_stack.bucket, "fault-store/")

    # The store is back: the re-run pushes and records what was built, without building it again.
    again = _graph(changed)[1].materialize("raw_documents", dvc=Dvc(settings))
    assert again.result.reused and again.result.version == version and again.dvc_hash == md5
    assert _object_key("fault-store", md5) in store.keys(service_stack.bucket, "fault-store/")


def test_mlflow_server_down_fails_the_step_in_one_line_naming_it(
    production_run: ProductionRun, service_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy_of(production_run, tmp_path / "proj")
    enter_stack(monkeypatch, root, service_stack, "fault-mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the client's own backoff: minutes
    changed = ["ingest.max_doc_bytes=6000000"]
    settings, graph = _graph(changed)
    server = service_stack.mlflow
    server.stop()
    try:
        with pytest.raises(ServiceUnavailable) as logging:
            graph.materialize("raw_documents", dvc=Dvc(settings))
        # A training step opens its run before it trains: it fails there, before any compute.
        with pytest.raises(ServiceUnavailable) as opening:
            _graph()[1].context("moe_pretrain", track=True).start_run()
    finally:
        server.start()
    for failed in (logging, opening):
        message = str(failed.value)
        assert "\n" not in message
        assert f"MLflow tracking server {server.tracking_uri} did not answer" in message

    # What was built (and pushed) stays: the re-run only logs it, into the server.
    again = _graph(changed)[1].materialize("raw_documents", dvc=Dvc(settings))
    assert again.result.reused and again.mlflow_run_id
    client = mlflow.MlflowClient(server.tracking_uri)
    assert client.get_run(again.mlflow_run_id).data.tags["mai.data_version"] == again.result.version


def test_postgres_restarts_between_two_runs_and_the_next_run_works(
    production_run: ProductionRun, service_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import PipesSubprocessClient, materialize

    from assets.resources import DvcVersioning, FoundrySettings, MLflowTracking

    root = _copy_of(production_run, tmp_path / "proj")
    enter_stack(monkeypatch, root, service_stack, "fault-postgres")
    instance = DagsterInstance.get()  # held across the restart, as a long-lived daemon holds it
    assets, _ = in_groups("text")
    raw = [a for a in assets if a.key.to_user_string() == "raw_documents"]
    resources = {
        "foundry": FoundrySettings(),
        "mlflow": MLflowTracking(),
        "dvc": DvcVersioning(),
        "pipes_subprocess_client": PipesSubprocessClient(),
    }
    forced = {"ops": {"raw_documents": {"config": {"force": True}}}}
    try:
        # Before: a replay (the copy's outputs are current), recorded in Postgres like any run.
        first = materialize(raw, instance=instance, resources=resources)
        service_stack.postgres.restart()
        # After: a rebuild, so that Dagster and the MLflow server (whose pooled connections the
        # restart dropped) both write again.
        second = materialize(raw, instance=instance, resources=resources, run_config=forced)
    finally:
        instance.dispose()
    assert first.success and second.success
    assert materializations(first)["raw_documents"]["reused"].value
    assert not materializations(second)["raw_documents"]["reused"].value
    statuses = service_stack.postgres.query(
        DAGSTER_DB, "SELECT status FROM runs WHERE run_id IN %s", ((first.run_id, second.run_id),)
    )
    assert statuses == [("SUCCESS",), ("SUCCESS",)]
    logged = find_runs(load_settings())
    assert [r.data.tags["dagster.run_id"] for r in logged] == [second.run_id]


def test_a_training_killed_mid_run_resumes_from_its_last_checkpoint_on_the_stack(
    production_run: ProductionRun, service_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy_of(production_run, tmp_path / "proj")
    enter_stack(monkeypatch, root, service_stack, "fault-train")
    longer = ["lm.steps=6"]  # a new version; checkpoints every 2 steps (SETTINGS)
    settings, killed = _graph(longer, fault_kill_after_step=5)
    with pytest.raises(MaiUserError, match="resume from its last checkpoint"):
        killed.materialize("moe_pretrain", dvc=Dvc(settings))
    work = killed.context("moe_pretrain").work_dir
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["iter_0000002", "iter_0000004"]
    run_id = (work / "mlflow_run_id").read_text().strip()

    resumed = _graph(longer)[1].materialize("moe_pretrain", dvc=Dvc(settings))
    assert resumed.live["resumed_from_step"] == 4
    assert resumed.mlflow_run_id == run_id  # the server's run continues where the killed one stopped
    history = mlflow.MlflowClient(service_stack.tracking_uri).get_metric_history(run_id, "train/loss")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4, 5, 6]
    keys = service_stack.object_store.keys(service_stack.bucket, "fault-train/")
    assert _object_key("fault-train", resumed.dvc_hash) in keys


def test_a_service_that_cannot_start_fails_in_one_line_with_the_reason_from_its_log(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "store")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", store.ports["s3"]))
        busy.listen()
        with pytest.raises(MaiUserError) as failed:
            store.start(timeout=60)
    message = str(failed.value)
    assert "\n" not in message and message.startswith("SeaweedFS (S3 object store) exited")
    assert f"127.0.0.1:{store.ports['s3']}: bind: address already in use" in message
    assert not store.running()

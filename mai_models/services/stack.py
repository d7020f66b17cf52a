"""The production stack on one machine: PostgreSQL (Dagster's storage and the MLflow backend), an S3
object store (the DVC remote and the MLflow artifacts) and an MLflow tracking server, all started into
one directory on 127.0.0.1. ``stack.env`` is what a project needs to use them, settings alone:

    MLFLOW_TRACKING_URI=http://127.0.0.1:P     MAI_DVC_REMOTE=s3://<bucket>/dvc
    MAI_S3_ENDPOINT_URL=http://127.0.0.1:S3    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    DAGSTER_HOME=<dir>/dagster                 (a dagster.yaml with dagster-postgres storage)

Tests start it once per session; ``mai bench retrain`` starts it to compare with the embedded stack.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mai_models.services.mlflow_server import MlflowServer
from mai_models.services.object_store import ObjectStore
from mai_models.services.postgres import Postgres

BUCKET = "mai-foundry"
DAGSTER_DB = "dagster"
MLFLOW_DB = "mlflow"
MLFLOW_ARTIFACTS = "mlartifacts"
DVC_PREFIX = "dvc"


def dagster_yaml(postgres_url: str) -> str:
    return f"""\
# Written by mai_models.services.stack: run, event-log and schedule storage in PostgreSQL.
storage:
  postgres:
    postgres_url: {postgres_url}
# The `training` pool (trainings, model evaluations) runs one step at a time.
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


@dataclass
class Stack:
    directory: Path
    postgres: Postgres
    object_store: ObjectStore
    mlflow: MlflowServer
    bucket: str = BUCKET

    @property
    def dagster_home(self) -> Path:
        return self.directory / "dagster"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri

    def dvc_remote(self, prefix: str = DVC_PREFIX) -> str:
        return f"s3://{self.bucket}/{prefix}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a project (and the processes it starts) on this stack."""
        store = self.object_store.env
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MAI_DVC_REMOTE": self.dvc_remote(),
            "MAI_S3_ENDPOINT_URL": self.object_store.endpoint_url,
            "DAGSTER_HOME": str(self.dagster_home),
            **{k: store[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")},
        }

    def stop(self) -> None:
        """Each service stops its own process, the clients' services first."""
        for stop in (self.mlflow.stop, self.object_store.stop, self.postgres.discard):
            stop()


def start_stack(directory: Path, bucket: str = BUCKET) -> Stack:
    """Start Postgres and the object store side by side, then the MLflow server on both; on any
    failure, whatever already started is stopped and the one-line error is raised."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    postgres = Postgres(directory / "postgres")
    store = ObjectStore(directory / "object-store")
    mlflow = MlflowServer(
        directory / "mlflow",
        backend_store_uri=postgres.url(MLFLOW_DB),
        artifacts_destination=f"s3://{bucket}/{MLFLOW_ARTIFACTS}",
        env=store.env,
    )
    stack = Stack(directory, postgres, store, mlflow, bucket)
    try:
        _start_together(postgres.start, store.start)
        postgres.create_database(MLFLOW_DB)
        dagster_url = postgres.create_database(DAGSTER_DB)
        store.create_bucket(bucket)
        stack.dagster_home.mkdir(parents=True, exist_ok=True)
        (stack.dagster_home / "dagster.yaml").write_text(dagster_yaml(dagster_url))
        mlflow.start()
    except BaseException:
        stack.stop()
        raise
    return stack


@contextmanager
def running_stack(directory: Path, bucket: str = BUCKET) -> Iterator[Stack]:
    stack = start_stack(directory, bucket)
    try:
        yield stack
    finally:
        stack.stop()


def _start_together(*starts) -> None:
    """Run the start functions in threads (each mostly waits on its server) and raise the first error."""
    errors: list[BaseException] = []

    def run(start) -> None:
        try:
            start()
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(start,)) for start in starts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]

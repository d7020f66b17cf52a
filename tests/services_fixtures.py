"""Fixtures over mai_models.services: the production stack (PostgreSQL, SeaweedFS's S3 gateway, an MLflow
server) started once per session on 127.0.0.1, and a project entered on it. A service that cannot start
fails the tests that need it, with its one-line error: nothing here skips."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mai_models.services.stack import Stack, start_stack


@pytest.fixture(scope="session")
def service_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("services"))
    try:
        yield stack
    finally:
        stack.stop()


def enter_stack(mp: pytest.MonkeyPatch, root: Path, stack: Stack, name: str) -> None:
    """Make ``root`` the current project on ``stack``: its DVC remote under ``s3://<bucket>/<name>``,
    its runs in the MLflow experiment ``name``, its Dagster runs in the stack's Postgres."""
    from conftest import DVC_BIN

    mp.chdir(root)
    for key, value in stack.env.items():
        mp.setenv(key, value)
    mp.setenv("MAI_ROOT", str(root))
    mp.setenv("MAI_DVC_BIN", str(DVC_BIN))
    mp.setenv("MAI_DVC_REMOTE", stack.dvc_remote(name))
    mp.setenv("MAI_MLFLOW_EXPERIMENT", name)
    mp.setenv("DVC_NO_ANALYTICS", "1")
    mp.delenv("MAI_CONFIG", raising=False)
    mp.delenv("MAI_MLFLOW_ARTIFACT_URI", raising=False)

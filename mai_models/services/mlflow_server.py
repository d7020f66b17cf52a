"""An MLflow tracking server of our own: runs and the model registry in a SQL database (Postgres here),
artifacts proxied to an object store (``--artifacts-destination s3://...``), so that clients need only
the tracking URI while the server alone holds the store's credentials."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from mai_models.services.process import HOST, ServiceProcess, free_port

# The GenAI job runner starts seven task consumers next to the web server; the factory submits no
# such jobs, and on two cores they slow the server's start by a minute.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_bin() -> str:
    beside = Path(sys.executable).parent / "mlflow"
    return str(beside) if beside.exists() else "mlflow"


class MlflowServer:
    """``with MlflowServer(directory, backend_uri, artifacts_destination, env) as server:`` a server at
    ``server.tracking_uri``; ``env`` reaches the artifact store (``MLFLOW_S3_ENDPOINT_URL``, ``AWS_*``)."""

    def __init__(
        self,
        directory: Path,
        backend_store_uri: str,
        artifacts_destination: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.log = self.directory / "mlflow-server.log"
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.env = dict(env or {})
        self.port = port or free_port()
        self._process: ServiceProcess | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def start(self, timeout: float = 180.0) -> MlflowServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            mlflow_bin(),
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            self.artifacts_destination,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**os.environ, **self.env, **SERVER_ENV}
        self._process = ServiceProcess("the MLflow tracking server", command, self.log, env=env)
        self._process.start(cwd=self.directory)
        self._process.wait_until(self._healthy, timeout)
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, grace: float = 10.0) -> None:
        if self._process is not None:
            self._process.stop(grace=grace)
            self._process = None

    def restart(self, timeout: float = 180.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

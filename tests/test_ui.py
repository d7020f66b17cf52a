"""`mai ui` serves both UIs on 127.0.0.1 and stops with everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, data: bytes | None = None) -> bytes | None:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read()
    except OSError:
        return None


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_ui_serves_dagster_and_mlflow_then_stops(project: Path) -> None:
    dagster_port, mlflow_port = _free_port(), _free_port()
    repo = Path(__file__).resolve().parents[1]
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mai_models.cli",
            "ui",
            "--dagster-port",
            str(dagster_port),
            "--mlflow-port",
            str(mlflow_port),
        ],
        cwd=repo,
        env={**os.environ, "MAI_ROOT": str(project)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as from a non-interactive shell
    )
    query = b'{"query": "{ assetNodes { assetKey { path } } }"}'
    try:
        deadline = time.monotonic() + 180
        assets = mlflow_page = None
        while time.monotonic() < deadline and not (assets and mlflow_page):
            time.sleep(2)
            assets = assets or _get(f"http://127.0.0.1:{dagster_port}/graphql", query)
            mlflow_page = mlflow_page or _get(f"http://127.0.0.1:{mlflow_port}/")
        assert assets and b"raw_documents" in assets and b"token_shards" in assets
        assert mlflow_page
    finally:
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
    time.sleep(1)
    assert not _listening(dagster_port) and not _listening(mlflow_port)

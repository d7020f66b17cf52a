"""Start the Dagster and MLflow processes for ``mai demo`` and ``mai ui``. They run as child
processes (the demo's run configuration lives with the Dagster definitions, in ``pipelines.demo``),
so this module, like all of mai_models, never imports Dagster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mai_models.settings import Settings, load_settings
from mai_models.tracking.mlflow_links import ML_VIEW

DAGSTER_MODULE = "pipelines.definitions"
DEMO_MODULE = "pipelines.demo"
_EMBEDDED_INSTANCE = """\
# Embedded instance: run, event-log and schedule storage default to SQLite in this directory.
# For production, point DAGSTER_HOME at a directory holding infra/dagster/dagster.yaml (Postgres).
telemetry:
  enabled: false
# The `training` pool (trainings, model evaluations) runs one step at a time.
concurrency:
  pools:
    default_limit: 1
"""


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def ensure_dagster_home(settings: Settings) -> Path:
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    # An embedded instance written by an earlier release is brought up to date; a user's own is kept.
    if not config.exists() or config.read_text().startswith("# Embedded instance"):
        config.write_text(_EMBEDDED_INSTANCE)
    return home


def run_demo(started: float | None = None) -> int:
    """Materialise every asset (and its checks) through Dagster, recorded in the configured instance;
    ``started`` (epoch seconds) is when the demo began, so that its recorded total includes set-up."""
    settings = load_settings()
    ensure_dagster_home(settings)
    command = [sys.executable, "-m", DEMO_MODULE, *(("--started", str(started)) if started else ())]
    return subprocess.run(command, cwd=settings.root, env=settings.subprocess_env()).returncode


def measure_cpu_peak() -> str:
    """Time (or reuse) the CPU GEMM peak for the thread count and precision of the demo's pretraining
    ranks."""
    from mai_models.config import load_params
    from mai_models.lm.cpu_peak import cpu_peak
    from mai_models.precision import resolve_precision

    settings = load_settings()
    lm = load_params(settings.params_file).lm
    threads, precision = lm.launch.rank_threads, resolve_precision(lm.precision, "cpu")
    peak = cpu_peak(threads, settings.state_dir / "cpu_peaks.json", precision)
    flops = f"{peak.flops / 1e9:.0f} GFLOP/s" if peak.flops else "none"
    return f"{flops} ({threads} threads, {precision}; {peak.source})"


def start_ui(dagster_port: int = 3000, mlflow_port: int = 5000) -> int:
    """Serve both UIs on 127.0.0.1 until interrupted, then stop both children by PID."""
    settings = load_settings()
    ensure_dagster_home(settings)
    env = settings.subprocess_env()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    # Runs launched from the Dagster UI link their asset pages to this MLflow UI.
    env["MAI_MLFLOW_UI_URL"] = settings.mlflow_ui_url or mlflow_url
    # Looked up before the MLflow UI starts: both would otherwise create a new store's tables at once.
    pages = _experiment_pages(settings, mlflow_url)
    mlflow_cmd = [
        _bin("mlflow"),
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        str(mlflow_port),
        "--backend-store-uri",
        str(settings.mlflow_tracking_uri),
        "--default-artifact-root",
        str(settings.mlflow_artifact_uri),
        # One worker serves one person. With MLflow's default of four, uvicorn's supervisor restarts a
        # worker that misses its health check on busy cores, and the port then stays closed.
        "--workers",
        "1",
    ]
    dagster_cmd = [_bin("dagster"), "dev", "-m", DAGSTER_MODULE, "-h", "127.0.0.1", "-p", str(dagster_port)]
    # `dagster dev` started without a terminal ignores SIGTERM: reset SIGINT to default and stop it with
    # SIGINT. Each child leads its own process group so its servers and workers stop with it.
    children = [
        subprocess.Popen(cmd, cwd=settings.root, env=env, preexec_fn=_default_sigint, start_new_session=True)  # noqa: PLW1509
        for cmd in (mlflow_cmd, dagster_cmd)
    ]
    # The MLflow links open the "Model training" view (a first visit otherwise lands on GenAI traces).
    print(f"Dagster UI: http://127.0.0.1:{dagster_port}\nMLflow UI:  {mlflow_url}/#/experiments?{ML_VIEW}")
    for name, page in pages.items():
        print(f"  {name}: {page}", flush=True)
    print("(Ctrl-C stops both)", flush=True)
    # Started in the background from a script, this process inherits an ignored SIGINT: take both
    # SIGINT and SIGTERM explicitly so stopping `mai ui` by PID always stops its children too.
    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    try:
        while not stop["requested"] and all(child.poll() is None for child in children):
            time.sleep(0.5)
    finally:
        for child in children:
            _signal_group(child, signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
        for child in children:  # anything the leader left behind in its group
            _signal_group(child, signal.SIGTERM)
    return 0


def _experiment_pages(settings: Settings, mlflow_url: str) -> dict[str, str]:
    """Each plane's runs in the "Model training" view: MLflow opens an experiment reached from its
    list on the GenAI view until the browser has picked "Model training" once."""
    from mai_models.errors import ServiceUnavailable
    from mai_models.tracking.mlflow_links import experiment_route
    from mai_models.tracking.mlflow_runs import plane_experiments

    try:
        found = plane_experiments(settings)
    except ServiceUnavailable:  # the links are a convenience: the UIs start all the same
        return {}
    return {name: f"{mlflow_url}/{experiment_route(eid)}" for name, eid in found.items()}


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(child.pid, signum)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

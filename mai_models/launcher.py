"""Start the Dagster and MLflow processes for ``mai demo`` and ``mai ui``. They run as child
processes, so this module (and mai_models) never imports Dagster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mai_models.eval_pipeline import STEPS as EVAL_STEPS
from mai_models.settings import Settings, load_settings
from mai_models.speech_pipeline import STEPS as SPEECH_STEPS
from mai_models.steps import read_manifest
from mai_models.text_pipeline import STEPS
from mai_models.tracking.state import read_state

DAGSTER_MODULE = "pipelines.definitions"
_EMBEDDED_INSTANCE = """\
# Embedded instance: run, event-log and schedule storage default to SQLite in this directory.
# For production, point DAGSTER_HOME at a directory holding infra/dagster/dagster.yaml (Postgres).
telemetry:
  enabled: false
"""


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def ensure_dagster_home(settings: Settings) -> Path:
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(_EMBEDDED_INSTANCE)
    return home


# Cheap steps may overlap, but two trainings on the same cores only slow each other down. Step
# processes fork from a server that has already imported the definitions: a step that only finds its
# output stored then takes a fraction of a second instead of an interpreter start and imports.
TRAINING_TAG = "mai/compute"
_DEMO_RUN_CONFIG = f"""\
execution:
  config:
    multiprocess:
      max_concurrent: 4
      start_method:
        forkserver:
          preload_modules: [{DAGSTER_MODULE}]
      tag_concurrency_limits:
        - key: {TRAINING_TAG}
          value: training
          limit: 1
"""


def run_demo(selection: str = "*") -> int:
    """Materialise every asset (and its checks) through Dagster, recorded in the configured instance."""
    settings = load_settings()
    ensure_dagster_home(settings)
    run_config = settings.home / "demo_run_config.yaml"
    run_config.write_text(_DEMO_RUN_CONFIG)
    command = [
        *(_bin("dagster"), "asset", "materialize", "-m", DAGSTER_MODULE, "--select", selection),
        *("-c", str(run_config)),
    ]
    print(f"$ {' '.join(command)}", flush=True)
    return subprocess.run(command, cwd=settings.root, env=settings.subprocess_env()).returncode


def measure_cpu_peak() -> str:
    """Time (or reuse) the CPU GEMM peak for the thread count the demo's pretraining ranks use."""
    from mai_models.config import load_params
    from mai_models.lm.cpu_peak import cpu_peak

    settings = load_settings()
    threads = load_params(settings.params_file).lm.launch.rank_threads
    peak = cpu_peak(threads, settings.state_dir / "cpu_peaks.json")
    flops = f"{peak.flops / 1e9:.0f} GFLOP/s" if peak.flops else "none"
    return f"{flops} ({threads} threads; {peak.source})"


def print_demo_report() -> None:
    settings = load_settings()
    print("\nWhat was produced:")
    for name in STEPS:
        manifest = read_manifest(settings.data_dir / name)
        if manifest is None:
            print(f"  {name:16s} not materialised")
            continue
        stats = manifest["stats"]
        brief = {k: v for k, v in stats.items() if not isinstance(v, dict)}
        print(f"  {name:16s} {settings.data_dir / name}  version {manifest['version']}  {json.dumps(brief)}")
    state = read_state(settings, "moe_pretrain")
    if state:
        summary = read_manifest(settings.data_dir / "moe_pretrain") or {}
        print(
            f"  {'moe_pretrain':16s} {settings.data_dir / 'moe_pretrain'}  version {state['version']}  "
            f"{json.dumps(summary.get('stats', {}))}"
        )
        print(f"  registered in MLflow: mai-moe v{state.get('model_version')} @ candidate")
    for name in [*SPEECH_STEPS, *EVAL_STEPS]:
        manifest = read_manifest(settings.data_dir / name)
        if manifest is None:
            print(f"  {name:20s} not materialised")
            continue
        brief = {k: v for k, v in manifest["stats"].items() if not isinstance(v, dict)}
        print(f"  {name:20s} {settings.data_dir / name}  version {manifest['version']}  {json.dumps(brief)}")
    voice = read_state(settings, "mai_voice").get("extra") or {}
    if voice.get("model_version"):
        print(f"  registered in MLflow: mai-voice v{voice['model_version']} @ candidate")
        sample = settings.data_dir / "mai_voice" / "sample.wav"
        print(f'  listen: {sample}   (or: mai tts synthesize "your text" -o out.wav)')
    decision_file = settings.data_dir / "arena" / "decision.json"
    if decision_file.exists():
        for model, decision in json.loads(decision_file.read_text()).items():
            print(f"  gate: {model} v{decision.get('version')} {decision['outcome']}: {decision['reason']}")
    champion_file = settings.data_dir / "champion" / "champion.json"
    if champion_file.exists():
        for model, champion in json.loads(champion_file.read_text()).items():
            holder = f"v{champion['version']}" if champion["version"] else "none yet"
            print(f"  champion: {model} {holder}")
    status_file = settings.data_dir / "arena_submission" / "submission.json"
    if status_file.exists():
        status = json.loads(status_file.read_text())
        if status["bundle"]:
            bundle = settings.data_dir / "arena_submission" / status["bundle"]
            print(f"  submission bundle ({status['status']}): {bundle}   (mai lineage {bundle})")
        else:
            print(f"  no submission bundle ({status['status']}): {status['reason']}")
    print(f"\nMLflow runs: {settings.mlflow_tracking_uri} (experiment '{settings.mlflow_experiment}')")
    print(f"Dagster instance: {settings.dagster_home}")
    print(f"DVC remote: {settings.dvc_remote}   (check: make dvc-status)")
    print("Open the UIs:  make ui   -> Dagster http://127.0.0.1:3000  and  MLflow http://127.0.0.1:5000")


def start_ui(dagster_port: int = 3000, mlflow_port: int = 5000) -> int:
    """Serve both UIs on 127.0.0.1 until interrupted, then stop both children by PID."""
    settings = load_settings()
    ensure_dagster_home(settings)
    env = settings.subprocess_env()
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
    ]
    dagster_cmd = [_bin("dagster"), "dev", "-m", DAGSTER_MODULE, "-h", "127.0.0.1", "-p", str(dagster_port)]
    # `dagster dev` started without a terminal ignores SIGTERM: reset SIGINT to default and stop it with
    # SIGINT. Each child leads its own process group so its servers and workers stop with it.
    children = [
        subprocess.Popen(cmd, cwd=settings.root, env=env, preexec_fn=_default_sigint, start_new_session=True)  # noqa: PLW1509
        for cmd in (mlflow_cmd, dagster_cmd)
    ]
    print(f"Dagster UI: http://127.0.0.1:{dagster_port}  MLflow UI: http://127.0.0.1:{mlflow_port}  (Ctrl-C)")
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


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(child.pid, signum)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

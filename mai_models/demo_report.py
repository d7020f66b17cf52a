"""What ``mai demo`` prints at the end: every step of the graph with its version and figures, the
registered models, the gate's decisions, the champions and the submission."""

from __future__ import annotations

import json

from mai_models.config import load_params
from mai_models.executor.versioning import read_manifest
from mai_models.graph import project
from mai_models.settings import load_settings
from mai_models.tracking.state import read_state


def print_demo_report() -> None:
    settings = load_settings()
    steps = project(settings, load_params(settings.params_file)).steps
    width = max(map(len, steps)) + 1
    print("\nWhat was produced:")
    for name in steps:
        manifest = read_manifest(settings.data_dir / name)
        if manifest is None:
            print(f"  {name:{width}s} not materialised")
            continue
        brief = {k: v for k, v in manifest["stats"].items() if not isinstance(v, dict)}
        where = settings.data_dir / name
        print(f"  {name:{width}s} {where}  version {manifest['version']}  {json.dumps(brief)}")
        extra = read_state(settings, name).get("extra") or {}
        if extra.get("model_version"):
            print(
                f"  {'':{width}s} registered in MLflow: {extra['registered_model']} v{extra['model_version']}"
            )
    sample = settings.data_dir / "mai_voice" / "sample.wav"
    if sample.exists():
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

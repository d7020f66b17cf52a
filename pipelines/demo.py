"""`mai demo` under Dagster: materialise every asset and its checks with the demo's run configuration,
and report it as it goes: a line as each step starts and ends, a bar for each training. Everything the
run prints (Dagster's and the libraries' logs) goes to a file under `.mai/logs/`, minus the known
harmless third-party warnings that `mai_models.log_noise` names; each step's status and time go to
`.mai/demo_report.json`, which `mai demo` turns into its closing table.

Cheap steps may overlap; heavy steps (trainings, model evaluations) share the `training` pool, which
the instance limits to one at a time, and the executor mirrors the pools so that the next heavy step
starts as soon as one ends. Step processes fork from a server that has already imported the
definitions, so a step that only finds its output stored takes a fraction of a second."""

import argparse
import datetime as dt
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import yaml
from dagster import DagsterInstance

from assets.step_asset import RUN_POOL_LIMITS
from mai_models.config import load_params
from mai_models.demo_progress import DemoProgress, training_totals
from mai_models.demo_report import write_demo_record
from mai_models.graph import project
from mai_models.log_noise import FilteredLog
from mai_models.settings import load_settings
from pipelines.demo_watch import RunWatcher

DAGSTER_MODULE = "pipelines.definitions"
# great_expectations takes ~5 s to import and every data check step imports it: preloaded once in the
# fork server, each check's process starts with it (the definitions import it lazily, for the CLI).
PRELOAD_MODULES = [DAGSTER_MODULE, "great_expectations"]
RUN_CONFIG = {
    "execution": {
        "config": {
            "multiprocess": {
                "max_concurrent": 4,
                "tag_concurrency_limits": RUN_POOL_LIMITS,
                "start_method": {"forkserver": {"preload_modules": PRELOAD_MODULES}},
            }
        }
    }
}
POLL_SECONDS = 0.5
# Shown when the run fails before Dagster records it (e.g. the definitions do not import).
TAIL_LINES = 25


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC).isoformat(timespec="seconds")


def main(selection: str = "*", started: float | None = None) -> int:
    started = time.time() if started is None else started
    settings = load_settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    run_config = settings.home / "demo_run_config.yaml"
    run_config.write_text(yaml.safe_dump(RUN_CONFIG, sort_keys=False))
    graph = project(settings, load_params(settings.params_file))
    log = FilteredLog(settings.home / "logs" / f"demo-{dt.datetime.now():%Y%m%d-%H%M%S}.log")
    dagster = Path(sys.executable).parent / "dagster"
    command = [
        *(str(dagster) if dagster.exists() else "dagster", "asset", "materialize", "-m", DAGSTER_MODULE),
        *("--select", selection, "-c", str(run_config)),
    ]
    print(f"full log: {log.path}", flush=True)
    log.write(f"$ {' '.join(command)}")
    progress = DemoProgress(training_totals(graph.params), started=started)
    child = subprocess.Popen(
        command,
        cwd=settings.root,
        env=settings.subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def copy_output() -> None:
        for line in child.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))

    reader = threading.Thread(target=copy_output, daemon=True)
    reader.start()
    watcher = RunWatcher(
        DagsterInstance.from_config(str(settings.dagster_home)),
        progress,
        settings,
        list(graph.steps),
        started,
    )
    try:
        while child.poll() is None:
            watcher.poll()
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        child.terminate()  # our own child, by its handle; Dagster stops its step processes
        child.wait()
    reader.join()
    watcher.poll()  # the events recorded after the last poll
    log.close()
    code = child.returncode
    if watcher.run_id is None and code != 0:
        print("the Dagster run did not start; the end of its log:", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
    finished = time.time()
    write_demo_record(
        settings,
        {
            "selection": selection,
            "run_id": watcher.run_id,
            "success": code == 0,
            "started_at": _iso(started),
            "finished_at": _iso(finished),
            "total_seconds": round(finished - started, 1),
            "log": str(log.path),
            "steps": progress.record(),
            "checks_passed": progress.checks_passed,
            "failed_checks": progress.failed_checks,
            "run_failure": watcher.run_failure,
            "filtered_log_lines": dict(log.dropped),
        },
    )
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--select", default="*", help="Dagster asset selection")
    parser.add_argument("--started", type=float, default=None, help="epoch seconds the demo began")
    args = parser.parse_args()
    sys.exit(main(args.select, args.started))

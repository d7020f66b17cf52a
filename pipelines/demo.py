"""`mai demo` under Dagster: materialise every asset and its checks with the demo's run configuration.

Cheap steps may overlap; heavy steps (trainings, model evaluations) share the `training` pool, which
the instance limits to one at a time. Step processes fork from a server that has already imported the
definitions, so a step that only finds its output stored takes a fraction of a second."""

import subprocess
import sys
from pathlib import Path

import yaml

from mai_models.settings import load_settings

DAGSTER_MODULE = "pipelines.definitions"
RUN_CONFIG = {
    "execution": {
        "config": {
            "multiprocess": {
                "max_concurrent": 4,
                "start_method": {"forkserver": {"preload_modules": [DAGSTER_MODULE]}},
            }
        }
    }
}


def main(selection: str = "*") -> int:
    settings = load_settings()
    run_config = settings.home / "demo_run_config.yaml"
    run_config.parent.mkdir(parents=True, exist_ok=True)
    run_config.write_text(yaml.safe_dump(RUN_CONFIG, sort_keys=False))
    dagster = Path(sys.executable).parent / "dagster"
    command = [
        *(str(dagster) if dagster.exists() else "dagster", "asset", "materialize", "-m", DAGSTER_MODULE),
        *("--select", selection, "-c", str(run_config)),
    ]
    print(f"$ {' '.join(command)}", flush=True)
    return subprocess.run(command, cwd=settings.root, env=settings.subprocess_env()).returncode


if __name__ == "__main__":
    sys.exit(main())

"""``dvc.yaml`` derived from the step graph: one stage per step, running the same library code through
the ``mai`` CLI, so ``dvc repro`` rebuilds the chain without Dagster. Its deps are the step's code (the
same module closure its version hashes), its upstream outputs and any watched paths; its params are
the sections the step declares. ``mai graph dvc-yaml`` rewrites the file; a test keeps it current."""

from __future__ import annotations

from pathlib import Path

import yaml

from mai_models.executor.code_closure import PACKAGE_DIR, closure_files
from mai_models.executor.project import Project

HEADER = """\
# Generated from the step graph (mai_models/graph.py) by `mai graph dvc-yaml`: do not edit by hand.
# Each stage runs the same library code as the Dagster asset of the same name. After a Dagster
# materialisation the asset runs `dvc commit -f <stage>` and `dvc push <stage>`, so dvc.lock
# matches either way. The stages follow this project's params.yaml (e.g. `speech.sources`):
# after changing which steps exist, run `mai graph dvc-yaml` again.
"""


def code_deps(project: Project, name: str) -> list[str]:
    """The step's source files relative to the repository, a whole folder where every module in it
    is used (so the list stays short and a new module in that folder is watched too)."""
    step = project.step(name)
    files = set(closure_files((step.module, *step.code)))
    repo = PACKAGE_DIR.parent
    deps: list[str] = []
    folders = sorted({f.parent for f in files})
    covered: set[Path] = set()
    for folder in folders:
        # An empty package initialiser runs no code, so the closure never lists it.
        modules = {p for p in folder.glob("*.py") if p.name != "__init__.py" or p.stat().st_size}
        if modules and modules <= files and not any(p in covered for p in folder.parents):
            deps.append(f"{folder.relative_to(repo)}")
            covered.add(folder)
    for file in sorted(files):
        if not any(folder in file.parents for folder in covered):
            deps.append(f"{file.relative_to(repo)}")
    return sorted(deps)


def stage(project: Project, name: str) -> dict[str, object]:
    step = project.step(name)
    data = project.settings.data_dir.relative_to(project.settings.root)
    out: dict[str, object] = {
        "cmd": f"mai {step.command} --only {name}",
        "deps": [
            *code_deps(project, name),
            *(f"{data / up}" for up in project.upstream(name)),
            *step.watched(project.params),
        ],
    }
    if step.params:
        out["params"] = list(step.params)
    out["outs"] = [f"{data / name}"]
    return out


def render(project: Project) -> str:
    stages = {name: stage(project, name) for name in project.steps}
    return HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=110)

"""Steps of one Dagster run commit their outputs to DVC from separate processes, and light steps overlap:
DVC's own repository lock fails rather than waits, so every DVC call, the set-up of a fresh clone and
the read of a commit's hash take turns on one file lock."""

from __future__ import annotations

import multiprocessing as mp
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

STAGES = ["raw_documents", "clean_documents"]


def _commit(stage: str) -> str:
    from mai_models.settings import load_settings
    from mai_models.tracking.dvc import Dvc

    return Dvc(load_settings()).commit(stage)


def test_stages_commit_from_several_processes_at_once(project: Path) -> None:
    shutil.rmtree(project / ".dvc")  # a fresh clone's first commits also set DVC up
    for stage in STAGES:
        out = project / "data" / stage
        out.mkdir(parents=True)
        (out / "part.txt").write_text(f"{stage}\n")
    # Four commits, two at a time: each process both sets DVC up and commits.
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
        hashes = list(pool.map(_commit, [*STAGES, *STAGES]))
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    recorded = {stage: lock["stages"][stage]["outs"][0]["md5"] for stage in STAGES}
    assert hashes == [recorded[s] for s in [*STAGES, *STAGES]]
    assert recorded["raw_documents"] != recorded["clean_documents"]

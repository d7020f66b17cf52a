"""Versioned, skippable outputs, in the manner of Marin's executor.

A step's version is a hash of its config, its code version and its upstream versions. Its output
directory holds a ``_manifest.json`` with that version: a step whose version already sits there is a
no-op that reuses the stored output. Outputs are built in a temporary sibling directory and swapped in
atomically, so a crash never loses what was already materialised.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "_manifest.json"


def fingerprint(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def step_version(name: str, config: Any, code: str, upstream: dict[str, str], inputs: Any = None) -> str:
    return fingerprint(
        {"step": name, "config": config, "code": code, "upstream": upstream, "inputs": inputs}
    )[:16]


@dataclass(frozen=True)
class StepResult:
    name: str
    out_dir: Path
    version: str
    reused: bool
    stats: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        verb = "reused stored output" if self.reused else "built"
        return f"{self.name}: {verb} (version {self.version})"


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / MANIFEST_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _files_intact(out_dir: Path, files: dict[str, int]) -> bool:
    for rel, size in files.items():
        path = out_dir / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def current_version(out_dir: Path) -> str | None:
    """The version stored in ``out_dir`` if its files are all there, else None."""
    manifest = read_manifest(out_dir)
    if manifest is None or not _files_intact(out_dir, manifest.get("files", {})):
        return None
    return manifest["version"]


BuildFn = Callable[[Path], "tuple[dict[str, Any], dict[str, float]] | dict[str, Any]"]


def run_step(
    name: str,
    out_dir: Path,
    version: str,
    build: BuildFn,
    lineage: dict[str, Any] | None = None,
    force: bool = False,
) -> StepResult:
    """Build ``out_dir`` with ``build(tmp_dir)`` unless ``version`` is already stored there.

    ``build`` returns deterministic stats (written into the manifest, hence into the DVC hash), or a
    pair of (stats, timings) where timings stay out of the manifest so rebuilds are byte-identical.
    """
    manifest = read_manifest(out_dir)
    if not force and manifest and manifest.get("version") == version and current_version(out_dir):
        return StepResult(name, out_dir, version, True, manifest.get("stats", {}))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    started = time.perf_counter()
    try:
        built = build(tmp)
        stats, timings = built if isinstance(built, tuple) else (built, {})
        timings = {**timings, "seconds": round(time.perf_counter() - started, 3)}
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "step": name,
            "version": version,
            "lineage": lineage or {},
            "stats": stats,
            "files": files,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return StepResult(name, out_dir, version, False, stats, timings)


def _swap_in(tmp: Path, out_dir: Path) -> None:
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)

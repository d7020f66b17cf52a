"""Is a step's stored output still what its declaration would build now, and if not, why not.

The executor's version is a hash of config, code closure, upstream versions and inputs; the manifest
keeps the code version and the upstream versions it was built from, so those two causes can be named.
What is left over when both agree is the step's parameters (or, for steps that compare against the
champion, who the champion is)."""

from __future__ import annotations

from dataclasses import dataclass

from mai_models.errors import MaiUserError
from mai_models.executor.project import Project
from mai_models.executor.versioning import current_version, read_manifest


@dataclass(frozen=True)
class Freshness:
    status: str  # current | stale | missing | unknown
    reason: str = ""
    version: str | None = None


def freshness(project: Project) -> dict[str, Freshness]:
    """Every step of the project, in build order: a stale step makes everything below it stale."""
    found: dict[str, Freshness] = {}
    for name in project.steps:
        found[name] = _one(project, name, found)
    return found


def _one(project: Project, name: str, upstream_found: dict[str, Freshness]) -> Freshness:
    out = project.out_dir(name)
    manifest = read_manifest(out)
    if manifest is None:
        return Freshness("missing", "not materialised")
    stored = manifest["version"]
    if current_version(out) is None:
        return Freshness("stale", "stored files are missing or changed on disk", stored)
    for up in project.upstream(name):
        if upstream_found[up].status != "current":
            return Freshness("stale", f"upstream {up} is {upstream_found[up].status}", stored)
    lineage = manifest.get("lineage") or {}
    if lineage.get("code_version") != project.code_version(name):
        return Freshness("stale", "its code changed", stored)
    built_from = lineage.get("upstream") or {}
    for up in project.upstream(name):
        now = current_version(project.out_dir(up))
        if built_from.get(up) != now:
            return Freshness("stale", f"upstream {up} changed ({built_from.get(up)} -> {now})", stored)
    try:
        version = project.version(name)
    except MaiUserError as exc:  # e.g. the tracking server that names the champion does not answer
        return Freshness("unknown", str(exc), stored)
    if version != stored:
        step = project.step(name)
        sections = ", ".join(step.params) or "its config"
        if step.inputs is not None:
            return Freshness(
                "stale", f"parameters ({sections}) or the champion it is compared with changed", stored
            )
        return Freshness("stale", f"parameters changed ({sections})", stored)
    return Freshness("current", "", stored)

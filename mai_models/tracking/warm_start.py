"""Which registered version a retraining continues from (its parent), and the record a training step
keeps of how its weights started (``warm_start.json`` in its output, logged to its MLflow run).

``init_from: champion`` continues from the version behind the ``champion`` alias, with one exception
that keeps an unchanged retraining tick a no-op: when the champion is this step's own stored output,
built from the same config and the same upstream versions as now, training again would only retrain
that model on its own data. The parent then stays the one that output started from, so the version,
and the stored output, are unchanged. New upstream data or a new config continues from the champion.
With no champion yet the step trains from scratch, and its record says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mai_models.settings import Settings
from mai_models.tracking.champion_output import (
    champion,
    output_tags,
    registered_version,
    version_label,
)

if TYPE_CHECKING:
    from mai_models.executor.step import StepContext

WARM_START_FILE = "warm_start.json"
TAG_INIT_FROM = "mai.init_from"
TAG_PARENT_VERSION = "mai.parent_version"  # "mai-moe v1"; "none" for a scratch start


@dataclass(frozen=True)
class Start:
    init_from: str  # what the parameters ask: scratch or champion
    parent: dict[str, Any] | None  # the registry version continued from (``registered_version``)
    reason: str
    basis: str  # the config and upstream versions it was resolved for

    @property
    def parent_label(self) -> str | None:
        return version_label(self.parent) if self.parent else None

    def identity(self, step: str | None = None) -> dict[str, Any] | None:
        """What the step's version hashes: the parent version and the output it was made of."""
        if self.parent is None:
            return None
        return {"parent": self.parent_label, "data_version": output_tags(self.parent, step)[0]}

    def tags(self) -> dict[str, str]:
        return {TAG_INIT_FROM: self.init_from, TAG_PARENT_VERSION: self.parent_label or "none"}


def basis(config: Any, upstream: dict[str, str]) -> str:
    from mai_models.executor.versioning import fingerprint

    return fingerprint({"config": config, "upstream": upstream})[:16]


def read_record(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / WARM_START_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def resolve_start(
    settings: Settings,
    model: str,
    init_from: str,
    stored: Path,
    basis: str,
    step: str | None = None,
) -> Start:
    """The start of a training step whose stored output is ``stored``; ``step`` names it when its
    output is upstream of the registered one (the voice's acoustic model and vocoder)."""
    from mai_models.executor.versioning import current_version

    if init_from == "scratch":
        return Start("scratch", None, "init_from is scratch", basis)
    holder = champion(settings, model)
    if holder is None:
        return Start(init_from, None, f"no {model} champion yet: trained from scratch", basis)
    kept = read_record(stored)
    version = output_tags(holder, step)[0]
    if version and version == current_version(stored) and kept and kept.get("basis") == basis:
        number = (kept.get("parent_version") or {}).get("parent")
        parent = registered_version(settings, model, number=number.rsplit(" v", 1)[1]) if number else None
        return Start(init_from, parent, kept["reason"], basis)
    return Start(init_from, holder, f"warm start from the champion {version_label(holder)}", basis)


def step_start(
    ctx: StepContext, model: str, init_from: str, config: Any, upstream_step: bool = False
) -> Start:
    """``resolve_start`` for the step of ``ctx``, once per project, so that the build continues from
    the very parent its version names."""
    key = f"start/{ctx.name}"
    if key not in ctx.memo:
        ctx.memo[key] = resolve_start(
            ctx.settings,
            model,
            init_from,
            ctx.output,
            basis(config, ctx.upstream_versions()),
            ctx.name if upstream_step else None,
        )
    return ctx.memo[key]


def record(start: Start, loaded: dict[str, Any], step: str | None = None) -> dict[str, Any]:
    """What the output keeps: the start, and what the load took (``loaded``, the trainer's report)."""
    return {
        **loaded,
        "init_from": start.init_from,
        "parent": start.parent_label,
        "parent_version": start.identity(step),
        "reason": start.reason,
        "basis": start.basis,
    }


def write_record(out_dir: Path, data: dict[str, Any]) -> Path:
    path = out_dir / WARM_START_FILE
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def start_summary(data: dict[str, Any]) -> dict[str, Any]:
    """The record in a step's stats (and so its MLflow metrics): counts, not the tensor lists."""
    out: dict[str, Any] = {"init_from": data["init_from"], "parent": data.get("parent") or "none"}
    for key in ("tensors_taken", "tensors_fresh"):
        if key in data:
            out[key] = len(data[key])
    return out


def ancestry(settings: Settings, model: str, version: str, limit: int = 100) -> list[dict[str, Any]]:
    """The registered versions ``version`` descends from through warm starts, oldest first, each
    with the upstream data versions it was trained on (its ``mai.upstream.*`` tags)."""
    chain: list[dict[str, Any]] = []
    number: str | None = str(version)
    while number and len(chain) < limit:  # the limit only guards against hand-edited tags
        found = registered_version(settings, model, number=number)
        if found is None:
            break
        tags = found["tags"]
        parent = tags.get(TAG_PARENT_VERSION)
        parent = None if parent in (None, "none") else parent
        data = {
            k.removeprefix("mai.upstream."): v
            for k, v in tags.items()
            if k.startswith("mai.upstream.") and not k.endswith(".dvc_hash")
        }
        chain.append({"version": version_label(found), "parent": parent, "data": data})
        number = parent.rsplit(" v", 1)[1] if parent else None
    return chain[::-1]

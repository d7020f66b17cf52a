"""Per-step bookkeeping kept outside DVC outputs (so it never changes their hash): the version last
materialised and where it was tracked (MLflow run, DVC hash, model version)."""

from __future__ import annotations

import json
from typing import Any

from mai_models.settings import Settings


def read_state(settings: Settings, step: str) -> dict[str, Any]:
    try:
        return json.loads((settings.state_dir / f"{step}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_state(settings: Settings, step: str, state: dict[str, Any]) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    (settings.state_dir / f"{step}.json").write_text(json.dumps(state, indent=2) + "\n")

"""The table at the end of ``mai demo`` and in ``mai status``: one row per step (status, time, main
figure), then the champion and the gate's decision, the submission bundle, and how to open the UIs,
serve the models and listen to the voice.

``mai demo`` records each step's status and seconds and the demo's total in ``.mai/demo_report.json``;
``mai status`` and ``mai bench demo-quality`` read it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mai_models.settings import Settings
from mai_models.step_figures import main_figure
from mai_models.tracking.mlflow_links import ML_VIEW, ui_base

RECORD_FILE = "demo_report.json"


def record_path(settings: Settings) -> Path:
    return settings.home / RECORD_FILE


def write_demo_record(settings: Settings, record: dict[str, Any]) -> Path:
    path = record_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def read_demo_record(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads(record_path(settings).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)]


def _seconds(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, int | float) else "-"


def demo_table(settings: Settings, steps: list[str], record: dict[str, Any]) -> list[str]:
    """This demo's rows: built, reused, failed or not run, with the seconds each step took."""
    ran = record.get("steps") or {}
    rows = []
    for name in steps:
        entry = ran.get(name, {})
        status = entry.get("status", "not run")
        figure = entry.get("error") or main_figure(settings, name)
        rows.append((name, status, _seconds(entry.get("seconds")), figure))
    return table(("step", "status", "time", "main figure"), rows)


def status_table(settings: Settings, found: dict[str, Any], record: dict[str, Any] | None) -> list[str]:
    """Rows for ``mai status``: current, stale (and why) or missing; the time is the last demo's
    build of this very version, if the last demo built or reused it."""
    ran = (record or {}).get("steps") or {}
    rows = []
    for name, fresh in found.items():
        entry = ran.get(name, {})
        seconds = entry.get("seconds") if fresh.version and entry.get("version") == fresh.version else None
        status = f"{fresh.status}: {fresh.reason}" if fresh.status in ("stale", "unknown") else fresh.status
        rows.append((name, status, _seconds(seconds), main_figure(settings, name)))
    return table(("step", "status", "time", "main figure"), rows)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def outcome_lines(settings: Settings) -> list[str]:
    """Champion, gate decision, bundle, and where to go next."""
    data = settings.data_dir
    lines = []
    champions = _json(data / "champion" / "champion.json") or {}
    for model, champion in champions.items():
        lines.append(
            f"champion  {model}: {'v' + str(champion['version']) if champion.get('version') else 'none yet'}"
        )
    for model, decision in (_json(data / "arena" / "decision.json") or {}).items():
        lines.append(
            f"gate      {model} v{decision.get('version')}: {decision['outcome']}: {decision['reason']}"
        )
    submission = _json(data / "arena_submission" / "submission.json")
    if submission and submission.get("bundle"):
        bundle = data / "arena_submission" / submission["bundle"]
        lines.append(f"bundle    {bundle}  ({submission['status']}; lineage: mai lineage {bundle})")
    elif submission:
        lines.append(f"bundle    none ({submission['status']})")
    lines += [
        f"UIs       make ui  ->  Dagster http://127.0.0.1:3000   MLflow {ui_base(settings)}/#/?{ML_VIEW}"
        f"  (runs: {settings.mlflow_tracking_uri})",
        "serve     mai serve  ->  OpenAI-compatible API on http://127.0.0.1:8000/v1 (LM and voice)",
    ]
    sample = data / "mai_voice" / "sample.wav"
    if sample.exists():
        lines.append(f'listen    {sample}   (or: mai tts synthesize "your text" -o out.wav)')
    return lines


def print_demo_report(settings: Settings, steps: list[str], record: dict[str, Any]) -> None:
    print()
    for line in demo_table(settings, steps, record):
        print(line)
    total = record.get("total_seconds")
    counts = {
        s: sum(1 for e in (record.get("steps") or {}).values() if e["status"] == s)
        for s in ("built", "reused", "failed")
    }
    print(
        f"\ndemo {'succeeded' if record.get('success') else 'FAILED'} in {_seconds(total)}: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"; checks {record.get('checks_passed', 0)} passed, {len(record.get('failed_checks') or [])} failed"
    )
    for failed in record.get("failed_checks") or []:
        print(f"  check failed: {failed}")
    for line in outcome_lines(settings):
        print(line)
    if record.get("log"):
        print(f"log       {record['log']}")


def print_status(settings: Settings, found: dict[str, Any]) -> None:
    record = read_demo_record(settings)
    for line in status_table(settings, found, record):
        print(line)
    if record:
        print(
            f"\nlast demo: {record.get('finished_at')}, {_seconds(record.get('total_seconds'))}, "
            f"{'succeeded' if record.get('success') else 'FAILED'} (log: {record.get('log')})"
        )
    print()
    for line in outcome_lines(settings):
        print(line)

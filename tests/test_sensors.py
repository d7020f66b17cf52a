from __future__ import annotations

from pathlib import Path

from dagster import build_sensor_context

from assets.resources import FoundrySettings
from pipelines.sensors import landing_drop_sensor


def _tick(foundry: FoundrySettings, cursor: str | None = None):
    context = build_sensor_context(cursor=cursor, resources={"foundry": foundry})
    return landing_drop_sensor.evaluate_tick(context)


def test_landing_sensor_requests_one_run_per_new_drop(project: Path) -> None:
    foundry = FoundrySettings(root=str(project))
    empty = _tick(foundry)
    assert not empty.run_requests and "no files" in empty.skip_message

    (project / "data" / "landing" / "drop.jsonl").write_text('{"text": "hello"}\n')
    fired = _tick(foundry)
    assert len(fired.run_requests) == 1 and fired.run_requests[0].run_key.startswith("landing-")

    unchanged = _tick(foundry, fired.cursor)
    assert not unchanged.run_requests and "unchanged" in unchanged.skip_message

    (project / "data" / "landing" / "drop2.txt").write_text("another drop")
    assert len(_tick(foundry, fired.cursor).run_requests) == 1

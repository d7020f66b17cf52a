from __future__ import annotations

from pathlib import Path

from dagster import RunRequest, SkipReason, build_sensor_context

from pipelines.resources import FoundrySettings
from pipelines.sensors import landing_drop_sensor


def test_landing_sensor_requests_one_run_per_new_drop(project: Path) -> None:
    foundry = FoundrySettings(root=str(project))
    empty = landing_drop_sensor(build_sensor_context(resources={"foundry": foundry}), foundry=foundry)
    assert isinstance(empty, SkipReason)

    (project / "data" / "landing" / "drop.jsonl").write_text('{"text": "hello"}\n')
    context = build_sensor_context(resources={"foundry": foundry})
    request = landing_drop_sensor(context, foundry=foundry)
    assert isinstance(request, RunRequest) and request.run_key.startswith("landing-")

    again = landing_drop_sensor(
        build_sensor_context(cursor=context.cursor, resources={"foundry": foundry}), foundry=foundry
    )
    assert isinstance(again, SkipReason)

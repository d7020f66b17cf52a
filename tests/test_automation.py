"""What runs by itself: automation conditions from the step declarations, the landing sensor, the
no-op tick, the scheduled training gate, the failure log (and its webhook) and the freshness check."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from conftest import materialize_with_resources
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    PipesSubprocessClient,
    build_run_status_sensor_context,
    build_sensor_context,
)
from dagster import evaluate_automation_conditions as evaluate

from assets.catalog import in_groups
from assets.resources import DvcVersioning, FoundrySettings, MLflowTracking
from mai_models.graph import STEPS
from mai_models.settings import load_settings
from mai_models.tracking.failures import read_failures

pytestmark = pytest.mark.slow


def _requested(result) -> set[str]:
    return {r.key.to_user_string() for r in result.results if r.true_subset.size}


def test_every_asset_carries_the_condition_and_pool_its_step_declares() -> None:
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    for step in STEPS:
        if not graph.has(AssetKey(step.name)):
            continue
        node = graph.get(AssetKey(step.name))
        label = node.automation_condition.get_label()
        assert label.startswith("scheduled" if step.automation == "scheduled" else "eager"), step.name
        assert node.pools == ({"training"} if step.compute == "heavy" else set()), step.name
    assert {s.name for s in STEPS if s.automation == "scheduled"} == {
        "moe_pretrain",
        "dense_pretrain",
        "tts_acoustic",
        "tts_vocoder",
    }
    freshness = next(c for c in graph.asset_check_keys if c.name == "champion_freshness")
    assert not graph.get_check_spec(freshness).blocking
    assert {s.name for s in defs.sensors} >= {"landing_drop_sensor", "retraining_automation"}
    assert defs.resolve_job_def("retraining")


def test_a_landing_drop_flows_through_the_text_plane_and_waits_for_the_training_tick(
    lm_workspace: Path,
) -> None:
    """Built once, a tick with nothing new requests nothing. A drop starts raw_documents (the landing
    sensor), the data steps after it follow its new data version in one run, and pretraining waits for
    the next tick of the training cron."""
    text, text_checks = in_groups("text")
    lm, _ = in_groups("lm")
    assets = [*text, *lm]
    defs = Definitions(
        assets=assets,
        resources={
            "foundry": FoundrySettings(),
            "mlflow": MLflowTracking(),
            "dvc": DvcVersioning(),
            "pipes_subprocess_client": PipesSubprocessClient(),
        },
    )
    instance = DagsterInstance.ephemeral()
    assert materialize_with_resources([*text, *text_checks], instance).success  # reused: a fast no-op
    now = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)  # a Tuesday: the Monday tick is past
    tick = evaluate(defs, instance, evaluation_time=now)
    tick = evaluate(defs, instance, cursor=tick.cursor, evaluation_time=now + dt.timedelta(minutes=1))
    assert _requested(tick) == set(), "nothing changed: the tick must be a no-op"

    (lm_workspace / "data" / "landing" / "drop.jsonl").write_text(
        json.dumps({"text": "A landing drop about sorting lists in place with list.sort. " * 6}) + "\n"
    )
    from pipelines.sensors import landing_drop_sensor

    foundry = FoundrySettings()
    fired = landing_drop_sensor.evaluate_tick(build_sensor_context(resources={"foundry": foundry}))
    [request] = fired.run_requests
    assert request.asset_selection == [AssetKey("raw_documents")]

    chain, clock = [], now + dt.timedelta(minutes=2)
    selection = {"raw_documents"}
    while selection:
        chain.append(sorted(selection))
        chosen = [a for a in assets if a.key.to_user_string() in selection]
        checks = [c for c in text_checks if {k.asset_key.to_user_string() for k in c.check_keys} <= selection]
        assert materialize_with_resources([*chosen, *checks], instance).success
        clock += dt.timedelta(minutes=1)
        tick = evaluate(defs, instance, cursor=tick.cursor, evaluation_time=clock)
        selection = _requested(tick)
    # The rest of the data plane follows in one run: each step will be requested after its upstream.
    assert chain == [["raw_documents"], ["bpe_tokenizer", "clean_documents", "token_shards"]]

    # The training cron ticks (Monday 04:00): the new shards now start both trainings.
    monday = dt.datetime(2026, 12, 7, 4, 1, tzinfo=dt.UTC)
    tick = evaluate(defs, instance, cursor=tick.cursor, evaluation_time=monday)
    assert _requested(tick) == {"moe_pretrain", "dense_pretrain"}


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_failed_run_is_recorded_once_with_its_step_and_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MAI_FAILURE_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hook")
    try:
        (project / "params.yaml").write_text(
            (project / "params.yaml").read_text().replace("path: data/landing", "path: data/nowhere")
        )
        instance = DagsterInstance.ephemeral()
        text, _ = in_groups("text")
        raw = [a for a in text if a.key.to_user_string() == "raw_documents"]
        result = materialize_with_resources(raw, instance, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        from pipelines.sensors import record_run_failures

        context = build_run_status_sensor_context(
            sensor_name="record_run_failures",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(result.run_id),
            resources={"foundry": FoundrySettings()},
        ).for_run_failure()
        record_run_failures(context)
    finally:
        server.shutdown()
    [record] = read_failures(load_settings())
    assert record["run_id"] == result.run_id and record["steps"] == ["raw_documents"]
    assert "data/nowhere" in record["error"] and "\n" not in record["error"]
    assert _Hook.received == [record]

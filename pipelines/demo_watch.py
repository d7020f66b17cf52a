"""Follow the demo's Dagster run from its event log and turn it into progress lines.

The run is the one the instance records after the demo started. Step starts and ends, materialisation
metadata (built or reused) and check results come from the event log; a training step's metrics rows
come from its captured stdout, the file the instance's compute-log manager writes while it runs, so
each row belongs to exactly one step."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance, RunsFilter

from mai_models.demo_progress import DemoProgress
from mai_models.settings import Settings
from mai_models.step_figures import main_figure


def _error_line(error: Any) -> str:
    """The innermost cause of a step failure, in one line (a MaiUserError's own message)."""
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    text = (getattr(error, "message", "") or "").strip()
    return text.splitlines()[0] if text else "failed (see the log)"


class RunWatcher:
    def __init__(
        self,
        instance: DagsterInstance,
        progress: DemoProgress,
        settings: Settings,
        steps: list[str],
        started: float,
    ) -> None:
        self.instance = instance
        self.progress = progress
        self.settings = settings
        self.steps = set(steps)
        self.started = started
        self.run_id: str | None = None
        self.run_failure: str | None = None
        self._cursor: str | None = None
        self._reused: dict[str, tuple[bool, str | None]] = {}
        self._stdout: dict[str, Path] = {}
        self._offsets: dict[str, int] = {}
        self._partial: dict[str, str] = {}

    def poll(self) -> None:
        if self.run_id is None:
            since = dt.datetime.fromtimestamp(self.started - 1, tz=dt.UTC)
            found = self.instance.get_run_records(filters=RunsFilter(created_after=since), limit=1)
            if not found:
                return
            self.run_id = found[0].dagster_run.run_id
        while True:
            conn = self.instance.get_records_for_run(self.run_id, cursor=self._cursor)
            self._cursor = conn.cursor
            for record in conn.records:
                self._handle(record.event_log_entry)
            if not conn.has_more:
                break
        self._tail_training()

    def _handle(self, entry: Any) -> None:
        event = entry.dagster_event
        if event is None:
            return
        kind, step, at = event.event_type, event.step_key, entry.timestamp
        data = event.event_specific_data
        if kind == DagsterEventType.LOGS_CAPTURED:
            self._remember_stdout(data)
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            self.progress.check_evaluated(
                data.asset_key.to_user_string(), data.check_name, data.passed, data.description or "", at
            )
        elif kind == DagsterEventType.RUN_FAILURE:
            self.run_failure = entry.message or "the run failed"
        elif step not in self.steps:
            return  # a check's own step: its result arrives as ASSET_CHECK_EVALUATION
        elif kind == DagsterEventType.STEP_START:
            self.progress.step_started(step, at)
        elif kind == DagsterEventType.ASSET_MATERIALIZATION:
            meta = data.materialization.metadata
            reused, version = meta.get("reused"), meta.get("data_version")
            self._reused[step] = (bool(getattr(reused, "value", False)), getattr(version, "value", None))
        elif kind == DagsterEventType.STEP_SUCCESS:
            self._tail_training()
            reused, version = self._reused.get(step, (False, None))
            figure = main_figure(self.settings, step)
            self.progress.step_finished(step, at, "reused" if reused else "built", figure, version)
        elif kind == DagsterEventType.STEP_FAILURE:
            self.progress.step_failed(step, at, _error_line(data.error))
        elif kind == DagsterEventType.STEP_SKIPPED:
            self.progress.step_failed(step, at, "an upstream step failed", status="skipped")

    def _remember_stdout(self, data: Any) -> None:
        manager = self.instance.compute_log_manager
        locate = getattr(manager, "get_captured_local_path", None)
        if locate is None or self.run_id is None:
            return  # a remote compute-log manager: start and end lines only, no training bars
        path = Path(locate([self.run_id, "compute_logs", data.file_key], "out"))
        for step in data.step_keys:
            if step in self.steps:
                self._stdout[step] = path

    def _tail_training(self) -> None:
        for step, path in self._stdout.items():
            if self.progress.steps.get(step) is None or self.progress.steps[step].status != "running":
                continue
            try:
                with path.open("rb") as fh:
                    fh.seek(self._offsets.get(step, 0))
                    chunk = fh.read()
            except FileNotFoundError:
                continue
            self._offsets[step] = self._offsets.get(step, 0) + len(chunk)
            text = self._partial.pop(step, "") + chunk.decode("utf-8", errors="replace")
            *lines, rest = text.split("\n")
            if rest:
                self._partial[step] = rest
            for line in lines:
                if line.startswith('{"step": '):
                    try:
                        self.progress.training_row(step, json.loads(line))
                    except json.JSONDecodeError:
                        continue

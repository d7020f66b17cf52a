"""Every failed run recorded in one place: a JSON line per failure under ``.mai/failures.jsonl``, and,
when ``MAI_FAILURE_WEBHOOK`` is set, the same record POSTed there as JSON (a Slack or Teams incoming
webhook, an alert manager). A webhook that does not answer is logged, never fatal: the log has it."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path
from typing import Any

from mai_models.settings import Settings

FAILURES_FILE = "failures.jsonl"
_LOG = logging.getLogger(__name__)


def failures_path(settings: Settings) -> Path:
    return settings.home / FAILURES_FILE


def first_line(message: str) -> str:
    return next((line.strip() for line in message.splitlines() if line.strip()), "")


def record_failure(settings: Settings, run_id: str, steps: list[str], error: str, **extra: Any) -> dict:
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": run_id,
        "steps": steps,
        "error": first_line(error),
        **extra,
    }
    path = failures_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
    if settings.failure_webhook:
        request = urllib.request.Request(
            settings.failure_webhook,
            data=json.dumps(record).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except OSError as exc:
            _LOG.warning("failure webhook %s did not answer: %s", settings.failure_webhook, exc)
    return record


def read_failures(settings: Settings) -> list[dict]:
    path = failures_path(settings)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

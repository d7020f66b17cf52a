"""Trigger the text pipeline when new files land in a landing directory."""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from assets.resources import FoundrySettings
from mai_models.data.readers import landing_fingerprint
from mai_models.executor.versioning import fingerprint
from pipelines.jobs import text_data_job


@sensor(job=text_data_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED)
def landing_drop_sensor(context: SensorEvaluationContext, foundry: FoundrySettings):
    """Requests one run per new state of the configured landing directories (name, size, mtime)."""
    settings = foundry.load()
    landing = [s for s in foundry.params().ingest.sources if s.kind == "landing"]
    state = [landing_fingerprint(settings.root / (s.path or "")) for s in landing]
    if not any(state):
        return SkipReason("no files in the landing directories")
    key = fingerprint(state)[:16]
    if key == context.cursor:
        return SkipReason("landing directories unchanged")
    context.update_cursor(key)
    return RunRequest(run_key=f"landing-{key}")

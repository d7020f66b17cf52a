"""What starts by itself: new files in a landing directory start the chain at `raw_documents` (the
automation conditions carry it on), and every failed run is recorded in one place."""

from dagster import (
    AssetKey,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from assets.resources import FoundrySettings
from mai_models.data.readers import landing_fingerprint
from mai_models.executor.versioning import fingerprint
from mai_models.tracking.failures import record_failure
from pipelines.jobs import retraining_job


@sensor(
    job=retraining_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="New files in a landing directory rebuild raw_documents; automation carries the change on.",
)
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
    return RunRequest(run_key=f"landing-{key}", asset_selection=[AssetKey("raw_documents")])


# Evaluates every asset's automation condition (see assets/automation.py) every 30 s while the daemon runs.
retraining_automation = AutomationConditionSensorDefinition(
    "retraining_automation",
    target="*",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Data steps follow new data, trainings follow it at the training cron, evaluation, "
    "the gate and the submission follow a new candidate.",
)


@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=30)
def record_run_failures(context: RunFailureSensorContext, foundry: FoundrySettings) -> None:
    """One JSON line per failed run (and the optional webhook): run id, failed steps, first error line."""
    steps = [event.step_key for event in context.get_step_failure_events() if event.step_key]
    error = context.failure_event.message or ""
    for event in context.get_step_failure_events():
        info = event.event_specific_data.error if event.event_specific_data else None
        while info is not None and info.cause is not None:  # Dagster wraps the step's own exception
            info = info.cause
        if info is not None:
            error = info.message
            break
    record_failure(foundry.load(), context.dagster_run.run_id, steps, error, job=context.dagster_run.job_name)

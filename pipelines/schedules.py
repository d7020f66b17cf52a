"""The retraining schedule: the whole chain, landing -> submission, at `automation.retraining_cron`.
Every step whose version is unchanged is reused, so a tick with nothing new is a fast no-op."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from assets.resources import FoundrySettings
from pipelines.jobs import retraining_job

retraining_schedule = ScheduleDefinition(
    name="retraining_schedule",
    job=retraining_job,
    cron_schedule=FoundrySettings().params().automation.retraining_cron,
    default_status=DefaultScheduleStatus.RUNNING,
)

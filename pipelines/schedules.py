from dagster import DefaultScheduleStatus, ScheduleDefinition

from pipelines.jobs import text_data_job

# Off by default: a scheduled refresh is a production choice. Unchanged steps are no-ops anyway.
nightly_text_refresh = ScheduleDefinition(
    name="nightly_text_refresh",
    job=text_data_job,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
)

"""The Dagster code location: `dagster dev -m pipelines.definitions`."""

from dagster import Definitions

from assets.catalog import ASSETS, CHECKS
from assets.resources import default_resources
from pipelines.jobs import JOBS
from pipelines.schedules import retraining_schedule
from pipelines.sensors import landing_drop_sensor, record_run_failures, retraining_automation

defs = Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=JOBS,
    schedules=[retraining_schedule],
    sensors=[landing_drop_sensor, retraining_automation, record_run_failures],
    resources=default_resources(),
)

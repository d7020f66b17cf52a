"""The Dagster code location: `dagster dev -m pipelines.definitions`."""

from dagster import Definitions, PipesSubprocessClient

from assets.catalog import ASSETS, CHECKS
from assets.resources import DvcVersioning, FoundrySettings, MLflowTracking
from pipelines.jobs import JOBS
from pipelines.schedules import nightly_text_refresh
from pipelines.sensors import landing_drop_sensor

defs = Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=JOBS,
    schedules=[nightly_text_refresh],
    sensors=[landing_drop_sensor],
    resources={
        "foundry": FoundrySettings(),
        "mlflow": MLflowTracking(),
        "dvc": DvcVersioning(),
        "pipes_subprocess_client": PipesSubprocessClient(),
    },
)

"""The Dagster code location: `dagster dev -m pipelines.definitions`."""

from dagster import Definitions, PipesSubprocessClient

from assets.checks import SPEECH_CHECKS, TEXT_CHECKS
from assets.evaluation import EVAL_ASSETS, EVAL_CHECKS
from assets.lm import LM_ASSETS
from assets.speech import SPEECH_ASSETS
from assets.text import TEXT_ASSETS
from pipelines.jobs import evaluation_job, lm_pretrain_job, speech_job, text_data_job
from pipelines.resources import DvcVersioning, FoundrySettings, MLflowTracking
from pipelines.schedules import nightly_text_refresh
from pipelines.sensors import landing_drop_sensor

defs = Definitions(
    assets=[*TEXT_ASSETS, *LM_ASSETS, *SPEECH_ASSETS, *EVAL_ASSETS],
    asset_checks=[*TEXT_CHECKS, *SPEECH_CHECKS, *EVAL_CHECKS],
    jobs=[text_data_job, lm_pretrain_job, speech_job, evaluation_job],
    schedules=[nightly_text_refresh],
    sensors=[landing_drop_sensor],
    resources={
        "foundry": FoundrySettings(),
        "mlflow": MLflowTracking(),
        "dvc": DvcVersioning(),
        "pipes_subprocess_client": PipesSubprocessClient(),
    },
)

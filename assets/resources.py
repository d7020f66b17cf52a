"""Dagster resources over the framework-free settings. Every field is optional: unset fields come
from ``mai.yaml`` and the environment (see mai_models.settings), so production is configuration only."""

from dagster import ConfigurableResource

from mai_models.config import PipelineParams, load_params
from mai_models.settings import Settings, load_settings
from mai_models.tracking.dvc import Dvc


class FoundrySettings(ConfigurableResource):
    """Where the project lives and which parameters file drives it."""

    root: str | None = None
    params_file: str | None = None

    def load(self) -> Settings:
        return load_settings(root=self.root, params_file=self.params_file)

    def params(self, overrides: list[str] | None = None) -> PipelineParams:
        settings = self.load()
        return load_params(settings.params_file, overrides)


class MLflowTracking(ConfigurableResource):
    """A small MLflow resource (dagster-mlflow is legacy): which server and experiment runs go to."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str | None = None
    artifact_uri: str | None = None

    def apply(self, settings: Settings) -> Settings:
        update = {
            "mlflow_tracking_uri": self.tracking_uri,
            "mlflow_experiment": self.experiment,
            "mlflow_artifact_uri": self.artifact_uri,
        }
        return settings.model_copy(update={k: v for k, v in update.items() if v is not None})


class DvcVersioning(ConfigurableResource):
    """Commits asset outputs to the DVC cache and pushes them to the remote."""

    enabled: bool = True
    remote: str | None = None

    def client(self, settings: Settings) -> Dvc | None:
        if not self.enabled:
            return None
        return Dvc(settings.model_copy(update={"dvc_remote": self.remote}) if self.remote else settings)


def default_resources() -> dict[str, object]:
    """The resources every step asset needs, configured from the project's settings."""
    from dagster import PipesSubprocessClient

    return {
        "foundry": FoundrySettings(),
        "mlflow": MLflowTracking(),
        "dvc": DvcVersioning(),
        "pipes_subprocess_client": PipesSubprocessClient(),
    }

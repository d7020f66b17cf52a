"""Register a trained model in MLflow: a LoggedModel that points at the DVC-tracked weights (nothing
is pickled), a new version of the registered model with its description (``model_card``), and the
``candidate`` alias. Promotion to ``champion`` is evaluation's decision, not training's."""

from __future__ import annotations

import contextlib
from typing import Any

from mai_models.settings import Settings
from mai_models.tracking.mlflow_runs import tracking_server
from mai_models.tracking.model_card import describe_candidate

# The registry's names, defined here once: the trainers register candidates, the gate moves the champion.
LM_MODEL = "mai-moe"
VOICE_MODEL = "mai-voice"
CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
MODEL_DESCRIPTIONS = {
    LM_MODEL: "The MAI Foundry MoE language model (Megatron-Core GPT). `@candidate` is the newest "
    "training, `@champion` the version the arena gate promoted; each version's page links its "
    "training run, data, evaluation and gate decision.",
    VOICE_MODEL: "The MAI Foundry voice (acoustic model + vocoder, ONNX bundle). `@candidate` is the "
    "newest training, `@champion` the version the arena gate promoted; each version's page links its "
    "training runs (mel plots, playable samples), evaluation and gate decision.",
}


def register_candidate(
    settings: Settings,
    registered_model: str,
    run_id: str,
    tags: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, float],
) -> str:
    """Returns the new model version; tags and final metrics are also set on the source run."""
    with tracking_server(settings):
        return _register(settings, registered_model, run_id, tags, params, metrics)


def _register(
    settings: Settings,
    registered_model: str,
    run_id: str,
    tags: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, float],
) -> str:
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = mlflow.MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, f"final/{key}", float(value))
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    model = mlflow.initialize_logged_model(
        name=registered_model, source_run_id=run_id, tags=tags, params={k: str(v) for k, v in params.items()}
    )
    mlflow.finalize_logged_model(model.model_id, "READY")
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # registered by an earlier version
        client.create_registered_model(registered_model, description=MODEL_DESCRIPTIONS.get(registered_model))
    version = client.create_model_version(
        registered_model,
        source=f"models:/{model.model_id}",
        run_id=run_id,
        model_id=model.model_id,
        tags=tags,
    )
    describe_candidate(
        settings, client, registered_model, str(version.version), run_id, tags, params, metrics
    )
    client.set_registered_model_alias(registered_model, CANDIDATE_ALIAS, version.version)
    return str(version.version)

"""A registered model version and the files it was built from: the version behind an alias (or with a
number), and the step output recorded on it, taken from the work tree while that still holds the same
data version, else restored from the DVC cache (or a local remote) by the hash the version records.

Evaluation reads the champion a candidate faces through this; retraining reads the champion it warm
starts from, and the frozen tokenizer the champion's tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.settings import Settings
from mai_models.tracking.mlflow_runs import tracking_server, unreachable
from mai_models.tracking.registry import CHAMPION_ALIAS, LM_MODEL, VOICE_MODEL

# The step whose output each registered model is (and whose state names the candidate version).
TRAINING_STEP = {LM_MODEL: "moe_pretrain", VOICE_MODEL: "mai_voice"}
TAG_DATA_VERSION = "mai.data_version"
TAG_DVC_HASH = "mai.dvc_hash"
# On an LM version: the sha256 of its tokenizer.json, what a frozen tokenizer's version follows.
TAG_TOKENIZER_SHA256 = "mai.tokenizer_sha256"


def registered_version(
    settings: Settings, model: str, alias: str | None = None, number: str | None = None
) -> dict[str, Any] | None:
    """The version behind ``alias`` (or with that ``number``) with its tags, or None."""
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    # A server that does not answer is not "no such version": that would judge a candidate as if
    # there were no champion.
    with tracking_server(settings):
        try:
            if number is not None:
                version = client.get_model_version(model, str(number))
            else:
                version = client.get_model_version_by_alias(model, str(alias))
        except mlflow.exceptions.MlflowException as exc:
            if unreachable(exc):
                raise
            return None
    return {
        "model": model,
        "version": str(version.version),
        "run_id": version.run_id,
        "tags": dict(version.tags),
        "created_ms": version.creation_timestamp,
    }


def champion(settings: Settings, model: str) -> dict[str, Any] | None:
    return registered_version(settings, model, CHAMPION_ALIAS)


def version_label(found: dict[str, Any]) -> str:
    """How lineage and tags name a version: ``mai-moe v2``."""
    return f"{found['model']} v{found['version']}"


def output_tags(found: dict[str, Any], step: str | None = None) -> tuple[str | None, str | None]:
    """(data version, DVC hash) of the registered output itself, or with ``step`` of one of the steps
    upstream of it (the voice's acoustic model and vocoder are upstream of the registered bundle)."""
    tags = found["tags"]
    if step is None:
        return tags.get(TAG_DATA_VERSION), tags.get(TAG_DVC_HASH)
    return tags.get(f"mai.upstream.{step}"), tags.get(f"mai.upstream.{step}.dvc_hash")


def output_dir(settings: Settings, found: dict[str, Any], current: Path, step: str | None = None) -> Path:
    """The directory holding the output recorded on ``found`` (``step``: an upstream one, as in
    ``output_tags``). ``current`` is that step's work-tree output, which only holds the newest build,
    so an older version is restored from DVC under ``.mai/champions/<model>-v<n>/<step>``."""
    from mai_models.executor.versioning import current_version
    from mai_models.tracking.dvc import restore_output

    version, dvc_hash = output_tags(found, step)
    if version and version == current_version(current):
        return current
    restored = settings.home / "champions" / f"{found['model']}-v{found['version']}" / (step or current.name)
    if not version or current_version(restored) != version:
        if not dvc_hash:
            what = f"its {step} output" if step else "its output"
            raise MaiUserError(
                f"{version_label(found)} has no DVC hash for {what}: its weights cannot be restored"
            )
        restore_output(settings, dvc_hash, restored)
    return restored

"""One job per plane of the step graph; unchanged steps in a job are reused, not rebuilt."""

from dagster import AssetSelection, define_asset_job

from assets.step_asset import RUN_POOL_LIMITS
from mai_models.graph import GROUPS

# The editable default of every job: its steps wait on the pools in the executor, not in Dagster's
# claim backoff (see RUN_POOL_LIMITS).
POOL_CONFIG = {"execution": {"config": {"multiprocess": {"tag_concurrency_limits": RUN_POOL_LIMITS}}}}

_JOB_NAMES = {"text": "text_data_job", "lm": "lm_pretrain_job"}
_DESCRIPTIONS = {
    "text": "Ingest, validate, dedup, tokenizer and Megatron shards; unchanged steps are reused.",
    "lm": "MoE pretraining on the current token shards; an interrupted run of this version resumes.",
    "speech": "Speech data, features, acoustic model and vocoder training, and the mai-voice release.",
    "evaluation": "HF export, LM and TTS evaluation, the arena and its champion gate, the submission bundle.",
}

JOBS_BY_GROUP = {
    group: define_asset_job(
        _JOB_NAMES.get(group, f"{group}_job"),
        selection=AssetSelection.groups(group),
        description=_DESCRIPTIONS.get(group),
        config=POOL_CONFIG,
    )
    for group in GROUPS
}
# Landing -> submission: the scheduled retraining and the landing sensor run it.
retraining_job = define_asset_job(
    "retraining",
    selection=AssetSelection.all(),
    description="The whole chain; steps whose version is unchanged are reused, so nothing new is a no-op.",
    config=POOL_CONFIG,
)
JOBS = [*JOBS_BY_GROUP.values(), retraining_job]

from dagster import AssetSelection, define_asset_job

from assets.evaluation import EVAL_GROUP
from assets.lm import LM_GROUP
from assets.speech import SPEECH_GROUP
from assets.text import TEXT_GROUP

text_data_job = define_asset_job(
    "text_data_job",
    selection=AssetSelection.groups(TEXT_GROUP),
    description="Ingest, validate, dedup, tokenizer and Megatron shards; unchanged steps are reused.",
)

lm_pretrain_job = define_asset_job(
    "lm_pretrain_job",
    selection=AssetSelection.groups(LM_GROUP),
    description="MoE pretraining on the current token shards; an interrupted run of this version resumes.",
)

speech_job = define_asset_job(
    "speech_job",
    selection=AssetSelection.groups(SPEECH_GROUP),
    description="Speech data, features, acoustic model and vocoder training, and the mai-voice release.",
)

evaluation_job = define_asset_job(
    "evaluation_job",
    selection=AssetSelection.groups(EVAL_GROUP),
    description="HF export, LM and TTS evaluation, the arena and its champion gate, the submission bundle.",
)

"""The MoE pretraining asset: torchrun started through Dagster Pipes, then the checkpoint is
versioned in DVC and registered in MLflow as `mai-moe` @ candidate."""

from dagster import (
    AssetExecutionContext,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    asset,
)

from mai_models.launcher import TRAINING_TAG
from mai_models.lm.launch import (
    STEP_NAME,
    finalize,
    launch_env,
    lm_code_version,
    prepare,
    start_mlflow_run,
    torchrun_command,
)
from mai_models.tracking.mlflow_runs import TAG_DAGSTER_RUN
from mai_models.tracking.state import read_state, write_state
from pipelines.resources import DvcVersioning, FoundrySettings, MLflowTracking

LM_GROUP = "lm"
PIPES_ENTRY = "pipelines.lm_pipes_entry"


class PretrainConfig(Config):
    overrides: list[str] = []
    """Parameter overrides such as `lm.steps=50` or `lm.launch.nproc_per_node=2`."""


@asset(
    name=STEP_NAME,
    deps=["bpe_tokenizer", "token_shards"],
    group_name=LM_GROUP,
    code_version=lm_code_version(),
    kinds={"pytorch", "python"},
    op_tags={TRAINING_TAG: "training"},
    description="Megatron-Core MoE GPT trained by torchrun; checkpoint in DVC, `mai-moe` @ candidate.",
)
def moe_pretrain(
    context: AssetExecutionContext,
    config: PretrainConfig,
    foundry: FoundrySettings,
    mlflow: MLflowTracking,
    dvc: DvcVersioning,
    pipes_subprocess_client: PipesSubprocessClient,
) -> MaterializeResult:
    settings = mlflow.apply(foundry.load())
    prepared = prepare(settings, foundry.params(config.overrides).lm)
    state = read_state(settings, STEP_NAME)
    if prepared.stored and state.get("version") == prepared.version:
        context.log.info(f"{STEP_NAME}: reused stored checkpoint (version {prepared.version})")
        return MaterializeResult(
            metadata={"reused": True, **{k: v for k, v in state.items() if v is not None}},
            data_version=DataVersion(prepared.version),
        )

    run_id = (
        start_mlflow_run(settings, prepared, tags={TAG_DAGSTER_RUN: context.run.run_id})
        if mlflow.enabled
        else None
    )
    spec = prepared.spec.model_copy(update={"mlflow_run_id": run_id})
    prepared.spec_path.write_text(spec.model_dump_json(indent=2))
    invocation = pipes_subprocess_client.run(
        command=torchrun_command(spec.train.launch, prepared.spec_path, module=PIPES_ENTRY),
        context=context,
        env=launch_env(settings),
        cwd=str(settings.root),
    )
    trained = invocation.get_materialize_result()
    done = finalize(settings, prepared, run_id, dvc.client(settings))
    state = {
        "version": prepared.version,
        "mlflow_run_id": run_id,
        "dvc_hash": done["dvc_hash"],
        "model_version": done["model_version"],
        "checkpoint_uri": done["checkpoint_uri"],
    }
    write_state(settings, STEP_NAME, state)
    plots = sorted((prepared.work_dir / "plots").glob("*.png"))
    metadata = {
        **trained.metadata,
        "reused": False,
        "data_version": prepared.version,
        "registered_model": MetadataValue.text(f"mai-moe v{done['model_version']} @ candidate"),
        "checkpoint_uri": MetadataValue.url(done["checkpoint_uri"]),
        "dvc_hash": done["dvc_hash"],
        "mlflow_run_id": run_id,
        "plots": MetadataValue.json([str(p) for p in plots]),
        "upstream": MetadataValue.json(prepared.upstream),
    }
    return MaterializeResult(
        metadata={k: v for k, v in metadata.items() if v is not None},
        data_version=DataVersion(prepared.version),
    )


LM_ASSETS = [moe_pretrain]

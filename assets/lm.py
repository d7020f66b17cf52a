"""The pretraining assets: torchrun started through Dagster Pipes, then the checkpoint is versioned in
DVC; the MoE model is registered in MLflow as `mai-moe` @ candidate, its dense twin is the baseline."""

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    asset,
)

from mai_models.launcher import TRAINING_TAG
from mai_models.lm.launch import (
    DENSE_STEP,
    STEP_NAME,
    dense_twin,
    finalize,
    launch_env,
    lm_code_version,
    prepare,
    start_mlflow_run,
    torchrun_command,
)
from mai_models.tokenizer.bpe import load_tokenizer
from mai_models.tracking.mlflow_runs import TAG_DAGSTER_RUN
from mai_models.tracking.state import read_state, write_state
from pipelines.resources import DvcVersioning, FoundrySettings, MLflowTracking

LM_GROUP = "lm"
PIPES_ENTRY = "pipelines.lm_pipes_entry"


class PretrainConfig(Config):
    overrides: list[str] = []
    """Parameter overrides such as `lm.steps=50` or `lm.launch.nproc_per_node=2`."""


def _build_pretrain_asset(step: str, description: str, dense: bool) -> AssetsDefinition:
    @asset(
        name=step,
        deps=["bpe_tokenizer", "token_shards"],
        group_name=LM_GROUP,
        code_version=lm_code_version(),
        kinds={"pytorch", "python"},
        op_tags={TRAINING_TAG: "training"},
        description=description,
    )
    def _pretrain(
        context: AssetExecutionContext,
        config: PretrainConfig,
        foundry: FoundrySettings,
        mlflow: MLflowTracking,
        dvc: DvcVersioning,
        pipes_subprocess_client: PipesSubprocessClient,
    ) -> MaterializeResult:
        settings = mlflow.apply(foundry.load())
        cfg = foundry.params(config.overrides).lm
        if dense:
            cfg = dense_twin(cfg, load_tokenizer(settings.data_dir / "bpe_tokenizer").get_vocab_size())
        prepared = prepare(settings, cfg, step=step)
        state = read_state(settings, step)
        if prepared.stored and state.get("version") == prepared.version:
            context.log.info(f"{step}: reused stored checkpoint (version {prepared.version})")
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
        write_state(settings, step, state)
        plots = sorted((prepared.work_dir / "plots").glob("*.png"))
        registered = f"mai-moe v{done['model_version']} @ candidate" if done["model_version"] else None
        metadata = {
            **trained.metadata,
            "reused": False,
            "data_version": prepared.version,
            "registered_model": MetadataValue.text(registered) if registered else None,
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

    return _pretrain


moe_pretrain = _build_pretrain_asset(
    STEP_NAME,
    "Megatron-Core MoE GPT trained by torchrun; checkpoint in DVC, `mai-moe` @ candidate.",
    dense=False,
)
dense_pretrain = _build_pretrain_asset(
    DENSE_STEP,
    "The dense baseline: the same run with MoE layers off and the same active parameters and tokens.",
    dense=True,
)


LM_ASSETS = [moe_pretrain, dense_pretrain]

"""Launch pretraining with torchrun and turn its result into a versioned, tracked model.

``prepare`` fixes the run's version (training config + code + upstream data versions) and its work
directory, so relaunching the same version resumes from its checkpoints (with any process count or
parallel layout: those are left out of the version). ``finalize`` copies the final checkpoint into
``data/moe_pretrain`` (the DVC out) and registers it in MLflow as ``mai-moe`` with alias ``candidate``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.lm.run_spec import SUMMARY_FILE, RunSpec
from mai_models.lm.train_config import LaunchConfig, TrainConfig
from mai_models.pipeline import PACKAGE_DIR
from mai_models.settings import Settings
from mai_models.steps import StepResult, code_version, current_version, run_step, step_version
from mai_models.tracking.mlflow_runs import run_exists
from mai_models.tracking.registry import register_candidate
from mai_models.tracking.state import read_state

STEP_NAME = "moe_pretrain"
DENSE_STEP = "dense_pretrain"  # the dense baseline: the same training with the MoE layers off
REGISTERED_MODEL = "mai-moe"
ENTRY_MODULE = "mai_models.lm.entry"
UPSTREAM = ("bpe_tokenizer", "token_shards")
_RUN_ID_FILE = "mlflow_run_id"


def lm_code_version() -> str:
    return code_version([PACKAGE_DIR / "lm"])


@dataclass(frozen=True)
class PreparedRun:
    version: str
    spec: RunSpec
    spec_path: Path
    out_dir: Path
    upstream: dict[str, str]
    code_version: str
    step: str = STEP_NAME

    @property
    def work_dir(self) -> Path:
        return self.spec.work_dir

    @property
    def stored(self) -> bool:
        """This version's checkpoint is already in the DVC out: nothing to train."""
        return current_version(self.out_dir) == self.version


def dense_twin(cfg: TrainConfig, vocab_size: int) -> TrainConfig:
    """The same run with every MoE layer replaced by a dense SwiGLU as wide as the experts a token
    activates (top-k routed plus any shared expert): same active parameters, same token budget."""
    from mai_models.lm.train_config import resolve_model_config

    model = resolve_model_config(cfg, vocab_size)
    if not model.is_moe:
        return cfg
    width = model.moe_router_topk * model.expert_ffn + (model.moe_shared_expert_intermediate_size or 0)
    overrides = {
        **cfg.model,
        "num_experts": 0,
        "ffn_hidden_size": width,
        "moe_shared_expert_intermediate_size": None,
    }
    return cfg.model_copy(
        update={"model": overrides, "parallel": cfg.parallel.model_copy(update={"expert": 1})}
    )


def prepare(
    settings: Settings, cfg: TrainConfig, fault_nan_at_step: int | None = None, step: str = STEP_NAME
) -> PreparedRun:
    upstream = {}
    for name in UPSTREAM:
        version = current_version(settings.data_dir / name)
        if version is None:
            raise MaiUserError(f"{step} needs {name}, which is not materialised: run `mai data tokenize`")
        upstream[name] = version
    validate_layout(cfg, settings.data_dir / "bpe_tokenizer")
    code = lm_code_version()
    config = cfg.model_dump(mode="json", exclude={"launch", "parallel"})
    version = step_version(step, config, code, upstream)
    work_dir = settings.home / "work" / step / version
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = RunSpec(
        train=cfg,
        shards_dir=settings.data_dir / "token_shards",
        tokenizer_dir=settings.data_dir / "bpe_tokenizer",
        work_dir=work_dir,
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
        peak_cache=settings.state_dir / "cpu_peaks.json",
        fault_nan_at_step=fault_nan_at_step,
    )
    spec_path = work_dir / "spec.json"
    spec_path.write_text(spec.model_dump_json(indent=2))
    return PreparedRun(version, spec, spec_path, settings.data_dir / step, upstream, code, step)


def validate_layout(cfg: TrainConfig, tokenizer_dir: Path) -> None:
    """Check the model and parallel layout against the world size before any process starts."""
    if cfg.parallel.pipeline > 1:
        # Layouts with PP > 1 validate and plan (`mai lm plan`), but this loop runs no pipeline schedule.
        raise MaiUserError("lm.parallel.pipeline > 1 is not supported by the training loop yet; use 1")
    from mai_models.lm.model import ParallelConfig
    from mai_models.lm.train_config import resolve_model_config
    from mai_models.tokenizer.bpe import load_tokenizer

    model = resolve_model_config(cfg, vocab_size=load_tokenizer(tokenizer_dir).get_vocab_size())
    parallel = ParallelConfig(
        tensor_model_parallel_size=cfg.parallel.tensor,
        pipeline_model_parallel_size=cfg.parallel.pipeline,
        expert_model_parallel_size=cfg.parallel.expert,
    )
    parallel.validate(cfg.launch.world_size, model)
    cfg.micro_batches_per_step(cfg.launch.world_size)


def torchrun_command(launch: LaunchConfig, spec_path: Path, module: str = ENTRY_MODULE) -> list[str]:
    """The same entry point on a laptop, a GPU box, Slurm (srun per node) or a PyTorchJob."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={launch.nproc_per_node}"]
    if launch.nnodes > 1:
        if not launch.rdzv_endpoint:
            raise MaiUserError(
                "lm.launch.nnodes > 1 needs lm.launch.rdzv_endpoint (host:port of the rendezvous)"
            )
        command += [
            f"--nnodes={launch.nnodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={launch.rdzv_endpoint}",
            f"--rdzv_id={launch.rdzv_id}",
        ]
    else:
        command += ["--standalone", "--nnodes=1"]
    return [*command, "-m", module, str(spec_path)]


def launch_env(settings: Settings) -> dict[str, str]:
    env = settings.subprocess_env()
    env.setdefault("PYTHONUNBUFFERED", "1")
    # torchrun defaults every rank to one OpenMP thread; the trainer sets its own thread count.
    env.setdefault("OMP_NUM_THREADS", str(max(1, os.cpu_count() or 1)))
    return env


def start_mlflow_run(settings: Settings, prepared: PreparedRun, tags: dict[str, str] | None = None) -> str:
    """One MLflow run per training version; a resumed launch keeps logging into the same run."""
    import mlflow

    from mai_models.tracking.mlflow_runs import TAG_CODE_VERSION, TAG_DATA_VERSION, ensure_experiment, flatten

    run_file = prepared.work_dir / _RUN_ID_FILE
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    if run_file.exists() and run_exists(client, run_file.read_text().strip()):
        return run_file.read_text().strip()
    experiment_id = ensure_experiment(settings)
    run_tags = {
        "mai.step": prepared.step,
        "mai.asset_key": prepared.step,
        TAG_CODE_VERSION: prepared.code_version,
        TAG_DATA_VERSION: prepared.version,
        **{f"mai.upstream.{k}": v for k, v in prepared.upstream.items()},
        **_upstream_dvc_tags(settings),
        **(tags or {}),
    }
    run = client.create_run(experiment_id, run_name=f"{prepared.step}-{prepared.version[:8]}", tags=run_tags)
    params = flatten(prepared.spec.train.model_dump(mode="json"))
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    run_file.write_text(run.info.run_id)
    return run.info.run_id


def _upstream_dvc_tags(settings: Settings) -> dict[str, str]:
    hashes = {name: read_state(settings, name).get("dvc_hash") for name in UPSTREAM}
    return {f"mai.upstream.{name}.dvc_hash": h for name, h in hashes.items() if h}


def run_training(settings: Settings, prepared: PreparedRun) -> int:
    """Run torchrun in the foreground (the CLI path); its rank 0 prints metrics as JSON lines."""
    command = torchrun_command(prepared.spec.train.launch, prepared.spec_path)
    return subprocess.run(command, cwd=settings.root, env=launch_env(settings)).returncode


def finalize(
    settings: Settings, prepared: PreparedRun, run_id: str | None, dvc: Any = None
) -> dict[str, Any]:
    """Copy the final checkpoint into the DVC out, commit and push it, and register ``mai-moe`` (the
    dense baseline is versioned the same way but not registered: it is a yardstick, not a product)."""
    summary_path = prepared.work_dir / SUMMARY_FILE
    if not summary_path.exists():
        raise MaiUserError(f"training produced no summary at {summary_path}; see the training log")
    summary = json.loads(summary_path.read_text())

    def build(out: Path) -> dict[str, Any]:
        shutil.copytree(summary["checkpoint"], out / "checkpoint")
        shutil.copy(prepared.spec.tokenizer_dir / "tokenizer.json", out / "tokenizer.json")
        card = {
            "preset": prepared.spec.train.preset,
            "train": prepared.spec.train.model_dump(mode="json"),
            "parameters": summary["parameters"],
            "steps": summary["steps"],
            "tokens_seen": summary["tokens_seen"],
            "upstream": prepared.upstream,
        }
        (out / "model.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        return {k: summary[k] for k in ("steps", "tokens_seen", "parameters")}

    result: StepResult = run_step(
        prepared.step,
        prepared.out_dir,
        prepared.version,
        build,
        lineage={"upstream": prepared.upstream, "code_version": prepared.code_version},
    )
    dvc_hash = dvc.commit_and_push(prepared.step) if dvc is not None else None
    version = None
    if run_id and prepared.step == STEP_NAME:
        version = register_moe_candidate(settings, prepared, run_id, summary, dvc_hash)
    elif run_id:
        import mlflow

        mlflow.MlflowClient(settings.mlflow_tracking_uri).set_terminated(run_id)
    return {
        "result": result,
        "summary": summary,
        "dvc_hash": dvc_hash,
        "model_version": version,
        "checkpoint_uri": (prepared.out_dir / "checkpoint").as_uri(),
    }


def register_moe_candidate(
    settings: Settings, prepared: PreparedRun, run_id: str, summary: dict[str, Any], dvc_hash: str | None
) -> str:
    """``mai-moe`` version pointing at the DVC-tracked checkpoint, with alias ``candidate``."""
    import mlflow

    checkpoint_uri = (prepared.out_dir / "checkpoint").as_uri()
    tags = {
        "mai.checkpoint_uri": checkpoint_uri,
        "mai.data_version": prepared.version,
        **({"mai.dvc_hash": dvc_hash} if dvc_hash else {}),
        **{f"mai.upstream.{k}": v for k, v in prepared.upstream.items()},
    }
    metrics = {
        k: summary[k] for k in ("final_train_loss", "final_valid_loss", "final_valid_bpb") if summary.get(k)
    }
    params = {"preset": prepared.spec.train.preset, **summary["parameters"]}
    version = register_candidate(settings, REGISTERED_MODEL, run_id, tags, params, metrics)
    mlflow.MlflowClient(settings.mlflow_tracking_uri).set_terminated(run_id)
    return version

"""How pretraining is launched: the layout checked before any process starts, the torchrun command
(the same entry point on a laptop, a GPU box, Slurm or a PyTorchJob) and the environment of its
ranks; and the dense twin, the same run with the MoE layers off."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mai_models.errors import MaiUserError
from mai_models.lm.train_config import LaunchConfig, TrainConfig
from mai_models.settings import Settings

ENTRY_MODULE = "mai_models.lm.entry"


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


def validate_layout(cfg: TrainConfig, tokenizer_dir: Path) -> None:
    """Check the model and parallel layout against the world size before any process starts."""
    if cfg.parallel.pipeline > 1:
        # Layouts with PP > 1 validate and plan (`mai lm plan`), but this loop runs no pipeline schedule.
        raise MaiUserError("lm.parallel.pipeline > 1 is not supported by the training loop yet; use 1")
    from mai_models.lm.model_config import ParallelConfig
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


def torchrun_prefix(launch: LaunchConfig) -> tuple[str, ...]:
    """``python -m torch.distributed.run`` with this layout's process count and rendezvous."""
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
    return tuple(command)


def launch_env(settings: Settings) -> dict[str, str]:
    env = settings.subprocess_env()
    env.setdefault("PYTHONUNBUFFERED", "1")
    # torchrun defaults every rank to one OpenMP thread; the trainer sets its own thread count.
    env.setdefault("OMP_NUM_THREADS", str(max(1, os.cpu_count() or 1)))
    return env

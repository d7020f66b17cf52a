"""How pretraining is launched: the layout checked before any process starts, the torchrun command
(the same entry point on a laptop, a GPU box, Slurm or a PyTorchJob), the Slurm job around it and the
environment of its ranks; and the dense twin, the same run with the MoE layers off."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.executor.slurm import SlurmJob
from mai_models.lm.model_config import MoEModelConfig
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
    overrides = {**cfg.model, **dense_overrides(model)}
    return cfg.model_copy(
        update={"model": overrides, "parallel": cfg.parallel.model_copy(update={"expert": 1})}
    )


def dense_overrides(model: MoEModelConfig) -> dict[str, Any]:
    """The model fields that turn ``model`` into its dense twin: every MoE layer a dense SwiGLU as
    wide as the experts a token activates (top-k routed plus any shared expert)."""
    width = model.moe_router_topk * model.expert_ffn + (model.moe_shared_expert_intermediate_size or 0)
    return {"num_experts": 0, "ffn_hidden_size": width, "moe_shared_expert_intermediate_size": None}


def validate_layout(cfg: TrainConfig, tokenizer_dir: Path) -> None:
    """Check the model and parallel layout against the world size before any process starts."""
    from mai_models.lm.train_config import resolve_model_config
    from mai_models.tokenizer.bpe import load_tokenizer

    model = resolve_model_config(cfg, vocab_size=load_tokenizer(tokenizer_dir).get_vocab_size())
    cfg.parallel.megatron().validate(cfg.launch.world_size, model)
    cfg.micro_batches_per_step(cfg.launch.world_size)


def torchrun_prefix(launch: LaunchConfig) -> tuple[str, ...]:
    """``python -m torch.distributed.run`` with this layout's process count and rendezvous."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={launch.nproc_per_node}"]
    if launch.engine == "slurm":
        # The endpoint and id exist only once the job runs: SLURM_RENDEZVOUS exports them as the
        # PET_* variables torchrun reads for any flag left off its command line.
        return (*command, f"--nnodes={launch.nnodes}", "--rdzv_backend=c10d")
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
        if launch.node_rank is not None:
            # c10d ranks the nodes itself (torchrun ignores --node_rank with it); what the node rank
            # settles is who hosts the rendezvous store, instead of a hostname guess that every node
            # on one machine (or behind one address) would win.
            command.append(f"--rdzv_conf=is_host={int(launch.node_rank == 0)}")
    else:
        command += ["--standalone", "--nnodes=1"]
    return tuple(command)


# Run by the batch script on the job's first node before srun: the c10d rendezvous is hosted there,
# on a port free on that node, and every node's torchrun agent reads it from the environment.
SLURM_RENDEZVOUS = (
    'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
    f"rdzv_port=$({shlex.quote(sys.executable)} -c "
    "'import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])')",
    'export PET_RDZV_ENDPOINT="$head_node:$rdzv_port" PET_RDZV_ID="$SLURM_JOB_ID"',
)


def slurm_job(launch: LaunchConfig, name: str, work_dir: Path) -> SlurmJob | None:
    """The Slurm job that runs the torchrun command on each node (None when launched here)."""
    if launch.engine != "slurm":
        return None
    slurm = launch.slurm
    return SlurmJob(
        log_dir=slurm.log_dir or work_dir / "slurm",
        name=f"mai-{name}",
        nodes=launch.nnodes,
        partition=slurm.partition,
        time_limit=slurm.time_limit,
        sbatch_args=slurm.sbatch_args,
        setup=SLURM_RENDEZVOUS,
    )


def launch_env(settings: Settings) -> dict[str, str]:
    env = settings.subprocess_env()
    env.setdefault("PYTHONUNBUFFERED", "1")
    # torchrun defaults every rank to one OpenMP thread; the trainer sets its own thread count.
    env.setdefault("OMP_NUM_THREADS", str(max(1, os.cpu_count() or 1)))
    return env

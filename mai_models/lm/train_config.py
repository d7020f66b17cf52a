"""Typed configuration of one pretraining run (the ``lm`` section of params.yaml)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mai_models.precision import Precision

OptimizerName = Literal["adamw", "muon"]


class ParallelLayout(BaseModel):
    """Requested parallel sizes; data parallelism is whatever the world size leaves over."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tensor: int = Field(1, ge=1)
    pipeline: int = Field(1, ge=1)
    virtual_stages: int = Field(
        1, ge=1, description="model chunks per pipeline rank: > 1 runs the interleaved 1F1B schedule"
    )
    expert: int = Field(1, ge=1)
    expert_tensor: int | None = Field(None, ge=1, description="TP inside each expert; default: tensor")

    def megatron(self) -> Any:
        """The same layout as Megatron's sizes (``ParallelConfig``)."""
        from mai_models.lm.model_config import ParallelConfig

        return ParallelConfig(
            tensor_model_parallel_size=self.tensor,
            pipeline_model_parallel_size=self.pipeline,
            virtual_pipeline_model_parallel_size=self.virtual_stages,
            expert_model_parallel_size=self.expert,
            expert_tensor_parallel_size=self.expert_tensor,
        )


class SlurmConfig(BaseModel):
    """sbatch settings, used when ``lm.launch.engine`` is ``slurm``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    partition: str | None = Field(None, description="default: the cluster's default partition")
    time_limit: str | None = Field(None, description="sbatch --time, e.g. 02:00:00")
    sbatch_args: tuple[str, ...] = Field(
        (), description="more sbatch options, one per entry: --gpus-per-node=8"
    )
    log_dir: Path | None = Field(
        None, description="job script and log; default: the run's work directory. Every node must see it"
    )


class LaunchConfig(BaseModel):
    """How torchrun starts the ranks: here (``engine: local``) or as a Slurm job of ``nnodes`` nodes,
    one torchrun agent each (``engine: slurm``). Multi-node without Slurm: run the same spec on every
    node with nnodes, rdzv_endpoint (host:port of node 0) and that node's node_rank."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    engine: Literal["local", "slurm"] = "local"
    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)
    rdzv_endpoint: str | None = None
    rdzv_id: str = "mai-moe"
    node_rank: int | None = Field(
        None,
        ge=0,
        description="this node's rank (0 hosts the rendezvous); default: torch's guess by hostname",
    )
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    threads_per_rank: int | None = Field(
        None, ge=1, description="torch threads per rank; default cores/ranks"
    )

    @model_validator(mode="after")
    def _layout(self) -> LaunchConfig:
        if self.node_rank is not None and self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is not below nnodes {self.nnodes}")
        if self.engine == "slurm" and (self.rdzv_endpoint or self.node_rank is not None):
            raise ValueError(
                "under Slurm the rendezvous is the job's first node: leave rdzv_endpoint and node_rank unset"
            )
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def rank_threads(self) -> int:
        """torch threads of each rank on this machine."""
        return self.threads_per_rank or max(1, (os.cpu_count() or 1) // self.nproc_per_node)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = "tiny"
    model: dict[str, Any] = Field(default_factory=dict, description="Overrides of the preset's model fields")
    parallel: ParallelLayout = Field(default_factory=ParallelLayout)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    steps: int = Field(20, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    global_batch_size: int = Field(4, ge=1)
    seq_length: int | None = Field(None, ge=8, description="Default: the preset's")
    lr: float = Field(3e-3, gt=0)
    min_lr: float = Field(3e-4, ge=0)
    decoupled_lr: float | None = Field(
        None, gt=0, description="Megatron's --decoupled-lr: the input embedding and output layer's peak LR"
    )
    decoupled_min_lr: float | None = Field(
        None, ge=0, description="Their final LR (None: min_lr scaled by decoupled_lr / lr)"
    )
    warmup_steps: int = Field(2, ge=0)
    lr_decay_style: Literal["cosine", "wsd"] = Field(
        "cosine",
        description="cosine: decay from the end of warmup; wsd (Megatron's WSD): hold the peak, then decay "
        "linearly to min_lr over the last lr_wsd_decay_fraction of the steps",
    )
    lr_wsd_decay_fraction: float = Field(0.5, gt=0, le=1)
    optimizer: OptimizerName = Field(
        "adamw", description="adamw | muon: Muon on the layers' hidden matrices, AdamW on the rest"
    )
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = Field(1.0, gt=0)
    precision: Precision = Field(
        "auto",
        description="fp32 | bf16 (autocast over fp32 weights and optimizer) | auto: bf16 on CUDA and on "
        "CPUs with native bf16 (AVX-512 BF16, AMX), else fp32",
    )
    eval_interval: int = Field(10, ge=1)
    eval_iters: int = Field(2, ge=1)
    checkpoint_interval: int = Field(10, ge=1)
    log_interval: int = Field(1, ge=1)
    seed: int = 1234
    init_from: Literal["scratch", "champion"] = Field(
        "scratch",
        description="champion: start from the mai-moe champion's weights and AdamW state where shapes agree",
    )

    @model_validator(mode="after")
    def _lr_order(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} exceeds lr {self.lr}")
        if self.decoupled_min_lr is not None and self.decoupled_min_lr > (self.decoupled_lr or self.lr):
            raise ValueError(f"decoupled_min_lr {self.decoupled_min_lr} exceeds its peak learning rate")
        if self.optimizer == "muon" and max(self.parallel.tensor, self.parallel.expert_tensor or 1) > 1:
            # Newton-Schulz needs each whole matrix; a tensor-parallel rank holds a slice of it.
            raise ValueError("lm.optimizer muon needs lm.parallel.tensor and expert_tensor 1")
        return self

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // (self.parallel.tensor * self.parallel.pipeline)

    def micro_batches_per_step(self, world_size: int) -> int:
        dp = self.data_parallel_size(world_size)
        per_step = self.micro_batch_size * dp
        if self.global_batch_size % per_step:
            from mai_models.errors import MaiUserError

            raise MaiUserError(
                f"lm.global_batch_size={self.global_batch_size} is not a multiple of "
                f"micro_batch_size x data-parallel size = {self.micro_batch_size} x {dp}"
            )
        micro = self.global_batch_size // per_step
        pp = self.parallel.pipeline
        if self.parallel.virtual_stages > 1 and pp > 1 and micro % pp:
            from mai_models.errors import MaiUserError

            raise MaiUserError(
                f"the interleaved schedule needs micro-batches per step ({micro}) to be a multiple of "
                f"PP={pp}: raise lm.global_batch_size or lower lm.micro_batch_size"
            )
        return micro


def resolve_model_config(cfg: TrainConfig, vocab_size: int) -> Any:
    """The preset's model config with this run's overrides, sequence length and tokenizer vocabulary."""
    from mai_models.errors import MaiUserError, first_validation_error
    from mai_models.lm.presets import PRESETS

    if cfg.preset not in PRESETS:
        raise MaiUserError(f"unknown lm.preset '{cfg.preset}' (available: {', '.join(PRESETS)})")
    base = PRESETS[cfg.preset].model
    update = {**cfg.model, "vocab_size": vocab_size}
    if cfg.seq_length is not None:
        update["seq_length"] = cfg.seq_length
    try:
        return base.model_validate({**base.model_dump(), **update})
    except ValidationError as exc:
        where, reason = first_validation_error(exc)
        raise MaiUserError(f"invalid lm.model override{' ' + where if where else ''}: {reason}") from exc

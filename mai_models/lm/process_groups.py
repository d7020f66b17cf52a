"""Process groups for a run: torch.distributed (gloo on CPU, nccl on GPU), Megatron's parallel groups
and all RNG seeds. Megatron is imported lazily: importing this module is cheap."""

from __future__ import annotations

import os
import random

import torch

from mai_models.lm.model_config import ParallelConfig


def init_parallel(parallel: ParallelConfig, seed: int) -> None:
    """Initialise torch.distributed (if needed), Megatron's parallel groups and all RNGs.

    gloo on CPU, nccl on GPU. Under torchrun the usual environment rendezvous is used; a single process
    without it gets an in-memory store (rank 0 of 1). On a CPU-only torch the CPU patches are applied.
    Seeds ``random``/``numpy``/``torch`` and Megatron's tracker (``model_parallel_cuda_manual_seed``).
    """
    import numpy as np
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    cuda = torch.cuda.is_available()
    if not cuda:
        from mai_models.lm.cpu_compat import apply_cpu_patches

        apply_cpu_patches()
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        if "WORLD_SIZE" in os.environ:  # launched by torchrun (or a scheduler exporting its variables)
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend=backend)
        else:
            # One process needs no rendezvous: an in-memory store avoids probing for a free TCP port,
            # which races with other jobs' ephemeral ports.
            if cuda:
                torch.cuda.set_device(0)
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    parallel.validate_world(dist.get_world_size())
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        expert_model_parallel_size=parallel.ep,
        expert_tensor_parallel_size=parallel.etp,
    )
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def destroy_parallel() -> None:
    """Tear down Megatron's groups and the default process group (tests, re-initialisation)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()

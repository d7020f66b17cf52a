"""Every patch Megatron-Core 0.16.1 needs to train an MoE GPT on a CPU-only torch, in one place.

Megatron-Core assumes a GPU: it calls ``torch.cuda.current_device()``, creates CUDA streams, keeps its
RNG tracker in the CUDA generator and, in 0.16.1, tests a name that only exists when Transformer Engine
imports. On a CPU-only torch each of those raises. Every patch below is a small named function that
replaces exactly one attribute at the place where Megatron looks it up (a module global, a class
attribute), so behaviour on a GPU is untouched: :func:`apply_cpu_patches` does nothing when
``torch.cuda.is_available()``.

``torch.cuda.current_device()`` call sites are patched per module: the module's own ``torch`` global is
replaced by a thin view of ``torch`` that differs in one point only, ``torch.cuda.current_device()``
returns ``"cpu"``. Every other attribute is the real ``torch`` one. On a CPU-only torch that call can
only raise, so the view turns a crash into "allocate on the CPU" and changes nothing else.

Each patch is verified to be needed by ``tests/test_lm_cpu_compat.py`` (without it, a minimal use of
the patched code path fails with the error named in its docstring). Not patched, because not needed
for our use: activation recomputation (``tensor_parallel.checkpoint`` reads the CUDA RNG state),
``track_moe_metrics(force_initialize=True)`` (allocates on ``"cuda"``), DDP ``overlap_grad_reduce``
(CUDA streams), asynchronous ``dist_checkpointing.save(async_sharded_save=True)`` (CUDA tensors in
``async_utils``), Megatron's optimizer, ``moe_grouped_gemm`` and the ``flex``
dispatcher.

Megatron is imported lazily, inside the patch functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch

# (owner, attribute, original value) per applied patch, to undo it (tests) and to keep apply idempotent.
_APPLIED: dict[str, list[tuple[Any, str, Any]]] = {}
_MISSING = object()


def _set(patch: str, owner: Any, name: str, value: Any) -> None:
    _APPLIED.setdefault(patch, []).append((owner, name, owner.__dict__.get(name, _MISSING)))
    setattr(owner, name, value)


class _CudaCpuView:
    """``torch.cuda`` with ``current_device()`` answering ``"cpu"``; everything else delegates."""

    @staticmethod
    def current_device() -> str:
        return "cpu"

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class _TorchCpuView:
    """``torch`` whose ``.cuda`` is :class:`_CudaCpuView`; every other attribute is the real one."""

    cuda = _CudaCpuView()

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def __repr__(self) -> str:
        return "<torch (mai cpu_compat view: torch.cuda.current_device() -> 'cpu')>"


_TORCH_CPU_VIEW = _TorchCpuView()


def _current_device_is_cpu(patch: str, module_name: str) -> None:
    module = importlib.import_module(module_name)
    _set(patch, module, "torch", _TORCH_CPU_VIEW)


# --------------------------------------------------------------------------------------------- patches


def patch_rng_tracker() -> None:
    """RNG tracker on the CPU generator.

    Breaks: ``tensor_parallel.model_parallel_cuda_manual_seed`` -> ``CudaRNGStatesTracker.add`` calls
    ``torch.cuda.get_rng_state()`` ("Torch not compiled with CUDA enabled"), and every attention forward
    enters ``get_cuda_rng_tracker().fork()`` (even with dropout 0), which swaps CUDA generator states.
    Fix: ``initialize_rng_tracker`` instantiates ``CudaRNGStatesTracker`` looked up in
    ``tensor_parallel.random``; point that name at a subclass whose ``add``/``fork`` keep named states of
    the CPU default generator with the same contract (named, seeded states; ``fork`` swaps one in and
    restores the caller's state after). Megatron's own seeding logic (TP/EP seed offsets) is unchanged.
    """
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """``CudaRNGStatesTracker`` contract on the CPU default generator."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"cpu rng state {name} already exists")
            gen = torch.Generator()
            gen.manual_seed(seed)
            self.states_[name] = gen.get_state()

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"cpu rng state {name} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                if self._current_state_name != name:
                    raise Exception(f"current rng state {self._current_state_name} is not {name}")
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    _set("rng_tracker", mrandom, "CudaRNGStatesTracker", CpuRNGStatesTracker)
    # A tracker created before the patch (e.g. by get_cuda_rng_tracker()) is a CUDA one: drop it.
    if mrandom._CUDA_RNG_STATE_TRACKER is not None and not isinstance(
        mrandom._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker
    ):
        mrandom._CUDA_RNG_STATE_TRACKER = None
        mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = False


def patch_global_memory_buffer() -> None:
    """``GlobalMemoryBuffer.get_tensor`` allocates on ``torch.cuda.current_device()``.

    Breaks with expert parallelism > 1 and the ``allgather`` dispatcher: ``gather_from_sequence_
    parallel_region`` (tensor_parallel/mappings.py) takes its output from ``parallel_state.
    get_global_memory_buffer()`` -> AssertionError "Torch not compiled with CUDA enabled".
    Fix: ``megatron.core.utils`` sees ``torch.cuda.current_device() == "cpu"``.
    """
    _current_device_is_cpu("global_memory_buffer", "megatron.core.utils")


def patch_moe_router_device() -> None:
    """``moe/router.py`` moves the gating weight to ``torch.cuda.current_device()``.

    Breaks: ``Router.gating`` (every MoE forward) moves a CPU weight "to the GPU", and ``TopKRouter``
    allocates ``expert_bias``/``local_tokens_per_expert`` (aux-loss-free balancing) and the global
    aux-loss buffers there -> AssertionError "Torch not compiled with CUDA enabled".
    Fix: ``megatron.core.transformer.moe.router`` sees ``current_device() == "cpu"``.
    """
    _current_device_is_cpu("moe_router_device", "megatron.core.transformer.moe.router")


def patch_rotary_device() -> None:
    """RoPE moves ``inv_freq`` to ``torch.cuda.current_device()`` on the first forward.

    Breaks: ``RotaryEmbedding.get_emb`` ("move inv_freq to GPU once") even with
    ``use_cpu_initialization=True`` -> AssertionError "Torch not compiled with CUDA enabled".
    Fix: ``models.common.embeddings.rotary_pos_embedding`` sees ``current_device() == "cpu"``.
    """
    _current_device_is_cpu("rotary_device", "megatron.core.models.common.embeddings.rotary_pos_embedding")


def patch_ddp_buffer_device() -> None:
    """Megatron DDP allocates its contiguous grad buffer on ``torch.cuda.current_device()``.

    Breaks: ``DistributedDataParallel(...)`` -> ``_ParamAndGradBuffer.__init__`` ->
    AssertionError "Torch not compiled with CUDA enabled". Fix:
    ``megatron.core.distributed.param_and_grad_buffer`` sees ``current_device() == "cpu"``.
    """
    _current_device_is_cpu("ddp_buffer_device", "megatron.core.distributed.param_and_grad_buffer")


def patch_tp_mappings_device() -> None:
    """Tensor/expert-parallel collectives allocate outputs on ``torch.cuda.current_device()``.

    Breaks only with a communication group of more than one rank (e.g. expert parallel 2): the
    ``alltoall`` dispatcher's ``all_to_all`` with split sizes, and the ``allgather`` dispatcher's
    ``gather_from_sequence_parallel_region`` -> AssertionError "Torch not compiled with CUDA enabled".
    Fix: ``megatron.core.tensor_parallel.mappings`` sees ``current_device() == "cpu"``.
    """
    _current_device_is_cpu("tp_mappings_device", "megatron.core.tensor_parallel.mappings")


def patch_te_general_gemm() -> None:
    """Megatron-Core 0.16.1 bug: ``moe_utils.te_general_gemm`` is undefined without Transformer Engine.

    ``moe_utils`` imports ``te_general_gemm`` only inside ``try: import transformer_engine`` but
    ``RouterGatingLinearFunction`` tests ``te_general_gemm is not None`` unconditionally ->
    ``NameError: name 'te_general_gemm' is not defined`` on every MoE router forward.
    Fix: define it as ``None`` in ``moe_utils`` (the torch ``mm`` fallback then runs). Only applied
    when the name is absent (a working TE import defines it).
    """
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        _set("te_general_gemm", moe_utils, "te_general_gemm", None)


def patch_alltoall_dispatcher_stream() -> None:
    """``MoEAlltoAllTokenDispatcher`` uses a CUDA side stream for device-to-host split-size copies.

    Breaks: ``__init__`` creates ``torch.cuda.Stream()`` (RuntimeError "torch.cuda.Stream requires CUDA
    support") and ``_maybe_dtoh_and_synchronize`` calls ``torch.cuda.current_stream()``.
    Fix: a non-None placeholder class attribute ``cuda_dtoh_stream`` (so no stream is created) and a
    CPU ``_maybe_dtoh_and_synchronize``: tensors are already in host memory, so there is nothing to copy
    or wait for; like the GPU path, the all-to-all split sizes become numpy arrays at the copy point
    (the original only converts CUDA tensors, and ``all_to_all_single`` rejects tensor split sizes, so
    expert parallel > 1 would fail).
    """
    from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher

    def _maybe_dtoh_and_synchronize(self, point, tokens_per_expert=None):
        if not self.drop_and_pad and point == self.cuda_dtoh_point:
            for name in ("input_splits", "output_splits", "output_splits_tp"):
                value = getattr(self, name, None)
                if torch.is_tensor(value):
                    setattr(self, name, value.numpy())
        return tokens_per_expert

    _set("alltoall_dispatcher_stream", MoEAlltoAllTokenDispatcher, "cuda_dtoh_stream", "cpu-no-stream")
    _set(
        "alltoall_dispatcher_stream",
        MoEAlltoAllTokenDispatcher,
        "_maybe_dtoh_and_synchronize",
        _maybe_dtoh_and_synchronize,
    )


def patch_dist_ckpt_sync() -> None:
    """``dist_checkpointing``'s filesystem writer calls ``torch.cuda.synchronize()``.

    Breaks: every ``dist_checkpointing.save(...)`` (torch_dist format; a synchronous save also runs the
    async request's ``preload_fn``) -> ``FileSystemWriterAsync.preload_tensors(..., non_blocking=True)``
    -> ``torch.cuda.synchronize()`` -> AssertionError "Torch not compiled with CUDA enabled".
    Fix: the same staticmethod with ``non_blocking=False`` (host tensors need no device sync).
    """
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    original = FileSystemWriterAsync.preload_tensors

    def preload_tensors(write_buckets, non_blocking=True):
        return original(write_buckets, non_blocking=False)

    _set("dist_ckpt_sync", FileSystemWriterAsync, "preload_tensors", staticmethod(preload_tensors))


def patch_dist_ckpt_finalize_device() -> None:
    """``dist_checkpointing`` save finalisation allocates its failure flag on ``current_device()``.

    Breaks: every ``dist_checkpointing.save(...)`` (torch_dist format) ends in
    ``state_dict_saver.save_state_dict_async_finalize``, which broadcasts
    ``torch.tensor([...], device=torch.cuda.current_device())`` -> AssertionError "Torch not compiled
    with CUDA enabled". Fix: ``dist_checkpointing.strategies.state_dict_saver`` sees
    ``current_device() == "cpu"``.
    """
    _current_device_is_cpu(
        "dist_ckpt_finalize_device", "megatron.core.dist_checkpointing.strategies.state_dict_saver"
    )


class _TorchCpuZerosView(_TorchCpuView):
    """:class:`_TorchCpuView` whose ``zeros(..., device="cuda")`` allocates on the CPU instead."""

    @staticmethod
    def zeros(*args: Any, **kwargs: Any) -> torch.Tensor:
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return torch.zeros(*args, **kwargs)


def patch_schedule_token_counter() -> None:
    """Every pipeline schedule counts the step's tokens in ``torch.zeros([], device="cuda")``.

    Breaks: ``forward_backward_no_pipelining`` and both 1F1B schedules (``schedules.py``) on their first
    line of work -> RuntimeError/AssertionError "Torch not compiled with CUDA enabled".
    Fix: ``megatron.core.pipeline_parallel.schedules`` sees a ``torch`` whose ``zeros`` maps a
    ``"cuda"`` device to the CPU (and ``current_device() == "cpu"``); nothing else differs.
    """
    module = importlib.import_module("megatron.core.pipeline_parallel.schedules")
    _set("schedule_token_counter", module, "torch", _TorchCpuZerosView())


def patch_p2p_device() -> None:
    """Pipeline send/receive buffers are allocated on ``torch.cuda.current_device()``.

    Breaks: with PP > 1 every ``recv_forward``/``recv_backward`` in ``P2PCommunicator._communicate``
    -> AssertionError "Torch not compiled with CUDA enabled".
    Fix: ``megatron.core.pipeline_parallel.p2p_communication`` sees ``current_device() == "cpu"``.
    """
    _current_device_is_cpu("p2p_device", "megatron.core.pipeline_parallel.p2p_communication")


def patch_tp_layers_device() -> None:
    """Tensor-parallel linear layers allocate sequence-parallel gather buffers on ``current_device()``.

    Breaks with TP > 1 (sequence parallel): the backward pass of
    ``LinearWithGradAccumulationAndAsyncCommunication`` re-gathers its input into
    ``torch.empty(..., device=torch.cuda.current_device())`` -> AssertionError "Torch not compiled
    with CUDA enabled". Fix: ``megatron.core.tensor_parallel.layers`` sees ``current_device() == "cpu"``.
    """
    _current_device_is_cpu("tp_layers_device", "megatron.core.tensor_parallel.layers")


def patch_tied_embedding_sync() -> None:
    """Tied embeddings with PP > 1: the last stage's copy of the embedding is synchronised with the
    first stage's by ``weight.data = weight.data.cuda()`` and an all-reduce over the embedding group.

    Breaks: ``LanguageModule.setup_embeddings_and_output_layer`` (GPTModel's constructor) on the first
    and last stage -> AssertionError "Torch not compiled with CUDA enabled". Fix: the group test that
    guards that block does the same all-reduce on the CPU tensor and answers False, so the ``.cuda()``
    copy never runs; nothing else asks it.
    """
    from megatron.core.models.common.language_module.language_module import LanguageModule

    in_group = LanguageModule._is_in_embd_group

    def _is_in_embd_group(self: Any) -> bool:
        if in_group(self):
            torch.distributed.all_reduce(self.shared_embedding_or_output_weight().data, group=self.embd_group)
        return False

    _set("tied_embedding_sync", LanguageModule, "_is_in_embd_group", _is_in_embd_group)


# Order matters only for readability; each patch is independent of the others.
PATCHES: list[tuple[str, Callable[[], None]]] = [
    ("rng_tracker", patch_rng_tracker),
    ("global_memory_buffer", patch_global_memory_buffer),
    ("moe_router_device", patch_moe_router_device),
    ("rotary_device", patch_rotary_device),
    ("ddp_buffer_device", patch_ddp_buffer_device),
    ("tp_mappings_device", patch_tp_mappings_device),
    ("te_general_gemm", patch_te_general_gemm),
    ("alltoall_dispatcher_stream", patch_alltoall_dispatcher_stream),
    ("dist_ckpt_sync", patch_dist_ckpt_sync),
    ("dist_ckpt_finalize_device", patch_dist_ckpt_finalize_device),
    ("schedule_token_counter", patch_schedule_token_counter),
    ("p2p_device", patch_p2p_device),
    ("tp_layers_device", patch_tp_layers_device),
    ("tied_embedding_sync", patch_tied_embedding_sync),
]


def apply_cpu_patches(skip: Iterable[str] = ()) -> list[str]:
    """Apply every CPU patch not applied yet (minus ``skip``); return the names applied by this call.

    Idempotent. Does nothing (returns ``[]``) when CUDA is available.
    """
    if torch.cuda.is_available():
        return []
    skip = set(skip)
    unknown = skip - {name for name, _ in PATCHES}
    if unknown:
        raise ValueError(f"unknown CPU patch(es): {sorted(unknown)}")
    done = []
    for name, fn in PATCHES:
        if name in skip or name in _APPLIED:
            continue
        fn()
        _APPLIED.setdefault(name, [])
        done.append(name)
    return done


def applied_patches() -> list[str]:
    """Names of the patches currently applied."""
    return [name for name, _ in PATCHES if name in _APPLIED]


def revert_cpu_patches(names: Iterable[str] | None = None) -> None:
    """Undo patches (all by default), restoring the original attributes. For tests."""
    for name in list(names) if names is not None else list(_APPLIED):
        for owner, attr, original in reversed(_APPLIED.pop(name, [])):
            if original is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)

"""Each CPU patch in ``mai_models.lm.cpu_compat`` is still needed, and all of them together work.

The probes run in fresh subprocesses (this file run as a script) so Megatron's global state never leaks
into the pytest process: for every patch X, with all other patches applied and X reverted, the minimal
use of X's code path must fail with the expected error; with X re-applied it must succeed. One process
checks the single-rank patches, a 2-rank gloo job (expert parallel 2, then pipeline parallel 2, then
tensor parallel 2) checks the collective mappings, the pipeline's send/receive buffers and the
sequence-parallel linear layers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CUDA_ERROR = "Torch not compiled with CUDA enabled"

# patch name -> substring of the error without it
EXPECTED_SINGLE = {
    "rng_tracker": CUDA_ERROR,
    "moe_router_device": CUDA_ERROR,
    "rotary_device": CUDA_ERROR,
    "te_general_gemm": "name 'te_general_gemm' is not defined",
    "alltoall_dispatcher_stream": "torch.cuda.Stream requires CUDA support",
    "ddp_buffer_device": CUDA_ERROR,
    "dist_ckpt_sync": CUDA_ERROR,
    "dist_ckpt_finalize_device": CUDA_ERROR,
    "schedule_token_counter": CUDA_ERROR,
}
EXPECTED_EP2 = {"tp_mappings_device": CUDA_ERROR, "global_memory_buffer": CUDA_ERROR}
EXPECTED_PP2 = {"p2p_device": CUDA_ERROR, "tied_embedding_sync": CUDA_ERROR}
EXPECTED_TP2 = {"tp_layers_device": CUDA_ERROR}
# patch name -> the Megatron file the failure must come from
SITE = {
    "rng_tracker": "tensor_parallel/random.py",
    "moe_router_device": "moe/router.py",
    "rotary_device": "rotary_pos_embedding.py",
    "te_general_gemm": "moe/moe_utils.py",
    "alltoall_dispatcher_stream": "moe/token_dispatcher.py",
    "ddp_buffer_device": "distributed/param_and_grad_buffer.py",
    "dist_ckpt_sync": "strategies/filesystem_async.py",
    "dist_ckpt_finalize_device": "strategies/state_dict_saver.py",
    "tp_mappings_device": "tensor_parallel/mappings.py",
    "global_memory_buffer": "megatron/core/utils.py",
    "schedule_token_counter": "pipeline_parallel/schedules.py",
    "p2p_device": "pipeline_parallel/p2p_communication.py",
    "tp_layers_device": "tensor_parallel/layers.py",
    "tied_embedding_sync": "language_module/language_module.py",
}

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU patches are a no-op with CUDA")


# ------------------------------------------------------------------------------------------ probes
def _tiny(**overrides):
    from mai_models.lm.presets import PRESETS

    return PRESETS["tiny"].model.model_copy(update=overrides)


def _fwd_bwd(model_cfg, parallel) -> float:
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.utils import GlobalMemoryBuffer

    from mai_models.lm.model import build_model

    parallel_state._GLOBAL_MEMORY_BUFFER = GlobalMemoryBuffer()  # no cached buffer from an earlier run
    tensor_parallel.model_parallel_cuda_manual_seed(1, force_reset_rng=True)
    model = build_model(model_cfg, parallel)
    ids = torch.randint(0, model_cfg.vocab_size, (2, 16))
    pos = torch.arange(16).expand(2, 16)
    loss = model(ids, pos, None, labels=ids).mean()
    loss.backward()
    return float(loss)


def _probe_model(parallel):
    return _fwd_bwd(_tiny(), parallel)


def _probe_ddp(parallel):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from mai_models.lm.model import build_model

    model = build_model(_tiny(), parallel)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
    return int(ddp.buffers[0].grad_data.numel())


def _probe_ckpt(parallel):
    from megatron.core import dist_checkpointing

    from mai_models.lm.model import build_model

    model = build_model(_tiny(), parallel)
    with tempfile.TemporaryDirectory() as d:
        dist_checkpointing.save(model.sharded_state_dict(), d)
        return sorted(os.listdir(d))[:1]


def _probe_schedule(parallel):
    """One step of two micro-batches through Megatron's schedule (1F1B when PP > 1), as the trainer
    runs it; the last stage returns the summed loss, the others 0."""
    import numpy as np

    from mai_models.lm import schedule
    from mai_models.lm.model import build_model

    torch.manual_seed(0)
    cfg = _tiny()
    ids = torch.randint(0, cfg.vocab_size, (4, 16)).numpy()
    rows = [
        {"tokens": t, "labels": t, "loss_mask": np.ones(16, np.float32), "position_ids": np.arange(16)}
        for t in ids
    ]
    model = build_model(cfg, parallel)
    records = schedule.run([model], rows, [0, 2], 2, 16, torch.device("cpu"))
    return sum(float(r["sum"]) for r in records)


def _probe_receive_buffer(parallel):
    """The first receive of each stage (the last stage's forward input, the first stage's output
    gradient); without the patch both fail on allocation, before any message is exchanged."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator

    from mai_models.lm.model import build_model

    config = build_model(_tiny(), parallel).config
    comm = P2PCommunicator(pp_group=parallel_state.get_pipeline_model_parallel_group(), config=config)
    shape = (16, 2, config.hidden_size)
    if parallel_state.is_pipeline_first_stage():
        return comm.recv_backward(shape, is_last_stage=False).shape
    return comm.recv_forward(shape, is_first_stage=False).shape


def _probe_tied_stages(parallel):
    """A tied model on two stages: the last stage's copy of the table starts as the first's."""
    from mai_models.lm.model import build_model

    model = build_model(_tiny(tie_embeddings=True), parallel)
    weight = model.shared_embedding_or_output_weight()
    copies = [torch.empty_like(weight) for _ in range(2)]
    torch.distributed.all_gather(copies, weight.data)
    assert torch.equal(copies[0], copies[1]) and copies[0].abs().sum() > 0
    return tuple(weight.shape)


PROBES = {
    "rng_tracker": _probe_model,
    "moe_router_device": _probe_model,
    "rotary_device": _probe_model,
    "te_general_gemm": _probe_model,
    "alltoall_dispatcher_stream": _probe_model,
    "ddp_buffer_device": _probe_ddp,
    "dist_ckpt_sync": _probe_ckpt,
    "dist_ckpt_finalize_device": _probe_ckpt,
    "schedule_token_counter": _probe_schedule,
}


def _outcome(fn, *args) -> dict:
    try:
        return {"ok": True, "value": repr(fn(*args))}
    except Exception as e:  # noqa: BLE001 - we report whatever Megatron raises
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "where": traceback.format_exc()[-1500:]}


def run_single() -> dict:
    from mai_models.lm import cpu_compat
    from mai_models.lm.model_config import ParallelConfig
    from mai_models.lm.process_groups import init_parallel

    parallel = ParallelConfig()
    init_parallel(parallel, seed=1)  # applies every patch
    results = {"all": _outcome(_probe_model, parallel), "ckpt": _outcome(_probe_ckpt, parallel)}
    for name in EXPECTED_SINGLE:
        cpu_compat.revert_cpu_patches([name])
        without = _outcome(PROBES[name], parallel)
        cpu_compat.apply_cpu_patches()
        results[name] = {"without": without, "with": _outcome(PROBES[name], parallel)}
    return results


def run_ep2() -> dict:
    """Rank body of the 2-process expert-parallel probe (torch.distributed env set by the parent)."""
    from mai_models.lm import cpu_compat
    from mai_models.lm.model_config import ParallelConfig
    from mai_models.lm.process_groups import init_parallel

    parallel = ParallelConfig(expert_model_parallel_size=2)
    init_parallel(parallel, seed=1)
    results = {}
    allgather = _tiny(moe_token_dispatcher_type="allgather")
    # The global memory buffer is reached only through the allgather dispatcher's gather.
    probes = {
        "tp_mappings_device": (_probe_model, parallel),
        "global_memory_buffer": (_fwd_bwd, allgather, parallel),
    }
    for name in EXPECTED_EP2:
        cpu_compat.revert_cpu_patches([name])
        without = _outcome(*probes[name])
        cpu_compat.apply_cpu_patches()
        results[name] = {
            "without": without,
            "with": _outcome(_probe_model, parallel),
            "with_allgather": _outcome(_fwd_bwd, allgather, parallel),
        }
    pipeline = ParallelConfig(pipeline_model_parallel_size=2)
    init_parallel(pipeline, seed=1)
    pp_probes = {"p2p_device": _probe_receive_buffer, "tied_embedding_sync": _probe_tied_stages}
    for name in EXPECTED_PP2:
        cpu_compat.revert_cpu_patches([name])
        without = _outcome(pp_probes[name], pipeline)
        cpu_compat.apply_cpu_patches()
        torch.distributed.barrier()
        with_patch = _probe_schedule if name == "p2p_device" else _probe_tied_stages
        results[name] = {"without": without, "with": _outcome(with_patch, pipeline)}
    tensor = ParallelConfig(tensor_model_parallel_size=2)
    init_parallel(tensor, seed=1)
    for name in EXPECTED_TP2:
        cpu_compat.revert_cpu_patches([name])
        without = _outcome(_probe_model, tensor)  # both ranks fail at the same backward allocation
        cpu_compat.apply_cpu_patches()
        torch.distributed.barrier()
        results[name] = {"without": without, "with": _outcome(_probe_model, tensor)}
    return results


# ------------------------------------------------------------------------------------------ tests
def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    return env


def _run(mode: str, env: dict, timeout: int = 240) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, mode],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _json_result(proc: subprocess.Popen, timeout: int = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single_results() -> dict:
    return _json_result(_run("single", _env()))


@pytest.fixture(scope="module")
def ep2_results() -> dict:
    port = str(_port())
    procs = [
        _run(
            "ep2",
            _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r)),
        )
        for r in range(2)
    ]
    return [_json_result(p) for p in procs][0]


def test_all_patches_make_a_tiny_moe_step_and_checkpoint_work(single_results):
    assert single_results["all"]["ok"], single_results["all"]
    assert single_results["ckpt"]["ok"], single_results["ckpt"]


@pytest.mark.parametrize("name", list(EXPECTED_SINGLE))
def test_patch_is_needed(single_results, name):
    res = single_results[name]
    assert not res["without"]["ok"], f"{name} no longer needed? {res['without']}"
    assert EXPECTED_SINGLE[name] in res["without"]["error"], res["without"]
    assert SITE[name] in res["without"]["where"], res["without"]["where"]
    assert res["with"]["ok"], res["with"]


@pytest.mark.parametrize("name", sorted(EXPECTED_EP2))
def test_patch_is_needed_for_expert_parallel(ep2_results, name):
    res = ep2_results[name]
    assert not res["without"]["ok"]
    assert EXPECTED_EP2[name] in res["without"]["error"], res["without"]
    assert SITE[name] in res["without"]["where"], res["without"]["where"]
    assert res["with"]["ok"], res["with"]
    assert res["with_allgather"]["ok"], res["with_allgather"]


@pytest.mark.parametrize("name", sorted({**EXPECTED_PP2, **EXPECTED_TP2}))
def test_patch_is_needed_for_pipeline_and_tensor_parallel(ep2_results, name):
    res = ep2_results[name]
    assert not res["without"]["ok"]
    assert {**EXPECTED_PP2, **EXPECTED_TP2}[name] in res["without"]["error"], res["without"]
    assert SITE[name] in res["without"]["where"], res["without"]["where"]
    assert res["with"]["ok"], res["with"]


def test_every_registered_patch_is_probed():
    from mai_models.lm.cpu_compat import PATCHES

    probed = set(EXPECTED_SINGLE) | set(EXPECTED_EP2) | set(EXPECTED_PP2) | set(EXPECTED_TP2)
    assert {n for n, _ in PATCHES} == probed == set(SITE)


def test_apply_is_idempotent_in_a_fresh_process():
    code = (
        "from mai_models.lm.cpu_compat import apply_cpu_patches, PATCHES;"
        "a = apply_cpu_patches(); b = apply_cpu_patches();"
        "assert a == [n for n, _ in PATCHES], a; assert b == [], b; print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


if __name__ == "__main__":
    import faulthandler

    faulthandler.dump_traceback_later(200, exit=True)
    torch.set_num_threads(1)
    mode = sys.argv[1]
    result = run_single() if mode == "single" else run_ep2()
    print("RESULT " + json.dumps(result), flush=True)

"""Pretraining through torchrun on CPU: exact resume after a kill (AdamW and Muon), a 2-process
EP=2/DP=2 run whose checkpoint reloads with EP=1 and continues the uninterrupted EP=2 curve,
checkpoints that hold no pickled object, and faults (NaN loss, corrupt checkpoint, bad shards) with
clear outcomes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mai_models.config import load_params
from mai_models.errors import MaiUserError
from mai_models.graph import project
from mai_models.lm.pretrain import prepare_run
from mai_models.settings import load_settings

pytestmark = pytest.mark.slow

TINY = [
    "lm.preset=tiny",
    "lm.micro_batch_size=2",
    "lm.global_batch_size=4",
    "lm.eval_interval=4",
    "lm.eval_iters=1",
    "lm.checkpoint_interval=4",
    "lm.warmup_steps=2",
    "lm.launch.threads_per_rank=1",
    # Curves are compared across layouts and world sizes up to float32 summation order.
    "lm.precision=fp32",
]


def _context(root: Path, overrides: list[str], **faults: int):
    settings = load_settings(root=root)
    graph = project(settings, load_params(settings.params_file, TINY + overrides), options=faults)
    return graph.context("moe_pretrain"), graph.params.lm


def _train(root: Path, overrides: list[str], **faults: int):
    """torchrun of the moe_pretrain step's program, its output captured (the step would stream it)."""
    ctx, cfg = _context(root, overrides, **faults)
    program = prepare_run(ctx, cfg)
    done = subprocess.run(
        program.command(), cwd=root, env=program.env, capture_output=True, text=True, timeout=900
    )
    return done, ctx


def _curve(work_dir: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"], r["train/grad_norm"]) for r in rows if "train/loss" in r]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"event"')]


def _assert_tensors_and_plain_types_only(checkpoint: Path) -> None:
    """Resuming unpickles nothing: the sharded part holds tensors only (no pickled ShardedObject
    bytes) and the common part loads with ``weights_only`` without Megatron's extra safe globals."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    entries = FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    assert entries and all(isinstance(m, TensorStorageMetadata) for m in entries.values()), [
        k for k, m in entries.items() if not isinstance(m, TensorStorageMetadata)
    ]
    assert any(k.startswith("rng_state/") for k in entries)
    # A fresh process: importing megatron widens torch's weights_only allowlist (numpy, BytesIO).
    load = "import json, sys, torch; print(json.dumps(torch.load(sys.argv[1], weights_only=True)))"
    command = [sys.executable, "-c", load, str(checkpoint / "common.pt")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["train_state"]["step"] == int(checkpoint.name.removeprefix("iter_"))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_kill_and_resume_reproduces_the_loss_curve(
    lm_workspace: Path, tmp_path: Path, optimizer: str
) -> None:
    reference_root = tmp_path / "reference"
    shutil.copytree(lm_workspace, reference_root, symlinks=True)
    overrides = ["lm.steps=10", f"lm.optimizer={optimizer}"]
    reference, reference_run = _train(reference_root, overrides)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed, run = _train(lm_workspace, overrides, fault_kill_after_step=6)
    assert killed.returncode != 0, killed.stdout[-2000:] + str(run.work_dir)
    checkpoints = sorted(p.name for p in (run.work_dir / "checkpoints").iterdir())
    assert checkpoints == ["iter_0000004"], "the kill landed after step 6, between checkpoints"

    resumed, _ = _train(lm_workspace, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _events(resumed.stdout)[0]["resumed_from"] == 4
    assert _curve(run.work_dir) == _curve(reference_run.work_dir)  # bit-exact on CPU
    assert len(_curve(run.work_dir)) == 10
    _assert_tensors_and_plain_types_only(run.work_dir / "checkpoints" / "iter_0000004")


def test_two_processes_expert_and_data_parallel_then_reshard_to_one(
    lm_workspace: Path, tmp_path: Path
) -> None:
    two = ["lm.steps=6", "lm.launch.nproc_per_node=2", "lm.parallel.expert=2"]
    reference_root = tmp_path / "reference"
    shutil.copytree(lm_workspace, reference_root, symlinks=True)
    reference, reference_run = _train(reference_root, two)  # EP=2 DP=2 for 6 steps, never killed
    assert reference.returncode == 0, reference.stderr[-3000:]

    done, run = _train(lm_workspace, two, fault_kill_after_step=4)
    assert done.returncode != 0  # killed after its step-4 checkpoint
    assert _events(done.stdout)[0]["world"] == 2
    assert _curve(run.work_dir) == _curve(reference_run.work_dir)[:4]  # same layout: bit-exact
    _assert_tensors_and_plain_types_only(run.work_dir / "checkpoints" / "iter_0000004")

    # The same run (process count and layout are not part of its version) continues on one process
    # with EP=1: the EP=2 sharded checkpoint is resharded on load.
    more, resumed = _train(lm_workspace, ["lm.steps=6"])
    assert more.returncode == 0, more.stderr[-3000:]
    assert resumed.work_dir == run.work_dir
    assert _events(more.stdout)[0]["resumed_from"] == 4 and _events(more.stdout)[0]["world"] == 1
    assert (run.work_dir / "plots" / "expert_load_heatmap.png").exists()

    # After the resume each step sees the samples the EP=2 run saw (DP ranks split a global batch the
    # way one process splits it into micro-batches) from the same weights and AdamW moments, so the
    # curves agree up to float32 summation order: one process accumulates micro-batch gradients where
    # two all-reduce them, and experts get their tokens in another order without the all-to-all.
    # Measured on CPU over six steps after such a resume: losses bit-equal, gradient norms within
    # 6e-8 relative. rel=1e-5 (about 100 float32 ulps) leaves that margin yet catches a real
    # divergence: experts initialised differently already move the first loss by 1e-3 relative.
    curve, want = _curve(run.work_dir), _curve(reference_run.work_dir)
    assert [step for step, _, _ in curve] == [step for step, _, _ in want] == [1, 2, 3, 4, 5, 6]
    for (step, loss, norm), (_, want_loss, want_norm) in zip(curve[4:], want[4:], strict=True):
        assert loss == pytest.approx(want_loss, rel=1e-5), step
        assert norm == pytest.approx(want_norm, rel=1e-5), step


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(lm_workspace: Path) -> None:
    done, run = _train(lm_workspace, ["lm.steps=8"], fault_nan_at_step=5)
    assert done.returncode != 0
    assert "error: loss became nan at step 6; last good checkpoint kept: iter_0000004" in done.stderr
    assert (run.work_dir / "checkpoints" / "iter_0000004").is_dir()


def test_corrupt_checkpoint_falls_back_then_fails_clearly(lm_workspace: Path) -> None:
    first, run = _train(lm_workspace, ["lm.steps=8"])
    assert first.returncode == 0, first.stderr[-3000:]
    newest = run.work_dir / "checkpoints" / "iter_0000008"
    for file in newest.rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    (run.work_dir / "summary.json").unlink()
    again, _ = _train(lm_workspace, ["lm.steps=8"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert _events(again.stdout)[0]["resumed_from"] == 4  # skipped the corrupt iter_0000008
    for file in (run.work_dir / "checkpoints").rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    broken, _ = _train(lm_workspace, ["lm.steps=8"])
    assert broken.returncode != 0
    assert "error: no loadable checkpoint" in broken.stderr and "corrupt" in broken.stderr


def test_missing_empty_and_mismatched_shards_are_clear_errors(lm_workspace: Path, tmp_path: Path) -> None:
    from mai_models.config import TokenizerConfig
    from mai_models.lm.data import inspect_shards
    from mai_models.tokenizer.bpe import train_tokenizer

    data = lm_workspace / "data"
    info = inspect_shards(data / "token_shards", data / "bpe_tokenizer")
    assert info.vocab_size == 1000 and info.tokens["train"] > 0 and info.bytes_per_token("train") > 1

    with pytest.raises(MaiUserError, match="no token shards"):
        inspect_shards(tmp_path / "nowhere", data / "bpe_tokenizer")

    other = tmp_path / "other_tokenizer"
    other.mkdir()
    train_tokenizer(TokenizerConfig(vocab_size=600), data / "clean_documents", other)
    with pytest.raises(MaiUserError, match="tokenizer/shard mismatch"):
        inspect_shards(data / "token_shards", other)

    empty = tmp_path / "empty_shards"
    shutil.copytree(data / "token_shards", empty)
    manifest = json.loads((empty / "_manifest.json").read_text())
    manifest["stats"]["splits"]["train"]["docs"] = 0
    (empty / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MaiUserError, match="no training documents"):
        inspect_shards(empty, data / "bpe_tokenizer")

    (data / "token_shards" / "train_text_document.bin").unlink()
    with pytest.raises(MaiUserError, match="train_text_document.bin/.idx is missing"):
        inspect_shards(data / "token_shards", data / "bpe_tokenizer")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lm.parallel.expert=3"], "not divisible by expert TP x EP x PP"),
        (
            ["lm.launch.nproc_per_node=2", "lm.parallel.expert=2", "lm.model={num_experts: 3}"],
            "not divisible by expert parallel size",
        ),
        (["lm.launch.nproc_per_node=3"], "not a multiple of micro_batch_size x data-parallel size"),
        (["lm.preset=huge"], "unknown lm.preset 'huge'"),
        (["lm.launch.nproc_per_node=2", "lm.parallel.pipeline=4"], "not divisible by TP x PP"),
        (
            ["lm.launch.nproc_per_node=2", "lm.parallel.pipeline=2", "lm.parallel.virtual_stages=2"],
            "not divisible by PP x virtual stages",
        ),
    ],
)
def test_invalid_layouts_stop_before_anything_launches(
    lm_workspace: Path, overrides: list[str], message: str
) -> None:
    with pytest.raises(MaiUserError, match=message):
        prepare_run(*_context(lm_workspace, overrides))
    assert not (lm_workspace / ".mai" / "work").exists()


def test_plan_for_the_many_node_layout() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mai_models.cli", "lm", "plan", "--preset", "mai-1-like"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "TP=8 PP=8 EP=8" in done.stdout and "memory per GPU" in done.stdout

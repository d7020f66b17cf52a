"""MFU never above 1: GPU peaks from a table of device models, CPU peaks timed only on idle cores and
then stored per host and thread count, every MFU clamped to 1 with one warning, and the dense twin's
MFU at most 1 while busy-loop processes load every core."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from mai_models.lm.cpu_peak import PeakStore, cpu_peak, measure_gemm_flops, usable_cores
from mai_models.lm.gpu_peaks import gpu_peak
from mai_models.lm.telemetry import MfuMeter, Peak


@pytest.mark.parametrize(
    ("device_name", "model", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5),
        ("NVIDIA H200", "H200 SXM", 989.4),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5),
        ("NVIDIA GH200 480GB", "GH200", 989.4),
        ("NVIDIA A100-SXM4-80GB", "A100", 312),
        ("NVIDIA A100-PCIE-40GB", "A100", 312),
        ("NVIDIA A100 80GB PCIe", "A100", 312),
        ("NVIDIA B200", "B200", 2250),
        ("NVIDIA GB200", "GB200", 2500),
        ("NVIDIA L40S", "L40S", 362),
        ("NVIDIA L40", "L40", 181),
        ("NVIDIA L4", "L4", 121),
        ("NVIDIA A10G", "A10G", 125),
        ("NVIDIA A10", "A10", 125),
        ("AMD Instinct MI300X", "MI300X", 1307.4),
    ],
)
def test_gpu_peak_table_matches_device_names(device_name: str, model: str, tflops: float) -> None:
    peak = gpu_peak(device_name)
    assert peak is not None and peak.model == model
    assert peak.flops == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("device_name", ["Tesla T4", "NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-16GB", ""])
def test_gpu_not_in_the_table_has_no_peak(device_name: str) -> None:
    assert gpu_peak(device_name) is None


def test_mfu_above_one_is_clamped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    # 1e6 FLOPs per token on one device of 1e9 FLOP/s: 500 tokens/s is MFU 0.5, 2000 would be 2.0.
    meter = MfuMeter(Peak(1e9, "a stated peak", "cpu"), flops_per_token=1e6, devices=1)
    with caplog.at_level(logging.WARNING, logger="mai_models.lm.telemetry"):
        assert meter.observe(1, 500.0) == {"perf/mfu": pytest.approx(0.5)}
        assert meter.observe(2, 2000.0) == {"perf/mfu": 1.0}
        assert meter.observe(3, 3000.0) == {"perf/mfu": 1.0}
    warnings = [r for r in caplog.records if "clamped to 1" in r.getMessage()]
    assert len(warnings) == 1 and "MFU 2.000" in warnings[0].getMessage()
    # Two devices double the denominator.
    assert MfuMeter(Peak(1e9, "a stated peak", "cpu"), 1e6, devices=2).mfu(500.0) == pytest.approx(0.25)


def test_steps_logged_without_a_peak_get_their_mfu_once_one_is_found() -> None:
    meter = MfuMeter(Peak(None, "unavailable: busy", "cpu"), flops_per_token=1e6, devices=1)
    assert meter.observe(1, 100.0) == {} and meter.observe(2, 300.0) == {}
    assert meter.late(Peak(None, "unavailable: still busy", "cpu")) == []
    assert meter.late(Peak(1e9, "measured on idle cores", "cpu")) == [
        (1, {"perf/mfu": pytest.approx(0.1)}),
        (2, {"perf/mfu": pytest.approx(0.3)}),
    ]
    assert meter.waiting == [] and meter.peak.tags()["mai.mfu.peak_source"] == "measured on idle cores"


def test_peak_store_is_per_host_and_thread_count_and_survives_a_corrupt_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = PeakStore(tmp_path / "cpu_peaks.json")
    assert store.get(1) is None
    store.put(1, {"flops": 5e10, "measured_at": "then"})
    store.put(2, {"flops": 9e10, "measured_at": "then"})
    assert store.get(1)["flops"] == 5e10 and store.get(2)["flops"] == 9e10 and store.get(3) is None
    keys = json.loads(store.path.read_text())
    assert set(keys) == {PeakStore.key(1), PeakStore.key(2)} and "threads=2" in PeakStore.key(2)
    store.path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="mai_models.lm.cpu_peak"):
        assert store.get(1) is None
    assert any("unreadable CPU peak store" in r.getMessage() for r in caplog.records)


def test_gemm_peak_is_a_plausible_rate() -> None:
    flops = measure_gemm_flops(1, trials=2, trial_seconds=0.05)
    assert 1e9 < flops < 1e13  # one modern core: tens to a few hundred GFLOP/s of fp32


def test_a_bf16_run_is_measured_against_a_bf16_peak_of_its_own(tmp_path: Path) -> None:
    store = PeakStore(tmp_path / "cpu_peaks.json")
    store.put(1, {"flops": 5e10, "measured_at": "then"})
    assert store.get(1, "bf16") is None  # an fp32 peak never stands in for bf16
    store.put(1, {"flops": 2e11, "measured_at": "then"}, "bf16")
    assert store.get(1)["flops"] == 5e10 and store.get(1, "bf16")["flops"] == 2e11
    assert PeakStore.key(1, "bf16") == PeakStore.key(1) + "/dtype=bf16"
    found = cpu_peak(1, store.path, "bf16")
    assert found.flops == 2e11 and found.source.startswith("stored")
    bf16 = measure_gemm_flops(1, trials=2, trial_seconds=0.05, precision="bf16")
    assert 1e9 < bf16 < 1e14


@pytest.fixture
def busy_cores() -> Iterator[list[subprocess.Popen]]:
    """One busy-loop process per usable core: real work from another process on every core."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable_cores())]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def test_no_gemm_is_timed_while_other_work_loads_the_cores(
    tmp_path: Path, busy_cores: list[subprocess.Popen]
) -> None:
    store = tmp_path / "cpu_peaks.json"
    found = cpu_peak(1, store)
    assert found.flops is None and found.source.startswith("unavailable: other work keeps")
    assert not store.exists()
    PeakStore(store).put(1, {"flops": 7e10, "measured_at": "earlier, on idle cores"})
    assert cpu_peak(1, store).flops == 7e10  # a stored peak is reused, whatever the load


class _Recorder:
    """A metrics sink that keeps what the trainer reports."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.append((step, dict(metrics)))

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        self.events.append((kind, dict(payload)))

    def tags(self) -> dict[str, Any]:
        """Every tag the trainer reported (MFU peak, warm start, ...), merged."""
        merged: dict[str, Any] = {}
        for kind, payload in self.events:
            if kind == "tags":
                merged.update(payload)
        return merged


TINY_DENSE = [
    "lm.preset=tiny",
    "lm.micro_batch_size=2",
    "lm.global_batch_size=2",
    "lm.log_interval=1",
    "lm.eval_interval=100",
    "lm.eval_iters=1",
    "lm.checkpoint_interval=100",
    "lm.warmup_steps=1",
    "lm.launch.threads_per_rank=1",
]


def _train_dense(root: Path, steps: int) -> tuple[_Recorder, Path]:
    """The dense twin of the tiny preset, trained in this process (one rank, no torchrun start-up)."""
    from conftest import InProcessTrainer

    from mai_models.config import load_params
    from mai_models.graph import project
    from mai_models.settings import load_settings

    settings = load_settings(root=root)
    recorder = _Recorder()
    launcher = InProcessTrainer(extra_sinks=[recorder])
    params = load_params(settings.params_file, [*TINY_DENSE, f"lm.steps={steps}"])
    project(settings, params, launcher=launcher).run("dense_pretrain", force=True)
    assert launcher.spec.train.model["num_experts"] == 0
    return recorder, launcher.spec.peak_cache


@pytest.mark.slow
def test_dense_twin_mfu_stays_at_most_one_while_other_processes_load_the_cores(
    lm_workspace: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    from mai_models.lm.process_groups import destroy_parallel
    from mai_models.precision import resolve_precision

    threads = torch.get_num_threads()
    # The run's own precision (lm.precision auto: bf16 on a CPU with native bf16), whose peak it uses.
    precision = resolve_precision("auto", "cpu")
    # Timed before the load starts but perhaps under someone else's work on a shared machine: such a
    # peak can only be too low, which errs towards a higher MFU, the direction this test guards.
    peak_before_load = measure_gemm_flops(1, precision=precision)
    procs = request.getfixturevalue("busy_cores")
    try:
        with caplog.at_level(logging.WARNING, logger="mai_models.lm.telemetry"):
            # No stored peak and every core busy: nothing is timed, no MFU is logged, the reason is.
            unmeasured, store = _train_dense(lm_workspace, steps=2)
            assert not store.exists()
            assert unmeasured.tags()["mai.mfu.peak_source"].startswith("unavailable: other work keeps")
            assert unmeasured.tags()["mai.mfu.peak_flops_per_device"] == "unavailable"
            assert [s for s, m in unmeasured.metrics if "train/loss" in m] == [1, 2]
            assert not any("perf/mfu" in m for _, m in unmeasured.metrics)

            # A peak stored for this host and thread count is used, load or not.
            PeakStore(store).put(1, {"flops": peak_before_load, "measured_at": "before the load"}, precision)
            loaded, _ = _train_dense(lm_workspace, steps=3)
        assert all(proc.poll() is None for proc in procs), "the load stopped before training ended"
    finally:
        destroy_parallel()  # the trainer leaves its one-rank groups up; later tests start clean
        torch.set_num_threads(threads)
    assert loaded.tags()["mai.mfu.peak_source"].startswith("stored:")
    assert [
        m["perf/peak_flops_per_device"] for _, m in loaded.metrics if "perf/peak_flops_per_device" in m
    ] == [peak_before_load]
    mfus = [m["perf/mfu"] for _, m in loaded.metrics if "perf/mfu" in m]
    assert len(mfus) == 3 and all(0 < v <= 1 for v in mfus), mfus
    assert not [r for r in caplog.records if "clamped to 1" in r.getMessage()], "a raw MFU was above 1"

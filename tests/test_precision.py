"""Training precision: what ``auto`` picks, and that bf16 autocast reaches the networks while the
alignment, the losses and the waveform stay fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_tts_model import _Sink, _ToyAcoustic

from mai_models.precision import autocast, cpu_has_native_bf16, resolve_precision
from mai_models.tts.acoustic import AcousticModel
from mai_models.tts.config import FeatureConfig
from mai_models.tts.mel import LogMel
from mai_models.tts.presets import PRESETS, Budget
from mai_models.tts.train_loop import Distributed, LoopConfig, train_loop
from mai_models.tts.vocoder import Vocoder


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
        ("fpu amx_bf16 amx_tile", True),
        ("fpu avx2", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / f"cpuinfo-{native}-{len(flags)}"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_auto_is_bf16_on_cuda_and_follows_the_cpu_otherwise() -> None:
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", "cuda") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    layer = torch.nn.Linear(8, 8)
    with autocast("bf16", "cpu"):
        assert layer(torch.randn(2, 8)).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert layer(torch.randn(2, 8)).dtype == torch.float32


def _dtypes_of(modules: dict[str, torch.nn.Module]) -> dict[str, torch.dtype]:
    seen: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(_module, _args, out) -> None:
            seen.setdefault(name, out.dtype)

        return hook

    for name, module in modules.items():
        module.register_forward_hook(record(name))
    return seen


def test_bf16_acoustic_step_runs_its_networks_in_bf16_and_its_losses_in_fp32() -> None:
    torch.manual_seed(0)
    model = AcousticModel(PRESETS["tiny"].acoustic, n_symbols=12, n_mels=16)
    seen = _dtypes_of({"encoder_conv": model.encoder[0].conv1, "decoder_out": model.mel_out})
    ids = torch.randint(2, 12, (2, 5))
    mels = torch.randn(2, 16, 14)
    with autocast("bf16", "cpu"):
        out = model(ids, torch.tensor([5, 4]), mels, torch.tensor([14, 11]))
        out["loss"].backward()
    assert seen == {"encoder_conv": torch.bfloat16, "decoder_out": torch.bfloat16}
    for key in ("loss", "mel_l1", "prior", "duration", "mel_pred"):
        assert out[key].dtype == torch.float32, key
    assert int(out["durations"][0].sum()) == 14 and int(out["durations"][1].sum()) == 11
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_bf16_vocoder_keeps_its_spectrum_and_waveform_fp32() -> None:
    torch.manual_seed(0)
    cfg = FeatureConfig()
    vocoder = Vocoder(PRESETS["tiny"].vocoder, cfg, 22050)
    seen = _dtypes_of({"head": vocoder.head})
    mel = LogMel(cfg, 22050)(torch.randn(1, 8 * 256))
    with autocast("bf16", "cpu"):
        wave, log_mag, phase = vocoder(mel, with_spectrum=True)
    assert seen == {"head": torch.bfloat16}
    assert wave.dtype == log_mag.dtype == phase.dtype == torch.float32
    with torch.no_grad():  # the untrained head adds nothing: the same magnitude as in fp32
        torch.testing.assert_close(log_mag, vocoder(mel, with_spectrum=True)[1])


def test_the_speech_loop_learns_under_bf16(tmp_path: Path) -> None:
    budget = Budget(steps=30, batch_size=4, lr=5e-3, warmup=2, eval_interval=30, precision="bf16")
    sink = _Sink()
    loop = LoopConfig(budget, seed=3, checkpoint_interval=30, log_interval=1)
    train_loop(_ToyAcoustic(), loop, tmp_path, sink, Distributed())
    losses = [m["train/mel_l1"] for _, m in sink.logged if "train/mel_l1" in m]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])

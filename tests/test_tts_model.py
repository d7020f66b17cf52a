"""The speech model's parts: alignment search, mel features, the exportable inverse STFT, the
acoustic model and vocoder training signal, exact resume, and ONNX parity."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mai_models.errors import MaiUserError
from mai_models.tts.acoustic import AcousticModel
from mai_models.tts.config import FeatureConfig
from mai_models.tts.engine import predicted_frames
from mai_models.tts.mas import diagonal_log_prior, gaussian_log_likelihood, monotonic_alignment
from mai_models.tts.mel import LogMel, mel_filterbank, num_frames
from mai_models.tts.presets import PRESETS, Budget
from mai_models.tts.train_loop import LoopConfig, checkpoint_paths, train_loop
from mai_models.tts.vocoder import (
    MAX_LOG_MAGNITUDE,
    InverseSTFT,
    MultiResolutionSTFTLoss,
    SpectrumLoss,
    Vocoder,
)


def _best_path_score(values: np.ndarray, tx: int, ty: int) -> float:
    best = -np.inf
    for cuts in itertools.combinations(range(1, ty), tx - 1):
        bounds = [0, *cuts, ty]
        best = max(best, sum(values[i, bounds[i] : bounds[i + 1]].sum() for i in range(tx)))
    return float(best)


def test_alignment_search_finds_the_best_monotonic_path() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        tx, ty = int(torch.randint(1, 5, (1,))), int(torch.randint(5, 9, (1,)))
        values = torch.randn(2, 6, 10, generator=gen)
        path = monotonic_alignment(values, torch.tensor([tx, 6]), torch.tensor([ty, 10]))
        assert float((path[0] * values[0]).sum()) == pytest.approx(
            _best_path_score(values[0].numpy(), tx, ty), abs=1e-4
        )
        assert float((path[1] * values[1]).sum()) == pytest.approx(
            _best_path_score(values[1].numpy(), 6, 10), abs=1e-4
        )
        # every real frame on exactly one phoneme, none on padding; every phoneme gets a frame; monotonic
        assert torch.equal(path[0].sum(0)[:ty], torch.ones(ty)) and path[0, :, ty:].sum() == 0
        assert (path[0].sum(1)[:tx] >= 1).all() and path[0, tx:].sum() == 0
        owner = path[0, :, :ty].argmax(0)
        assert (owner[1:] >= owner[:-1]).all()


def test_gaussian_likelihood_peaks_at_the_matching_frame() -> None:
    mu = torch.eye(3)[None] * 5  # three phonemes, each its own mel direction
    mel = torch.eye(3)[None].transpose(1, 2) * 5
    log_p = gaussian_log_likelihood(mu, mel)
    assert torch.equal(log_p[0].argmax(0), torch.arange(3))


def test_diagonal_prior_is_the_beta_binomial_of_each_frame() -> None:
    from scipy.stats import betabinom

    prior = diagonal_log_prior(torch.tensor([7, 4]), torch.tensor([30, 11]), 7, 30)
    for row, (tx, ty) in enumerate(((7, 30), (4, 11))):
        expected = np.stack([betabinom(tx - 1, j + 1, ty - j).pmf(np.arange(tx)) for j in range(ty)], axis=1)
        assert np.allclose(prior[row, :tx, :ty].exp().numpy(), expected, atol=1e-5)
    assert prior[1, 4:].abs().sum() == 0 and prior[1, :, 11:].abs().sum() == 0


def test_diagonal_prior_gives_even_durations_where_the_likelihood_cannot_tell_phonemes_apart() -> None:
    # An untrained model's prior means are all alike: the likelihood then ranks every path the same,
    # and the search alone hands nearly all frames to one phoneme. The diagonal prior splits them evenly.
    mu = torch.zeros(1, 6, 80)
    mel = torch.randn(1, 80, 48, generator=torch.Generator().manual_seed(0))
    lengths = (torch.tensor([6]), torch.tensor([48]))
    log_p = gaussian_log_likelihood(mu, mel)
    alone = monotonic_alignment(log_p, *lengths).sum(-1)[0]
    guided = monotonic_alignment(log_p + diagonal_log_prior(*lengths, 6, 48), *lengths).sum(-1)[0]
    assert alone.max() >= 40
    assert guided.min() >= 6 and guided.max() <= 10


def test_mel_features_have_the_configured_shape_and_filters() -> None:
    cfg = FeatureConfig()
    fb = mel_filterbank(22050, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
    assert fb.shape == (80, 513) and (fb >= 0).all() and (fb.sum(1) > 0).all()
    wave = torch.sin(torch.arange(22050) * 2 * np.pi * 440 / 22050)[None]
    mel = LogMel(cfg, 22050)(wave)
    assert mel.shape == (1, 80, num_frames(22050, 256))
    peak_hz = 440
    assert int(mel[0, :, 40].argmax()) == int(np.argmax(fb[:, round(peak_hz / (22050 / 1024))]))
    with pytest.raises(ValueError, match="Nyquist"):
        LogMel(FeatureConfig(f_max=12000.0), 22050)


def test_exportable_inverse_stft_matches_torch_istft() -> None:
    wave = torch.randn(2, 8000)
    window = torch.hann_window(1024)
    spec = torch.stft(wave, 1024, 256, window=window, center=True, return_complex=True)
    ours = InverseSTFT(1024, 256)(spec.real, spec.imag)
    reference = torch.istft(spec, 1024, 256, window=window, center=True)
    assert ours.shape[1] == (spec.shape[2] - 1) * 256
    assert torch.allclose(ours, reference[:, : ours.shape[1]], atol=1e-5)
    assert torch.allclose(ours, wave[:, : ours.shape[1]], atol=1e-5)


def test_predicted_frames_scale_with_speed_and_never_vanish() -> None:
    log_dur = np.log1p(np.array([4.0, 6.0, 2.0]))
    assert predicted_frames(log_dur).tolist() == [4, 6, 2]
    assert predicted_frames(log_dur, speed=2.0).sum() == 6
    assert predicted_frames(np.full(3, -5.0)).sum() == 3  # all-zero predictions still make sound
    with pytest.raises(MaiUserError, match="speed"):
        predicted_frames(log_dur, speed=0)


class _ToyAcoustic:
    """Random phoneme strings with mels that depend on them: enough to see learning and resume."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = AcousticModel(PRESETS["tiny"].acoustic, n_symbols=12, n_mels=16)
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(12, 16, generator=gen)

    def batch(self, rng: np.random.Generator, size: int):
        ids = torch.from_numpy(rng.integers(2, 12, (size, 6)))
        frames = torch.from_numpy(rng.integers(1, 4, (size, 6)))
        mels = torch.zeros(size, 16, int(frames.sum(1).max()))
        for b in range(size):
            mel = torch.repeat_interleave(self.table[ids[b]], frames[b], dim=0).T
            mels[b, :, : mel.shape[1]] = mel
        return ids, torch.full((size,), 6), mels, frames.sum(1)

    def losses(self, model, rng, batch_size):
        out = model(*self.batch(rng, batch_size))
        return {k: out[k] for k in ("loss", "mel_l1", "prior", "duration")}

    def evaluate(self, model, step, out_dir: Path):
        return {"loss": float(self.losses(model, np.random.default_rng(99), 4)["loss"])}


class _Sink:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []
        self.events: list[tuple[str, dict]] = []

    def log(self, step, metrics):
        self.logged.append((step, metrics))

    def event(self, kind, payload):
        self.events.append((kind, payload))


def _loop(steps: int, stop: int | None = None) -> LoopConfig:
    budget = Budget(steps=steps, batch_size=4, lr=5e-3, warmup=2, eval_interval=steps)
    return LoopConfig(budget, seed=3, checkpoint_interval=4, log_interval=1, stop_after_step=stop)


def test_acoustic_model_learns_and_resumes_exactly(tmp_path: Path) -> None:
    straight = _ToyAcoustic()
    sink = _Sink()
    summary = train_loop(straight, _loop(12), tmp_path / "a", sink, _dist())
    losses = [m["train/loss"] for _, m in sink.logged if "train/loss" in m]
    assert summary["steps"] == 12 and losses[-1] < losses[0]

    interrupted = _ToyAcoustic()
    with pytest.raises(SystemExit):
        train_loop(interrupted, _loop(12, stop=8), tmp_path / "b", _Sink(), _dist())
    assert [p.name for p in checkpoint_paths(tmp_path / "b")] == ["step_0000004.pt", "step_0000008.pt"]
    resumed = _ToyAcoustic()
    with torch.no_grad():  # perturbed weights: everything must come from the checkpoint
        for param in resumed.model.parameters():
            param.add_(1.0)
    sink_b = _Sink()
    train_loop(resumed, _loop(12), tmp_path / "b", sink_b, _dist())
    assert ("resumed", {"step": 8}) in sink_b.events
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        train_loop(_ToyAcoustic(), _loop(12, stop=8), tmp_path, _Sink(), _dist())
    checkpoint_paths(tmp_path)[-1].write_bytes(b"truncated")
    sink = _Sink()
    with pytest.warns(UserWarning, match="unreadable checkpoint step_0000008"):
        train_loop(_ToyAcoustic(), _loop(12), tmp_path, sink, _dist())
    assert ("resumed", {"step": 4}) in sink.events


def test_vocoder_learns_a_waveform_from_its_mel() -> None:
    torch.manual_seed(0)
    cfg = FeatureConfig()
    logmel = LogMel(cfg, 22050)
    vocoder = Vocoder(PRESETS["tiny"].vocoder, cfg, 22050)
    loss_fn = MultiResolutionSTFTLoss()
    t = torch.arange(16 * 256) / 22050
    wave = (0.5 * torch.sin(2 * np.pi * 220 * t) + 0.2 * torch.sin(2 * np.pi * 660 * t))[None]
    opt = torch.optim.AdamW(vocoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        pred = vocoder(logmel(wave))
        loss = loss_fn(pred, wave[:, : pred.shape[1]])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert pred.shape[1] == wave.shape[1]
    assert losses[-1] < 0.8 * losses[0]


def test_spectrum_loss_is_zero_on_the_true_spectrum_and_blind_to_whole_turns() -> None:
    torch.manual_seed(0)
    wave = torch.randn(2, 16 * 256) * 0.1
    spec = torch.stft(wave, 1024, 256, window=torch.hann_window(1024), center=True, return_complex=True)
    log_mag, phase = torch.log(spec.abs().clamp(min=1e-5)), torch.angle(spec)
    loss = SpectrumLoss(1024, 256)
    exact = loss(log_mag, phase, wave)
    assert all(v.item() < 1e-4 for v in exact.values()), exact
    turned = loss(log_mag, phase + 2 * np.pi, wave)
    assert turned["phase"].item() < 1e-4
    shifted = loss(log_mag, phase + 1.0, wave)
    # A constant offset moves the instantaneous phase only; group delay and frequency are differences.
    assert shifted["phase"].item() == pytest.approx(1.0, abs=1e-3)
    assert shifted["compressed_spectrum"].item() > 0.1 * exact["compressed_spectrum"].item() + 1e-3
    louder = loss(log_mag + 0.5, phase, wave)
    assert louder["log_magnitude"].item() == pytest.approx(0.5, abs=1e-3)


def test_vocoder_forward_returns_its_spectrum_for_training() -> None:
    vocoder = Vocoder(PRESETS["tiny"].vocoder, FeatureConfig(), 22050).eval()
    mel = torch.randn(1, 80, 9)
    wave, log_mag, phase = vocoder(mel, with_spectrum=True)
    assert torch.equal(wave, vocoder(mel))
    assert log_mag.shape == phase.shape == (1, 513, 9)


def test_untrained_vocoder_magnitude_is_the_mels_pseudo_inverse() -> None:
    torch.manual_seed(0)
    cfg = FeatureConfig()
    logmel = LogMel(cfg, 22050)
    wave = torch.randn(1, 32 * 256) * 0.1
    mel = logmel(wave)
    vocoder = Vocoder(PRESETS["tiny"].vocoder, cfg, 22050).eval()
    log_mag, _ = vocoder.spectrum(mel)
    assert torch.allclose(log_mag, vocoder.mel_magnitude(mel).clamp(max=MAX_LOG_MAGNITUDE))
    # The prior carries the mel back: filtering it again gives the mel it came from, to within the
    # floor, which a head predicting the whole magnitude from random weights does not.
    remel = torch.log(torch.clamp(logmel.filterbank @ log_mag.exp(), min=1e-5))
    assert (remel - mel).abs().mean().item() < 0.05


def test_a_vocoder_from_before_the_magnitude_prior_is_refused(tmp_path: Path) -> None:
    from mai_models.tts.model_files import VOCODER_CARD, load_vocoder, vocoder_card

    card = vocoder_card(PRESETS["tiny"].vocoder, FeatureConfig(), 22050)
    del card["magnitude_head"]
    (tmp_path / VOCODER_CARD).write_text(json.dumps(card))
    with pytest.raises(MaiUserError, match="predates the mel-pseudo-inverse magnitude head"):
        load_vocoder(tmp_path)


def test_onnx_graphs_match_torch(tmp_path: Path) -> None:
    from mai_models.tts.onnx_export import export_bundle

    torch.manual_seed(0)
    acoustic = AcousticModel(PRESETS["tiny"].acoustic, 20, 80).eval()
    vocoder = Vocoder(PRESETS["tiny"].vocoder, FeatureConfig(), 22050).eval()
    vocab = tmp_path / "phonemes.json"
    vocab.write_text("{}")
    diffs = export_bundle(acoustic, vocoder, vocab, {"sample_rate": 22050, "hop_length": 256}, tmp_path / "b")
    assert set(diffs) == {"encoder_max_abs_diff", "decoder_max_abs_diff", "vocoder_max_abs_diff"}
    assert max(diffs.values()) < 1e-4
    assert {p.name for p in (tmp_path / "b").iterdir()} >= {"encoder.onnx", "decoder.onnx", "vocoder.onnx"}


def _dist():
    from mai_models.tts.train_loop import Distributed

    return Distributed()


def _random_engine(tmp_path: Path):
    """A SynthesisEngine over untrained tiny torch models and the real text frontend."""
    from mai_models.tts.engine import SynthesisEngine
    from mai_models.tts.frontend import G2P, PhonemeVocab, TextFrontend

    g2p = G2P()
    vocab = PhonemeVocab.build([g2p.phonemize("the quick brown fox jumps over the lazy dog, twice!")])
    torch.manual_seed(0)
    acoustic = AcousticModel(PRESETS["tiny"].acoustic, len(vocab), 80, mel_mean=-5.0, mel_std=2.0).eval()
    with torch.no_grad():  # long enough durations that a sentence spans several stream chunks
        acoustic.durations.proj.bias.fill_(2.5)
    vocoder = Vocoder(PRESETS["tiny"].vocoder, FeatureConfig(), 22050).eval()

    def encode(ids):
        with torch.no_grad():
            hidden, log_dur = acoustic.encode(torch.from_numpy(ids))
        return hidden.numpy(), log_dur.numpy()

    def decode(hidden):
        with torch.no_grad():
            return acoustic.decode(torch.from_numpy(hidden)).numpy()

    def vocode(mel):
        with torch.no_grad():
            return vocoder(torch.from_numpy(mel)).numpy()

    return SynthesisEngine(TextFrontend(vocab, g2p), encode, decode, vocode, 22050, 256)


def test_streaming_matches_full_synthesis_and_speed_changes_length(tmp_path: Path) -> None:
    from mai_models.tts.engine import StreamStats

    engine = _random_engine(tmp_path)
    text = "The quick brown fox jumps over the lazy dog. The dog jumps twice!"
    full = engine.synthesize(text)
    assert full.sentences == ["The quick brown fox jumps over the lazy dog.", "The dog jumps twice!"]
    stats = StreamStats()
    streamed = np.concatenate(list(engine.stream(text, chunk_frames=16, stats=stats)))
    assert stats.chunks > 2 and stats.time_to_first_audio > 0
    assert streamed.shape == full.wave.shape
    assert np.abs(streamed - full.wave).max() < 1e-4
    assert len(engine.synthesize(text, speed=2.0).wave) < 0.6 * len(full.wave)
    with pytest.raises(MaiUserError, match="text is empty"):
        engine.synthesize("  ")


DDP_SCRIPT = """
import sys
from pathlib import Path
import numpy as np
import torch
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_tts_model import _ToyAcoustic, _loop, _Sink
from mai_models.tts.train_loop import init_distributed, train_loop

rank_info = init_distributed()
task = _ToyAcoustic()
train_loop(task, _loop(8), Path({work!r}), _Sink(), rank_info)
flat = torch.cat([p.detach().flatten() for p in task.model.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(rank_info.world_size)]
dist.all_gather(gathered, flat)
if rank_info.is_main:
    print("world", rank_info.world_size, "in_sync", all(torch.equal(gathered[0], g) for g in gathered))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_training_runs_under_torchrun_ddp(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), work=str(tmp_path / "work")))
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "world 2 in_sync True" in done.stdout
    state = torch.load(checkpoint_paths(tmp_path / "work")[-1], weights_only=True)
    assert state["world_size"] == 2 and set(state["rng"]) == {0, 1}

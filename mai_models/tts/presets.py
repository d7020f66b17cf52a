"""Model sizes and training budgets: ``tiny`` for tests, ``demo`` for a few CPU minutes in
``make demo``, ``quality`` for hours on a CPU or a GPU."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mai_models.precision import Precision


@dataclass(frozen=True)
class AcousticArch:
    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ff_dim: int
    kernel: int
    duration_channels: int
    dropout: float


@dataclass(frozen=True)
class VocoderArch:
    dim: int
    intermediate: int
    layers: int


@dataclass(frozen=True)
class Budget:
    steps: int
    batch_size: int
    lr: float
    warmup: int
    eval_interval: int
    segment_frames: int = 32  # vocoder only: mel frames per training segment
    # auto: bf16 autocast for the networks on a CPU with native bf16 (mai_models.precision), else fp32.
    precision: Precision = "auto"


@dataclass(frozen=True)
class TTSPreset:
    acoustic: AcousticArch
    vocoder: VocoderArch
    acoustic_budget: Budget
    vocoder_budget: Budget

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, TTSPreset] = {
    "tiny": TTSPreset(
        AcousticArch(32, 1, 1, 2, 64, 3, 32, 0.0),
        VocoderArch(32, 64, 2),
        Budget(steps=12, batch_size=4, lr=2e-3, warmup=2, eval_interval=6),
        Budget(steps=12, batch_size=4, lr=2e-3, warmup=2, eval_interval=6, segment_frames=16),
    ),
    "demo": TTSPreset(
        AcousticArch(128, 3, 3, 2, 384, 5, 128, 0.0),
        VocoderArch(128, 384, 6),
        # Held-out WER (pocketsphinx, 20 sentences; the teacher 0.24) by acoustic steps, through the
        # vocoder: 300 -> 0.85, 600 -> 0.57, 1200 -> 0.44 (lr 4e-3 at 600: 0.96). The vocoder, given
        # the mel's pseudo-inverse magnitude, is not what limits the voice past 500 steps: copy-synthesis
        # 0.30 / 0.28 / 0.23 at 250 / 500 / 800, and 0.43 / 0.44 on the 1200-step model's mels at
        # 500 / 800. Its minutes go to the acoustic model instead. At 1200 steps, neither dropout 0
        # (0.43), per-bin mel standardisation (0.45) nor two frames per decoder position (0.57, at
        # 1.2-1.5x the step rate: no better than this recipe in the same minutes) beat it. Dropout is off:
        # 0.1 cost 9% of each step (the mask sampling) for no WER. bf16 autocast (precision auto on a CPU
        # with native bf16) with dropout off: 0.42, at about 6.5 steps/s against 4.3 in fp32 (244 s in
        # make demo against 287 s). The vocoder stays fp32: in bf16 it ran 1.3x the step rate and matched
        # on teacher mels (0.26 against 0.25 and 0.28 for two fp32 seeds) but scored 0.47 and 0.49 on two
        # acoustic models' mels against 0.42 and 0.43 in fp32. The alignment search's diagonal prior
        # (mas.diagonal_log_prior) took the 1200-step model from 0.42 to 0.39; without it, 600 demo
        # sentences never aligned (duration loss flat at 0.55, WER 1.18 and 1.22 for two seeds; 0.46
        # with it, no better than 300 sentences at this step count). On the model before it, neither a
        # vocoder fine-tuned 300 steps on the acoustic model's teacher-forced mels (0.44), ground-truth
        # durations (0.47), slower speech (speed 0.9: 0.44) nor a global-variance boost of the mel
        # (x1.15: 0.42) helped. With the prior, WER by step of one 1800-step run: 300 -> 0.74, 600 -> 0.52,
        # 900 -> 0.42, 1200 -> 0.43, 1500 -> 0.47, 1800 -> 0.42 (it overfits the 285 utterances past 900).
        # A 900-step schedule: 0.37 in 172 s of training, against 0.40 for 1200 steps (235 s).
        Budget(steps=900, batch_size=8, lr=2e-3, warmup=30, eval_interval=300),
        Budget(
            steps=500,
            batch_size=16,
            lr=2e-3,
            warmup=50,
            eval_interval=250,
            segment_frames=32,
            precision="fp32",
        ),
    ),
    "quality": TTSPreset(
        AcousticArch(256, 4, 4, 2, 1024, 9, 256, 0.1),
        VocoderArch(384, 1152, 8),
        Budget(steps=60_000, batch_size=32, lr=1e-3, warmup=2000, eval_interval=2000),
        Budget(steps=200_000, batch_size=16, lr=5e-4, warmup=2000, eval_interval=5000, segment_frames=64),
    ),
}

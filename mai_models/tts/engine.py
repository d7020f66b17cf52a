"""Text to waveform, independent of the runtime: torch modules or ONNX sessions plug in as three
array functions (encode, decode, vocode). Long texts are split at sentence boundaries; streaming
vocodes the mel in chunks with enough context on each side that chunk seams are inaudible.

This module must not import torch: the exported bundle runs on onnxruntime and numpy alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from mai_models.errors import MaiUserError
from mai_models.tts.frontend import TextFrontend

EncodeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # ids [1,T] -> hidden, log durations
DecodeFn = Callable[[np.ndarray], np.ndarray]  # hidden [1,F,D] -> log-mel [1,n_mels,F]
VocodeFn = Callable[[np.ndarray], np.ndarray]  # log-mel [1,n_mels,F] -> wave [1,(F-1)*hop]

SENTENCE_PAUSE_SECONDS = 0.15
# Frames of mel context on each side of a streamed chunk: more than the vocoder's receptive field
# (kernel-7 convolutions: 3 frames per block plus the input layer), so chunks match a full pass.
STREAM_CONTEXT_FRAMES = 32


def predicted_frames(log_durations: np.ndarray, speed: float = 1.0) -> np.ndarray:
    """Frames per phoneme from predicted log(1 + duration); ``speed`` > 1 speaks faster."""
    if not speed > 0:
        raise MaiUserError(f"speed must be positive, got {speed}")
    frames = np.clip(np.round((np.exp(log_durations) - 1.0) / speed), 0, None).astype(np.int64)
    return frames if frames.sum() > 0 else np.ones_like(frames)


@dataclass
class Synthesis:
    wave: np.ndarray
    sample_rate: int
    sentences: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.sample_rate


@dataclass
class StreamStats:
    time_to_first_audio: float = 0.0
    chunks: int = 0


class SynthesisEngine:
    def __init__(
        self,
        frontend: TextFrontend,
        encode: EncodeFn,
        decode: DecodeFn,
        vocode: VocodeFn,
        sample_rate: int,
        hop_length: int,
    ) -> None:
        self.frontend = frontend
        self._encode, self._decode, self._vocode = encode, decode, vocode
        self.sample_rate = sample_rate
        self.hop = hop_length

    def mel(self, ids: list[int], speed: float = 1.0) -> np.ndarray:
        hidden, log_dur = self._encode(np.asarray(ids, dtype=np.int64)[None])
        frames = predicted_frames(log_dur[0], speed)
        regulated = np.repeat(hidden[0], frames, axis=0)[None]
        return self._decode(regulated)

    def synthesize(self, text: str, speed: float = 1.0) -> Synthesis:
        encoded = self.frontend.encode(text)
        pause = np.zeros(int(SENTENCE_PAUSE_SECONDS * self.sample_rate), dtype=np.float32)
        pieces: list[np.ndarray] = []
        for ids in encoded.ids:
            if not ids:
                continue
            pieces.append(self._vocode(self.mel(ids, speed))[0].astype(np.float32))
            pieces.append(pause)
        if not pieces:
            raise MaiUserError("nothing left to say after the text frontend dropped every character")
        return Synthesis(np.concatenate(pieces[:-1]), self.sample_rate, encoded.sentences, encoded.warnings)

    def stream(
        self, text: str, speed: float = 1.0, chunk_frames: int = 64, stats: StreamStats | None = None
    ) -> Iterator[np.ndarray]:
        """Yield audio as soon as each chunk of mel is vocoded; ``stats`` gets the time to first audio."""
        started = time.perf_counter()
        stats = stats if stats is not None else StreamStats()
        encoded = self.frontend.encode(text)
        pause = np.zeros(int(SENTENCE_PAUSE_SECONDS * self.sample_rate), dtype=np.float32)
        first = True
        for ids in encoded.ids:
            if not ids:
                continue
            if not first:
                yield pause
            mel = self.mel(ids, speed)
            for chunk in self._vocode_chunks(mel, chunk_frames):
                if first:
                    stats.time_to_first_audio = time.perf_counter() - started
                    first = False
                stats.chunks += 1
                yield chunk

    def _vocode_chunks(self, mel: np.ndarray, chunk_frames: int) -> Iterator[np.ndarray]:
        total = mel.shape[2]
        ctx = STREAM_CONTEXT_FRAMES
        for start in range(0, max(total - 1, 1), chunk_frames):
            end = min(start + chunk_frames, total - 1)
            lo, hi = max(0, start - ctx), min(total, end + ctx + 1)
            wave = self._vocode(mel[:, :, lo:hi])[0]
            offset = (start - lo) * self.hop
            yield wave[offset : offset + (end - start) * self.hop].astype(np.float32)

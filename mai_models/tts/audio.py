"""Audio primitives of the speech plane: decode, downmix, resample, trim, measure, write PCM16.

Waves are float32 numpy arrays in [-1, 1]: shape (frames,) for mono, (frames, channels) otherwise."""

from __future__ import annotations

import io
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

CLIP_LEVEL = 0.999
# Loudest frame quieter than this (dBFS RMS) counts as no signal at all: PCM16 dither and
# codec noise sit far below it, while even whispered speech sits far above.
SILENT_PEAK_DBFS = -60.0
# Frame sizes are defined at 22.05 kHz (1024/256, the usual STFT framing) and scaled with the
# rate so trimming behaves the same whatever rate a clip arrives at.
_REF_RATE = 22050
_REF_FRAME = 1024
_REF_HOP = 256


class AudioReadError(Exception):
    """Audio that cannot be decoded: corrupt, truncated, empty, or of an unknown format."""


def read_audio(
    source: str | Path | bytes, start_s: float = 0.0, duration_s: float | None = None
) -> tuple[np.ndarray, int, int]:
    """Decode a file (path) or in-memory file (bytes) to ``(wave, sample_rate, channels)``.

    ``start_s``/``duration_s`` read only that span, so a segment of a long recording (lhotse) is
    never decoded whole."""
    if isinstance(source, bytes | bytearray):
        if not source:
            raise AudioReadError("empty audio data (0 bytes)")
        handle: str | io.BytesIO = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():  # a distinct error: the corpus reports it as missing, not unreadable
            raise FileNotFoundError(f"no audio file at {path}")
        if path.is_file() and path.stat().st_size == 0:
            raise AudioReadError(f"{path.name}: empty file (0 bytes)")
        handle = str(path)
    try:
        with sf.SoundFile(handle) as fh:
            sr, channels = fh.samplerate, fh.channels
            first = max(0, round(start_s * sr))
            if first:
                fh.seek(min(first, fh.frames))
            frames = -1 if duration_s is None else max(0, round(duration_s * sr))
            wave = fh.read(frames, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioReadError(f"{type(exc).__name__}: {exc}"[:300]) from exc
    if wave.shape[0] == 0:
        raise AudioReadError("no audio samples" + (f" at {start_s:.3f}s" if start_s else ""))
    if not np.all(np.isfinite(wave)):
        # Float WAVs can carry NaN/inf; they would poison every metric and the model.
        raise AudioReadError("non-finite samples (NaN or inf)")
    return wave, sr, channels


def to_mono(wave: np.ndarray) -> np.ndarray:
    if wave.ndim == 1:
        return wave
    return wave.mean(axis=1, dtype=np.float32)


def resample(wave: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling by the exact rational ratio ``sr_out/sr_in`` (e.g. 441/320 for 16k->22.05k)."""
    if sr_in == sr_out:
        return wave.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(sr_in, sr_out)
    return resample_poly(wave, sr_out // g, sr_in // g, axis=0).astype(np.float32)


def write_wav(path: str | Path, wave: np.ndarray, sr: int) -> None:
    """PCM16 WAV; samples beyond full scale (resampling overshoot) are clipped rather than wrapped."""
    sf.write(str(path), np.clip(wave, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")


def _frames(sr: int) -> tuple[int, int]:
    frame = max(16, round(_REF_FRAME * sr / _REF_RATE))
    return frame, max(4, round(_REF_HOP * sr / _REF_RATE))


def frame_energy_db(wave: np.ndarray, sr: int) -> tuple[np.ndarray, int, int]:
    """Mean-square energy of each frame in dB (0 dB: every sample at full scale).

    Uses a running sum so a long clip costs O(n), not O(n * frame)."""
    frame, hop = _frames(sr)
    x = to_mono(wave).astype(np.float64)
    n = len(x)
    n_frames = 1 + max(0, -(-(n - frame) // hop))
    padded = np.zeros((n_frames - 1) * hop + frame)
    padded[:n] = x
    csum = np.concatenate(([0.0], np.cumsum(padded * padded)))
    starts = np.arange(n_frames) * hop
    energy = (csum[starts + frame] - csum[starts]) / frame
    return 10.0 * np.log10(np.maximum(energy, 1e-20)), frame, hop


def is_silent(wave: np.ndarray, sr: int) -> bool:
    db, _, _ = frame_energy_db(wave, sr)
    return bool(db.max() < SILENT_PEAK_DBFS)


def trim_silence(wave: np.ndarray, sr: int, top_db: float) -> tuple[np.ndarray, int, int]:
    """Cut leading/trailing audio whose frames are more than ``top_db`` below the loudest frame.

    Returns ``(trimmed, start, end)`` in samples; an all-zero clip trims to nothing (0, 0)."""
    db, frame, hop = frame_energy_db(wave, sr)
    if db.max() <= -199.0:  # only digital zeros
        return wave[:0], 0, 0
    loud = np.flatnonzero(db > db.max() - top_db)
    start = int(loud[0]) * hop
    end = min(len(wave), int(loud[-1]) * hop + frame)
    return wave[start:end], start, end


def silence_ratio(wave: np.ndarray, sr: int, top_db: float) -> float:
    """Share of frames more than ``top_db`` below the peak frame, inside the trimmed clip: long
    internal pauses (or a mostly silent recording with one click) show up here."""
    trimmed, _, _ = trim_silence(wave, sr, top_db)
    if len(trimmed) == 0:
        return 1.0
    db, _, _ = frame_energy_db(trimmed, sr)
    return float(np.mean(db < db.max() - top_db))


def clipping_ratio(wave: np.ndarray) -> float:
    if wave.size == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(wave) >= CLIP_LEVEL) / wave.size)

"""Synthesised speech in the ``response_format`` a client asked for: wav, flac, mp3 (where this
libsndfile has it) or OpenAI's headerless ``pcm``."""

from __future__ import annotations

import io
from typing import Any

PCM_RATE = 24_000  # OpenAI's "pcm" format is 24 kHz 16-bit little-endian mono
# (soundfile format, subtype, media type) per response_format
_SOUNDFILE_FORMATS = {
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
}


def audio_formats() -> list[str]:
    """The response formats this host can encode, pcm always."""
    import soundfile as sf

    available = sf.available_formats()
    return [f for f, (major, _, _) in _SOUNDFILE_FORMATS.items() if major in available] + ["pcm"]


def encode_audio(wave: Any, sample_rate: int, response_format: str) -> tuple[bytes, str]:
    """(the encoded bytes, their media type); pcm is resampled to ``PCM_RATE``."""
    import numpy as np

    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    if response_format == "pcm":
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(PCM_RATE, sample_rate)
        resampled = resample_poly(wave, PCM_RATE // g, sample_rate // g) if sample_rate != PCM_RATE else wave
        pcm = (np.clip(resampled, -1.0, 1.0) * 32767).astype("<i2")
        return pcm.tobytes(), "audio/pcm"
    import soundfile as sf

    major, subtype, media_type = _SOUNDFILE_FORMATS[response_format]
    buffer = io.BytesIO()
    sf.write(buffer, wave, sample_rate, format=major, subtype=subtype)
    return buffer.getvalue(), media_type

"""What the speech corpus readers yield: ``SpeechItem`` (transcript + where its audio is, decoded
later) or ``Reject``, and the audio-path lookup the manifest readers share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mai_models.data.records import Reject
from mai_models.tts.audio import AudioReadError, read_audio


@dataclass(frozen=True, slots=True)
class SpeechItem:
    """One utterance. ``audio`` is a file path or the encoded file's bytes; nothing is decoded until
    ``load()``, so a reader can walk a large corpus holding only transcripts."""

    utt_id: str  # as the source names it; the corpus makes it unique across sources
    speaker: str
    text: str
    source: str
    origin: str
    audio: Path | bytes = field(repr=False)
    start_s: float = 0.0  # segment of a longer recording (lhotse supervisions)
    duration_s: float | None = None
    channel: int | None = None  # one channel of a multi-channel file; None = all (downmixed later)

    def load(self) -> tuple[np.ndarray, int, int]:
        """``(wave, sample_rate, channels_in_file)``; raises ``AudioReadError`` for bad audio."""
        wave, sr, channels = read_audio(self.audio, self.start_s, self.duration_s)
        if self.channel is not None and wave.ndim == 2:
            if self.channel >= wave.shape[1]:
                raise AudioReadError(f"channel {self.channel} requested but the file has {wave.shape[1]}")
            wave = np.ascontiguousarray(wave[:, self.channel])
        return wave, sr, channels


Item = SpeechItem | Reject


def resolve_audio_path(path_text: str, bases: Iterable[Path]) -> Path | None:
    p = Path(path_text)
    if p.is_absolute():
        return p if p.is_file() else None
    # lhotse stores paths as they were given when the manifest was made; relative ones are most
    # often relative to the manifest's directory, sometimes to the project root.
    return next((b / p for b in bases if (b / p).is_file()), None)

"""Speech corpus readers: one entry point dispatching on the source kind to the reader of its format
(``read_metadata_csv``, ``read_lhotse``, ``read_hf_audio``). Each yields ``SpeechItem`` or ``Reject``;
bad lines, missing files and unsupported entries never raise. A missing dataset, a missing metadata
file or a wrong column name is a configuration error: ``MaiUserError``, one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mai_models.errors import MaiUserError
from mai_models.tts.config import SpeechSourceConfig
from mai_models.tts.read_hf_audio import read_hf_audio
from mai_models.tts.read_lhotse import read_lhotse
from mai_models.tts.read_metadata_csv import METADATA_FILE, read_ljspeech, read_piper
from mai_models.tts.speech_item import Item

DEMO_INFO_FILE = "dataset.json"


def read_speech_source(
    source: SpeechSourceConfig, root: Path, demo_dir: Path | None = None
) -> Iterator[Item]:
    """Dispatch on ``source.kind``; paths are resolved against the project ``root``."""
    label = source.label
    if source.kind == "demo":
        if demo_dir is None or not (demo_dir / METADATA_FILE).is_file():
            raise MaiUserError(
                f"speech source 'demo': no demo dataset at {demo_dir}: build speech_demo_dataset first"
            )
        yield from read_ljspeech(demo_dir, label, source.speaker or _demo_speaker(demo_dir))
        return
    path = Path(source.path or "")
    path = path if path.is_absolute() else root / path
    if not path.exists():
        raise MaiUserError(f"speech source '{label}': path does not exist: {path}")
    speaker = source.speaker or label
    if source.kind == "ljspeech":
        yield from read_ljspeech(path, label, speaker)
    elif source.kind == "piper":
        yield from read_piper(path, label, speaker)
    elif source.kind == "lhotse":
        yield from read_lhotse(path, label, speaker, root)
    elif source.kind == "hf_disk":
        yield from read_hf_audio(path, label, speaker, source.audio_field, source.text_field)


def _demo_speaker(demo_dir: Path) -> str:
    try:
        teacher = json.loads((demo_dir / DEMO_INFO_FILE).read_text())["teacher"]
        return f"{teacher['name']}-{teacher['voice']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "demo"

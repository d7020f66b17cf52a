"""Hugging Face audio datasets saved with ``save_to_disk``. Rows without a transcript or audio become
rejects; a missing dataset or a wrong column name is a ``MaiUserError`` (one line)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mai_models.data.records import Reject
from mai_models.hf_datasets import saved_splits
from mai_models.tts.speech_item import Item, SpeechItem, resolve_audio_path

_ID_COLUMNS = ("id", "utt_id", "audio_id")
_SPEAKER_COLUMNS = ("speaker", "speaker_id")


def read_hf_audio(path: Path, source: str, speaker: str, audio_field: str, text_field: str) -> Iterator[Item]:
    """An audio dataset written by ``save_to_disk`` (a ``Dataset`` or every split of a
    ``DatasetDict``). The Audio column is read undecoded ({bytes, path}) and decoded here with
    soundfile, so neither torchcodec nor torch is needed."""
    from datasets import Audio

    for split, dataset in saved_splits(path, [audio_field, text_field], "; set audio_field/text_field"):
        if isinstance(dataset.features[audio_field], Audio):
            dataset = dataset.cast_column(audio_field, Audio(decode=False))
        id_col = next((c for c in _ID_COLUMNS if c in dataset.column_names), None)
        spk_col = next((c for c in _SPEAKER_COLUMNS if c in dataset.column_names), None)
        columns = [c for c in (audio_field, text_field, id_col, spk_col) if c]
        prefix = f"{path.name}/{split}" if split else path.name
        bases = [path / split, path] if split else [path]
        row = 0
        for batch in dataset.select_columns(columns).iter(batch_size=64):
            for i in range(len(batch[text_field])):
                origin = f"{prefix}:row{row}"
                utt_id = str(batch[id_col][i]) if id_col else f"{split or 'data'}-{row:06d}"
                spk = batch[spk_col][i] if spk_col else None
                spk_label = str(spk) if spk is not None else speaker
                audio, text = batch[audio_field][i], batch[text_field][i]
                yield _hf_item(audio, text, utt_id, spk_label, source, origin, bases)
                row += 1


def _hf_item(
    audio: object, text: object, utt_id: str, speaker: str, source: str, origin: str, bases: list[Path]
) -> Item:
    if not isinstance(text, str) or not text.strip():
        detail = (
            "transcript is empty"
            if isinstance(text, str) or text is None
            else f"{type(text).__name__} transcript"
        )
        return Reject(source, origin, "empty_transcript", detail, "", utt_id)
    text = text.strip()
    data: bytes | None = None
    path_text: str | None = None
    if isinstance(audio, dict):
        data, path_text = audio.get("bytes"), audio.get("path")
    elif isinstance(audio, str):
        path_text = audio
    if data:
        return SpeechItem(utt_id, speaker, text, source, origin, bytes(data))
    resolved = resolve_audio_path(path_text, bases) if path_text else None
    if resolved is None:
        return Reject(
            source, origin, "missing_audio", f"no audio bytes and no file at {path_text!r}", text, utt_id
        )
    return SpeechItem(utt_id, speaker, text, source, origin, resolved)

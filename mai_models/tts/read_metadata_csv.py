"""LJSpeech and Piper corpora: ``metadata.csv`` + ``wavs/``. Bad lines and missing files become
rejects; a missing metadata file is a configuration error (``MaiUserError``, one line)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mai_models.data.records import Reject
from mai_models.errors import MaiUserError
from mai_models.tts.speech_item import Item, SpeechItem

METADATA_FILE = "metadata.csv"
WAVS_DIR = "wavs"


def _metadata_file(path: Path, kind: str) -> Path:
    meta = path if path.is_file() else path / METADATA_FILE
    if not meta.is_file():
        raise MaiUserError(
            f"{kind} dataset {path}: no {METADATA_FILE} (expected {kind} layout: metadata.csv + wavs/)"
        )
    return meta


def _metadata_rows(meta: Path, source: str) -> Iterator[tuple[str, list[str]] | Reject]:
    """``(origin, fields)`` per non-blank line; undecodable lines become rejects."""
    with meta.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            origin = f"{meta.name}:{lineno}"
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield Reject(
                    source, origin, "bad_metadata_line", f"invalid UTF-8: {exc}", Reject.preview_of(raw)
                )
                continue
            yield origin, line.split("|")


def _utterance(
    source: str, origin: str, utt_id: str, speaker: str, text: str, audio: Path | None, line: str
) -> Item:
    if not utt_id:
        return Reject(source, origin, "bad_metadata_line", "empty id", Reject.preview_of(line))
    if not text:
        return Reject(
            source, origin, "empty_transcript", "transcript is empty", Reject.preview_of(line), utt_id
        )
    if audio is None:
        return Reject(source, origin, "missing_audio", f"no audio file for '{utt_id}'", text, utt_id)
    return SpeechItem(utt_id, speaker, text, source, origin, audio)


def read_ljspeech(path: Path, source: str, speaker: str) -> Iterator[Item]:
    """``id|text|normalized_text`` (the third column optional); audio ``wavs/<id>.wav``. The
    normalized column (numbers and abbreviations spelled out) is the transcript when present."""
    meta = _metadata_file(path, "ljspeech")
    wavs = meta.parent / WAVS_DIR
    for row in _metadata_rows(meta, source):
        if isinstance(row, Reject):
            yield row
            continue
        origin, fields = row
        line = "|".join(fields)
        if len(fields) not in (2, 3):
            detail = f"{len(fields)} columns, expected id|text|normalized_text"
            yield Reject(source, origin, "bad_metadata_line", detail, Reject.preview_of(line))
            continue
        utt_id = fields[0].strip()
        text = (fields[2].strip() if len(fields) == 3 else "") or fields[1].strip()
        wav = wavs / f"{utt_id}.wav"
        yield _utterance(source, origin, utt_id, speaker, text, wav if wav.is_file() else None, line)


def read_piper(path: Path, source: str, speaker: str) -> Iterator[Item]:
    """Piper's training layout: ``id|speaker|text`` (multi-speaker) or ``id|text``; audio
    ``wavs/<id>.wav`` where the id may already carry the ``.wav``."""
    meta = _metadata_file(path, "piper")
    wavs = meta.parent / WAVS_DIR
    for row in _metadata_rows(meta, source):
        if isinstance(row, Reject):
            yield row
            continue
        origin, fields = row
        line = "|".join(fields)
        if len(fields) == 3:
            name, row_speaker, text = fields
        elif len(fields) == 2:
            (name, text), row_speaker = fields, ""
        else:
            detail = f"{len(fields)} columns, expected id|speaker|text or id|text"
            yield Reject(source, origin, "bad_metadata_line", detail, Reject.preview_of(line))
            continue
        name = name.strip()
        utt_id = name[: -len(".wav")] if name.lower().endswith(".wav") else name
        candidates = [wavs / name] if name.lower().endswith(".wav") else [wavs / f"{name}.wav", wavs / name]
        wav = next((c for c in candidates if c.is_file()), None)
        yield _utterance(source, origin, utt_id, row_speaker.strip() or speaker, text.strip(), wav, line)

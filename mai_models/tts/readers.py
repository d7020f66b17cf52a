"""Speech corpus readers. Each yields ``SpeechItem`` (transcript + where its audio is, decoded later)
or ``Reject``; bad lines, missing files and unsupported entries never raise. A missing dataset, a
missing metadata file or a wrong column name is a configuration error: ``MaiUserError``, one line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mai_models.data.records import Reject
from mai_models.errors import MaiUserError
from mai_models.hf_datasets import saved_splits
from mai_models.tts.audio import AudioReadError, read_audio
from mai_models.tts.config import SpeechConfig, SpeechSourceConfig

METADATA_FILE = "metadata.csv"
WAVS_DIR = "wavs"
DEMO_INFO_FILE = "dataset.json"


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


# --- LJSpeech and Piper: metadata.csv + wavs/ -------------------------------------------------


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


# --- lhotse manifests (parsed directly; the lhotse package is not needed) -----------------------


def _is_jsonl(p: Path) -> bool:
    return p.name.endswith((".jsonl", ".jsonl.gz"))


def _lhotse_manifests(path: Path) -> list[tuple[Path, Path | None]]:
    """``(cuts, None)`` or ``(recordings, supervisions)`` pairs, in name order."""

    def partner(p: Path, a: str, b: str) -> Path:
        other = p.with_name(p.name.replace(a, b))
        if not other.is_file():
            raise MaiUserError(f"lhotse manifest {p} has no matching {other.name}")
        return other

    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and _is_jsonl(p))
    manifests: list[tuple[Path, Path | None]] = []
    for f in files:
        if "recordings" in f.name:
            manifests.append((f, partner(f, "recordings", "supervisions")))
        elif "supervisions" in f.name:
            if path.is_file():  # a directory lists the pair once, through its recordings file
                manifests.append((partner(f, "supervisions", "recordings"), f))
            else:
                partner(f, "supervisions", "recordings")
        elif "features" not in f.name:  # feature manifests carry no audio or text
            manifests.append((f, None))
    if not manifests:
        raise MaiUserError(
            f"lhotse source {path}: no manifests (*cuts*.jsonl[.gz] or *recordings*/*supervisions* pairs)"
        )
    return manifests


def _jsonl_objects(path: Path, source: str) -> Iterator[tuple[str, dict[str, Any]] | Reject]:
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):  # noqa: B007 - lineno is read after a failure
                origin = f"{path.name}:{lineno}"
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    yield Reject(source, origin, "bad_metadata_line", str(exc)[:300], Reject.preview_of(raw))
                    continue
                if not isinstance(obj, dict):
                    yield Reject(
                        source, origin, "bad_metadata_line", "not a JSON object", Reject.preview_of(raw)
                    )
                    continue
                yield origin, obj
    except (OSError, EOFError) as exc:  # truncated or corrupt gzip: what came before still counts
        yield Reject(
            source, f"{path.name}:{lineno + 1}", "bad_metadata_line", f"{type(exc).__name__}: {exc}"[:300]
        )


def _resolve(path_text: str, bases: Iterable[Path]) -> Path | None:
    p = Path(path_text)
    if p.is_absolute():
        return p if p.is_file() else None
    # lhotse stores paths as they were given when the manifest was made; relative ones are most
    # often relative to the manifest's directory, sometimes to the project root.
    return next((b / p for b in bases if (b / p).is_file()), None)


def _recording_audio(
    rec: dict[str, Any], channel: object, bases: list[Path]
) -> tuple[Path, int | None] | Reject:
    """The file (and channel inside it) holding ``channel`` of a lhotse Recording."""

    def reject(reason: str, detail: str) -> Reject:
        return Reject("", "", reason, detail)

    sources = rec.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, dict) for s in sources):
        return reject("bad_metadata_line", f"recording '{rec.get('id')}' has no sources")
    if isinstance(channel, int):
        chosen = next((s for s in sources if channel in (s.get("channels") or [0])), None)
        if chosen is None:
            return reject("bad_metadata_line", f"recording '{rec.get('id')}' has no channel {channel}")
    elif len(sources) == 1:
        chosen = sources[0]
    else:
        return reject(
            "unsupported_audio_source", "one file per channel but the supervision names no single channel"
        )
    if chosen.get("type") != "file":
        return reject("unsupported_audio_source", f"source type '{chosen.get('type')}' (only 'file' is read)")
    path = _resolve(str(chosen.get("source", "")), bases)
    if path is None:
        return reject("missing_audio", f"audio file not found: {chosen.get('source')}")
    file_channels = chosen.get("channels") or [0]
    in_file = file_channels.index(channel) if isinstance(channel, int) and len(file_channels) > 1 else None
    return path, in_file


def _supervision_item(
    sup: dict[str, Any],
    rec: dict[str, Any],
    offset: float,
    source: str,
    origin: str,
    speaker: str,
    bases: list[Path],
) -> Item:
    utt_id = str(sup.get("id") or "")
    text = sup.get("text")
    preview = text if isinstance(text, str) else json.dumps(sup)[:300]
    try:
        start = offset + float(sup.get("start", 0.0))
        duration = float(sup["duration"])
    except (KeyError, TypeError, ValueError):
        return Reject(
            source,
            origin,
            "bad_metadata_line",
            "supervision needs numeric start and duration",
            preview,
            utt_id or None,
        )
    if not utt_id:
        return Reject(source, origin, "bad_metadata_line", "supervision has no id", preview)
    if not isinstance(text, str) or not text.strip():
        return Reject(source, origin, "empty_transcript", "supervision has no text", preview, utt_id)
    audio = _recording_audio(rec, sup.get("channel"), bases)
    if isinstance(audio, Reject):
        return Reject(source, origin, audio.reason, audio.detail, text, utt_id)
    path, channel = audio
    spk = sup.get("speaker")
    return SpeechItem(
        utt_id, str(spk) if spk else speaker, text.strip(), source, origin, path, start, duration, channel
    )


def read_lhotse(path: Path, source: str, speaker: str, root: Path) -> Iterator[Item]:
    """lhotse CutSet manifests (one JSON cut per line, supervisions inside) or RecordingSet +
    SupervisionSet pairs. Every supervision is one utterance: ``[start, start + duration)`` of its
    recording (a cut's supervision times are relative to the cut's own start, as lhotse defines)."""
    for first, second in _lhotse_manifests(path):
        bases = [first.parent, root]
        if second is None:
            yield from _read_cuts(first, source, speaker, bases)
        else:
            yield from _read_recordings_supervisions(first, second, source, speaker, bases)


def _read_cuts(path: Path, source: str, speaker: str, bases: list[Path]) -> Iterator[Item]:
    for row in _jsonl_objects(path, source):
        if isinstance(row, Reject):
            yield row
            continue
        origin, cut = row
        rec = cut.get("recording")
        if not isinstance(rec, dict):
            kind = cut.get("type", "cut")
            yield Reject(
                source,
                origin,
                "unsupported_cut",
                f"{kind} without a recording (mixed or feature-only cut)",
                "",
                cut.get("id"),
            )
            continue
        sups = cut.get("supervisions")
        if not isinstance(sups, list) or not sups:
            yield Reject(source, origin, "empty_transcript", "cut has no supervisions", "", cut.get("id"))
            continue
        try:
            offset = float(cut.get("start", 0.0))
        except (TypeError, ValueError):
            yield Reject(source, origin, "bad_metadata_line", "cut start is not a number", "", cut.get("id"))
            continue
        for k, sup in enumerate(sups):
            sub_origin = f"{origin}#{k}" if len(sups) > 1 else origin
            if not isinstance(sup, dict):
                yield Reject(source, sub_origin, "bad_metadata_line", "supervision is not an object")
                continue
            yield _supervision_item(sup, rec, offset, source, sub_origin, speaker, bases)


def _read_recordings_supervisions(
    rec_path: Path, sup_path: Path, source: str, speaker: str, bases: list[Path]
) -> Iterator[Item]:
    recordings: dict[str, dict[str, Any]] = {}
    for row in _jsonl_objects(rec_path, source):
        if isinstance(row, Reject):
            yield row
            continue
        origin, rec = row
        rec_id = rec.get("id")
        if not isinstance(rec_id, str) or not rec_id:
            yield Reject(source, origin, "bad_metadata_line", "recording has no id", json.dumps(rec)[:300])
        elif rec_id in recordings:
            yield Reject(
                source, origin, "duplicate_recording", f"recording '{rec_id}' listed twice", "", rec_id
            )
        else:
            recordings[rec_id] = rec  # metadata only: a few hundred bytes per recording
    for row in _jsonl_objects(sup_path, source):
        if isinstance(row, Reject):
            yield row
            continue
        origin, sup = row
        rec = recordings.get(str(sup.get("recording_id")))
        if rec is None:
            detail = f"recording '{sup.get('recording_id')}' is not in {rec_path.name}"
            text = sup.get("text") if isinstance(sup.get("text"), str) else ""
            yield Reject(source, origin, "missing_recording", detail, text, sup.get("id"))
            continue
        yield _supervision_item(sup, rec, 0.0, source, origin, speaker, bases)


# --- Hugging Face datasets saved with save_to_disk --------------------------------------------

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
    resolved = _resolve(path_text, bases) if path_text else None
    if resolved is None:
        return Reject(
            source, origin, "missing_audio", f"no audio bytes and no file at {path_text!r}", text, utt_id
        )
    return SpeechItem(utt_id, speaker, text, source, origin, resolved)


def inputs_fingerprint(cfg: SpeechConfig, root: Path) -> dict[str, list[tuple[str, int, int]]]:
    """Cheap change detector for the non-demo sources: (file, size, mtime) of everything under
    each source path, as DVC's state cache does. The demo source is versioned by its own stage."""
    result: dict[str, list[tuple[str, int, int]]] = {}
    for source in cfg.sources:
        if source.kind == "demo":
            continue
        path = Path(source.path or "")
        path = path if path.is_absolute() else root / path
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            files = []
        base = path if path.is_dir() else path.parent
        result[source.label] = [
            (str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
        ]
    return result

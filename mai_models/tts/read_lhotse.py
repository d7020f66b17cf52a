"""lhotse manifests, parsed directly (the lhotse package is not needed). Bad lines, missing files and
unsupported entries become rejects; a directory without manifests is a ``MaiUserError``."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mai_models.data.records import Reject
from mai_models.errors import MaiUserError
from mai_models.tts.speech_item import Item, SpeechItem, resolve_audio_path


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
    path = resolve_audio_path(str(chosen.get("source", "")), bases)
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

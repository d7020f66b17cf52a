"""The speech_corpus stage: every configured source decoded, downmixed, resampled to the model rate,
trimmed and screened clip by clip. Kept clips become ``wavs/<utt_id>.wav`` + ``utterances.parquet``;
every rejected clip lands in ``quarantine.parquet`` with its reason. Clips are streamed one at a time,
and the output is byte-identical when rebuilt from the same inputs."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mai_models.data.quarantine import QuarantineWriter
from mai_models.data.records import Reject
from mai_models.data.schema import QUARANTINE_FILE
from mai_models.errors import MaiUserError
from mai_models.tts.audio import (
    AudioReadError,
    clipping_ratio,
    is_silent,
    resample,
    silence_ratio,
    to_mono,
    trim_silence,
    write_wav,
)
from mai_models.tts.config import SpeechConfig
from mai_models.tts.readers import DEMO_INFO_FILE, read_speech_source
from mai_models.tts.speech_item import SpeechItem

UTTERANCES_FILE = "utterances.parquet"
WAVS_DIR = "wavs"

UTTERANCES_SCHEMA = pa.schema(
    [
        pa.field("utt_id", pa.string(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),  # transcript as the source has it
        pa.field("normalized_text", pa.string(), nullable=False),  # what the frontend made of it
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),  # file:line or dataset/split:row
        pa.field("split", pa.string(), nullable=False),  # train | valid
        pa.field("path", pa.string(), nullable=False),  # wavs/<utt_id>.wav, relative to the corpus dir
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("channels", pa.int32(), nullable=False),
        pa.field("sample_rate_in", pa.int32(), nullable=False),
        pa.field("channels_in", pa.int32(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),  # after trimming
        pa.field("chars_per_second", pa.float64(), nullable=False),  # normalized chars / seconds
        pa.field("silence_ratio", pa.float64(), nullable=False),
        pa.field("clipping_ratio", pa.float64(), nullable=False),
    ]
)

Normalizer = Callable[[str], str]


def utterance_id(label: str, raw_id: str) -> str:
    """``<source label>_<source id>``, restricted to file-name-safe characters. The label is always
    there, so adding a source never renames (or re-splits) the utterances of the others."""
    return f"{_slug(label)}_{_slug(raw_id)}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def _hash_unit(utt_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{utt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def build_speech_corpus(
    cfg: SpeechConfig, root: Path, demo_dir: Path | None, out: Path, normalize: Normalizer
) -> dict[str, Any]:
    """Build ``out/`` from every source in ``cfg.sources``; returns deterministic stats.

    ``normalize`` is the text frontend's normaliser; it raises ``MaiUserError`` for a transcript it
    cannot turn into speakable text, which quarantines that clip (``unnormalisable_transcript``)."""
    out.mkdir(parents=True, exist_ok=True)
    wav_dir = out / WAVS_DIR
    if wav_dir.exists():  # clips from an earlier build must not linger next to the new table
        shutil.rmtree(wav_dir)
    wav_dir.mkdir()
    quarantine = QuarantineWriter(out / QUARANTINE_FILE, stage="speech_corpus")
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}  # utt_id -> origin of its first occurrence
    read = 0
    for source in cfg.sources:
        for item in read_speech_source(source, root, demo_dir):
            read += 1
            if isinstance(item, Reject):
                doc_id = utterance_id(item.source, item.doc_id) if item.doc_id else None
                quarantine.add(replace(item, doc_id=doc_id))
                continue
            utt_id = utterance_id(item.source, item.utt_id)
            if utt_id in seen:
                detail = f"id '{item.utt_id}' already used at {seen[utt_id]}"
                quarantine.add(Reject(item.source, item.origin, "duplicate_id", detail, item.text, utt_id))
                continue
            seen[utt_id] = item.origin
            result = _process(item, utt_id, cfg, normalize, wav_dir)
            if isinstance(result, Reject):
                quarantine.add(result)
            else:
                rows.append(result)
    _assign_splits(rows, cfg)
    pq.write_table(pa.Table.from_pylist(rows, schema=UTTERANCES_SCHEMA), out / UTTERANCES_FILE)
    quarantine.close()
    return _stats(cfg, rows, read, quarantine, demo_dir)


def _process(
    item: SpeechItem, utt_id: str, cfg: SpeechConfig, normalize: Normalizer, wav_dir: Path
) -> dict[str, Any] | Reject:
    """One clip through every check, cheapest first; the first failed check names the reject."""

    def reject(reason: str, detail: str) -> Reject:
        return Reject(item.source, item.origin, reason, detail, Reject.preview_of(item.text), utt_id)

    try:
        normalized = normalize(item.text)
    except MaiUserError as exc:
        return reject("unnormalisable_transcript", str(exc)[:300])
    if not normalized.strip():
        return reject("unnormalisable_transcript", "normalises to an empty string")
    try:
        decoded, sr_in, channels_in = item.load()
    except FileNotFoundError as exc:  # deleted between listing and reading
        return reject("missing_audio", str(exc)[:300])
    except AudioReadError as exc:
        return reject("unreadable_audio", str(exc))
    # Clipping is a property of the recording: measured before downmix and resampling smooth it.
    clipped = clipping_ratio(decoded)
    wave = resample(to_mono(decoded), sr_in, cfg.sample_rate)
    del decoded
    sr = cfg.sample_rate
    if is_silent(wave, sr):
        return reject("silent_audio", "no frame above the silence floor")
    trimmed, _, _ = trim_silence(wave, sr, cfg.trim_top_db)
    seconds = len(trimmed) / sr
    cps = len(normalized) / seconds if seconds else float("inf")
    silent_share = silence_ratio(trimmed, sr, cfg.trim_top_db)
    failed = _threshold_reject(cfg, seconds, cps, silent_share, clipped)
    if failed:
        return reject(*failed)
    write_wav(wav_dir / f"{utt_id}.wav", trimmed, sr)
    return {
        "utt_id": utt_id,
        "speaker": item.speaker,
        "text": item.text,
        "normalized_text": normalized,
        "source": item.source,
        "origin": item.origin,
        "split": "",
        "path": f"{WAVS_DIR}/{utt_id}.wav",
        "sample_rate": sr,
        "channels": 1,
        "sample_rate_in": sr_in,
        "channels_in": channels_in,
        "seconds": seconds,
        "chars_per_second": cps,
        "silence_ratio": silent_share,
        "clipping_ratio": clipped,
    }


def _threshold_reject(
    cfg: SpeechConfig, seconds: float, cps: float, silent_share: float, clipped: float
) -> tuple[str, str] | None:
    if seconds < cfg.min_seconds:
        return "too_short", f"{seconds:.3f}s after trimming < {cfg.min_seconds:g}s"
    if seconds > cfg.max_seconds:
        return "too_long", f"{seconds:.3f}s after trimming > {cfg.max_seconds:g}s"
    # Characters per second catch transcripts that do not belong to the clip (misaligned lines,
    # truncated audio) without any ASR.
    if cps > cfg.max_chars_per_second:
        return "chars_per_second_too_high", f"{cps:.1f} chars/s > {cfg.max_chars_per_second:g}"
    if cps < cfg.min_chars_per_second:
        return "chars_per_second_too_low", f"{cps:.1f} chars/s < {cfg.min_chars_per_second:g}"
    if clipped > cfg.max_clipping_ratio:
        return "clipped_audio", f"{clipped:.4f} of samples at full scale > {cfg.max_clipping_ratio:g}"
    if silent_share > cfg.max_silence_ratio:
        return "too_much_silence", f"{silent_share:.2f} of frames silent > {cfg.max_silence_ratio:g}"
    return None


def _assign_splits(rows: list[dict[str, Any]], cfg: SpeechConfig) -> None:
    """Stable hash split; with two or more clips both splits are non-empty, so validation never
    runs on nothing (the clip closest to the boundary moves, which keeps the choice stable)."""
    units = [_hash_unit(r["utt_id"], cfg.split_salt) for r in rows]
    for row, u in zip(rows, units, strict=True):
        row["split"] = "valid" if u < cfg.valid_fraction else "train"
    if len(rows) < 2:
        return
    splits = {r["split"] for r in rows}
    if "valid" not in splits:
        rows[int(np.argmin(units))]["split"] = "valid"
    elif "train" not in splits:
        rows[int(np.argmax(units))]["split"] = "train"


def _stats(
    cfg: SpeechConfig,
    rows: list[dict[str, Any]],
    read: int,
    quarantine: QuarantineWriter,
    demo_dir: Path | None,
) -> dict[str, Any]:
    by_source: Counter[str] = Counter({s.label: 0 for s in cfg.sources})
    by_source.update(r["source"] for r in rows)
    splits = Counter({"train": 0, "valid": 0})
    splits.update(r["split"] for r in rows)
    stats: dict[str, Any] = {
        "utterances": len(rows),
        "minutes": round(sum(r["seconds"] for r in rows) / 60, 4),
        "speakers": len({r["speaker"] for r in rows}),
        "read": read,
        "rejected": quarantine.count,
        "rejected_by_reason": dict(sorted(quarantine.by_reason.items())),
        "by_source": dict(sorted(by_source.items())),
        "splits": dict(splits),
        "sample_rate": cfg.sample_rate,
    }
    info_file = demo_dir / DEMO_INFO_FILE if demo_dir is not None else None
    if any(s.kind == "demo" for s in cfg.sources) and info_file is not None and info_file.is_file():
        info = json.loads(info_file.read_text())
        stats["synthetic"] = bool(info.get("synthetic", False))
        stats["teacher"] = info.get("teacher", {})
    return stats

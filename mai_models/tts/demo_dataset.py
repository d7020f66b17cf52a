"""The speech_demo_dataset stage: SYNTHETIC speech for a demo voice, made by reading sentences of the
text corpus aloud with a teacher synthesizer (flite, else espeak-ng), in LJSpeech format.

There is no human speech corpus that installs offline, so the demo trains on a teacher's voice and
says so everywhere: ``dataset.json``, the README's first line and the returned stats."""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import soundfile as sf

from mai_models.data.clean_documents import read_clean_split
from mai_models.errors import MaiUserError
from mai_models.tts.config import DemoSpeechConfig
from mai_models.tts.teacher import Teacher, pick_teacher

METADATA_FILE = "metadata.csv"
WAVS_DIR = "wavs"
HELDOUT_DIR = "heldout"
INFO_FILE = "dataset.json"

# Only characters every teacher reads the same way the text frontend will: no digits, symbols or
# abbreviations, so the transcript needs no normalisation (normalized_text == text).
_SENTENCE = re.compile(r"[A-Z][A-Za-z ,.?!';:-]*[.?!]")
_BOUNDARY = re.compile(r"(?<=[.?!])\s+")
_WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")


def candidate_sentences(doc: str, min_words: int, max_words: int) -> Iterator[str]:
    """Sentences of ``doc`` that a teacher can read without any text normalisation."""
    for sentence in _BOUNDARY.split(" ".join(doc.split())):
        if not _SENTENCE.fullmatch(sentence):
            continue
        words = sentence.split()
        if not min_words <= len(words) <= max_words:
            continue
        # Acronyms and CamelCase names (two capitals in a word) are spelled out by some teachers and
        # read as words by others; "e.g." needs expansion; "-b" or "--" are not words.
        if not all(_WORD.fullmatch(w.rstrip(",.?!;:")) and sum(c.isupper() for c in w) <= 1 for w in words):
            continue
        yield sentence


def _key(seed: int, sentence: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{sentence}".encode()).digest()[:8], "big")


def select_sentences(
    docs: Iterable[str], n: int, cfg: DemoSpeechConfig, exclude: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """The ``n`` distinct candidates with the smallest seeded hash, in hash order: a deterministic
    sample spread over the whole corpus (not its first files), kept in a bounded heap so the
    corpus is streamed."""
    heap: list[tuple[int, str]] = []  # (-key, sentence): the root is the largest key kept
    kept: set[str] = set()
    for doc in docs:
        for sentence in candidate_sentences(doc, cfg.min_words, cfg.max_words):
            if sentence in kept or sentence in exclude or n <= 0:
                continue
            key = _key(cfg.seed, sentence)
            if len(heap) < n:
                heapq.heappush(heap, (-key, sentence))
                kept.add(sentence)
            elif key < -heap[0][0]:
                _, dropped = heapq.heapreplace(heap, (-key, sentence))
                kept.discard(dropped)
                kept.add(sentence)
    return [s for _, s in sorted((-k, s) for k, s in heap)]


def iter_split_texts(clean_dir: Path, split: str) -> Iterator[str]:
    column = read_clean_split(clean_dir, split, ["text"]).column("text")
    for chunk in column.chunks:
        yield from (doc for doc in chunk.to_pylist() if doc)


def build_demo_speech_dataset(
    cfg: DemoSpeechConfig, clean_dir: Path, out: Path, teacher: Teacher | None = None, workers: int = 2
) -> dict[str, Any]:
    """Write ``out/metadata.csv`` + ``out/wavs/`` (train split sentences), ``out/heldout/`` (test
    split sentences, for comparing WER of teacher and model), ``dataset.json`` and ``README.md``.
    ``teacher`` defaults to ``pick_teacher(cfg.teacher, ...)``. Returns deterministic stats."""
    if not sorted(clean_dir.glob("train-*.parquet")):
        raise MaiUserError(
            f"no clean train split at {clean_dir}: run `mai data ingest --only clean_documents` first"
        )
    teacher = teacher or pick_teacher(cfg.teacher, cfg.flite_voice, cfg.espeak_voice)
    train = select_sentences(iter_split_texts(clean_dir, "train"), cfg.sentences, cfg)
    if not train:
        raise MaiUserError(
            f"the clean corpus at {clean_dir} has no sentence of {cfg.min_words}-{cfg.max_words} plain "
            "words to read aloud; lower speech.demo.min_words or add text sources"
        )
    heldout = select_sentences(
        iter_split_texts(clean_dir, "test"), cfg.heldout_sentences, cfg, exclude=set(train)
    )
    if len(heldout) < cfg.heldout_sentences:  # a tiny corpus may have a test split with too little prose
        more = select_sentences(
            iter_split_texts(clean_dir, "valid"),
            cfg.heldout_sentences - len(heldout),
            cfg,
            exclude={*train, *heldout},
        )
        heldout += more

    for stale in (out / WAVS_DIR, out / HELDOUT_DIR):
        if stale.exists():
            shutil.rmtree(stale)
    out.mkdir(parents=True, exist_ok=True)
    train_ids = [f"s{i:05d}" for i in range(1, len(train) + 1)]
    heldout_ids = [f"h{i:05d}" for i in range(1, len(heldout) + 1)]
    train_seconds = _synthesize(teacher, train, train_ids, out, workers)
    heldout_seconds = _synthesize(teacher, heldout, heldout_ids, out / HELDOUT_DIR, workers)

    info = teacher.info()
    license_note = (
        f"Synthetic speech generated by {info['name']} {info['version']} (voice {info['voice']}; "
        f"program license: {info['license']}). The transcripts are sentences of the project's clean "
        "text corpus and keep that corpus's source licenses. Not human speech."
    )
    dataset = {
        "synthetic": True,
        "teacher": info,
        "sentences": len(train),
        "heldout": len(heldout),
        "format": "ljspeech",
        "license_note": license_note,
    }
    (out / INFO_FILE).write_text(json.dumps(dataset, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(_readme(info, len(train), len(heldout), train_seconds, license_note))
    return {
        "synthetic": True,
        "teacher": info["name"],
        "teacher_version": info["version"],
        "teacher_voice": info["voice"],
        "sample_rate": info["sample_rate"],
        "sentences": len(train),
        "heldout": len(heldout),
        "minutes": round(train_seconds / 60, 4),
        "heldout_minutes": round(heldout_seconds / 60, 4),
        "total_minutes": round((train_seconds + heldout_seconds) / 60, 4),
    }


def _synthesize(teacher: Teacher, texts: list[str], ids: list[str], out: Path, workers: int) -> float:
    """LJSpeech layout under ``out``; returns the seconds of audio written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = teacher.synthesize_to(texts, out / WAVS_DIR, workers=workers, names=ids)
    # The same sentence in both text columns: the selection admits only text needing no normalisation.
    lines = [f"{utt_id}|{text}|{text}\n" for utt_id, text in zip(ids, texts, strict=True)]
    (out / METADATA_FILE).write_text("".join(lines), encoding="utf-8")
    return sum(sf.info(str(p)).duration for p in paths)


def _readme(info: dict[str, Any], sentences: int, heldout: int, seconds: float, license_note: str) -> str:
    name, version, voice = info["name"], info["version"], info["voice"]
    return (
        f"# SYNTHETIC speech made by {name} {version} (voice {voice}), not human speech\n"
        "\n"
        f"{sentences} sentences ({seconds / 60:.1f} minutes, {info['sample_rate']} Hz) of the project's "
        f"clean text corpus read aloud by the teacher synthesizer {name}, in LJSpeech format:\n"
        "\n"
        "- `metadata.csv`: `id|text|normalized_text` (both text columns are the same sentence)\n"
        "- `wavs/<id>.wav`: the teacher's audio, PCM16 mono\n"
        f"- `heldout/`: {heldout} more sentences from the test split in the same layout, never trained on; "
        "their teacher audio is the reference when the trained voice's word error rate is measured\n"
        "- `dataset.json`: the teacher (name, version, voice, sample rate, license) and counts\n"
        "\n"
        "A voice trained on this data imitates the teacher program, not a person.\n"
        "\n"
        f"License: {license_note}\n"
    )

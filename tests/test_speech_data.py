"""Speech data plane on real audio files: readers for every format, audio primitives, the corpus
quarantine (exact counts per reason), byte-identical rebuilds, teachers and offline ASR."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from mai_models.data.records import Reject
from mai_models.data.schema import CLEAN_SCHEMA, clean_shard_name
from mai_models.errors import MaiUserError
from mai_models.tts.audio import (
    AudioReadError,
    clipping_ratio,
    is_silent,
    read_audio,
    resample,
    silence_ratio,
    trim_silence,
    write_wav,
)
from mai_models.tts.config import DemoSpeechConfig, SpeechConfig, SpeechSourceConfig
from mai_models.tts.corpus import UTTERANCES_FILE, build_speech_corpus
from mai_models.tts.readers import read_speech_source
from mai_models.tts.speech_item import SpeechItem

HAVE_FLITE = shutil.which("flite") is not None
needs_flite = pytest.mark.skipif(not HAVE_FLITE, reason="Debian flite is not installed")


def speechlike(
    seconds: float, sr: int, amp: float = 0.5, pad: float = 0.15, freq: float = 140.0
) -> np.ndarray:
    """Harmonic 'voice' with a syllable-rate envelope (never silent inside), padded with silence."""
    t = np.arange(int(seconds * sr)) / sr
    voiced = sum(np.sin(2 * np.pi * freq * (k + 1) * t) / (k + 1) for k in range(4))
    x = voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t))
    x = amp * x / np.abs(x).max()
    silence = np.zeros(int(pad * sr))
    return np.concatenate([silence, x, silence]).astype(np.float32)


def lower_ascii(text: str) -> str:
    """A stand-in text normaliser with the frontend's contract: MaiUserError for what it cannot read."""
    if any("\u0400" <= c <= "\u04ff" for c in text):
        raise MaiUserError(f"cannot normalise Cyrillic text: {text[:20]!r}")
    return " ".join(text.lower().split())


def split_items(items) -> tuple[list[SpeechItem], list[Reject]]:
    items = list(items)
    return [i for i in items if isinstance(i, SpeechItem)], [i for i in items if isinstance(i, Reject)]


# --- audio primitives ------------------------------------------------------------------------


def test_resample_16k_to_22050_keeps_duration_and_pitch(tmp_path: Path) -> None:
    sr_in, sr_out = 16000, 22050
    t = np.arange(sr_in) / sr_in
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = resample(wave, sr_in, sr_out)
    assert out.dtype == np.float32 and len(out) == sr_out
    assert np.argmax(np.abs(np.fft.rfft(out))) == 440  # 1 s of audio: bin k is k Hz
    write_wav(tmp_path / "x.wav", out, sr_out)
    back, sr, channels = read_audio(tmp_path / "x.wav")
    assert (sr, channels, len(back)) == (sr_out, 1, sr_out)
    assert sf.info(str(tmp_path / "x.wav")).subtype == "PCM_16"
    np.testing.assert_allclose(back, out, atol=1 / 32767)


def test_trim_silence_and_clip_metrics() -> None:
    sr = 22050
    wave = speechlike(1.0, sr, pad=0.5)
    trimmed, start, end = trim_silence(wave, sr, 40.0)
    assert abs(start - int(0.5 * sr)) <= 1024 and abs(end - int(1.5 * sr)) <= 1024
    assert len(trimmed) == end - start
    assert silence_ratio(wave, sr, 40.0) < 0.05
    gappy = np.concatenate(
        [speechlike(0.3, sr, pad=0), np.zeros(2 * sr, np.float32), speechlike(0.3, sr, pad=0)]
    )
    assert silence_ratio(gappy, sr, 40.0) > 0.6
    assert clipping_ratio(wave) == 0.0
    assert clipping_ratio(np.clip(4 * wave, -1, 1)) > 0.05
    assert is_silent(np.zeros(sr, np.float32), sr) and not is_silent(wave, sr)
    assert trim_silence(np.zeros(sr, np.float32), sr, 40.0)[1:] == (0, 0)


def test_read_audio_rejects_corrupt_empty_and_stereo_is_kept(tmp_path: Path) -> None:
    with pytest.raises(AudioReadError):
        read_audio(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(200)))
    with pytest.raises(AudioReadError):
        read_audio(b"")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioReadError, match="0 bytes"):
        read_audio(tmp_path / "empty.wav")
    stereo = np.stack([speechlike(0.5, 8000), speechlike(0.5, 8000, freq=200)], axis=1)
    sf.write(tmp_path / "st.flac", stereo, 8000)
    wave, sr, channels = read_audio((tmp_path / "st.flac").read_bytes())
    assert (wave.shape, sr, channels) == (stereo.shape, 8000, 2)


# --- readers ---------------------------------------------------------------------------------


def _ljspeech(root: Path, lines: list[str], clips: dict[str, tuple[np.ndarray, int]]) -> Path:
    (root / "wavs").mkdir(parents=True)
    (root / "metadata.csv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    for name, (wave, sr) in clips.items():
        sf.write(root / "wavs" / name, wave, sr, subtype="PCM_16")
    return root


def test_ljspeech_reader(tmp_path: Path) -> None:
    clip = (speechlike(1.0, 16000), 16000)
    ds = _ljspeech(
        tmp_path / "lj",
        [
            "LJ1|Dr. Smith paid $5.|Doctor Smith paid five dollars.",
            "LJ2|Two columns only.",
            "LJ3|one|two|three",  # four columns
            "LJ4|No audio for this one.|No audio for this one.",
            "LJ5|||",
            "LJ6| | ",
        ],
        {"LJ1.wav": clip, "LJ2.wav": clip, "LJ6.wav": clip},
    )
    (ds / "metadata.csv").write_bytes((ds / "metadata.csv").read_bytes() + b"LJ7|caf\xe9|x\n")
    src = SpeechSourceConfig(kind="ljspeech", path="lj", speaker="linda")
    items, rejects = split_items(read_speech_source(src, tmp_path))
    assert [(i.utt_id, i.text, i.speaker) for i in items] == [
        ("LJ1", "Doctor Smith paid five dollars.", "linda"),  # the normalized column wins
        ("LJ2", "Two columns only.", "linda"),
    ]
    assert [(r.origin, r.reason) for r in rejects] == [
        ("metadata.csv:3", "bad_metadata_line"),
        ("metadata.csv:4", "missing_audio"),
        ("metadata.csv:5", "bad_metadata_line"),  # 4 columns
        ("metadata.csv:6", "empty_transcript"),
        ("metadata.csv:7", "bad_metadata_line"),  # invalid UTF-8
    ]
    wave, sr, channels = items[0].load()
    assert (sr, channels, len(wave)) == (16000, 1, len(clip[0]))


def test_piper_reader_three_and_two_columns(tmp_path: Path) -> None:
    clip = (speechlike(1.0, 22050), 22050)
    _ljspeech(
        tmp_path / "multi",
        ["a.wav|spk1|First speaker line.", "b|spk2|Second speaker line.", "c||No speaker given."],
        {"a.wav": clip, "b.wav": clip, "c.wav": clip},
    )
    _ljspeech(tmp_path / "single", ["x|Only id and text.", "y|Missing audio."], {"x.wav": clip})
    items, rejects = split_items(read_speech_source(SpeechSourceConfig(kind="piper", path="multi"), tmp_path))
    assert [(i.utt_id, i.speaker, i.text) for i in items] == [
        ("a", "spk1", "First speaker line."),
        ("b", "spk2", "Second speaker line."),
        ("c", "piper:multi", "No speaker given."),  # falls back to the source label
    ]
    assert not rejects
    src = SpeechSourceConfig(kind="piper", path="single/metadata.csv", speaker="solo")
    items, rejects = split_items(read_speech_source(src, tmp_path))
    assert [(i.utt_id, i.speaker) for i in items] == [("x", "solo")]
    assert [r.reason for r in rejects] == ["missing_audio"]


def _stereo_recording(path: Path, sr: int = 16000, seconds: float = 4.0) -> np.ndarray:
    left, right = speechlike(seconds, sr, pad=0), speechlike(seconds, sr, pad=0, freq=230)
    data = np.stack([left, right], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype="PCM_16")
    return sf.read(path, dtype="float32")[0]


def _recording(rec_id: str, source: str, channels: list[int], kind: str = "file") -> dict:
    return {
        "id": rec_id,
        "sources": [{"type": kind, "channels": channels, "source": source}],
        "sampling_rate": 16000,
        "num_samples": 64000,
        "duration": 4.0,
        "channel_ids": channels,
    }


def test_lhotse_cutset_manifest(tmp_path: Path) -> None:
    data = _stereo_recording(tmp_path / "corpus" / "audio" / "rec1.wav")
    rec = _recording("rec1", "audio/rec1.wav", [0, 1])
    sup = {"recording_id": "rec1", "speaker": "alice", "language": "English"}
    cuts = [
        {
            "id": "cut1",
            "start": 0.5,
            "duration": 3.0,
            "channel": [0, 1],
            "recording": rec,
            "supervisions": [
                {**sup, "id": "s1", "start": 1.0, "duration": 1.5, "channel": 1, "text": "Right channel."},
                {**sup, "id": "s2", "start": 0.0, "duration": 1.0, "channel": [0, 1], "text": "Both."},
            ],
            "type": "MonoCut",
        },
        {"id": "cut2", "start": 0, "duration": 1, "recording": _recording("r2", "http://x/a.wav", [0], "url"),
         "supervisions": [{**sup, "id": "s3", "start": 0, "duration": 1, "text": "Remote."}]},
        {"id": "mix", "type": "MixedCut", "tracks": []},
        {"id": "cut4", "start": 0, "duration": 1, "recording": rec,
         "supervisions": [{**sup, "id": "s4", "start": 0, "duration": 1, "text": "  "}]},
    ]  # fmt: skip
    manifest = tmp_path / "corpus" / "cuts_train.jsonl.gz"
    with gzip.open(manifest, "wt") as fh:
        fh.write("".join(json.dumps(c) + "\n" for c in cuts) + "{broken\n")
    src = SpeechSourceConfig(kind="lhotse", path="corpus/cuts_train.jsonl.gz")
    items, rejects = split_items(read_speech_source(src, tmp_path))
    assert [(i.utt_id, i.speaker, i.text) for i in items] == [
        ("s1", "alice", "Right channel."),
        ("s2", "alice", "Both."),
    ]
    assert [r.reason for r in rejects] == [
        "unsupported_audio_source",
        "unsupported_cut",
        "empty_transcript",
        "bad_metadata_line",
    ]
    wave, sr, channels = items[0].load()  # supervision time is relative to the cut: 0.5 + 1.0 s
    assert (sr, channels) == (16000, 2)
    np.testing.assert_array_equal(wave, data[24000:48000, 1])
    wave, _, _ = items[1].load()
    assert wave.shape == (16000, 2)  # both channels; the corpus downmixes
    np.testing.assert_array_equal(wave, data[8000:24000])


def test_lhotse_recordings_and_supervisions_pair(tmp_path: Path) -> None:
    data = _stereo_recording(tmp_path / "lh" / "wav" / "r1.wav")
    sf.write(tmp_path / "lh" / "wav" / "mono.wav", data[:, 0], 16000, subtype="PCM_16")
    recordings = [_recording("r1", "wav/r1.wav", [0, 1]), _recording("m", "wav/mono.wav", [0])]

    def sup(utt: str, rec: str, start: float, duration: float, text: str, **extra: str) -> dict:
        return {
            "id": utt,
            "recording_id": rec,
            "start": start,
            "duration": duration,
            "channel": 0,
            "text": text,
            **extra,
        }

    sups = [
        sup("u1", "r1", 2.0, 1.0, "Left.", speaker="bo"),
        sup("u2", "m", 0.25, 0.5, "Mono."),
        sup("u3", "x", 0, 1, "Orphan."),
    ]
    for name, rows in (("libri_recordings_dev.jsonl", recordings), ("libri_supervisions_dev.jsonl", sups)):
        (tmp_path / "lh" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = SpeechSourceConfig(kind="lhotse", path="lh", speaker="narrator")
    items, rejects = split_items(read_speech_source(src, tmp_path))
    assert [(i.utt_id, i.speaker) for i in items] == [("u1", "bo"), ("u2", "narrator")]
    assert [(r.reason, r.doc_id) for r in rejects] == [("missing_recording", "u3")]
    np.testing.assert_array_equal(items[0].load()[0], data[32000:48000, 0])
    wave, _, channels = items[1].load()
    assert channels == 1
    np.testing.assert_array_equal(wave, data[4000:12000, 0])


def test_hf_save_to_disk_audio_dataset(tmp_path: Path) -> None:
    from datasets import Audio, Dataset, DatasetDict

    clip_path = tmp_path / "clip.wav"
    sf.write(clip_path, speechlike(1.0, 24000), 24000, subtype="PCM_16")
    encoded = tmp_path / "enc.flac"
    sf.write(encoded, speechlike(0.5, 16000), 16000)
    audio_type = pa.struct({"bytes": pa.binary(), "path": pa.string()})

    def split(rows: list[tuple[str, dict, str]]) -> Dataset:
        table = pa.table(
            {
                "id": [r[0] for r in rows],
                "speech": pa.array([r[1] for r in rows], audio_type),
                "sentence": [r[2] for r in rows],
            }
        )
        # cast_column, not from_dict(features=...): encoding examples would need torchcodec.
        return Dataset(table).cast_column("speech", Audio(sampling_rate=16000))

    DatasetDict(
        {
            "train": split(
                [
                    ("a", {"bytes": None, "path": str(clip_path)}, "From a path."),
                    ("b", {"bytes": encoded.read_bytes(), "path": "enc.flac"}, "From bytes."),
                    ("c", {"bytes": None, "path": str(clip_path)}, ""),
                ]
            ),
            "test": split([("d", {"bytes": encoded.read_bytes(), "path": None}, "Test split.")]),
        }
    ).save_to_disk(str(tmp_path / "hf"))
    src = SpeechSourceConfig(kind="hf_disk", path="hf", audio_field="speech", text_field="sentence")
    items, rejects = split_items(read_speech_source(src, tmp_path))
    assert [(i.utt_id, i.origin) for i in items] == [
        ("d", "hf/test:row0"),
        ("a", "hf/train:row0"),
        ("b", "hf/train:row1"),
    ]
    assert [(r.reason, r.doc_id) for r in rejects] == [("empty_transcript", "c")]
    assert [i.load()[1] for i in items] == [16000, 24000, 16000]  # decoded by soundfile, rate as stored
    bad = SpeechSourceConfig(kind="hf_disk", path="hf", text_field="transcript", audio_field="speech")
    with pytest.raises(
        MaiUserError, match=r"no column 'transcript' \(columns: .*\); set audio_field/text_field$"
    ):
        list(read_speech_source(bad, tmp_path))


def test_configuration_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty_dir").mkdir()
    cases = [
        (SpeechSourceConfig(kind="ljspeech", path="nowhere"), "path does not exist"),
        (SpeechSourceConfig(kind="ljspeech", path="empty_dir"), "no metadata.csv"),
        (SpeechSourceConfig(kind="lhotse", path="empty_dir"), "no manifests"),
        (SpeechSourceConfig(kind="demo"), "build speech_demo_dataset first"),
    ]
    for src, message in cases:
        with pytest.raises(MaiUserError, match=message) as err:
            list(read_speech_source(src, tmp_path))
        assert "\n" not in str(err.value)


# --- the corpus stage ------------------------------------------------------------------------

GOOD_TEXT = "A clip that passes every check."  # 31 chars over ~2 s


def _messy_dataset(root: Path) -> Path:
    sr = 16000
    stereo = np.stack([speechlike(2.0, 44100), speechlike(2.0, 44100, freq=180)], axis=1)
    gappy = np.concatenate([speechlike(0.3, sr), np.zeros(int(2.4 * sr), np.float32), speechlike(0.3, sr)])
    ds = _ljspeech(
        root / "messy",
        [
            f"good1|{GOOD_TEXT}",
            f"good2|{GOOD_TEXT}|{GOOD_TEXT}",
            f"good3|{GOOD_TEXT}",
            "broken line without separators",
            f"missing|{GOOD_TEXT}",
            "empty||",
            f"good1|{GOOD_TEXT}",  # duplicate id
            "russian|Привет, как дела сегодня у тебя?",
            f"corrupt|{GOOD_TEXT}",
            f"zero|{GOOD_TEXT}",
            f"silent|{GOOD_TEXT}",
            f"clipped|{GOOD_TEXT}",
            "short|Hi.",
            f"long|{GOOD_TEXT} {GOOD_TEXT}",
            "fast|" + "Far too many words for a clip that lasts only one second, it cannot be right.",
            "gappy|Long pause in the middle here.",
        ],
        {
            "good1.wav": (speechlike(2.0, sr), sr),
            "good2.wav": (speechlike(2.2, 22050), 22050),
            "good3.wav": (stereo, 44100),
            "russian.wav": (speechlike(2.0, sr), sr),
            "silent.wav": (np.zeros(2 * sr, np.float32), sr),
            "clipped.wav": (np.clip(4 * speechlike(2.0, sr), -1, 1), sr),
            "short.wav": (speechlike(0.3, sr), sr),
            "long.wav": (speechlike(5.0, sr), sr),
            "fast.wav": (speechlike(1.0, sr), sr),
            "gappy.wav": (gappy, sr),
        },
    )
    (ds / "wavs" / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    (ds / "wavs" / "zero.wav").write_bytes(b"")
    return ds


def _messy_config() -> SpeechConfig:
    return SpeechConfig(
        sources=[SpeechSourceConfig(kind="ljspeech", path="messy", name="messy")], max_seconds=4.0
    )


def test_corpus_quarantines_each_bad_clip_with_its_reason(tmp_path: Path) -> None:
    _messy_dataset(tmp_path)
    out = tmp_path / "corpus"
    stats = build_speech_corpus(_messy_config(), tmp_path, None, out, lower_ascii)
    assert stats["rejected_by_reason"] == {
        "bad_metadata_line": 1,
        "chars_per_second_too_high": 1,
        "clipped_audio": 1,
        "duplicate_id": 1,
        "empty_transcript": 1,
        "missing_audio": 1,
        "silent_audio": 1,
        "too_long": 1,
        "too_much_silence": 1,
        "too_short": 1,
        "unnormalisable_transcript": 1,
        "unreadable_audio": 2,  # corrupt bytes and a zero-byte file
    }
    assert (stats["utterances"], stats["rejected"], stats["read"]) == (3, 13, 16)
    assert stats["by_source"] == {"messy": 3} and stats["sample_rate"] == 22050
    assert stats["splits"]["valid"] >= 1 and sum(stats["splits"].values()) == 3
    assert "synthetic" not in stats

    rows = pq.read_table(out / UTTERANCES_FILE).to_pylist()
    assert [r["utt_id"] for r in rows] == ["messy_good1", "messy_good2", "messy_good3"]
    assert [(r["sample_rate_in"], r["channels_in"]) for r in rows] == [(16000, 1), (22050, 1), (44100, 2)]
    for row in rows:
        assert row["normalized_text"] == GOOD_TEXT.lower() and row["text"] == GOOD_TEXT
        wave, sr, channels = read_audio(out / row["path"])
        assert (sr, channels, row["sample_rate"], row["channels"]) == (22050, 1, 22050, 1)
        assert abs(len(wave) / sr - row["seconds"]) < 1e-9
        assert 1.9 < row["seconds"] < 2.4  # padding trimmed
        assert row["chars_per_second"] == pytest.approx(len(GOOD_TEXT) / row["seconds"])
    assert sorted(p.name for p in (out / "wavs").iterdir()) == [f"messy_good{i}.wav" for i in (1, 2, 3)]

    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert {r["stage"] for r in quarantine} == {"speech_corpus"}
    by_reason = {r["reason"]: r for r in quarantine}
    assert by_reason["unnormalisable_transcript"]["detail"].startswith("cannot normalise Cyrillic")
    assert by_reason["unnormalisable_transcript"]["preview"] == "Привет, как дела сегодня у тебя?"
    assert by_reason["duplicate_id"]["doc_id"] == "messy_good1"
    assert by_reason["clipped_audio"]["doc_id"] == "messy_clipped"


def test_corpus_rebuild_is_byte_identical(tmp_path: Path) -> None:
    _messy_dataset(tmp_path)
    first, second = tmp_path / "a", tmp_path / "b"
    stats_a = build_speech_corpus(_messy_config(), tmp_path, None, first, lower_ascii)
    (second / "wavs").mkdir(parents=True)
    (second / "wavs" / "stale.wav").write_bytes(b"left over from an earlier build")
    stats_b = build_speech_corpus(_messy_config(), tmp_path, None, second, lower_ascii)
    assert stats_a == stats_b

    def files(d: Path) -> dict[str, bytes]:
        return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    assert files(first) == files(second)


def test_corpus_over_several_formats_keeps_ids_apart(tmp_path: Path) -> None:
    clip = (speechlike(2.0, 16000), 16000)
    _ljspeech(tmp_path / "lj", [f"u1|{GOOD_TEXT}"], {"u1.wav": clip})
    _ljspeech(tmp_path / "pp", [f"u1|spk|{GOOD_TEXT}"], {"u1.wav": clip})
    cfg = SpeechConfig(
        sources=[
            SpeechSourceConfig(kind="ljspeech", path="lj"),
            SpeechSourceConfig(kind="piper", path="pp", name="piper set"),
        ]
    )
    stats = build_speech_corpus(cfg, tmp_path, None, tmp_path / "out", lower_ascii)
    assert stats["by_source"] == {"ljspeech:lj": 1, "piper set": 1}
    rows = pq.read_table(tmp_path / "out" / UTTERANCES_FILE).to_pylist()
    assert [r["utt_id"] for r in rows] == ["ljspeech_lj_u1", "piper_set_u1"]
    assert sorted(r["split"] for r in rows) == ["train", "valid"]  # both splits exist from two clips


# --- teachers and the synthetic demo dataset -------------------------------------------------

PROSE = (
    "The river runs past the old mill every spring. Children play near the water while their parents "
    "talk. A small boat drifts slowly toward the bridge. The baker opens his shop before the sun rises. "
    "Fresh bread fills the street with a warm smell. Call 555-0100 for details! Birds sing in the tall "
    "trees behind the church. The NASA probe was launched. Nobody knew where the lost key had gone. "
    "She found it under a pile of autumn leaves. Why does the clock in the hall always run late? "
    "Our neighbour paints the fence a bright shade of green. x = f(y) is code, not prose."
)
HELDOUT_PROSE = (
    "The train left the station exactly on time. Rain fell softly on the quiet village roofs. "
    "He wrote a long letter to his oldest friend."
)


def _clean_dir(root: Path) -> Path:
    """A clean corpus as the text plane writes it: split shards with CLEAN_SCHEMA."""
    root.mkdir(parents=True)
    for split, docs in (("train", [PROSE, PROSE.upper(), ""]), ("test", [HELDOUT_PROSE])):
        rows = [
            {"doc_id": f"{split}{i}", "source": "t", "origin": "t", "text": d, "n_bytes": len(d),
             "n_chars": len(d), "sha256": "0" * 64, "split": split}
            for i, d in enumerate(docs)
        ]  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), root / clean_shard_name(split, 0))
    return root


def test_sentence_selection_is_seeded_and_filters_what_needs_normalising() -> None:
    from mai_models.tts.demo_dataset import candidate_sentences, select_sentences

    found = list(candidate_sentences(PROSE, 5, 22))
    assert "The baker opens his shop before the sun rises." in found
    assert not any(w in s for s in found for w in ("555", "NASA", "f(y)"))
    cfg = DemoSpeechConfig(sentences=4, seed=0)
    picked = select_sentences([PROSE], 4, cfg)
    assert len(picked) == 4 and len(set(picked)) == 4
    # Hash order, not document order: the same picks from a reordered, duplicated corpus.
    shuffled = [" ".join(reversed(found)), PROSE]
    assert select_sentences(shuffled, 4, cfg) == picked
    assert select_sentences([PROSE], 4, DemoSpeechConfig(seed=1)) != picked


def _check_demo(out: Path, stats: dict, teacher_name: str) -> dict:
    assert stats["synthetic"] is True and stats["teacher"] == teacher_name
    assert (stats["sentences"], stats["heldout"]) == (6, 2)
    lines = (out / "metadata.csv").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        utt_id, text, normalized = line.split("|")
        assert text == normalized
        wave, sr, _ = read_audio(out / "wavs" / f"{utt_id}.wav")
        assert sr == stats["sample_rate"] and len(wave) > sr // 2
    assert len((out / "heldout" / "metadata.csv").read_text().splitlines()) == 2
    assert len(list((out / "heldout" / "wavs").glob("*.wav"))) == 2
    info = json.loads((out / "dataset.json").read_text())
    assert info["synthetic"] is True and info["teacher"]["name"] == teacher_name
    assert set(info["teacher"]) == {"name", "version", "voice", "sample_rate", "license"}
    assert info["teacher"]["version"] == stats["teacher_version"] and info["license_note"]
    first = (out / "README.md").read_text().splitlines()[0]
    assert "SYNTHETIC" in first and teacher_name in first and "not human speech" in first
    assert stats["minutes"] > 0 and stats["total_minutes"] > stats["minutes"]
    return info


@needs_flite
def test_demo_dataset_with_flite_feeds_the_corpus(tmp_path: Path) -> None:
    from mai_models.tts.demo_dataset import build_demo_speech_dataset

    cfg = DemoSpeechConfig(sentences=6, heldout_sentences=2, teacher="flite")
    out = tmp_path / "demo"
    stats = build_demo_speech_dataset(cfg, _clean_dir(tmp_path / "clean"), out)
    info = _check_demo(out, stats, "flite")
    assert info["teacher"]["voice"] == "slt" and stats["sample_rate"] == 16000
    heldout = [line.split("|")[1] for line in (out / "heldout" / "metadata.csv").read_text().splitlines()]
    assert all(sentence in HELDOUT_PROSE for sentence in heldout)  # from the test split only

    corpus = build_speech_corpus(SpeechConfig(), tmp_path, out, tmp_path / "corpus", lower_ascii)
    assert corpus["synthetic"] is True and corpus["teacher"] == info["teacher"]
    assert corpus["utterances"] == 6 and corpus["rejected"] == 0  # held-out sentences stay out
    speakers = {r["speaker"] for r in pq.read_table(tmp_path / "corpus" / UTTERANCES_FILE).to_pylist()}
    assert speakers == {"flite-slt"}


def test_demo_dataset_with_espeak_warns_about_wer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mai_models.tts.demo_dataset import build_demo_speech_dataset

    cfg = DemoSpeechConfig(sentences=6, heldout_sentences=2, teacher="espeak")
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="pocketsphinx WER"):
        stats = build_demo_speech_dataset(cfg, _clean_dir(tmp_path / "clean"), tmp_path / "demo")
    assert any("cannot judge espeak-trained models" in r.getMessage() for r in caplog.records)
    info = _check_demo(tmp_path / "demo", stats, "espeak-ng")
    assert info["teacher"]["sample_rate"] == 22050 and "GPL" in info["teacher"]["license"]


def test_espeak_output_is_a_pure_function_of_the_text(tmp_path: Path) -> None:
    from mai_models.tts.teacher import EspeakTeacher

    teacher = EspeakTeacher("en-us")
    texts = [f"Sentence number {w} of the determinism check." for w in ("one", "two", "three", "four")] * 2
    first = teacher.synthesize(texts[0])[0]
    teacher.synthesize("Something else, said in between?")
    np.testing.assert_array_equal(teacher.synthesize(texts[0])[0], first)
    serial = teacher.synthesize_to(texts, tmp_path / "serial", workers=1)
    parallel = teacher.synthesize_to(texts, tmp_path / "parallel", workers=2)  # two worker processes
    assert [p.read_bytes() for p in serial] == [p.read_bytes() for p in parallel]
    with pytest.raises(MaiUserError, match="no voice"):
        EspeakTeacher("xx-nonexistent")


def test_pick_teacher_without_flite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mai_models.tts.teacher import EspeakTeacher, pick_teacher

    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH on which no flite exists
    with pytest.raises(MaiUserError, match="apt-get install flite") as err:
        pick_teacher("flite")
    assert "\n" not in str(err.value)
    with pytest.warns(UserWarning, match="flite is not installed"):
        assert isinstance(pick_teacher("auto"), EspeakTeacher)


@needs_flite
def test_flite_teacher_checks_its_voice() -> None:
    from mai_models.tts.teacher import FliteTeacher, pick_teacher

    teacher = pick_teacher("auto")
    assert isinstance(teacher, FliteTeacher) and teacher.info()["version"].startswith("flite-")
    with pytest.raises(MaiUserError, match="no voice 'nope'"):
        FliteTeacher("nope")


# --- offline ASR -----------------------------------------------------------------------------


def test_error_rates_math() -> None:
    from mai_models.tts.asr import error_rates

    rates = error_rates(["The cat sat.", "Hello, world!"], ["the cat sat", "hello"])
    assert rates == {"wer": pytest.approx(1 / 5), "cer": pytest.approx(6 / 22), "n": 2}
    assert error_rates(["Don't stop, well-known!"], ["dont stop well known"])["wer"] == 0.0
    assert error_rates(["a b", "..."], ["a x", "anything"]) == {
        "wer": 0.5,
        "cer": pytest.approx(1 / 3),
        "n": 1,
    }
    with pytest.raises(ValueError):
        error_rates(["a"], [])


@needs_flite
def test_pocketsphinx_understands_flite(tmp_path: Path) -> None:
    from mai_models.tts.asr import Transcriber, error_rates
    from mai_models.tts.teacher import FliteTeacher

    text = "The weather is nice today and we will go to the park."
    wave, sr = FliteTeacher("slt").synthesize(text)
    transcriber = Transcriber()
    hyp = transcriber.transcribe(resample(wave, sr, 22050), 22050)  # any input rate
    assert error_rates([text], [hyp])["wer"] < 0.5
    stereo = np.stack([wave, wave], axis=1)
    assert transcriber.transcribe(stereo, sr) == transcriber.transcribe(wave, sr)  # decoder reused


@needs_flite
def test_a_transcript_does_not_depend_on_what_the_decoder_heard_before() -> None:
    from mai_models.tts.asr import Transcriber
    from mai_models.tts.teacher import FliteTeacher

    teacher = FliteTeacher("slt")
    # Eight of the demo's held-out sentences: read one after another, the live front end used to
    # turn the last into "sad and there is the new event with exception handler".
    sentences = [
        "Must be last statement in a turtle graphics program.",
        "All attributes of the mock will also have the spec of the corresponding attribute of the object.",
        "The input path is not modified; an extended copy is returned.",
        "Decide whether a particular byte ordinal needs to be quoted.",
        "Behind the scenes there are some features included with possible extensions in mind.",
        "The locale language is set at the offset and then checked again before exiting.",
        "By combining these and similar commands, intricate shapes and pictures can easily be drawn.",
        "Set handler as the new event loop exception handler.",
    ]
    clips = [teacher.synthesize(text) for text in sentences]
    alone = [Transcriber().transcribe(*clip) for clip in clips]
    reused = Transcriber()
    assert [reused.transcribe(*clip) for clip in clips] == alone
    assert [reused.transcribe(*clip) for clip in clips[::-1]] == alone[::-1]

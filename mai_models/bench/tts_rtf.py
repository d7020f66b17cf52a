"""``mai bench tts-rtf``: end-to-end text -> waveform speed of the trained voice against the teacher
synthesizer, on the same text, in the same run, batch 1, with a fixed number of CPU threads.

The text is about ``seconds`` of speech made of held-out corpus sentences; warm-up uses other
sentences, so the G2P word cache helps no more than it would in service. RTF = wall time / audio time.
Target: 60 s of audio in under 1 s, RTF < 1/60 (MAI-Voice-1's claim, on one GPU).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError

TARGET_RTF = 1 / 60
WORDS_PER_SECOND = 2.6  # typical read speech; the measured audio length is what counts


def _sentences(settings: Any, demo: Any, count_words: int) -> tuple[str, str]:
    """(warm-up text, measured text) from held-out (test and valid split) sentences of the corpus."""
    from mai_models.tts.demo_dataset import candidate_sentences, iter_split_texts

    texts, words = [], 0
    for split in ("test", "valid"):
        for doc in iter_split_texts(settings.data_dir / "clean_documents", split):
            for sentence in candidate_sentences(doc, demo.min_words, demo.max_words):
                texts.append(sentence)
                words += len(sentence.split())
            if words >= 2 * count_words:
                break
    if words < 2 * count_words:
        raise MaiUserError("not enough held-out sentences in clean_documents for the benchmark")
    half, total = 0, 0
    while total < words / 2:
        total += len(texts[half].split())
        half += 1
    return " ".join(texts[:half]), " ".join(texts[half:])


def run(bundle: str | None = None, seconds: float = 60.0, threads: int = 2) -> dict[str, Any]:
    import numpy as np

    from mai_models.config import load_params
    from mai_models.settings import load_settings
    from mai_models.tts.engine import StreamStats
    from mai_models.tts.teacher import pick_teacher
    from mai_models.tts.voice import load_onnx_voice

    os.environ["OMP_NUM_THREADS"] = str(threads)
    settings = load_settings()
    bundle_dir = Path(bundle) if bundle else settings.data_dir / "mai_voice" / "bundle"
    if not bundle_dir.exists():
        raise MaiUserError(f"no voice bundle at {bundle_dir}; run `make demo` or `mai tts build` first")
    voice = load_onnx_voice(bundle_dir, threads=threads)
    demo = load_params(settings.params_file).speech.demo
    warmup, text = _sentences(settings, demo, int(seconds * WORDS_PER_SECOND))

    voice.synthesize(warmup)
    started = time.perf_counter()
    ours = voice.synthesize(text)
    ours_seconds = time.perf_counter() - started
    stats = StreamStats()
    streamed = sum(len(chunk) for chunk in voice.stream(text, stats=stats)) / voice.sample_rate

    teacher = pick_teacher(demo.teacher, demo.flite_voice, demo.espeak_voice)
    teacher.synthesize(warmup)
    started = time.perf_counter()
    teacher_wave, teacher_sr = teacher.synthesize(text)
    teacher_seconds = time.perf_counter() - started
    teacher_audio = len(np.asarray(teacher_wave)) / teacher_sr

    ours_rtf = ours_seconds / ours.seconds
    teacher_rtf = teacher_seconds / teacher_audio
    print(
        f"ours: {ours.seconds:.1f} s of audio in {ours_seconds:.3f} s (RTF {ours_rtf:.4f}); "
        f"streaming: first audio after {stats.time_to_first_audio * 1000:.0f} ms ({streamed:.1f} s in "
        f"{stats.chunks} chunks); teacher {teacher.name}: {teacher_audio:.1f} s in {teacher_seconds:.3f} s "
        f"(RTF {teacher_rtf:.4f})",
        flush=True,
    )
    return {
        "benchmark": "tts-rtf",
        "threads": threads,
        "words": len(text.split()),
        "ours_audio_seconds": round(ours.seconds, 2),
        "ours_wall_seconds": round(ours_seconds, 4),
        "ours_rtf": round(ours_rtf, 5),
        "ours_seconds_per_60s_audio": round(60 * ours_rtf, 3),
        "time_to_first_audio_ms": round(stats.time_to_first_audio * 1000, 1),
        "baseline": f"teacher:{teacher.name}",
        "baseline_audio_seconds": round(teacher_audio, 2),
        "baseline_wall_seconds": round(teacher_seconds, 4),
        "baseline_rtf": round(teacher_rtf, 5),
        "ratio": round(ours_rtf / teacher_rtf, 4),
        "target_rtf": round(TARGET_RTF, 5),
        "meets_target": ours_rtf < TARGET_RTF,
    }

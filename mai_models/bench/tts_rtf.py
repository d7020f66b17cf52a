"""``mai bench tts-rtf``: end-to-end text -> waveform time of the trained voice against the teacher
synthesizer, on the same text, in the same run, batch 1.

* ours: the ONNX voice bundle (``load_onnx_voice(...).synthesize``) at 1 onnxruntime thread, and
  again at ``threads`` threads (two sessions, loaded once each);
* baseline: the teacher the voice was trained from (``pick_teacher``: flite, else espeak-ng), one
  call on the whole text; flite runs one single-threaded process per call.

The text is about ``seconds`` of speech made of held-out corpus sentences; warm-up uses other
sentences, so the G2P word cache helps no more than it would in service. Every side is timed
``repeats`` times, alternating (ours at 1 thread, ours at ``threads``, teacher, ...), and the medians
are compared: ratio = teacher seconds / ours seconds on the same text (> 1: ours faster), with ours
at 1 thread as the like-for-like figure (the teacher uses one core). RTF = wall time / audio time,
where our audio time leaves out the silence we insert between sentences (``SENTENCE_PAUSE_SECONDS``
each), so that padding cannot make the voice look faster. Target: 60 s of speech in under 1 s,
RTF < 1/60 (MAI-Voice-1's claim, on one GPU), checked on the 1-thread figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mai_models.bench.report import Side, bench_result, package_version, progress, timed, versus
from mai_models.errors import MaiUserError

TARGET_RTF = 1 / 60
WORDS_PER_SECOND = 2.6  # typical read speech; the measured audio length is what counts


_log = progress("tts-rtf")


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


def speech_seconds(voice: Any, text: str, wave_samples: int) -> float:
    """Seconds of synthesised speech in a ``synthesize`` result, without the inter-sentence pauses."""
    from mai_models.tts.engine import SENTENCE_PAUSE_SECONDS

    pieces = sum(1 for ids in voice.frontend.encode(text).ids if ids)
    pause = int(SENTENCE_PAUSE_SECONDS * voice.sample_rate)
    return (wave_samples - pause * max(pieces - 1, 0)) / voice.sample_rate


def run(
    bundle: str | Path | None = None, seconds: float = 60.0, threads: int = 2, repeats: int = 5
) -> dict[str, Any]:
    """Seconds to synthesise the same text: ours at 1 and ``threads`` threads, and the teacher."""
    import numpy as np

    from mai_models.config import load_params
    from mai_models.settings import load_settings
    from mai_models.tts.engine import StreamStats
    from mai_models.tts.teacher import pick_teacher
    from mai_models.tts.voice import load_onnx_voice

    if repeats < 1 or threads < 1:
        raise MaiUserError("repeats and threads must be at least 1")
    settings = load_settings()
    bundle_dir = Path(bundle) if bundle else settings.data_dir / "mai_voice" / "bundle"
    if not bundle_dir.exists():
        raise MaiUserError(f"no voice bundle at {bundle_dir}; run `make demo` or `mai tts build` first")
    thread_counts = sorted({1, threads})
    voices = {n: load_onnx_voice(bundle_dir, threads=n) for n in thread_counts}
    demo = load_params(settings.params_file).speech.demo
    warmup, text = _sentences(settings, demo, int(seconds * WORDS_PER_SECOND))
    teacher = pick_teacher(demo.teacher, demo.flite_voice, demo.espeak_voice)

    for voice in voices.values():
        voice.synthesize(warmup)
    teacher.synthesize(warmup)
    ours_s: dict[int, list[float]] = {n: [] for n in thread_counts}
    teacher_s: list[float] = []
    for i in range(repeats):
        for n, voice in voices.items():
            wall, synthesis = timed(voice.synthesize, text)
            ours_s[n].append(wall)
        wall, (teacher_wave, teacher_sr) = timed(teacher.synthesize, text)
        teacher_s.append(wall)
        _log(
            f"repeat {i + 1}/{repeats}: "
            + ", ".join(f"ours@{n} {ours_s[n][-1]:.3f} s" for n in thread_counts)
            + f", {teacher.name} {wall:.3f} s"
        )

    padded = synthesis.seconds
    speech = speech_seconds(voices[1], text, len(synthesis.wave))
    teacher_audio = len(np.asarray(teacher_wave)) / teacher_sr
    ttfa = {}
    for n, voice in voices.items():
        stats = StreamStats()
        for _ in voice.stream(text, stats=stats):
            pass
        ttfa[str(n)] = round(stats.time_to_first_audio * 1000, 1)

    baseline = Side(
        f"teacher {teacher.name} ({teacher.voice}), one call on the whole text",
        f"{teacher.name} {teacher.version}",
        teacher_s,
        {
            "audio_seconds": round(teacher_audio, 2),
            "rtf_median": round(float(np.median(teacher_s)) / teacher_audio, 5),
        },
    )

    def detail(n: int) -> dict[str, Any]:
        return {"threads": n, "rtf_median": round(float(np.median(ours_s[n])) / speech, 5)}

    ours = Side(
        "mai-voice ONNX bundle (SynthesisEngine.synthesize) at 1 thread",
        f"onnxruntime {package_version('onnxruntime')}",
        ours_s[1],
        detail(1),
    )
    figures: dict[str, Any] = {}
    if threads != 1:
        figures[f"ours_{threads}_threads"] = versus(
            Side(f"the same at {threads} threads", ours.version, ours_s[threads]),
            baseline,
            False,
            **detail(threads),
        )
    return bench_result(
        "tts-rtf",
        "seconds",
        False,
        ours,
        baseline,
        **figures,
        words=len(text.split()),
        ours_speech_seconds=round(speech, 2),
        ours_audio_seconds_with_pauses=round(padded, 2),
        time_to_first_audio_ms=ttfa,
        target_rtf=round(TARGET_RTF, 5),
        meets_target=float(np.median(ours_s[1])) / speech < TARGET_RTF,
    )

"""Objective TTS metrics that run offline on a CPU: mel-cepstral distortion and F0 error against
reference audio (WORLD analysis + DTW), intelligibility (pocketsphinx WER/CER), predicted MOS (DNSMOS)
and speed (real-time factor).

MCD and F0 are computed at matched bandwidth: both clips are resampled to the lower of the two rates,
so a 22.05 kHz voice is not penalised for content a 16 kHz reference cannot have.
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mai_models.tts.audio import read_audio, resample, to_mono, trim_silence

Synthesize = Callable[[str], tuple[np.ndarray, int]]

FRAME_PERIOD_MS = 5.0
# Leading/trailing audio this far below the loudest frame is silence: different voices pad
# differently, and DTW would otherwise spend frames matching silence to silence.
TRIM_TOP_DB = 40.0
F0_FLOOR, F0_CEIL = 60.0, 500.0
DNSMOS_RATE = 16000
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


def _analysis_modules() -> tuple[Any, Any]:
    with warnings.catch_warnings():
        # pyworld 0.3.x and pysptk import pkg_resources (deprecated in setuptools): nothing to act on.
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import pysptk
        import pyworld

    return pyworld, pysptk


def mcep_order(sr: int) -> int:
    """The customary mel-cepstrum orders: 24 up to 16 kHz, 34 above (more bandwidth, more detail)."""
    return 24 if sr <= 16000 else 34


def world_features(wave: np.ndarray, sr: int, order: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per 5 ms frame: F0 in Hz (0 = unvoiced, DIO + StoneMask) and the mel-cepstrum c1..c_order of
    the WORLD (CheapTrick) spectral envelope, after trimming leading/trailing silence."""
    pw, pysptk = _analysis_modules()
    x = np.ascontiguousarray(to_mono(np.asarray(wave, dtype=np.float32)), dtype=np.float64)
    trimmed, _, _ = trim_silence(x, sr, TRIM_TOP_DB)
    x = np.ascontiguousarray(trimmed if len(trimmed) else x, dtype=np.float64)
    if len(x) < sr * FRAME_PERIOD_MS / 1000 * 4:
        raise ValueError(f"audio too short for analysis ({len(x)} samples at {sr} Hz)")
    f0, times = pw.dio(x, sr, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_PERIOD_MS)
    f0 = pw.stonemask(x, f0, times, sr)
    envelope = pw.cheaptrick(x, f0, times, sr, f0_floor=F0_FLOOR)
    mcep = pysptk.sp2mc(envelope, order or mcep_order(sr), pysptk.util.mcepalpha(sr))
    return f0, mcep[:, 1:]  # c0 is overall level: loudness differences are not distortion


def _matched(
    ref: np.ndarray, ref_sr: int, syn: np.ndarray, syn_sr: int
) -> tuple[np.ndarray, np.ndarray, int]:
    sr = min(ref_sr, syn_sr)
    ref = resample(to_mono(np.asarray(ref, dtype=np.float32)), ref_sr, sr)
    syn = resample(to_mono(np.asarray(syn, dtype=np.float32)), syn_sr, sr)
    return ref, syn, sr


def compare_audio(ref_wave: np.ndarray, ref_sr: int, syn_wave: np.ndarray, syn_sr: int) -> dict[str, float]:
    """MCD (dB) and F0 RMSE (Hz and cents) from one WORLD analysis per side and one DTW alignment.

    MCD = 10/ln10 * sqrt(2 * sum_d (c_d - c'_d)^2), averaged over the frame pairs of the exact DTW path
    (Euclidean distance on c1..c_order). F0 errors use the same path, over pairs voiced on both sides;
    NaN when no such pair exists.
    """
    ref, syn, sr = _matched(ref_wave, ref_sr, syn_wave, syn_sr)
    f0_ref, mc_ref = world_features(ref, sr)
    f0_syn, mc_syn = world_features(syn, sr)
    import librosa

    # Exact DTW (librosa's, compiled by numba on first use): fastdtw's pure-Python approximation
    # took longer than the WORLD analysis itself.
    _, path = librosa.sequence.dtw(X=mc_ref.T, Y=mc_syn.T, metric="euclidean")
    i, j = path[::-1].T
    mcd = float(np.mean(_MCD_SCALE * np.sqrt(np.sum((mc_ref[i] - mc_syn[j]) ** 2, axis=1))))
    a, b = f0_ref[i], f0_syn[j]
    voiced = (a > 0) & (b > 0)
    if voiced.any():
        rmse_hz = float(np.sqrt(np.mean((a[voiced] - b[voiced]) ** 2)))
        rmse_cents = float(np.sqrt(np.mean((1200.0 * np.log2(b[voiced] / a[voiced])) ** 2)))
    else:
        rmse_hz = rmse_cents = float("nan")
    return {
        "mcd_db": mcd,
        "f0_rmse_hz": rmse_hz,
        "f0_rmse_cents": rmse_cents,
        "voiced_pairs": int(voiced.sum()),
        "frames_ref": len(mc_ref),
        "frames_syn": len(mc_syn),
        "analysis_rate": sr,
    }


def warm_analysis_cache() -> None:
    """Compile librosa's DTW into numba's on-disk cache, as ``make install`` does: compiled on first use
    instead, it took 13.5 s of the first evaluation after an install (0.3 s once cached)."""
    sr = 16000
    t = np.arange(sr) / sr
    ref = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    compare_audio(ref, sr, np.roll(ref, 400), sr)


def mcd_dtw(ref_wave: np.ndarray, ref_sr: int, syn_wave: np.ndarray, syn_sr: int) -> float:
    """Mel-cepstral distortion in dB with DTW alignment at matched bandwidth (see ``compare_audio``)."""
    return compare_audio(ref_wave, ref_sr, syn_wave, syn_sr)["mcd_db"]


def f0_rmse(ref_wave: np.ndarray, ref_sr: int, syn_wave: np.ndarray, syn_sr: int) -> float:
    """F0 RMSE in Hz over DTW-aligned frames voiced in both clips (cents: ``compare_audio``)."""
    return compare_audio(ref_wave, ref_sr, syn_wave, syn_sr)["f0_rmse_hz"]


def dnsmos(wave: np.ndarray, sr: int) -> dict[str, float]:
    """DNSMOS P.835 (sig, bak, ovrl) and P.808 MOS from speechmos's bundled ONNX models, at 16 kHz.

    DNSMOS scores 9 s windows; shorter clips are looped to 9 s by speechmos itself.
    """
    from speechmos import dnsmos as dns

    audio = np.clip(resample(to_mono(np.asarray(wave, dtype=np.float32)), sr, DNSMOS_RATE), -1.0, 1.0)
    if audio.size == 0:
        raise ValueError("DNSMOS needs audio (got 0 samples)")  # speechmos would loop forever
    scores = dns.run(audio, sr=DNSMOS_RATE)
    return {
        "sig": float(scores["sig_mos"]),
        "bak": float(scores["bak_mos"]),
        "ovrl": float(scores["ovrl_mos"]),
        "p808": float(scores["p808_mos"]),
    }


def load_references(dataset_dir: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """``metadata.csv`` (``id|text|normalized_text``, LJSpeech layout) + ``wavs/`` as references:
    ``{utt_id, text, normalized_text, audio_path}``. Point it at ``.../speech_demo_dataset/heldout``."""
    dataset_dir = Path(dataset_dir)
    with (dataset_dir / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE) if len(r) >= 2]
    refs = [
        {
            "utt_id": r[0],
            "text": r[1],
            "normalized_text": r[2] if len(r) > 2 else r[1],
            "audio_path": dataset_dir / "wavs" / f"{r[0]}.wav",
        }
        for r in rows
    ]
    return refs[:limit] if limit is not None else refs


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(), time.perf_counter() - started


@dataclass(frozen=True)
class _Scoring:
    """One synthesized utterance to score against its reference (pickled to a worker process)."""

    ref: dict[str, Any]
    wave: np.ndarray
    sr: int
    asr: bool
    with_mcd: bool
    with_dnsmos: bool


def _synthesized(synthesize: Synthesize, ref: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray, int]:
    (wave, sr), synth_s = _timed(lambda: synthesize(ref["text"]))
    wave = to_mono(np.asarray(wave, dtype=np.float32))
    seconds = len(wave) / sr
    row = {
        "utt_id": ref["utt_id"],
        "text": ref["text"],
        "seconds": seconds,
        "synth_seconds": synth_s,
        "rtf": synth_s / seconds if seconds else float("nan"),
    }
    return row, wave, sr


def _scores(job: _Scoring) -> dict[str, Any]:
    from mai_models.tts.asr import error_rates, shared_transcriber

    ref, wave, sr = job.ref, job.wave, job.sr
    row: dict[str, Any] = {}
    audio_path = ref.get("audio_path") or ref.get("audio")  # release.heldout_references says "audio"
    # A young model can emit (almost) nothing: that utterance gets NaN scores and a note, and the
    # evaluation of the others goes on; WER still counts it (everything deleted).
    errors = []
    if job.with_mcd and audio_path is not None:
        ref_wave, ref_sr, _ = read_audio(Path(audio_path))
        row["ref_seconds"] = len(ref_wave) / ref_sr
        try:
            scores, row["mcd_time_s"] = _timed(lambda: compare_audio(to_mono(ref_wave), ref_sr, wave, sr))
            row.update({k: scores[k] for k in ("mcd_db", "f0_rmse_hz", "f0_rmse_cents", "voiced_pairs")})
        except ValueError as exc:
            row.update(mcd_db=math.nan, f0_rmse_hz=math.nan, f0_rmse_cents=math.nan, voiced_pairs=0)
            errors.append(f"mcd: {exc}")
    if job.asr:
        hyp, row["asr_time_s"] = _timed(
            lambda: shared_transcriber().transcribe(wave, sr) if len(wave) else ""
        )
        rates = error_rates([ref.get("normalized_text") or ref["text"]], [hyp])
        row.update(hypothesis=hyp, wer=rates["wer"], cer=rates["cer"])
    if job.with_dnsmos:
        try:
            scores, row["dnsmos_time_s"] = _timed(lambda: dnsmos(wave, sr))
            row.update({f"dnsmos_{k}": v for k, v in scores.items()})
        except ValueError as exc:
            row.update({f"dnsmos_{k}": math.nan for k in ("sig", "bak", "ovrl", "p808")})
            errors.append(f"dnsmos: {exc}")
    row["error"] = "; ".join(errors)
    return row


def evaluate_systems(
    systems: Mapping[str, Synthesize],
    references: Sequence[dict[str, Any]],
    asr: bool = True,
    with_mcd: bool = True,
    with_dnsmos: bool = True,
    workers: int | None = None,
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Each system speaks each reference's ``text``; every clip is then scored. Returns (per-utterance
    DataFrame with a ``system`` column, {system: summary}).

    Synthesis runs first, one clip at a time, so its RTF is timed on quiet cores; the scoring (MCD,
    pocketsphinx, DNSMOS) of all systems' clips then spreads over ``workers`` processes (default: one
    per CPU). WER/CER compare the ASR hypothesis with ``normalized_text`` (the words actually spoken)
    when the reference has one. A summary holds means of every per-utterance number, corpus-level
    WER/CER (total edits over total words, via ``error_rates``) and the overall RTF (total synthesis time
    over total audio), which weights long sentences as real use does.
    """
    import pandas as pd

    from mai_models.process_map import process_map
    from mai_models.tts.asr import error_rates

    if not references:
        raise ValueError("no references to evaluate")
    spoken = [
        (name, ref, *_synthesized(synthesize, ref))
        for name, synthesize in systems.items()
        for ref in references
    ]
    scored = process_map(
        _scores, [_Scoring(ref, w, sr, asr, with_mcd, with_dnsmos) for _, ref, _, w, sr in spoken], workers
    )
    frame = pd.DataFrame(
        [
            {"system": name, **row, **scores}
            for (name, _, row, _, _), scores in zip(spoken, scored, strict=True)
        ]
    )
    summaries: dict[str, dict[str, Any]] = {}
    for name in systems:
        rows = frame[frame["system"] == name]
        summary: dict[str, Any] = {"system": name, "utterances": len(rows)}
        summary["audio_seconds"] = float(rows["seconds"].sum())
        summary["rtf"] = float(rows["synth_seconds"].sum() / max(summary["audio_seconds"], 1e-9))
        for column in rows.columns:
            if column not in ("rtf", "voiced_pairs") and pd.api.types.is_numeric_dtype(rows[column]):
                summary[f"mean_{column}"] = float(rows[column].mean())
        if asr:
            refs = [r.get("normalized_text") or r["text"] for r in references]
            corpus = error_rates(refs, rows["hypothesis"].tolist())
            summary.update(wer=corpus["wer"], cer=corpus["cer"])
        summaries[name] = summary
    return frame, summaries


def voice_synthesizer(bundle: Path, threads: int = 2) -> Synthesize:
    """Our ONNX voice bundle as a ``text -> (wave, sample_rate)`` function."""
    from mai_models.tts.voice import load_onnx_voice

    voice = load_onnx_voice(Path(bundle), threads=threads)

    def synthesize(text: str) -> tuple[np.ndarray, int]:
        result = voice.synthesize(text)
        return result.wave, result.sample_rate

    return synthesize

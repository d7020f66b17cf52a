"""The ``mai_voice`` release: the ONNX bundle (verified against torch), held-out samples synthesised
by the bundle alone, their word error rate next to the teacher's (or the human recordings'), and a
report that the registry entry carries."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mai_models.config import PipelineParams
from mai_models.tracking.sinks import MetricsSink

SAMPLE_TEXT = (
    "This voice was trained from scratch by the MAI Foundry speech pipeline, in a few minutes on a CPU."
)


def heldout_references(
    demo_dir: Path | None, corpus_dir: Path, limit: int
) -> tuple[list[dict[str, Any]], str]:
    """Sentences the models never trained on, with reference audio: the teacher's held-out set when
    the demo dataset is a source (``demo_dir``), else the corpus's own validation recordings (the
    stable hash split of ``speech_corpus``, in utterance-id order)."""
    heldout = demo_dir / "heldout" / "metadata.csv" if demo_dir is not None else None
    if heldout is not None and heldout.exists():
        with heldout.open(newline="") as handle:
            rows = [r for r in csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE) if len(r) >= 2]
        refs = [
            {"utt_id": r[0], "text": r[-1], "audio": heldout.parent / "wavs" / f"{r[0]}.wav"} for r in rows
        ]
        return refs[:limit], "teacher"
    table = pq.read_table(corpus_dir / "utterances.parquet").to_pylist()
    refs = [
        {"utt_id": r["utt_id"], "text": r["normalized_text"], "audio": corpus_dir / r["path"]}
        for r in sorted(table, key=lambda r: r["utt_id"])
        if r["split"] == "valid"
    ]
    return refs[:limit], "recording"


def build_voice_release(
    params: PipelineParams,
    acoustic_dir: Path,
    vocoder_dir: Path,
    demo_dir: Path | None,
    corpus_dir: Path,
    out: Path,
    sink: MetricsSink,
) -> tuple[dict[str, Any], dict[str, float]]:
    import torch

    from mai_models.process_map import process_map
    from mai_models.tts.asr import error_rates, transcribe_one
    from mai_models.tts.audio import read_audio, write_wav
    from mai_models.tts.model_files import load_acoustic, load_vocoder
    from mai_models.tts.onnx_export import bundle_config, export_bundle
    from mai_models.tts.voice import BUNDLE_CONFIG, BUNDLE_VOCAB, load_onnx_voice

    torch.set_num_threads(params.tts.threads)
    acoustic, acoustic_card = load_acoustic(acoustic_dir)
    vocoder, vocoder_card = load_vocoder(vocoder_dir)
    dataset_info = demo_dir / "dataset.json" if demo_dir is not None else None
    teacher = (
        json.loads(dataset_info.read_text()).get("teacher", {})
        if dataset_info is not None and dataset_info.exists()
        else {}
    )
    trained_on = {"teacher": teacher} if teacher else {"recordings": True}
    config = bundle_config(acoustic_card, vocoder_card, preset=params.tts.preset, trained_on=trained_on)
    diffs = export_bundle(acoustic, vocoder, acoustic_dir / BUNDLE_VOCAB, config, out / "bundle")
    voice = load_onnx_voice(out / "bundle", threads=params.tts.threads)

    refs, reference_kind = heldout_references(demo_dir, corpus_dir, params.tts.wer_sentences)
    rows, clips, synth_seconds, audio_seconds = [], [], 0.0, 0.0
    for ref in refs:  # timed one at a time, on cores nothing else is using
        started = time.perf_counter()
        result = voice.synthesize(ref["text"])
        synth_seconds += time.perf_counter() - started
        audio_seconds += result.seconds
        path = out / "samples" / f"{ref['utt_id']}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, result.wave, result.sample_rate)
        ref_wave, ref_sr, _ = read_audio(ref["audio"])
        clips += [(result.wave, result.sample_rate), (ref_wave, ref_sr)]
        rows.append({"utt_id": ref["utt_id"], "text": ref["text"], "seconds": round(result.seconds, 3)})
    heard = process_map(transcribe_one, clips)
    for row, model_transcript, reference_transcript in zip(rows, heard[::2], heard[1::2], strict=True):
        row.update(model_transcript=model_transcript, reference_transcript=reference_transcript)
    texts = [r["text"] for r in rows]
    model_rates = error_rates(texts, [r["model_transcript"] for r in rows]) if rows else {}
    ref_rates = error_rates(texts, [r["reference_transcript"] for r in rows]) if rows else {}
    pq.write_table(pa.Table.from_pylist(rows), out / "heldout_wer.parquet")
    sample = voice.synthesize(SAMPLE_TEXT)
    write_wav(out / "sample.wav", sample.wave, sample.sample_rate)

    metrics = {
        **diffs,
        **({"wer": model_rates["wer"], "cer": model_rates["cer"]} if rows else {}),
        **(
            {f"{reference_kind}_wer": ref_rates["wer"], f"{reference_kind}_cer": ref_rates["cer"]}
            if rows
            else {}
        ),
    }
    report = {
        "metrics": {k: float(f"{float(v):.4g}") for k, v in metrics.items()},
        "heldout_sentences": len(rows),
        "reference": reference_kind,
        "teacher": teacher,
        "parameters": {"acoustic": acoustic_card["parameters"], "vocoder": vocoder_card["parameters"]},
        "onnx_verified_with": "onnxruntime",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    sink.log(0, {f"release/{k}": float(v) for k, v in metrics.items()})
    artifacts = [
        (out / "samples", "samples"),
        (out / "sample.wav", None),
        (out / "bundle" / BUNDLE_CONFIG, "bundle"),
    ]
    for artifact, where in artifacts:
        if artifact.exists():  # no samples folder when tts.wer_sentences is 0
            sink.event("artifact", {"path": str(artifact), "artifact_path": where})
    rtf = synth_seconds / audio_seconds if audio_seconds else float("nan")
    return {**report["metrics"], "heldout_sentences": len(rows), "reference": reference_kind}, {
        "heldout_rtf": round(rtf, 5),
        "sample_seconds": round(sample.seconds, 2),
    }

"""``mai tts synthesize`` and ``mai tts export``: the trained voice from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mai_models.errors import MaiUserError
from mai_models.settings import load_settings
from mai_models.tts.engine import SynthesisEngine


def _voice(args: argparse.Namespace) -> SynthesisEngine:
    settings = load_settings()
    if args.torch:
        from mai_models.tts.voice import load_torch_voice

        return load_torch_voice(
            settings.data_dir / "tts_acoustic", settings.data_dir / "tts_vocoder", args.threads
        )
    from mai_models.tts.voice import load_onnx_voice

    bundle = Path(args.bundle) if args.bundle else settings.data_dir / "mai_voice" / "bundle"
    if not bundle.exists():
        raise MaiUserError(f"no voice bundle at {bundle}; run `mai tts build` (or `make demo`) first")
    return load_onnx_voice(bundle, args.threads)


def _say(voice: SynthesisEngine, text: str, out: Path, speed: float, stream: bool) -> None:
    from mai_models.tts.audio import write_wav
    from mai_models.tts.engine import StreamStats

    started = time.perf_counter()
    if stream:
        stats = StreamStats()
        wave = np.concatenate(list(voice.stream(text, speed=speed, stats=stats)))
        detail = f", first audio after {stats.time_to_first_audio * 1000:.0f} ms in {stats.chunks} chunks"
    else:
        result = voice.synthesize(text, speed=speed)
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        wave, detail = result.wave, ""
    elapsed = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    write_wav(out, wave, voice.sample_rate)
    seconds = len(wave) / voice.sample_rate
    print(
        f"{out}: {seconds:.2f} s of audio in {elapsed:.3f} s (RTF {elapsed / max(seconds, 1e-9):.4f}){detail}"
    )


def synthesize(args: argparse.Namespace) -> int:
    if args.file:
        lines = [ln.strip() for ln in Path(args.file).read_text(encoding="utf-8").splitlines()]
        texts = [ln for ln in lines if ln]
        if not texts:
            raise MaiUserError(f"{args.file} has no text lines")
    elif args.text is not None:
        texts = [args.text]
    else:
        raise MaiUserError("give the text to say, or --file with one utterance per line")
    voice = _voice(args)
    if args.file:
        out_dir = Path(args.out_dir)
        failed = 0
        for i, text in enumerate(texts, 1):
            try:
                _say(voice, text, out_dir / f"{i:04d}.wav", args.speed, args.stream)
            except MaiUserError as exc:  # one bad line must not lose the rest of the batch
                failed += 1
                print(f"error: line {i}: {exc}", file=sys.stderr)
        return 1 if failed else 0
    _say(voice, texts[0], Path(args.output), args.speed, args.stream)
    return 0


def export(args: argparse.Namespace) -> int:
    from mai_models.tts.model_files import load_acoustic, load_vocoder
    from mai_models.tts.onnx_export import bundle_config, export_bundle
    from mai_models.tts.voice import BUNDLE_VOCAB

    settings = load_settings()
    acoustic_dir = settings.data_dir / "tts_acoustic"
    acoustic, card = load_acoustic(acoustic_dir)
    vocoder, vocoder_card = load_vocoder(settings.data_dir / "tts_vocoder")
    config = bundle_config(card, vocoder_card, preset=card.get("preset"))
    diffs = export_bundle(acoustic, vocoder, acoustic_dir / BUNDLE_VOCAB, config, Path(args.output))
    for name, value in diffs.items():
        print(f"{name}: {value:.2e}")
    print(f"bundle written to {args.output}")
    return 0

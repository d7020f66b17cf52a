"""Offline intelligibility: pocketsphinx (its bundled en-US model, no downloads) transcribes audio and
jiwer scores word and character error rates against the intended text.

pocketsphinx recognises flite, festival and human speech reasonably (WER ~0.2-0.3) but not espeak-ng's
formant speech (~0.8), so WER only means something for models trained on such voices."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from mai_models.tts.audio import resample, to_mono

ASR_SAMPLE_RATE = 16000


class Transcriber:
    """One pocketsphinx decoder, reused: loading the model costs ~0.3 s, decoding runs at RTF ~0.15."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(loglevel="FATAL")  # its INFO log is thousands of lines per sentence
        self._lock = threading.Lock()  # one decoder holds one utterance at a time

    def transcribe(self, wave: np.ndarray, sr: int) -> str:
        """Lower-case words pocketsphinx hears in ``wave`` (float32 in [-1, 1], any rate, mono or not)."""
        mono = resample(to_mono(np.asarray(wave, dtype=np.float32)), sr, ASR_SAMPLE_RATE)
        pcm = (np.clip(mono, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        with self._lock:
            # The feature front end adapts its noise and cepstral-mean estimates across utterances:
            # reset it, so a clip's transcript (and a WER) does not depend on what the decoder heard
            # before it, nor on which worker process scored it.
            self._decoder.reinit_feat()
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    @staticmethod
    def info() -> dict[str, Any]:
        from importlib.metadata import version

        return {"engine": "pocketsphinx", "version": version("pocketsphinx"), "model": "en-us (bundled)"}


@functools.cache
def shared_transcriber() -> Transcriber:
    """This process's decoder: each scoring worker process loads the model once."""
    return Transcriber()


def transcribe_one(clip: tuple[np.ndarray, int]) -> str:
    """``shared_transcriber().transcribe(*clip)``: a module-level function for ``process_map``."""
    return shared_transcriber().transcribe(*clip)


_NON_WORD = re.compile(r"[^\w\s']+")


def normalize_for_wer(text: str) -> str:
    """Lower case, punctuation removed (hyphens split words, apostrophes join them: "don't" ->
    "dont" on both sides), whitespace collapsed."""
    text = _NON_WORD.sub(" ", text.lower()).replace("'", "").replace("_", " ")
    return " ".join(text.split())


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float | int]:
    """Corpus-level WER and CER (total edits / total reference words or characters) after
    ``normalize_for_wer`` on both sides. Pairs whose reference normalises to nothing carry no
    words to get wrong and are left out; ``n`` counts the pairs scored."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [
        (normalize_for_wer(r), normalize_for_wer(h)) for r, h in zip(references, hypotheses, strict=True)
    ]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return {"wer": 0.0, "cer": 0.0, "n": 0}
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps)), "n": len(pairs)}

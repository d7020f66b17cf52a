"""TTS text frontend: raw English text -> normalised sentences -> phonemes -> vocabulary ids.

Framework-free (no dagster, no torch) so the CLI, the feature builder and an exported model share it.
Nothing is dropped silently: every lossy step returns warnings that the caller must show.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mai_models.errors import MaiUserError
from mai_models.tts.frontend.g2p import G2P, backend_info
from mai_models.tts.frontend.normalize import NormalizedText, normalize_text, split_sentences
from mai_models.tts.frontend.tokens import PAD, PUNCTUATION, UNK, WORD_BOUNDARY
from mai_models.tts.frontend.vocab import PhonemeVocab

__all__ = [
    "PAD",
    "PUNCTUATION",
    "UNK",
    "WORD_BOUNDARY",
    "G2P",
    "EncodedText",
    "NormalizedText",
    "PhonemeVocab",
    "TextFrontend",
    "backend_info",
    "normalize_text",
    "split_sentences",
]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedText:
    """One id list per sentence (``ids[i]`` says ``sentences[i]``) and every warning met on the way."""

    sentences: list[str]
    ids: list[list[int]]
    warnings: list[str]


class TextFrontend:
    """Text to model input: ``normalize_text`` -> ``split_sentences`` -> ``G2P`` -> ``PhonemeVocab``."""

    def __init__(
        self, vocab: PhonemeVocab | None = None, g2p: G2P | None = None, max_chars: int = 300
    ) -> None:
        self.vocab = vocab
        self.g2p = g2p if g2p is not None else G2P()
        self.max_chars = max_chars

    def normalize(self, text: str) -> NormalizedText:
        return normalize_text(text)

    def sentences(self, text: str) -> list[str]:
        """Normalised sentences of ``text``, each at most ``max_chars`` long. Raises MaiUserError for text
        that cannot be read. Normalisation warnings are logged here; ``encode`` returns them as data."""
        normalized = normalize_text(text)
        for message in normalized.warnings:
            _LOG.warning(message)
        return split_sentences(normalized.text, self.max_chars)

    def phonemes(self, text: str) -> list[str]:
        """G2P tokens of one already-normalised sentence."""
        return self.g2p.phonemize(text)

    def encode(self, text: str) -> EncodedText:
        """Ids per sentence. Sentences that encode to nothing are left out, with a warning."""
        if self.vocab is None:
            raise MaiUserError(
                "TextFrontend.encode needs a phoneme vocabulary: TextFrontend(vocab=PhonemeVocab.load(path))"
            )
        normalized = normalize_text(text)
        warnings = [*self.vocab.warnings, *normalized.warnings]
        sentences: list[str] = []
        ids: list[list[int]] = []
        for sentence in split_sentences(normalized.text, self.max_chars):
            sentence_ids, dropped = self.vocab.encode(self.g2p.phonemize(sentence))
            warnings += [w for w in dropped if w not in warnings]
            if not any(i >= self.vocab.first_phoneme_id for i in sentence_ids):
                warnings.append(f"skipped sentence {sentence!r}: no phonemes left after encoding")
                continue
            sentences.append(sentence)
            ids.append(sentence_ids)
        if not ids:
            raise MaiUserError(
                f"nothing to speak: no sentence of {text[:60]!r} has phonemes this model knows"
            )
        return EncodedText(sentences, ids, warnings)

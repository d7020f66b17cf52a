"""Text normalisation and quality filters."""

from __future__ import annotations

import re
import unicodedata

from mai_models.config import CleanConfig

# C0/C1 controls and other unassigned/format characters, except the whitespace we normalise below.
_CONTROL = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff\ufffe\uffff]"
)
_SPACE_CHARS = r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]"
# Runs after text collapse to one space; leading indentation is kept (code examples in docs need it).
_INLINE_SPACE = re.compile(rf"(?<=\S){_SPACE_CHARS}+")
_ODD_SPACE = re.compile(r"[\t\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACE = re.compile(r" +\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC, control characters removed, whitespace runs collapsed, paragraphs kept."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _INLINE_SPACE.sub(" ", text)
    text = _ODD_SPACE.sub(" ", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def non_text_ratio(text: str) -> float:
    """Share of characters that are neither letters nor whitespace (markup, digits, symbols, binary)."""
    if not text:
        return 1.0
    texty = sum(1 for ch in text if ch.isalpha() or ch.isspace())
    return 1.0 - texty / len(text)


def quality_reject(text: str, cfg: CleanConfig) -> tuple[str, str] | None:
    """The (reason, detail) that filters ``text`` out, or None when it passes."""
    n = len(text)
    if n == 0:
        return "empty", "no text after normalisation"
    if n < cfg.min_chars:
        return "too_short", f"{n} chars < {cfg.min_chars}"
    if n > cfg.max_chars:
        return "too_long", f"{n} chars > {cfg.max_chars}"
    ratio = non_text_ratio(text)
    if ratio > cfg.max_non_text_ratio:
        return "non_text_ratio", f"{ratio:.2f} > {cfg.max_non_text_ratio}"
    return None

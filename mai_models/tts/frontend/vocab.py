"""Phoneme vocabulary: token <-> id, saved as JSON next to a model together with the G2P that made it."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.tts.frontend.g2p import backend_info
from mai_models.tts.frontend.tokens import PAD, PUNCTUATION, UNK, WORD_BOUNDARY

FORMAT = "mai-phoneme-vocab"
FORMAT_VERSION = 1
_RESERVED = (PAD, UNK, WORD_BOUNDARY, *PUNCTUATION)
# Backend fields whose change can change pronunciations (licence and backend name are informational).
_COMPARED = ("backend", "version", "lexicon", "lang")


class PhonemeVocab:
    """Ids: 0 ``<pad>``, 1 ``<unk>`` (reserved, never produced: unknown phonemes are dropped with a
    warning instead), then the word boundary ``" "`` and ``, . ? ! ; :``, then phonemes in sorted order.

    ``warnings`` holds problems found when loading (a vocabulary made by another gruut version); they
    are also issued as ``UserWarning`` and repeated by ``TextFrontend.encode`` so a CLI shows them.
    """

    pad_id = 0
    unk_id = 1

    def __init__(
        self,
        tokens: Sequence[str],
        backend: dict[str, str] | None = None,
        warnings: Sequence[str] = (),
    ) -> None:
        tokens = list(tokens)
        if tuple(tokens[: len(_RESERVED)]) != _RESERVED:
            raise ValueError(f"a phoneme vocabulary starts with {list(_RESERVED)!r}, got {tokens[:9]!r}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens in phoneme vocabulary")
        self._tokens = tokens
        self._ids = {t: i for i, t in enumerate(tokens)}
        self.backend = dict(backend) if backend is not None else backend_info()
        self.warnings: tuple[str, ...] = tuple(warnings)

    @classmethod
    def build(cls, sequences: Iterable[Sequence[str]]) -> PhonemeVocab:
        """Vocabulary of every phoneme in ``sequences`` (G2P output), recording the current G2P backend."""
        phonemes: set[str] = set()
        for seq in sequences:
            phonemes.update(seq)
        phonemes.difference_update(_RESERVED)
        return cls([*_RESERVED, *sorted(phonemes)])

    # ------------------------------------------------------------------ lookups

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens)

    @property
    def boundary_id(self) -> int:
        return self._ids[WORD_BOUNDARY]

    @property
    def first_phoneme_id(self) -> int:
        """Ids from here on are phonemes; below are padding, unknown, word boundary and punctuation."""
        return len(_RESERVED)

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PhonemeVocab):
            return NotImplemented
        return self._tokens == other._tokens

    def __repr__(self) -> str:
        g2p = f"{self.backend.get('backend')} {self.backend.get('version')}"
        return f"PhonemeVocab({len(self)} tokens, g2p={g2p})"

    def encode(self, tokens: Iterable[str]) -> tuple[list[int], list[str]]:
        """Ids of ``tokens``; tokens not in the vocabulary (or specials) are dropped, one warning each."""
        ids: list[int] = []
        missing: dict[str, int] = {}
        for token in tokens:
            i = self._ids.get(token)
            if i is None or i <= self.unk_id:
                missing[token] = missing.get(token, 0) + 1
            else:
                ids.append(i)
        warns = [
            f"dropped phoneme {t!r} (not in the {len(self)}-token vocabulary)" + (f" x{n}" if n > 1 else "")
            for t, n in missing.items()
        ]
        return ids, warns

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``; padding is skipped. An id outside the vocabulary is a bug: ValueError."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self._tokens):
                raise ValueError(f"phoneme id {i} outside the vocabulary (0..{len(self._tokens) - 1})")
            if i != self.pad_id:
                out.append(self._tokens[i])
        return out

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "g2p": dict(self.backend),
            "tokens": self.tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "phoneme vocabulary") -> PhonemeVocab:
        """Rebuild a saved vocabulary. A different G2P version is a warning (pronunciations may have
        shifted; the ids still mean what they meant), a malformed one an error."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise MaiUserError(f"{source} is not a phoneme vocabulary (expected format {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            version = data.get("format_version")
            raise MaiUserError(f"{source} has format version {version!r}; this code reads {FORMAT_VERSION}")
        tokens, saved = data.get("tokens"), data.get("g2p") or {}
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise MaiUserError(f"{source}: 'tokens' must be a list of strings")
        current = backend_info()
        found = []
        changed = [k for k in _COMPARED if saved.get(k) != current.get(k)]
        if changed:
            was = ", ".join(f"{k}={saved.get(k)!r}" for k in changed)
            now = ", ".join(f"{k}={current.get(k)!r}" for k in changed)
            found.append(
                f"{source} was built with G2P {was}; this install has {now}: pronunciations may differ"
            )
        try:
            vocab = cls(tokens, backend=saved, warnings=found)
        except ValueError as e:
            raise MaiUserError(f"{source}: {e}") from e
        for message in found:
            warnings.warn(message, UserWarning, stacklevel=3)
        return vocab

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PhonemeVocab:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MaiUserError(f"phoneme vocabulary not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MaiUserError(f"phoneme vocabulary {path} is not valid JSON: {e}") from None
        return cls.from_dict(data, source=f"phoneme vocabulary {path}")

"""Grapheme-to-phoneme for normalised en-US text, built on gruut's data and models (MIT licence).

espeak-ng is GPL, so it is deliberately not used. gruut's own pipeline (``gruut.sentences``) is not used
either: it re-does the number/date/abbreviation work ``normalize_text`` already did, builds a networkx
graph per call and, worst, looks words up in a SQLite lexicon that has no index on ``word``: ~10 ms of
table scan per word, 1.0 s for 112 unseen words. Here the same three gruut pieces are driven
directly: the lexicon (copied into memory and indexed once, ~60 ms), the CRF part-of-speech tagger
(only for sentences with a heteronym such as "read" or "lead") and the CRF guesser for words the
lexicon lacks. Phonemes are gruut's own symbols, and the word choices follow gruut's rules: the
pronunciation for the word's tag, else the untagged one, else the first listed.
"""

from __future__ import annotations

import importlib.metadata
import re
import sqlite3
import threading
import unicodedata
from typing import Any, NamedTuple

from mai_models.errors import MaiUserError
from mai_models.tts.frontend import numbers
from mai_models.tts.frontend.tokens import PUNCTUATION, WORD_BOUNDARY

LANG = "en-us"
_LETTER_ROLE = "gruut:letter"
# A sentence break outranks a phrase break when several meet ("?!", ",." -> "?", ".").
_PUNCT_RANK = {p: i for i, p in enumerate(("?", "!", ".", ";", ":", ","))}
assert set(_PUNCT_RANK) == set(PUNCTUATION)
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|[0-9]+|[" + re.escape("".join(PUNCTUATION)) + "]")
# Letters that do not decompose into ASCII + accent under NFKD.
_FOLD = str.maketrans({"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th"})
_SIBILANTS = frozenset({"s", "z", "ʃ", "ʒ", "t͡ʃ", "d͡ʒ"})
_VOICELESS = frozenset({"p", "t", "k", "f", "θ"})


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def backend_info() -> dict[str, str]:
    """Which G2P produced a phoneme sequence; stored with every vocabulary and feature set."""
    return {
        "backend": "gruut",
        "version": _version("gruut"),
        "lexicon": f"gruut_lang_en {_version('gruut_lang_en')}",
        "lang": LANG,
        "license": "MIT",
    }


def _fold(word: str) -> str:
    """Accent-free lowercase spelling: the lexicon is (almost) ASCII and the guesser was trained on it."""
    decomposed = unicodedata.normalize("NFKD", word.lower().translate(_FOLD))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _possessive(phonemes: tuple[str, ...]) -> tuple[str, ...]:
    last = phonemes[-1].lstrip("ˈˌ") if phonemes else ""
    if last in _SIBILANTS:
        return (*phonemes, "ɪ", "z")
    return (*phonemes, "s" if last in _VOICELESS else "z")


class _Word(NamedTuple):
    """How one surface form is said: one or more spoken parts (an initialism is one part per letter)
    and, for heteronyms, the pronunciation per part-of-speech role."""

    parts: tuple[tuple[str, ...], ...]
    roles: dict[str, tuple[str, ...]] | None = None
    letter: tuple[str, ...] | None = None


class G2P:
    """Phonemes for normalised text: IPA phonemes, ``" "`` between words, and ``, . ? ! ; :`` breaks.

    Thread-safe; gruut's models load on first use (or ``warm_up()``), not at construction, so building
    a ``G2P`` is free and it pickles without its models.
    """

    def __init__(self, lang: str = LANG, cache_size: int = 100_000) -> None:
        if lang.lower().replace("_", "-") != LANG:
            raise MaiUserError(
                f"unsupported G2P language {lang!r}; the gruut frontend supports '{LANG}' only"
            )
        self.lang = LANG
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._cache: dict[str, _Word] = {}
        self._db: sqlite3.Connection | None = None
        self._guesser: Any = None
        self._tagger: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"lang": self.lang, "cache_size": self.cache_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["lang"], state["cache_size"])  # type: ignore[misc]

    @staticmethod
    def backend_info() -> dict[str, str]:
        return backend_info()

    # ------------------------------------------------------------------ resources

    def _load(self) -> None:
        if self._db is not None:
            return
        try:
            import gruut_lang_en
            from gruut.g2p import GraphemesToPhonemes
            from gruut.pos import PartOfSpeechTagger
        except ImportError as e:
            raise MaiUserError(
                f"the TTS frontend needs gruut==2.4.0 and gruut_lang_en ({e}); reinstall the project"
            ) from e
        lang_dir = gruut_lang_en.get_lang_dir()
        source = sqlite3.connect((lang_dir / "lexicon.db").as_uri() + "?mode=ro&immutable=1", uri=True)
        db = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            source.backup(db)
        finally:
            source.close()
        db.execute("CREATE INDEX word_index ON word_phonemes (word)")
        self._guesser = GraphemesToPhonemes(lang_dir / "g2p" / "model.crf")
        self._tagger = PartOfSpeechTagger(lang_dir / "pos" / "model.crf")
        self._db = db

    def warm_up(self) -> None:
        """Load gruut's lexicon and models now rather than on the first ``phonemize`` call."""
        self.phonemize("I read a book.")

    def _rows(self, word: str) -> list[tuple[str, str]]:
        assert self._db is not None
        return self._db.execute(
            "SELECT role, phonemes FROM word_phonemes WHERE word = ? ORDER BY pron_order", (word,)
        ).fetchall()

    # ------------------------------------------------------------------ words

    @staticmethod
    def _from_rows(rows: list[tuple[str, str]]) -> _Word:
        prons = [(role, tuple(phonemes.split())) for role, phonemes in rows]
        default = next((p for role, p in prons if not role), prons[0][1])
        roles: dict[str, tuple[str, ...]] = {}
        for role, p in prons:
            if role and role != _LETTER_ROLE:
                roles.setdefault(role, p)
        letter = next((p for role, p in prons if role == _LETTER_ROLE), None)
        heteronym = any(p != default for p in roles.values())
        return _Word((default,), roles if heteronym else None, letter)

    def _guess(self, word: str) -> tuple[str, ...]:
        return tuple(self._guesser(word.replace("'", "")))

    def _letter(self, ch: str) -> tuple[str, ...]:
        rows = self._rows(ch.lower()) or self._rows(_fold(ch))
        if not rows:
            return self._guess(_fold(ch))
        word = self._from_rows(rows)
        return word.letter or word.parts[0]

    def _resolve(self, surface: str) -> _Word:
        lower = surface.lower()
        rows = self._rows(lower)
        if not rows and len(surface) > 1 and surface.isupper() and "'" not in surface:
            # An all-capital word the lexicon lacks is an initialism: spell it (TTS -> T T S).
            return _Word(tuple(self._letter(ch) for ch in surface))
        folded = _fold(lower)
        if not rows and folded != lower:
            rows = self._rows(folded)
        if rows:
            word = self._from_rows(rows)
            if len(surface) == 1:
                word = word._replace(letter=word.letter or word.parts[0])
            return word
        if folded.endswith("'s") and len(folded) > 2:
            # Possessives of unlisted names: say the name, then the /s/, /z/ or /ɪz/ its last sound calls for.
            base = self._rows(folded[:-2])
            stem = self._from_rows(base).parts[0] if base else self._guess(folded[:-2])
            return _Word((_possessive(stem),))
        return _Word((self._guess(folded),))

    def _word(self, surface: str) -> _Word:
        word = self._cache.get(surface)
        if word is None:
            word = self._resolve(surface)
            if len(self._cache) >= self.cache_size:
                # Dicts keep insertion order: forget the older half rather than grow without bound.
                for key in list(self._cache)[: self.cache_size // 2 + 1]:
                    del self._cache[key]
            self._cache[surface] = word
        return word

    # ------------------------------------------------------------------ text

    @staticmethod
    def _tokens(text: str) -> list[str]:
        # Digits should not reach the G2P (normalize_text spells them); say them rather than drop them.
        text = re.sub(
            r"[0-9]+",
            lambda m: f" {numbers.digits(m[0]) if m[0][0] == '0' else numbers.cardinal(int(m[0]))} ",
            unicodedata.normalize("NFC", text).replace("\u2019", "'"),
        )
        return _TOKEN.findall(text)

    def phonemize(self, normalized_text: str) -> list[str]:
        """Flat token list for text from ``normalize_text``: phonemes, ``" "`` between words, and breaks.

        Characters other than letters, apostrophes and ``, . ? ! ; :`` separate words and are not spoken.
        """
        tokens = self._tokens(normalized_text)
        is_word = [t not in _PUNCT_RANK for t in tokens]
        with self._lock:
            self._load()
            words = [self._word(t) if w else None for t, w in zip(tokens, is_word, strict=True)]
            tags: list[str] | None = None
            if any(w is not None and w.roles for w in words):
                tags = list(self._tagger(tokens))

        def single_capital(i: int) -> bool:
            return 0 <= i < len(tokens) and len(tokens[i]) == 1 and tokens[i].isupper()

        out: list[str] = []
        pending: str | None = None
        for i, (token, word) in enumerate(zip(tokens, words, strict=True)):
            if word is None:
                if out and (pending is None or _PUNCT_RANK[token] < _PUNCT_RANK[pending]):
                    pending = token
                continue
            parts = word.parts
            if (
                word.letter is not None
                and single_capital(i)
                and (single_capital(i - 1) or single_capital(i + 1))
            ):
                parts = (word.letter,)  # a run of capitals is spelled: "U S A", "P M"
            elif word.roles is not None and tags is not None:
                tag = tags[i]
                role = word.roles.get(f"gruut:{tag}")
                if role is None and tag == "VBN":
                    role = word.roles.get("gruut:VBD")  # "has read" sounds like "read" (past)
                parts = (role,) if role is not None else parts
            for part in parts:
                if not part:
                    continue
                if pending is not None:
                    out.append(pending)
                    pending = None
                if out:
                    out.append(WORD_BOUNDARY)
                out.extend(part)
        if pending is not None:
            out.append(pending)
        return out

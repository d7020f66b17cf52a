"""English (en-US) text normalisation for TTS: everything the G2P cannot read becomes words or goes.

The output holds Latin letters, spaces, apostrophes, hyphens and the breaks ``, . ? ! ; :`` only.
Numbers, currency, times, ordinals, years, abbreviations and symbols are spelled out; characters that
cannot be spoken are dropped with a warning the caller must show; text in another script is refused.

Letters with diacritics (café, José) are kept as written: the gruut lexicon has entries for some
accented names, and the G2P folds accents itself before guessing a word it does not know, so
stripping them here would only lose information.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from mai_models.errors import MaiUserError
from mai_models.tts.frontend import numbers


@dataclass(frozen=True)
class NormalizedText:
    """Speakable text and what normalisation had to drop (to be shown to the user, never swallowed)."""

    text: str
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------- characters

_TYPOGRAPHY = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u02bc": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2033": '"',
        "\u2026": "...",
        "\u2212": "-",  # minus sign
        "\u2010": "-",
        "\u2011": "-",
    }
)

# Spoken forms of symbols. Padded with spaces; whitespace is collapsed at the end.
_SYMBOL_WORDS = {
    "&": " and ",
    "@": " at ",
    "+": " plus ",
    "=": " equals ",
    "%": " percent ",
    "\u2030": " per mille ",
    "#": " number ",
    "\u2116": " number ",
    "/": " slash ",
    "\\": " backslash ",
    "\u00b0": " degrees ",
    "\u00a9": " copyright ",
    "\u00ae": " registered ",
    "\u2122": " trademark ",
    "\u00a7": " section ",
    "\u00b6": " paragraph ",
    "\u00d7": " times ",
    "\u00f7": " divided by ",
    "\u00b1": " plus or minus ",
    "<": " less than ",
    ">": " greater than ",
    "~": " about ",
    "$": " dollars ",
    "\u00a3": " pounds ",
    "\u20ac": " euros ",
    "\u00a5": " yen ",
    "\u20b9": " rupees ",
    "\u00a2": " cents ",
    "\u00b5": " micro ",
    "\u00bd": " one half ",
    "\u00bc": " one quarter ",
    "\u00be": " three quarters ",
    "\u00b2": " squared ",
    "\u00b3": " cubed ",
}
# Characters that mark a pause in running text; read as a comma.
_PAUSES = frozenset("\u2013\u2014\u2015()[]{}\u2022\u00b7|")
# Markup and quoting with no sound of its own: removed without a warning.
_SILENT = frozenset('"*_`')
_KEPT_PUNCTUATION = frozenset(".,?!;:'-")


def _is_silent(ch: str) -> bool:
    # Format characters (zero-width joiners, BOM, soft hyphen) and variation selectors are invisible.
    return (
        ch in _SILENT
        or unicodedata.category(ch) == "Cf"
        or "\ufe00" <= ch <= "\ufe0f"
        or "\U000e0100" <= ch <= "\U000e01ef"
    )


def _is_latin_letter(ch: str) -> bool:
    return ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN")


def _script_of(ch: str) -> str:
    # The first word of a letter's Unicode name is its script for every script we expect to meet
    # ("CYRILLIC SMALL LETTER PE", "CJK UNIFIED IDEOGRAPH-4F60", "HANGUL SYLLABLE GA").
    return unicodedata.name(ch, "UNKNOWN").split()[0]


def _same_script(ch: str, script: str) -> bool:
    # Vowel signs and other combining marks belong to the word they sit in (Devanagari, Arabic).
    return (ch.isalpha() or unicodedata.category(ch).startswith("M")) and _script_of(ch) == script


def _fold_or_reject_scripts(text: str) -> str:
    """Fold letter-like compatibility forms to Latin (fullwidth 'Ａ', 'ﬁ', 'ℓ'); refuse other scripts."""
    out: list[str] = []
    for i, ch in enumerate(text):
        # Modifier letters (Lm: ˈ, ʰ) are symbols in practice; they go the unknown-character way.
        if not ch.isalpha() or unicodedata.category(ch) == "Lm" or ch in _SYMBOL_WORDS:
            out.append(ch)
            continue
        folded = unicodedata.normalize("NFKC", ch)
        if folded != ch and folded and all(_is_latin_letter(c) for c in folded):
            out.append(folded)  # ligatures and compatibility forms: 'ﬁ' -> 'fi'
            continue
        if _is_latin_letter(ch):
            out.append(ch)
            continue
        script = _script_of(ch)
        start, end = i, i + 1
        while start > 0 and _same_script(text[start - 1], script):
            start -= 1
        while end < len(text) and _same_script(text[end], script):
            end += 1
        sample = text[start:end] if end - start <= 20 else text[start : start + 20] + "..."
        raise MaiUserError(
            f"text contains {script} script ({sample!r}); the en-us frontend reads Latin script only"
        )
    return "".join(out)


def _ascii_digits(text: str) -> str:
    # Arabic-Indic, Devanagari or fullwidth digits are still numbers; \d would match them but int() of a
    # mixed run is fragile, so make every decimal digit ASCII before the number rules run.
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() and not ch.isascii() else ch for ch in text)


def _paragraphs_to_sentences(text: str) -> str:
    # A blank line ends a sentence even without punctuation (headings, list items); single newlines
    # are line wrapping inside a sentence.
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    ended = []
    for p in paragraphs:
        if not p:
            continue
        if len(paragraphs) > 1 and not re.search(r"[.!?;:,]['\")\]]*$", p):
            p += "."
        ended.append(p)
    return " ".join(ended)


# --------------------------------------------------------------------------- rules

_INT = r"[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+"
_SCALE_WORDS = r"thousand|million|billion|trillion"

_CURRENCIES = {
    # symbol: (unit, units, subunit, subunits)
    "$": ("dollar", "dollars", "cent", "cents"),
    "\u00a3": ("pound", "pounds", "penny", "pence"),
    "\u20ac": ("euro", "euros", "cent", "cents"),
    "\u00a5": ("yen", "yen", "", ""),
    "\u20b9": ("rupee", "rupees", "paisa", "paise"),
}

# (abbreviation, expansion). Titles precede a name and never end a sentence.
_TITLES = {
    "mr": "mister",
    "mrs": "missus",
    "ms": "miz",
    "dr": "doctor",
    "prof": "professor",
    "rev": "reverend",
    "gen": "general",
    "capt": "captain",
    "lt": "lieutenant",
    "sgt": "sergeant",
    "col": "colonel",
    "gov": "governor",
    "sen": "senator",
    "rep": "representative",
    "hon": "honorable",
    "mt": "mount",
    "ft": "fort",
}
# These stand before what they qualify ("vs. Y", "approx. 5"): never the end of a sentence.
_LEADING = {
    "vs": "versus",
    "approx": "approximately",
    "fig": "figure",
    "vol": "volume",
}
# These may end a sentence: their period is kept when a new sentence follows.
_TRAILING = {
    "etc": "et cetera",
    "inc": "incorporated",
    "ltd": "limited",
    "co": "company",
    "corp": "corporation",
    "jr": "junior",
    "sr": "senior",
    "ave": "avenue",
    "blvd": "boulevard",
    "dept": "department",
}
_MONTHS = {
    "Jan": "January",
    "Feb": "February",
    "Mar": "March",
    "Apr": "April",
    "Jun": "June",
    "Jul": "July",
    "Aug": "August",
    "Sep": "September",
    "Sept": "September",
    "Oct": "October",
    "Nov": "November",
    "Dec": "December",
}
_PHRASES = {"e.g.": "for example", "i.e.": "that is", "a.k.a.": "also known as", "cf.": "compare"}

# Every abbreviation whose period must not end a sentence in split_sentences.
ABBREVIATIONS = frozenset(
    [*_TITLES, "st", *_LEADING, *_TRAILING, *(m.lower() for m in _MONTHS), "e.g", "i.e", "a.k.a", "cf"]
)


# Matched at a position rather than on a slice, so that many abbreviations in a long text stay linear.
_AT_END = re.compile(r"\s*$")
_NEW_SENTENCE = re.compile(r"\s*$|\s+['\"(]?[A-Z]")
_CAPITAL_WORD = re.compile(r"\s+[A-Z]")


def _sentence_follows(text: str, end: int) -> bool:
    """True when position ``end`` is the end of text or followed by whitespace and a capital letter."""
    return _NEW_SENTENCE.match(text, end) is not None


def _int_words(s: str) -> str:
    plain = s.replace(",", "")
    # Leading zeros and very long runs are codes (007, card numbers), not quantities.
    if (len(plain) > 1 and plain.startswith("0")) or ("," not in s and len(plain) > 15):
        return numbers.digits(plain)
    return numbers.cardinal(int(plain))


def _number_words(integer: str, fraction: str | None) -> str:
    return numbers.decimal(integer.replace(",", ""), fraction) if fraction else _int_words(integer)


def _currency(m: re.Match[str]) -> str:
    sign, symbol, integer, fraction, scale = m.group(1, 2, 3, 4, 5)
    unit, units, sub, subs = _CURRENCIES[symbol]
    minus = "minus " if sign else ""
    if scale:
        return f" {minus}{_number_words(integer, fraction)} {scale.lower()} {units} "
    whole = int(integer.replace(",", ""))
    if fraction and len(fraction) == 2 and sub:
        cents = int(fraction)
        parts = []
        if whole or not cents:
            parts.append(f"{_int_words(integer)} {unit if whole == 1 else units}")
        if cents:
            parts.append(f"{numbers.cardinal(cents)} {sub if cents == 1 else subs}")
        return f" {minus}{' '.join(parts)} "
    if fraction:
        return f" {minus}{_number_words(integer, fraction)} {units} "
    return f" {minus}{_int_words(integer)} {unit if whole == 1 else units} "


def _clock(m: re.Match[str]) -> str:
    hour, minute, period = int(m.group(1)), m.group(2) or None, m.group(3)
    words = [numbers.cardinal(hour)]
    if minute is not None and minute != "00":
        words.append(
            f"oh {numbers.cardinal(int(minute))}" if minute < "10" else numbers.cardinal(int(minute))
        )
    elif minute == "00" and not period:
        words.append("o'clock")
    if period:
        # Capital single letters make the G2P spell them (A M), where "am" would be read as a word.
        words.append(f"{period.upper()} M")
    spoken = " ".join(words)
    if m.group(0).endswith(".") and _sentence_follows(m.string, m.end()):
        spoken += "."
    return f" {spoken} "


def _abbreviation(m: re.Match[str]) -> str:
    word = m.group(1)
    key = word.lower()
    if key in _TITLES or key in _LEADING:
        return _TITLES.get(key) or _LEADING[key]
    if key == "st":
        # "St. Louis" is a saint; "Main St." a street.
        if _CAPITAL_WORD.match(m.string, m.end()):
            return "Saint"
        return "street" + ("." if _sentence_follows(m.string, m.end()) else "")
    expansion = _MONTHS.get(word) or _TRAILING[key]
    return expansion + ("." if _sentence_follows(m.string, m.end()) else "")


def _initialism(m: re.Match[str]) -> str:
    letters = " ".join(c.upper() for c in m.group(0) if c.isalpha())
    # Keep the final period only at the very end: "U.S. Army" must not become two sentences.
    return letters + ("." if _AT_END.match(m.string, m.end()) else "")


def _fraction(m: re.Match[str]) -> str:
    num, den = int(m.group(1)), int(m.group(2))
    if not 0 < num < den or den > 100:
        return f" {numbers.cardinal(num)} slash {numbers.cardinal(den)} "
    if den == 2:
        name = "half"
    elif den == 4:
        name = "quarter"
    else:
        name = numbers.ordinal(den)
    if num > 1:
        name = "halves" if den == 2 else name + "s"
    return f" {numbers.cardinal(num)} {name} "


_YEAR = r"1[1-9][0-9]{2}|20[0-9]{2}"
_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # Clock times first: "5 p.m." must not go through the a.m./p.m. initialism rule.
    (
        re.compile(r"(?<![0-9:.])([01]?[0-9]|2[0-3]):([0-5][0-9])(?![0-9:])(?:\s?([AaPp])\.?[Mm]\b\.?)?"),
        _clock,
    ),
    (re.compile(r"(?<![0-9:.])(1[0-2]|0?[1-9])()\s?([AaPp])\.?[Mm]\b\.?"), _clock),
    # Abbreviations and initialisms, before numbers so that "No. 5" still sees its digit.
    (
        re.compile(r"(?<![\w.])(" + "|".join(re.escape(p) for p in _PHRASES) + r")", re.IGNORECASE),
        lambda m: _PHRASES[m.group(1).lower()],
    ),
    (re.compile(r"(?<![\w.])[Nn]o\.(?=\s*[0-9])"), "number"),
    # Titles are capitalised ("Rep. Smith"); a lowercase "rep." is a word ending a sentence.
    (
        re.compile(
            r"(?<![\w.])(" + "|".join(w for k in [*_TITLES, "st"] for w in (k.title(), k.upper())) + r")\."
        ),
        _abbreviation,
    ),
    (re.compile(r"(?<![\w.])(" + "|".join([*_LEADING, *_TRAILING]) + r")\.", re.IGNORECASE), _abbreviation),
    (re.compile(r"(?<![\w.])(" + "|".join(_MONTHS) + r")\."), _abbreviation),
    (re.compile(r"(?<![\w.])vs\b", re.IGNORECASE), "versus"),
    (re.compile(r"(?<![\w.])etc\b", re.IGNORECASE), "et cetera"),
    (re.compile(r"(?<![\w.])(?:[A-Za-z]\.){2,}"), _initialism),
    # Numbers. Version strings and addresses first, so their dots are not read as decimal points.
    (
        re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+){2,}(?![0-9])"),
        lambda m: " " + " dot ".join(_int_words(g) for g in m.group(0).split(".")) + " ",
    ),
    (
        re.compile(
            r"(?<!\w)(-?)([$\u00a3\u20ac\u00a5\u20b9])\s?(" + _INT + r")(?:\.([0-9]+))?"
            r"(?:\s?(" + _SCALE_WORDS + r")\b)?",
            re.IGNORECASE,
        ),
        _currency,
    ),
    (re.compile(r"(?<![0-9,])(" + _INT + r")\s?\u00a2"), lambda m: f" {_int_words(m.group(1))} cents "),
    (re.compile(r"(?<![\w.])-(?=\.?[0-9])"), " minus "),
    (
        re.compile(r"(?<![\w.])(" + _INT + r")(?:\.([0-9]+))?\s?%"),
        lambda m: f" {_number_words(m.group(1), m.group(2))} percent ",
    ),
    (
        re.compile(r"(?<![\w.])(" + _INT + r")(st|nd|rd|th)\b", re.IGNORECASE),
        lambda m: f" {numbers.ordinal(int(m.group(1).replace(',', '')))} ",
    ),
    (re.compile(r"'([1-9]0)s\b"), lambda m: f" {numbers.plural(numbers.cardinal(int(m.group(1))))} "),
    (
        re.compile(r"(?<![\w.,])(" + _YEAR + r")s\b"),
        lambda m: f" {numbers.plural(numbers.year(int(m.group(1))))} ",
    ),
    (
        re.compile(r"(?<![\w.,])(" + _YEAR + r")\s?[-\u2013]\s?(" + _YEAR + r")(?![\w%]|[.,][0-9])"),
        lambda m: f" {numbers.year(int(m.group(1)))} to {numbers.year(int(m.group(2)))} ",
    ),
    # A bare four-digit number in 1100-2099 reads as a year ("in 1999"); write "1,999" for the quantity.
    (
        re.compile(r"(?<![\w.,])(" + _YEAR + r")(?![\w%]|[.,][0-9])"),
        lambda m: f" {numbers.year(int(m.group(1)))} ",
    ),
    (re.compile(r"(?<![\w./])([0-9]+)/([0-9]+)(?![\w/]|\.[0-9])"), _fraction),
    (re.compile(r"(?<=[0-9])\s?\u2013\s?(?=[0-9])"), " to "),
    (
        re.compile(r"(?<![0-9,])(" + _INT + r")?\.([0-9]+)"),
        lambda m: f" {numbers.decimal((m.group(1) or '').replace(',', ''), m.group(2))} ",
    ),
    (re.compile(_INT), lambda m: f" {_int_words(m.group(0))} "),
    # Symbols with a unit after them.
    (re.compile(r"\u00b0\s?C\b"), " degrees Celsius "),
    (re.compile(r"\u00b0\s?F\b"), " degrees Fahrenheit "),
    # A dot inside a word is spoken in addresses: example.com -> example dot com.
    (re.compile(r"(?<=[^\W\d_])\.(?=[^\W\d_])"), " dot "),
    # A spaced or doubled hyphen is a dash, i.e. a pause.
    (re.compile(r"\s-+\s|--+"), " , "),
]

# Each pattern either consumes the whole run it starts on or starts only at a run's beginning, so none
# rescans a long run of dashes or dots once per character (that was minutes for 100k characters).
_CLEANUP: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?<!\.)\.{2,}+(?=\s+[a-z])"), ","),  # a mid-sentence ellipsis is a pause
    (re.compile(r"\.{2,}"), "."),
    (re.compile(r"\s+"), " "),
    (re.compile(r" ([,.?!;:])"), r"\1"),
    (re.compile(r"([,;:])(?: ?[,;:])+"), r"\1"),
    (re.compile(r"[,;:] ?([.?!])"), r"\1"),
    (re.compile(r"([.?!])(?: ?[,;:])+"), r"\1"),
    (re.compile(r"([,.?!;:])(?=[^\W\d_])"), r"\1 "),
    (re.compile(r"^[\s,.?!;:'-]+"), ""),
]


def _drop_unspeakable(text: str) -> tuple[str, list[str]]:
    out: list[str] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for ch in text:
        if ch in _SYMBOL_WORDS:
            out.append(_SYMBOL_WORDS[ch])
        elif ch in _PAUSES:
            out.append(" , ")
        elif ch.isspace():
            out.append(" ")
        elif _is_latin_letter(ch) or ch in _KEPT_PUNCTUATION:
            out.append(ch)
        elif _is_silent(ch):
            continue
        elif ch not in seen:
            seen.add(ch)
            warnings.append(f"dropped unknown character {ch!r} (U+{ord(ch):04X})")
    return "".join(out), warnings


def normalize_text(text: str) -> NormalizedText:
    """Turn raw en-US text into speakable words; see the module docstring for what is kept.

    Raises MaiUserError for empty text, text in a non-Latin script, and text with nothing speakable.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_text expects str, got {type(text).__name__}")
    if not text.strip():
        raise MaiUserError("text is empty")
    text = unicodedata.normalize("NFC", text).translate(_TYPOGRAPHY)
    text = _fold_or_reject_scripts(_ascii_digits(text))
    text = _paragraphs_to_sentences(text)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    text, warnings = _drop_unspeakable(text)
    for pattern, replacement in _CLEANUP:
        text = pattern.sub(replacement, text)
    text = text.strip()
    if not any(_is_latin_letter(ch) for ch in text):
        dropped = "; ".join(warnings) if warnings else "only punctuation or symbols"
        raise MaiUserError(f"text has nothing to speak after normalisation ({dropped})")
    return NormalizedText(text, tuple(warnings))


# --------------------------------------------------------------------------- sentence splitting

_BOUNDARY = re.compile(r"[.!?]+['\")\]]*(?=\s|$)")
_WORD_BEFORE = re.compile(r"[\w.]{0,12}$")
_NEXT_CHAR = re.compile(r"\s*(\S?)")


def _is_sentence_end(text: str, m: re.Match[str]) -> bool:
    if m.group(0)[0] != "." or len(m.group(0).rstrip("'\")]")) > 1:
        return True
    # Look back a few characters only: abbreviations are short, and slicing the whole prefix per
    # period would make splitting quadratic in the text length.
    window = text[max(0, m.start() - 12) : m.start()]
    word = window[_WORD_BEFORE.search(window).start() :].lower()
    following = _NEXT_CHAR.match(text, m.end()).group(1)
    # "Dr. Smith", "J. K. Rowling", "e.g. this": a period after an abbreviation or an initial.
    if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False
    if word == "no" and following.isdigit():  # "No. 5"
        return False
    return not following.islower()


def _split_words(text: str, max_chars: int) -> list[str]:
    chunks: list[str] = []
    current = ""
    for word in text.split():
        if len(word) > max_chars:  # one "word" longer than a chunk: cut it
            if current:
                chunks.append(current)
                current = ""
            cut = len(word) - len(word) % max_chars
            chunks.extend(word[i : i + max_chars] for i in range(0, cut, max_chars))
            word = word[cut:]
            if not word:
                continue
        if current and len(current) + 1 + len(word) > max_chars:
            chunks.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        chunks.append(current)
    return chunks


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """Split an over-long sentence at , ; : (kept on the left part), then at spaces; pack greedily."""
    chunks: list[str] = []
    current = ""
    for clause in re.split(r"(?<=[,;:])\s+", sentence):
        pieces = [clause] if len(clause) <= max_chars else _split_words(clause, max_chars)
        for piece in pieces:
            if current and len(current) + 1 + len(piece) > max_chars:
                chunks.append(current)
                current = piece
            else:
                current = f"{current} {piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Split text into sentences, and sentences longer than ``max_chars`` into clauses or word runs.

    No chunk is longer than ``max_chars``. Chunks with nothing to say (a stray "...") join the previous one.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    text = " ".join(text.split())
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if _is_sentence_end(text, m):
            sentences.append(text[start : m.end()].strip())
            start = m.end()
    sentences.append(text[start:].strip())

    # A piece with nothing to say (a stray "...") joins its neighbour instead of being a sentence.
    groups: list[list[str]] = []
    group_speaks: list[bool] = []
    for s in sentences:
        if not s:
            continue
        speaks = any(c.isalnum() for c in s)
        if groups and (not speaks or not group_speaks[-1]):
            groups[-1].append(s)
            group_speaks[-1] = group_speaks[-1] or speaks
        else:
            groups.append([s])
            group_speaks.append(speaks)

    chunks: list[str] = []
    for group in groups:
        s = " ".join(group)
        chunks.extend([s] if len(s) <= max_chars else _split_long(s, max_chars))
    return chunks

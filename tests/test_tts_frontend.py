"""TTS text frontend: normalisation, sentence splitting, gruut G2P, phoneme vocabulary, TextFrontend.

Real gruut models throughout; one G2P per module keeps its ~0.5 s load to once.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import time

import pytest

from mai_models.errors import MaiUserError
from mai_models.tts.frontend import (
    G2P,
    PUNCTUATION,
    WORD_BOUNDARY,
    EncodedText,
    NormalizedText,
    PhonemeVocab,
    TextFrontend,
    backend_info,
    normalize_text,
    numbers,
    split_sentences,
)


@pytest.fixture(scope="module")
def g2p() -> G2P:
    g = G2P()
    g.warm_up()
    return g


def words(tokens: list[str]) -> list[list[str]]:
    """G2P output split at word boundaries, punctuation removed."""
    out: list[list[str]] = [[]]
    for t in tokens:
        if t == WORD_BOUNDARY:
            out.append([])
        elif t not in PUNCTUATION:
            out[-1].append(t)
    return out


def norm(text: str) -> str:
    result = normalize_text(text)
    assert result.warnings == ()
    return result.text


# --------------------------------------------------------------------------- numbers


def test_number_speller() -> None:
    assert numbers.cardinal(0) == "zero"
    assert numbers.cardinal(115) == "one hundred fifteen"
    assert numbers.cardinal(1_000_001) == "one million one"
    assert numbers.cardinal(-7) == "minus seven"
    assert numbers.cardinal(2_000_000_000_300) == "two trillion three hundred"
    assert numbers.ordinal(12) == "twelfth"
    assert numbers.ordinal(20) == "twentieth"
    assert numbers.ordinal(101) == "one hundred first"
    assert numbers.year(1999) == "nineteen ninety nine"
    assert numbers.year(1905) == "nineteen oh five"
    assert numbers.year(1900) == "nineteen hundred"
    assert numbers.year(2005) == "two thousand five"
    assert numbers.year(2024) == "twenty twenty four"


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("I have 3 apples.", "I have three apples."),
        ("It was -42 outside.", "It was minus forty two outside."),
        (
            "About 1,234,567 people.",
            "About one million two hundred thirty four thousand five hundred sixty seven people.",
        ),
        ("Pi is 3.14 or so.", "Pi is three point one four or so."),
        ("He came 21st, she came 2nd.", "He came twenty first, she came second."),
        ("Born in 1999, moved in 2024.", "Born in nineteen ninety nine, moved in twenty twenty four."),
        ("The 1990s were fine.", "The nineteen nineties were fine."),
        ("It costs $3.50 today.", "It costs three dollars fifty cents today."),
        ("Pay $1 or £2 or €1.01 now.", "Pay one dollar or two pounds or one euro one cent now."),
        ("A $2.5 million budget.", "A two point five million dollars budget."),
        ("We got 50% off.", "We got fifty percent off."),
        ("Meet at 3:30 p.m. today.", "Meet at three thirty P M today."),
        ("Add 1/2 cup.", "Add one half cup."),
    ],
)
def test_numbers_are_spelled(raw: str, spoken: str) -> None:
    assert norm(raw) == spoken


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("Mr. Smith met Dr. Jones.", "mister Smith met doctor Jones."),
        ("Mrs. Brown and Prof. Green.", "missus Brown and professor Green."),
        ("St. Louis is on Main St.", "Saint Louis is on Main street."),
        ("Cats vs. dogs.", "Cats versus dogs."),
        ("Fruit, e.g. apples, i.e. food, etc.", "Fruit, for example apples, that is food, et cetera."),
        ("On Jan. 5 and Feb. 9.", "On January five and February nine."),
        ("Room No. 7 is free.", "Room number seven is free."),
        ("The U.S.A. won.", "The U S A won."),
    ],
)
def test_abbreviations_are_expanded(raw: str, spoken: str) -> None:
    assert norm(raw) == spoken


def test_symbols_are_spelled() -> None:
    text = norm("Tom & Jerry @ home: 1+1=2, #1, and/or 5° and 20°C, © Acme")
    assert text == (
        "Tom and Jerry at home: one plus one equals two, number one, and slash or five degrees and "
        "twenty degrees Celsius, copyright Acme"
    )


def test_text_is_cleaned_up() -> None:
    assert norm("  Hello\tthere,\n  friend  ") == "Hello there, friend"
    assert norm("He said “don’t” — then left (quickly).") == "He said don't, then left, quickly."
    assert norm("Title\n\nBody text") == "Title. Body text."
    assert norm("ＡＢＣ ﬁne") == "ABC fine"  # compatibility forms fold to plain Latin
    # Accented Latin letters are kept: the lexicon knows some (josé) and the G2P folds the rest.
    assert norm("Café José") == "Café José"


def test_unknown_characters_are_dropped_with_a_warning() -> None:
    result = normalize_text("Hello 😀 world\x07! 😀")
    assert isinstance(result, NormalizedText)
    assert result.text == "Hello world!"
    assert result.warnings == (
        "dropped unknown character '😀' (U+1F600)",
        "dropped unknown character '\\x07' (U+0007)",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "text is empty"),
        ("  \n\t ", "text is empty"),
        ("😀😀", "nothing to speak after normalisation (dropped unknown character '😀' (U+1F600))"),
        ("...", "nothing to speak after normalisation"),
        (
            "Привет, мир",
            "text contains CYRILLIC script ('Привет'); the en-us frontend reads Latin script only",
        ),
        ("Say 你好 now", "text contains CJK script ('你好')"),
        ("Hello Γειά", "GREEK script"),
        ("مرحبا", "ARABIC script"),
    ],
)
def test_unreadable_text_is_refused(text: str, message: str) -> None:
    with pytest.raises(MaiUserError, match=re.escape(message)):
        normalize_text(text)


# --------------------------------------------------------------------------- sentences


def test_split_sentences_respects_abbreviations_and_decimals() -> None:
    text = "Dr. Smith paid 3.14 dollars. Was it enough? Yes! J. K. Rowling agreed. Done"
    assert split_sentences(text) == [
        "Dr. Smith paid 3.14 dollars.",
        "Was it enough?",
        "Yes!",
        "J. K. Rowling agreed.",
        "Done",
    ]


def test_split_sentences_bounds_every_chunk() -> None:
    clause = "this clause rambles on about nothing in particular"
    long_sentence = ", ".join([clause] * 12).capitalize() + "."
    run_on = " ".join(["Word"] + ["word"] * 120) + "."
    paragraph = f"Short one. {long_sentence} {run_on} " * 2
    chunks = split_sentences(paragraph, max_chars=80)
    assert len(chunks) > 10
    assert all(0 < len(c) <= 80 for c in chunks)
    assert " ".join(chunks).split() == paragraph.split()  # nothing lost or reordered
    assert "Short one." in chunks
    assert any(c.endswith(clause + ",") for c in chunks)  # long sentences break after commas first
    assert split_sentences("x" * 250, max_chars=100) == ["x" * 100, "x" * 100, "x" * 50]
    with pytest.raises(ValueError):
        split_sentences("Hello.", max_chars=0)


# --------------------------------------------------------------------------- G2P


def test_phonemize_hello_world(g2p: G2P) -> None:
    assert g2p.phonemize("Hello, world.") == ["h", "ɛ", "l", "ˈoʊ", ",", " ", "w", "ˈɚ", "l", "d", "."]


def test_phonemize_token_structure(g2p: G2P) -> None:
    tokens = g2p.phonemize("Well... what?! Nobody said, 'Zorblax' -- ever.")
    assert tokens[0] not in (WORD_BOUNDARY, *PUNCTUATION) and tokens[-1] == "."
    assert "?" in tokens and "!" not in tokens  # "?!" collapses to the stronger break
    assert "d͡ʒ" in g2p.phonemize("Judge.") and "ˈaʊ" in g2p.phonemize("Now.")
    for a, b in zip(tokens, tokens[1:], strict=False):
        assert not (a == WORD_BOUNDARY and b == WORD_BOUNDARY)
        assert not (a in PUNCTUATION and b in PUNCTUATION)
    assert tokens.count(WORD_BOUNDARY) == 5  # between the six words, none at the ends


def test_phonemize_uses_context_and_spells_initialisms(g2p: G2P) -> None:
    assert words(g2p.phonemize("I read the book yesterday."))[1] == ["ɹ", "ˈɛ", "d"]
    assert words(g2p.phonemize("I will read the book."))[2] == ["ɹ", "ˈi", "d"]
    assert words(g2p.phonemize("I have read it."))[2] == ["ɹ", "ˈɛ", "d"]
    # Unknown all-capital words and runs of single capitals are spelled letter by letter.
    assert g2p.phonemize("TTS") == ["t", "ˈi", " ", "t", "ˈi", " ", "ˈɛ", "s"]
    assert g2p.phonemize("ten P M") == ["t", "ˈɛ", "n", " ", "p", "ˈi", " ", "ˈɛ", "m"]
    assert g2p.phonemize("A dog")[0] == "ə"
    # Out-of-lexicon words are guessed, possessives get the right ending, digits are still said.
    assert g2p.phonemize("Zorblax") and WORD_BOUNDARY not in g2p.phonemize("Zorblax")
    assert g2p.phonemize("Zorblax's") == [*g2p.phonemize("Zorblax"), "ɪ", "z"]
    assert g2p.phonemize("7") == g2p.phonemize("seven")
    assert g2p.phonemize("Café") == g2p.phonemize("cafe")


def test_phonemize_is_fast_warm(g2p: G2P) -> None:
    unseen = " ".join(
        [
            "Astronomers photographed distant galaxies through powerful telescopes, revealing nebulae.",
            "Journalists interviewed firefighters about courageous rescues during blizzards.",
            "Exhausted volunteers packed blankets, canned vegetables, and medicine for families",
            "recovering from devastating floods. Botanists catalogued rare orchids growing beneath",
            "waterfalls, noting peculiar fragrances. Mechanics repaired motorcycles, tractors, and",
            "lawnmowers; apprentices swept sawdust from workshop floors. Philosophers argued passionately",
            "regarding consciousness, free will, and morality until midnight. Sailors navigated",
            "treacherous reefs using lanterns, compasses, and handwritten charts. Bakers kneaded dough,",
            "sprinkled cinnamon, and glazed pastries before sunrise. Geologists measured earthquakes,",
            "volcanoes, glaciers, and sediment layers near remote canyons. Musicians rehearsed symphonies",
            "featuring trumpets, clarinets, cellos, harps, xylophones, and kettledrums. Zoologists observed",
            "penguins, walruses, jaguars, and chameleons adapting to changing habitats. Architects sketched",
            "skyscrapers, bridges, and stadiums with remarkable precision. Novelists drafted thrilling",
            "chapters about smugglers, detectives, and forgotten treasure maps hidden underneath abandoned",
            "lighthouses near quiet harbors, while weary shepherds guided stubborn goats across misty",
            "meadows toward crumbling stone barns beyond the hills.",
        ]
    )
    fresh = G2P()
    fresh.warm_up()
    start = time.perf_counter()
    tokens = fresh.phonemize(unseen)
    elapsed = time.perf_counter() - start
    assert tokens.count(WORD_BOUNDARY) + 1 >= 160
    assert elapsed < 0.15, f"{elapsed:.3f} s for unseen text"
    start = time.perf_counter()
    assert fresh.phonemize(unseen) == tokens  # cached words give the same answer
    assert time.perf_counter() - start < 0.05


def test_g2p_backend_and_pickling(g2p: G2P) -> None:
    info = backend_info()
    assert info["backend"] == "gruut" and info["license"] == "MIT" and info["lang"] == "en-us"
    assert info["version"] == "2.4.0"
    assert info["lexicon"].startswith("gruut_lang_en ")
    assert g2p.backend_info() == info
    clone = pickle.loads(pickle.dumps(g2p))
    assert clone.phonemize("Hello, world.") == g2p.phonemize("Hello, world.")
    assert G2P("en_US").lang == "en-us"
    with pytest.raises(MaiUserError, match="unsupported G2P language 'de-de'"):
        G2P("de-de")


# --------------------------------------------------------------------------- vocabulary


def test_vocab_layout_encode_decode(g2p: G2P) -> None:
    sequences = [g2p.phonemize("Hello, world."), g2p.phonemize("Judge me now!")]
    vocab = PhonemeVocab.build(sequences)
    assert vocab.tokens[:9] == ["<pad>", "<unk>", " ", ",", ".", "?", "!", ";", ":"]
    phonemes = vocab.tokens[9:]
    assert phonemes == sorted(set(sequences[0] + sequences[1]) - {" ", ",", ".", "!"})
    assert len(vocab) == 9 + len(phonemes)
    for seq in sequences:
        ids, warnings = vocab.encode(seq)
        assert warnings == [] and min(ids) >= 2
        assert vocab.decode(ids) == seq
        assert vocab.decode([0, *ids, 0, 0]) == seq  # padding is skipped
    ids, warnings = vocab.encode(["h", "ʒ", "ɛ", "ʒ", "<pad>"])
    assert vocab.decode(ids) == ["h", "ɛ"]
    assert warnings == [
        f"dropped phoneme 'ʒ' (not in the {len(vocab)}-token vocabulary) x2",
        f"dropped phoneme '<pad>' (not in the {len(vocab)}-token vocabulary)",
    ]
    with pytest.raises(ValueError):
        vocab.decode([len(vocab)])


def test_vocab_save_load_round_trip(g2p: G2P, tmp_path) -> None:
    vocab = PhonemeVocab.build([g2p.phonemize("The quick brown fox jumps over the lazy dog.")])
    path = vocab.save(tmp_path / "sub" / "phonemes.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["g2p"] == backend_info() and data["tokens"] == vocab.tokens
    loaded = PhonemeVocab.load(path)
    assert loaded == vocab and loaded.warnings == ()
    assert PhonemeVocab.from_dict(vocab.to_dict()) == vocab

    data["g2p"]["version"] = "2.3.0"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.warns(UserWarning, match="version='2.3.0'.*version='2.4.0'"):
        old = PhonemeVocab.load(path)
    assert old == vocab and "pronunciations may differ" in old.warnings[0]

    with pytest.raises(MaiUserError, match="not found"):
        PhonemeVocab.load(tmp_path / "missing.json")
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(MaiUserError, match="not valid JSON"):
        PhonemeVocab.load(path)
    path.write_text(json.dumps({**vocab.to_dict(), "tokens": ["a", "b"]}), encoding="utf-8")
    with pytest.raises(MaiUserError, match="starts with"):
        PhonemeVocab.load(path)


# --------------------------------------------------------------------------- TextFrontend


def test_text_frontend_encodes_each_sentence(g2p: G2P) -> None:
    text = "Dr. Smith paid $3.50. Was it worth it? Yes 😀, it was!"
    plain = TextFrontend(g2p=g2p)
    sentences = plain.sentences(text)
    assert sentences == ["doctor Smith paid three dollars fifty cents.", "Was it worth it?", "Yes, it was!"]
    vocab = PhonemeVocab.build(plain.phonemes(s) for s in sentences)
    frontend = TextFrontend(vocab=vocab, g2p=g2p)
    encoded = frontend.encode(text)
    assert isinstance(encoded, EncodedText)
    assert encoded.sentences == sentences
    assert len(encoded.ids) == 3
    assert [vocab.decode(ids) for ids in encoded.ids] == [g2p.phonemize(s) for s in sentences]
    assert encoded.warnings == ["dropped unknown character '😀' (U+1F600)"]

    small = TextFrontend(vocab=PhonemeVocab.build([g2p.phonemize("Yes.")]), g2p=g2p)
    partial = small.encode("Yes. Jess!")
    assert len(partial.ids) == 2 and any(w.startswith("dropped phoneme") for w in partial.warnings)

    with pytest.raises(MaiUserError, match="needs a phoneme vocabulary"):
        plain.encode(text)
    with pytest.raises(MaiUserError, match="CYRILLIC"):
        frontend.encode("Привет")
    with pytest.raises(MaiUserError, match="text is empty"):
        frontend.sentences("   ")


def test_frontend_is_framework_free() -> None:
    code = (
        "import sys; from mai_models.tts.frontend import G2P; G2P().phonemize('Hello.'); "
        "bad = [m for m in ('torch', 'dagster', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

"""Spell numbers as en-US words: cardinals, ordinals, years, decimals, digit strings.

Words are joined with spaces, not hyphens ("twenty one"), and without the British "and": the G2P
reads hyphens as word breaks anyway, and one spelling keeps the phoneme sequences of the training
data consistent.
"""

from __future__ import annotations

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [
    "_",
    "thousand",
    "million",
    "billion",
    "trillion",
    "quadrillion",
    "quintillion",
    "sextillion",
    "septillion",
    "octillion",
    "nonillion",
    "decillion",
]
# Past the last named scale a number is an identifier more than a quantity: read it digit by digit.
_MAX_CARDINAL = 1000 ** len(_SCALES)

_IRREGULAR_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest or not words:
        words.append(_ONES[rest])
    return words


def cardinal(n: int) -> str:
    """``-1234`` -> ``"minus one thousand two hundred thirty four"``."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n >= _MAX_CARDINAL:
        return digits(str(n))
    if n < 1000:
        return " ".join(_below_thousand(n))
    groups: list[int] = []
    while n:
        n, group = divmod(n, 1000)
        groups.append(group)
    words: list[str] = []
    for scale in range(len(groups) - 1, -1, -1):
        if groups[scale]:
            words += _below_thousand(groups[scale])
            if scale:
                words.append(_SCALES[scale])
    return " ".join(words)


def ordinal(n: int) -> str:
    """``21`` -> ``"twenty first"``."""
    *head, last = cardinal(n).split()
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def digits(s: str) -> str:
    """``"007"`` -> ``"zero zero seven"``; non-digits are skipped."""
    return " ".join(_ONES[int(c)] for c in s if c.isascii() and c.isdigit())


def year(n: int) -> str:
    """How a year is said: 1999 -> nineteen ninety nine, 1905 -> nineteen oh five, 1900 -> nineteen
    hundred, 2005 -> two thousand five, 2024 -> twenty twenty four. Other values read as cardinals."""
    if not 1000 <= n <= 9999 or 2000 <= n <= 2009 or n % 1000 == 0:
        return cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{cardinal(high)} hundred"
    if low < 10:
        return f"{cardinal(high)} oh {_ONES[low]}"
    return f"{cardinal(high)} {cardinal(low)}"


def plural(words: str) -> str:
    """Plural of a spelled number, for decades and fractions: "nineteen ninety" -> "nineteen nineties"."""
    *head, last = words.split()
    if last.endswith("y"):
        last = last[:-1] + "ies"
    elif last == "six":
        last = "sixes"
    else:
        last += "s"
    return " ".join([*head, last])


def decimal(integer: str, fraction: str) -> str:
    """``("3", "14")`` -> ``"three point one four"``; an empty integer part reads as "point five"."""
    head = cardinal(int(integer)) + " " if integer else ""
    return f"{head}point {digits(fraction)}"

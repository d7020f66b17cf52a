"""Non-phoneme tokens: the G2P emits them and the vocabulary reserves ids for them."""

from __future__ import annotations

PAD = "<pad>"
UNK = "<unk>"
WORD_BOUNDARY = " "
# Breaks the acoustic model can learn pauses and intonation from: "." "?" "!" end a sentence, the
# others are phrase breaks. Fixed order, because their ids are part of every saved vocabulary.
PUNCTUATION: tuple[str, ...] = (",", ".", "?", "!", ";", ":")

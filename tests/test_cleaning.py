from __future__ import annotations

import pytest

from mai_models.config import CleanConfig, DedupConfig, SplitConfig
from mai_models.data.dedup import Deduplicator
from mai_models.data.split import assign_split
from mai_models.data.text_filters import non_text_ratio, normalize_text, quality_reject
from mai_models.errors import MaiUserError

PARAGRAPH = (
    "Dagster assets describe the data a pipeline produces. Each asset is materialised by a function, "
    "and its lineage shows which upstream assets it read. Versioning lets unchanged work be skipped. "
)


def test_normalize_nfc_controls_and_whitespace() -> None:
    text = "Cafe\u0301\x00 \t  costs\u00a0 \x07five\r\n\n\n\n  euros  \n"
    assert normalize_text(text) == "Caf\u00e9 costs five\n\n  euros"
    assert normalize_text("def f():\n    return 1   \n") == "def f():\n    return 1"


def test_quality_filters() -> None:
    cfg = CleanConfig(min_chars=10, max_chars=100, max_non_text_ratio=0.3)
    assert quality_reject("", cfg) == ("empty", "no text after normalisation")
    assert quality_reject("short", cfg)[0] == "too_short"
    assert quality_reject("a" * 101, cfg)[0] == "too_long"
    assert quality_reject("{}[]()<>;;" * 3, cfg)[0] == "non_text_ratio"
    assert quality_reject("plain english words here", cfg) is None
    assert non_text_ratio("abc") == 0.0


def test_exact_and_near_duplicates_keep_the_first() -> None:
    dedup = Deduplicator(DedupConfig(near_dup_threshold=0.8))
    assert dedup.check("a", "h1", PARAGRAPH * 3) is None
    assert dedup.check("b", "h1", PARAGRAPH * 3) == ("exact_duplicate", "same content as a")
    near = (PARAGRAPH * 3).replace("skipped", "reused", 1)
    reason, detail = dedup.check("c", "h2", near)
    assert reason == "near_duplicate" and detail.endswith("with a")
    unrelated = "Completely different prose about tokenizers, byte pairs and vocabularies. " * 5
    assert dedup.check("d", "h3", unrelated) is None


def test_near_duplicate_threshold_is_configurable() -> None:
    edited = (PARAGRAPH * 2).replace("function", "callable").replace("lineage", "history")
    with pytest.raises(MaiUserError, match="raise num_perm or lower the threshold"):
        Deduplicator(DedupConfig(near_dup_threshold=0.99, num_perm=128))
    strict = Deduplicator(DedupConfig(near_dup_threshold=0.97))
    assert strict.check("a", "h1", PARAGRAPH * 2) is None
    assert strict.check("b", "h2", edited) is None
    loose = Deduplicator(DedupConfig(near_dup_threshold=0.3))
    assert loose.check("a", "h1", PARAGRAPH * 2) is None
    assert loose.check("b", "h2", edited)[0] == "near_duplicate"


def test_split_is_stable_and_proportional() -> None:
    cfg = SplitConfig(valid_fraction=0.1, test_fraction=0.1)
    hashes = [f"{i:064x}" for i in range(5000)]
    first = [assign_split(h, cfg) for h in hashes]
    assert first == [assign_split(h, cfg) for h in hashes]
    share = {s: first.count(s) / len(first) for s in ("train", "valid", "test")}
    assert abs(share["valid"] - 0.1) < 0.02 and abs(share["test"] - 0.1) < 0.02
    assert [assign_split(h, SplitConfig(salt="other")) for h in hashes[:50]] != first[:50]

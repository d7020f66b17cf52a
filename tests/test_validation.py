"""GX suites for raw and clean documents: good data passes, each kind of bad data fails readably."""

from __future__ import annotations

import pandas as pd
import pytest

from mai_models.config import CleanConfig, ValidationConfig
from mai_models.data.validation import ValidationReport, validate_clean, validate_raw
from mai_models.errors import MaiUserError

SOURCES = ["demo", "stdlib_docstrings"]
N = 200
CFG = ValidationConfig(min_source_share=0.05, max_reject_rate=0.5, max_dedup_rate=0.3)
CLEAN = CleanConfig(min_chars=200, max_chars=200_000)
STATS = {
    "raw_docs": 250,
    "kept_docs": N,
    "rejected": 50,
    "rejected_by_reason": {"exact_duplicate": 20, "near_duplicate": 10, "too_short": 15, "empty": 5},
}


def _raw(n: int = N) -> pd.DataFrame:
    texts = [f"document {i} " + "lorem ipsum dolor sit amet " * (10 + i % 50) for i in range(n)]
    return pd.DataFrame(
        {
            "doc_id": [f"doc-{i:05d}" for i in range(n)],
            "source": ["stdlib_docstrings" if i % 10 == 0 else "demo" for i in range(n)],
            "origin": [f"file.py:{i}" for i in range(n)],
            "text": texts,
            "n_bytes": [len(t.encode()) for t in texts],
            "sha256": [f"{i:064x}" for i in range(n)],
        }
    )


def _clean(n: int = N) -> pd.DataFrame:
    df = _raw(n)
    df["n_chars"] = df["text"].str.len()
    df["split"] = ["valid" if i % 20 == 1 else "test" if i % 20 == 2 else "train" for i in range(n)]
    return df


def _failed(report: ValidationReport) -> set[str]:
    return {r.name for r in report.failures}


def _assert_fails(report: ValidationReport, name: str, *fragments: str) -> str:
    assert not report.passed
    assert _failed(report) == {name}, report.summary()
    line = report.summary()
    assert "\n" not in line
    assert line.startswith(f"1 of {len(report.results)} expectations failed")
    for fragment in (name, *fragments):
        assert fragment in line, line
    return line


# ---------------------------------------------------------------------------------------------- raw


def test_raw_good_data_passes():
    report = validate_raw(_raw(), CFG, SOURCES)
    assert report.passed, report.summary()
    assert report.suite == "raw_documents"
    assert report.n_rows == N
    assert report.failures == []
    assert report.summary() == f"all {len(report.results)} expectations passed on {N} rows"
    names = {r.name for r in report.results}
    assert {
        "text not null",
        "doc_id not null",
        "unique doc_id",
        "source in expected set",
        "source mix",
    } <= names
    assert all(r.expectation.startswith("expect_") for r in report.results)
    mix = next(r for r in report.results if r.name == "source mix")
    assert mix.observed == "demo 0.900, stdlib_docstrings 0.100"


def test_raw_null_text_fails():
    df = _raw()
    df.loc[[3, 4], "text"] = None
    _assert_fails(validate_raw(df, CFG, SOURCES), "text not null", "2 of 200 rows null", "'doc-00003'")


def test_raw_duplicate_ids_fail():
    df = _raw()
    df.loc[5, "doc_id"] = "doc-00004"
    _assert_fails(
        validate_raw(df, CFG, SOURCES), "unique doc_id", "2 rows with a duplicated doc_id", "'doc-00004' x2"
    )


def test_raw_unexpected_source_fails():
    df = _raw()
    df.loc[[1, 2, 3], "source"] = "mystery_dump"
    _assert_fails(validate_raw(df, CFG, SOURCES), "source in expected set", "'mystery_dump' x3")


def test_raw_source_share_below_minimum_fails():
    cfg = ValidationConfig(min_source_share=0.2)
    line = _assert_fails(
        validate_raw(_raw(), cfg, SOURCES), "source mix", "stdlib_docstrings share 0.100 < 0.20"
    )
    assert "demo" not in line.split("source mix", 1)[1]


def test_raw_absent_expected_source_fails_share():
    line = _assert_fails(validate_raw(_raw(), CFG, [*SOURCES, "hf_wiki"]), "source mix")
    assert "hf_wiki share 0.000 < 0.05" in line


def test_raw_zero_share_minimum_accepts_absent_source():
    assert validate_raw(_raw(), ValidationConfig(), [*SOURCES, "hf_wiki"]).passed


def test_raw_empty_frame_fails_cleanly():
    empty = _raw().iloc[:0]
    report = validate_raw(empty, ValidationConfig(), SOURCES)
    assert not report.passed
    assert report.n_rows == 0
    assert _failed(report) == {"has rows"}
    assert "has rows (no rows)" in report.summary()
    assert "on 0 rows" in report.summary()


def test_raw_frame_without_columns_fails_cleanly():
    report = validate_raw(pd.DataFrame(), CFG, SOURCES)
    assert not report.passed
    line = report.summary()
    assert "has rows (no rows)" in line
    assert "required columns (missing doc_id" in line
    assert "column 'text' missing" in line


def test_text_never_dumped_into_report():
    df = _raw()
    secret = "SECRET-BODY " * 500
    df.loc[0, "text"] = secret
    df.loc[1, "doc_id"] = df.loc[0, "doc_id"]
    df.loc[2, "source"] = "other"
    report = validate_raw(df, ValidationConfig(min_source_share=0.5), SOURCES)
    dumped = repr(report) + report.summary() + repr(report.to_metadata())
    assert "SECRET-BODY" not in dumped
    assert len(report.summary()) <= 600


def test_no_expected_sources_is_a_user_error():
    with pytest.raises(MaiUserError, match="expected source"):
        validate_raw(_raw(), CFG, [])


# -------------------------------------------------------------------------------------------- clean


def test_clean_good_data_passes():
    report = validate_clean(_clean(), STATS, CFG, CLEAN, SOURCES)
    assert report.passed, report.summary()
    assert report.suite == "clean_documents"
    names = [r.name for r in report.results]
    for name in ("n_chars in bounds", "split in train/valid/test", "reject rate", "dedup rate", "source mix"):
        assert name in names
    meta = report.to_metadata()
    assert meta["failed"] == 0
    assert meta["reject rate"] == "ok: 0.200 <= 0.50 (expected <= 0.50)"
    assert meta["dedup rate"] == "ok: 0.120 <= 0.30 (expected <= 0.30)"


def test_clean_null_text_fails():
    df = _clean()
    df.loc[7, "text"] = None
    _assert_fails(validate_clean(df, STATS, CFG, CLEAN, SOURCES), "text not null", "'doc-00007'")


def test_clean_duplicate_ids_fail():
    df = _clean()
    df.loc[9, "doc_id"] = "doc-00008"
    _assert_fails(validate_clean(df, STATS, CFG, CLEAN, SOURCES), "unique doc_id", "'doc-00008' x2")


def test_clean_too_short_fails():
    df = _clean()
    df.loc[[11, 12], "n_chars"] = 42
    _assert_fails(
        validate_clean(df, STATS, CFG, CLEAN, SOURCES),
        "n_chars in bounds",
        "2 rows out of bounds",
        "42 n_chars",
    )


def test_clean_length_bound_uses_stricter_min_chars():
    df = _clean()
    df.loc[3, "n_chars"] = 300
    assert validate_clean(df, STATS, CFG, CLEAN, SOURCES).passed
    strict = ValidationConfig(min_chars=400, min_source_share=0.05)
    report = validate_clean(df, STATS, strict, CLEAN, SOURCES)
    assert _failed(report) == {"n_chars in bounds"}
    assert next(r for r in report.results if r.name == "n_chars in bounds").expected == "400..200,000 chars"


def test_clean_too_long_fails():
    df = _clean()
    df.loc[4, "n_chars"] = 250_000
    _assert_fails(validate_clean(df, STATS, CFG, CLEAN, SOURCES), "n_chars in bounds", "250000 n_chars")


def test_clean_bad_split_fails():
    df = _clean()
    df.loc[5, "split"] = "dev"
    _assert_fails(validate_clean(df, STATS, CFG, CLEAN, SOURCES), "split in train/valid/test", "'dev' x1")


def test_clean_reject_rate_too_high_fails():
    stats = {**STATS, "raw_docs": 300, "rejected": 200}
    _assert_fails(validate_clean(_clean(), stats, CFG, CLEAN, SOURCES), "reject rate", "0.667 > 0.50")


def test_clean_dedup_rate_too_high_fails():
    stats = {**STATS, "rejected_by_reason": {"exact_duplicate": 60, "near_duplicate": 25}, "rejected": 85}
    stats["raw_docs"] = 250
    _assert_fails(validate_clean(_clean(), stats, CFG, CLEAN, SOURCES), "dedup rate", "0.340 > 0.30")


def test_clean_unexpected_source_fails():
    df = _clean()
    df.loc[0, "source"] = "landing"
    _assert_fails(validate_clean(df, STATS, CFG, CLEAN, SOURCES), "source in expected set", "'landing' x1")


def test_clean_source_share_below_minimum_fails():
    cfg = ValidationConfig(min_source_share=0.15)
    _assert_fails(
        validate_clean(_clean(), STATS, cfg, CLEAN, SOURCES), "source mix", "stdlib_docstrings share 0.100"
    )


def test_clean_rates_undefined_without_raw_docs():
    report = validate_clean(_clean(), {"raw_docs": 0, "rejected": 0}, CFG, CLEAN, SOURCES)
    assert _failed(report) == {"reject rate", "dedup rate"}
    assert "reject rate (undefined (raw_docs is 0))" in report.summary()


def test_clean_empty_frame_fails_cleanly():
    report = validate_clean(_clean().iloc[:0], STATS, ValidationConfig(), CLEAN, SOURCES)
    assert not report.passed
    assert _failed(report) == {"has rows"}
    assert report.summary().startswith(f"1 of {len(report.results)} expectations failed on 0 rows: has rows")


def test_clean_empty_frame_and_empty_stats_fail_cleanly():
    report = validate_clean(pd.DataFrame(), {}, CFG, CLEAN, SOURCES)
    assert not report.passed
    assert report.failures[0].name == "has rows"
    assert "stats have no raw_docs" in repr(report.to_metadata())

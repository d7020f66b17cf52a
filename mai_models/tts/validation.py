"""The great-expectations suite of ``speech_corpus``: the kept clips must meet every per-clip threshold
(quarantine enforces them, the suite proves it), plus corpus-level size and reject-rate bounds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mai_models.data.validation import (
    ValidationReport,
    _Check,
    _describe_between,
    _gx,
    _in_set,
    _not_null,
    _rate_check,
    _report,
    _Runner,
    _table_checks,
    _unique,
)
from mai_models.tts.config import SpeechConfig, SpeechValidationConfig

if TYPE_CHECKING:
    import pandas as pd

SPEECH_SUITE = "speech_corpus"
UTTERANCE_COLUMNS = [
    "utt_id",
    "speaker",
    "text",
    "normalized_text",
    "source",
    "split",
    "path",
    "sample_rate",
    "channels",
    "seconds",
    "chars_per_second",
    "silence_ratio",
    "clipping_ratio",
]


def _between(E: Any, column: str, low: float | None, high: float | None, unit: str) -> _Check:
    bound = f"{'' if low is None else f'{low:g}'}..{'' if high is None else f'{high:g}'} {unit}".strip()
    return _Check(
        f"{column} in bounds",
        E.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high),
        _describe_between,
        bound,
        column,
    )


def validate_speech_corpus(
    df: pd.DataFrame, stats: dict[str, Any], speech: SpeechConfig, cfg: SpeechValidationConfig
) -> ValidationReport:
    import pandas as pd

    gx = _gx()
    run = _Runner(gx)
    E = gx.expectations
    checks = [
        *_table_checks(E, UTTERANCE_COLUMNS),
        _Check(
            "enough utterances",
            E.ExpectTableRowCountToBeBetween(min_value=cfg.min_utterances),
            lambda res, ok, check: f"{res.get('observed_value', 0):,} utterances",
            f">= {cfg.min_utterances:,} utterances",
        ),
        _unique(E, "utt_id"),
        _not_null(E, "normalized_text"),
        _Check(
            "transcript not empty",
            E.ExpectColumnValueLengthsToBeBetween(column="normalized_text", min_value=1),
            _describe_between,
            ">= 1 char",
            "normalized_text",
        ),
        _in_set(E, "sample_rate", [speech.sample_rate], f"sample rate {speech.sample_rate} Hz"),
        _in_set(E, "channels", [1], "mono"),
        _in_set(E, "split", ["train", "valid"], "split in train/valid"),
        _between(E, "seconds", speech.min_seconds, speech.max_seconds, "s"),
        _between(E, "chars_per_second", speech.min_chars_per_second, speech.max_chars_per_second, "chars/s"),
        _between(E, "silence_ratio", 0.0, speech.max_silence_ratio, "silent share"),
        _between(E, "clipping_ratio", 0.0, speech.max_clipping_ratio, "clipped share"),
    ]
    outcomes = run.validate("utterances", df, checks, index_col="utt_id")
    kept, rejected = int(stats.get("utterances", len(df))), int(stats.get("rejected", 0))
    total = kept + rejected
    corpus = pd.DataFrame(
        {
            "reject_rate": [rejected / total if total else 0.0],
            "minutes": [float(df["seconds"].sum()) / 60 if "seconds" in df.columns else 0.0],
        }
    )
    corpus_checks = [
        _rate_check(E, "reject rate", "reject_rate", cfg.max_reject_rate, f"{rejected:,} of {total:,} clips"),
        _Check(
            "enough audio",
            E.ExpectColumnMinToBeBetween(column="minutes", min_value=cfg.min_total_minutes),
            lambda res, ok, check: f"{float(res.get('observed_value') or 0):.1f} minutes",
            f">= {cfg.min_total_minutes:g} minutes",
        ),
    ]
    outcomes += run.validate("corpus", corpus, corpus_checks)
    return _report(SPEECH_SUITE, df, outcomes)

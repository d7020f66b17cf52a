"""Data-quality suites for the text data plane, written with great-expectations 1.x.

Framework-free: the Dagster asset checks call :func:`validate_raw` / :func:`validate_clean` and map the
returned :class:`ValidationReport` into ``AssetCheckResult``. Every check is a GX expectation; values that
are not row-level (source shares, reject and dedup rates) are put into small derived DataFrames first so
that GX evaluates them too.

GX is imported lazily (the import takes seconds) and each call uses one ephemeral, in-memory context
with progress bars and analytics off. Results use the ``SUMMARY`` format with a few partial values, and
no expectation has the ``text`` column as a domain except the null check, so document text never ends
up in a report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mai_models.config import CleanConfig, ValidationConfig
from mai_models.data.schema import CLEAN_SCHEMA, RAW_SCHEMA, SPLITS
from mai_models.errors import MaiUserError

if TYPE_CHECKING:
    import pandas as pd

RAW_SUITE = "raw_documents"
CLEAN_SUITE = "clean_documents"

_PARTIAL = 5  # unexpected values kept per expectation
_MAX_OBSERVED = 120  # characters of one observed value
_MAX_SUMMARY = 600  # characters of the summary line


@dataclass(frozen=True)
class ExpectationOutcome:
    """One GX expectation, reduced to what a person reads in the Dagster UI."""

    name: str  # short label, e.g. "unique doc_id"
    passed: bool
    observed: str  # what the data showed, short
    expected: str = ""  # the bound or set, short
    expectation: str = ""  # GX expectation type, e.g. "expect_column_values_to_be_unique"


@dataclass
class ValidationReport:
    suite: str
    passed: bool
    results: list[ExpectationOutcome]
    n_rows: int = 0

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        """One readable line, e.g. ``2 of 9 expectations failed on 2,000 rows: unique doc_id (...); ...``."""
        total = len(self.results)
        rows = _rows(self.n_rows)
        failed = self.failures
        if not failed:
            return f"all {total} expectations passed on {rows}"
        parts = "; ".join(f"{r.name} ({r.observed})" for r in failed)
        return _clip(f"{len(failed)} of {total} expectations failed on {rows}: {parts}", _MAX_SUMMARY)

    def to_metadata(self) -> dict[str, Any]:
        """Flat JSON-able dict (str/int/bool values) for ``AssetCheckResult(metadata=...)``."""
        meta: dict[str, Any] = {
            "suite": self.suite,
            "rows": self.n_rows,
            "expectations": len(self.results),
            "failed": len(self.failures),
        }
        for r in self.results:
            status = "ok" if r.passed else "FAILED"
            bound = f" (expected {r.expected})" if r.expected else ""
            meta[r.name] = f"{status}: {r.observed}{bound}"
        return meta


# ----------------------------------------------------------------------------------------------------
# public API


def validate_raw(
    df: pd.DataFrame,
    cfg: ValidationConfig,
    expected_sources: Sequence[str],
    optional_sources: Sequence[str] = (),
) -> ValidationReport:
    """Validate the ``raw_documents`` table (RAW_SCHEMA): presence of rows and columns, text and doc_id
    not null, doc_id unique, sources in the expected set and each expected source reaching
    ``cfg.min_source_share`` of the documents."""
    sources = _expected(expected_sources)
    gx = _gx()
    run = _Runner(gx)
    E = gx.expectations
    checks = [
        *_table_checks(E, RAW_SCHEMA.names),
        _not_null(E, "text"),
        _not_null(E, "doc_id"),
        _not_null(E, "source"),
        _unique(E, "doc_id"),
        _in_set(E, "source", [*sources, *optional_sources], "source in expected set"),
    ]
    outcomes = run.validate("docs", df, checks, index_col="doc_id")
    shares = _share_frame(df, sources)
    outcomes += run.validate("source_shares", shares, [_share_check(E, cfg, shares)], index_col="source")
    return _report(RAW_SUITE, df, outcomes)


def validate_clean(
    df: pd.DataFrame,
    stats: dict[str, Any],
    cfg: ValidationConfig,
    clean_cfg: CleanConfig,
    expected_sources: Sequence[str],
    optional_sources: Sequence[str] = (),
) -> ValidationReport:
    """Validate ``clean_documents`` shards (CLEAN_SCHEMA) plus the stage's stats dict: text not null,
    doc_id unique, n_chars within the cleaning bounds, split valid, reject and dedup rates within
    ``cfg``, sources in the expected set and the source mix."""
    sources = _expected(expected_sources)
    gx = _gx()
    run = _Runner(gx)
    E = gx.expectations
    min_chars = max(cfg.min_chars, clean_cfg.min_chars)
    checks = [
        *_table_checks(E, CLEAN_SCHEMA.names),
        _not_null(E, "text"),
        _not_null(E, "doc_id"),
        _unique(E, "doc_id"),
        _Check(
            "n_chars in bounds",
            E.ExpectColumnValuesToBeBetween(
                column="n_chars", min_value=min_chars, max_value=clean_cfg.max_chars
            ),
            _describe_between,
            f"{min_chars:,}..{clean_cfg.max_chars:,} chars",
            "n_chars",
        ),
        _not_null(E, "split"),
        _in_set(E, "split", list(SPLITS), "split in " + "/".join(SPLITS)),
        _not_null(E, "source"),
        _in_set(E, "source", [*sources, *optional_sources], "source in expected set"),
    ]
    outcomes = run.validate("docs", df, checks, index_col="doc_id")
    shares = _share_frame(df, sources)
    outcomes += run.validate("source_shares", shares, [_share_check(E, cfg, shares)], index_col="source")
    rates, why = _rates(stats)
    rate_checks = [
        _rate_check(E, "reject rate", "reject_rate", cfg.max_reject_rate, why["reject_rate"]),
        _rate_check(E, "dedup rate", "dedup_rate", cfg.max_dedup_rate, why["dedup_rate"]),
    ]
    outcomes += run.validate("rates", rates, rate_checks)
    return _report(CLEAN_SUITE, df, outcomes)


# ----------------------------------------------------------------------------------------------------
# GX plumbing


def _gx() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


@dataclass
class _Check:
    name: str
    expectation: Any  # a gx.expectations.Expectation
    describe: Callable[[dict[str, Any], bool, _Check], str]
    expected: str = ""
    column: str | None = None  # set for column expectations: a missing column is reported as such
    extra: dict[str, Any] = field(default_factory=dict)


class _Runner:
    """One ephemeral context and one pandas data source per call; one asset/suite per DataFrame."""

    def __init__(self, gx: Any) -> None:
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.gx = gx
        project = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        )
        self.context = gx.get_context(mode="ephemeral", project_config=project)
        self.source = self.context.data_sources.add_pandas("mai")

    def validate(
        self, name: str, df: pd.DataFrame, checks: list[_Check], index_col: str | None = None
    ) -> list[ExpectationOutcome]:
        gx = self.gx
        batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = self.context.suites.add(gx.ExpectationSuite(name=name))
        by_label: dict[str, _Check] = {}
        for check in checks:
            check.expectation.meta = {**(check.expectation.meta or {}), "mai_check": check.name}
            suite.add_expectation(check.expectation)
            by_label[check.name] = check
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(data=batch, suite=suite, name=name)
        )
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": _PARTIAL}
        if index_col is not None and index_col in df.columns:
            result_format["unexpected_index_column_names"] = [index_col]
        result = definition.run(batch_parameters={"dataframe": df}, result_format=result_format)

        found: dict[str, ExpectationOutcome] = {}
        for r in result.results:
            check = by_label[(r.expectation_config.meta or {})["mai_check"]]
            res = dict(r.result or {})
            if check.column is not None and check.column not in df.columns:
                observed = f"column '{check.column}' missing"
            elif not r.success and not res:
                observed = "not evaluated: " + _exception_message(r.exception_info)
            else:
                observed = check.describe(res, bool(r.success), check)
            found[check.name] = ExpectationOutcome(
                name=check.name,
                passed=bool(r.success),
                observed=_clip(observed, _MAX_OBSERVED),
                expected=_clip(check.expected, _MAX_OBSERVED),
                expectation=r.expectation_config.type,
            )
        # GX does not keep the suite's order; the report does
        return [found[c.name] for c in checks]


def _report(suite: str, df: pd.DataFrame, outcomes: list[ExpectationOutcome]) -> ValidationReport:
    return ValidationReport(
        suite=suite, passed=all(o.passed for o in outcomes), results=outcomes, n_rows=int(len(df))
    )


def _expected(expected_sources: Sequence[str]) -> list[str]:
    sources = list(dict.fromkeys(str(s) for s in expected_sources))
    if not sources:
        raise MaiUserError("validation needs at least one expected source (validation.expected_sources)")
    return sources


# ----------------------------------------------------------------------------------------------------
# checks and how their results read


def _table_checks(E: Any, columns: list[str]) -> list[_Check]:
    return [
        _Check("has rows", E.ExpectTableRowCountToBeBetween(min_value=1), _describe_rows, "at least 1 row"),
        _Check(
            "required columns",
            E.ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=False),
            _describe_columns,
            ", ".join(columns),
        ),
    ]


def _not_null(E: Any, column: str) -> _Check:
    return _Check(
        f"{column} not null",
        E.ExpectColumnValuesToNotBeNull(column=column),
        _describe_nulls,
        "",
        column,
    )


def _unique(E: Any, column: str) -> _Check:
    return _Check(
        f"unique {column}",
        E.ExpectColumnValuesToBeUnique(column=column),
        _describe_unique,
        "",
        column,
    )


def _in_set(E: Any, column: str, values: Sequence[Any], name: str) -> _Check:
    return _Check(
        name,
        E.ExpectColumnValuesToBeInSet(column=column, value_set=list(values)),
        _describe_in_set,
        ", ".join(str(v) for v in values),
        column,
    )


def _share_check(E: Any, cfg: ValidationConfig, shares: pd.DataFrame) -> _Check:
    lo = cfg.min_source_share
    return _Check(
        "source mix",
        E.ExpectColumnValuesToBeBetween(column="share", min_value=lo, max_value=1.0),
        _describe_shares,
        f"each expected source >= {lo:.2f} of documents",
        extra={"min": lo, "shares": dict(zip(shares["source"], shares["share"], strict=True))},
    )


def _rate_check(E: Any, name: str, column: str, max_rate: float, why: str) -> _Check:
    return _Check(
        name,
        E.ExpectColumnMaxToBeBetween(column=column, min_value=0.0, max_value=max_rate),
        _describe_rate,
        f"<= {max_rate:.2f}",
        extra={"max": max_rate, "why": why},
    )


def _share_frame(df: pd.DataFrame, sources: list[str]) -> pd.DataFrame:
    """One row per expected source with its share of all documents (0 for an absent source)."""
    import pandas as pd

    total = int(len(df))
    counts = df["source"].value_counts() if "source" in df.columns else pd.Series(dtype="int64")
    shares = [float(counts.get(s, 0)) / total if total else 0.0 for s in sources]
    return pd.DataFrame({"source": pd.Series(sources, dtype=object), "share": shares})


def _rates(stats: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, str]]:
    """One-row frame with reject_rate and dedup_rate, plus why a rate is undefined (NaN fails the check)."""
    import pandas as pd

    raw = _number(stats.get("raw_docs"))
    by_reason = stats.get("rejected_by_reason")
    by_reason = by_reason if isinstance(by_reason, dict) else {}
    rejected = _number(stats.get("rejected"))
    if rejected is None and by_reason:
        rejected = float(sum(_number(v) or 0 for v in by_reason.values()))
    dups = (_number(by_reason.get("exact_duplicate")) or 0) + (_number(by_reason.get("near_duplicate")) or 0)
    why = {"reject_rate": "", "dedup_rate": ""}
    if raw is None or raw <= 0:
        why = dict.fromkeys(why, "stats have no raw_docs" if raw is None else "raw_docs is 0")
        reject = dedup = float("nan")
    else:
        dedup = dups / raw
        reject = rejected / raw if rejected is not None else float("nan")
        if rejected is None:
            why["reject_rate"] = "stats have no rejected count"
    return pd.DataFrame({"reject_rate": [reject], "dedup_rate": [dedup]}), why


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _describe_rows(res: dict[str, Any], ok: bool, check: _Check) -> str:
    n = int(res.get("observed_value") or 0)
    return _rows(n) if n else "no rows"


def _describe_columns(res: dict[str, Any], ok: bool, check: _Check) -> str:
    missing = ((res.get("details") or {}).get("mismatched") or {}).get("missing") or []
    return "all present" if not missing else "missing " + ", ".join(map(str, missing))


def _describe_nulls(res: dict[str, Any], ok: bool, check: _Check) -> str:
    n, total = int(res.get("unexpected_count") or 0), int(res.get("element_count") or 0)
    if not n:
        return "no nulls"
    ids = _index_examples(res, check.column)
    return f"{n:,} of {_rows(total)} null" + (f", e.g. doc_id {ids}" if ids else "")


def _describe_unique(res: dict[str, Any], ok: bool, check: _Check) -> str:
    n = int(res.get("unexpected_count") or 0)
    if not n:
        return "no duplicates"
    counts = res.get("partial_unexpected_counts") or []
    examples = ", ".join(f"{_short(c['value'])} x{c['count']}" for c in counts[:3])
    return f"{_rows(n)} with a duplicated {check.column}" + (f", e.g. {examples}" if examples else "")


def _describe_in_set(res: dict[str, Any], ok: bool, check: _Check) -> str:
    n = int(res.get("unexpected_count") or 0)
    if not n:
        return "all in set"
    counts = res.get("partial_unexpected_counts") or []
    examples = ", ".join(f"{_short(c['value'])} x{c['count']}" for c in counts[:3])
    return f"{_rows(n)} outside the set" + (f": {examples}" if examples else "")


def _describe_between(res: dict[str, Any], ok: bool, check: _Check) -> str:
    n = int(res.get("unexpected_count") or 0)
    if not n:
        return "all within bounds"
    rows = res.get("partial_unexpected_index_list") or []
    if rows and isinstance(rows[0], dict):
        ids = [next((v for k, v in r.items() if k != check.column), None) for r in rows[:3]]
        examples = ", ".join(
            f"{_short(i)} ({_short(r.get(check.column))} {check.column})"
            for i, r in zip(ids, rows, strict=False)
        )
    else:
        examples = ", ".join(_short(v) for v in (res.get("partial_unexpected_list") or [])[:3])
    return f"{_rows(n)} out of bounds" + (f", e.g. {examples}" if examples else "")


def _row_id(row: dict[str, Any], column: str | None) -> Any:
    """The index column's value (doc_id, utt_id, ...) of an unexpected-row record."""
    return next((v for k, v in row.items() if k != column), None)


def _describe_shares(res: dict[str, Any], ok: bool, check: _Check) -> str:
    lo, shares = check.extra["min"], check.extra["shares"]
    if ok:
        return ", ".join(f"{s} {v:.3f}" for s, v in shares.items())
    rows = [r for r in res.get("partial_unexpected_index_list") or [] if isinstance(r, dict)]
    if rows:
        return ", ".join(f"{r.get('source')} share {float(r.get('share', 0.0)):.3f} < {lo:.2f}" for r in rows)
    return f"{int(res.get('unexpected_count') or 0)} sources below {lo:.2f}"


def _describe_rate(res: dict[str, Any], ok: bool, check: _Check) -> str:
    value = _number(res.get("observed_value"))
    if value is None:
        return f"undefined ({check.extra['why'] or 'no value'})"
    if not ok and value < 0:
        return f"{value:.3f} < 0"
    return f"{value:.3f} {'<=' if ok else '>'} {check.extra['max']:.2f}"


def _index_examples(res: dict[str, Any], column: str | None) -> str:
    rows = res.get("partial_unexpected_index_list") or []
    ids = [
        _short(r.get("doc_id"))
        for r in rows[:3]
        if isinstance(r, dict) and "doc_id" in r and column != "doc_id"
    ]
    return ", ".join(ids)


def _exception_message(info: Any) -> str:
    if isinstance(info, dict):
        if info.get("exception_message"):
            return str(info["exception_message"]).splitlines()[0]
        for value in info.values():
            if isinstance(value, dict) and value.get("exception_message"):
                return str(value["exception_message"]).splitlines()[0]
    return "GX raised an error"


def _short(value: Any, limit: int = 40) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    return repr(_clip(str(value), limit)) if isinstance(value, str) else _clip(str(value), limit)


def _rows(n: int) -> str:
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

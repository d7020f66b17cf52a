"""Quarantine tables: every rejected record with its reason, so nothing is dropped silently."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mai_models.data.records import Reject
from mai_models.data.schema import QUARANTINE_SCHEMA


class QuarantineWriter:
    def __init__(self, path: Path, stage: str) -> None:
        self.path = path
        self.stage = stage
        self.rows: list[dict[str, object]] = []
        self.by_reason: Counter[str] = Counter()

    def add(self, reject: Reject) -> None:
        self.by_reason[reject.reason] += 1
        self.rows.append(
            {
                "stage": self.stage,
                "source": reject.source,
                "origin": reject.origin,
                "reason": reject.reason,
                "detail": reject.detail,
                "doc_id": reject.doc_id,
                "preview": reject.preview,
            }
        )

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def close(self) -> None:
        # Written even when empty so downstream readers and DVC always see the same file set.
        pq.write_table(pa.Table.from_pylist(self.rows, schema=QUARANTINE_SCHEMA), self.path)

"""The clean stage: normalise, filter, dedup and split raw documents into Parquet shards."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mai_models.config import PipelineParams
from mai_models.data.text_filters import normalize_text, quality_reject
from mai_models.data.dedup import Deduplicator
from mai_models.data.quarantine import QuarantineWriter
from mai_models.data.records import Reject
from mai_models.data.schema import CLEAN_SCHEMA, QUARANTINE_FILE, RAW_DOCUMENTS_FILE, SPLITS, clean_shard_name
from mai_models.data.split import assign_split
from mai_models.errors import MaiUserError


class _ShardWriter:
    """Rolls a split over to a new Parquet file every ``shard_docs`` documents."""

    def __init__(self, out_dir: Path, split: str, shard_docs: int) -> None:
        self.out_dir, self.split, self.shard_docs = out_dir, split, shard_docs
        self.rows: list[dict[str, Any]] = []
        self.shards = 0
        self.docs = 0
        self.bytes = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.docs += 1
        self.bytes += row["n_bytes"]
        if len(self.rows) >= self.shard_docs:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            table = pa.Table.from_pylist(self.rows, schema=CLEAN_SCHEMA)
            pq.write_table(table, self.out_dir / clean_shard_name(self.split, self.shards))
            self.shards += 1
            self.rows = []


def read_clean_split(clean_dir: Path, split: str, columns: list[str] | None = None) -> pa.Table:
    files = sorted(clean_dir.glob(f"{split}-*.parquet"))
    if not files:
        return CLEAN_SCHEMA.empty_table() if columns is None else CLEAN_SCHEMA.empty_table().select(columns)
    return pa.concat_tables(pq.read_table(f, columns=columns, schema=CLEAN_SCHEMA) for f in files)


def build_clean(
    params: PipelineParams, raw_dir: Path, out_dir: Path, progress: bool = False
) -> dict[str, Any]:
    raw_path = raw_dir / RAW_DOCUMENTS_FILE
    if not raw_path.exists():
        raise MaiUserError(
            f"no raw documents at {raw_path}: run `mai data ingest --only raw_documents` first"
        )
    quarantine = QuarantineWriter(out_dir / QUARANTINE_FILE, stage="clean_documents")
    dedup = Deduplicator(params.dedup)
    writers = {split: _ShardWriter(out_dir, split, params.split.shard_docs) for split in SPLITS}
    raw_file = pq.ParquetFile(raw_path)
    kept_by_source: Counter[str] = Counter()
    raw_docs = 0
    with tqdm(total=raw_file.metadata.num_rows, desc="clean", unit="doc", disable=not progress) as bar:
        for batch in raw_file.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                raw_docs += 1
                bar.update()
                reject = _process(row, params, dedup, writers)
                if reject is None:
                    kept_by_source[row["source"]] += 1
                else:
                    quarantine.add(reject)
    for writer in writers.values():
        writer.flush()
    quarantine.close()
    kept = sum(kept_by_source.values())
    return {
        "raw_docs": raw_docs,
        "kept_docs": kept,
        "rejected": quarantine.count,
        "rejected_by_reason": dict(sorted(quarantine.by_reason.items())),
        "docs_by_source": dict(sorted(kept_by_source.items())),
        "splits": {s: {"docs": w.docs, "bytes": w.bytes, "shards": w.shards} for s, w in writers.items()},
    }


def _process(
    row: dict[str, Any], params: PipelineParams, dedup: Deduplicator, writers: dict[str, _ShardWriter]
) -> Reject | None:
    raw_text = row["text"] or ""
    text = normalize_text(raw_text)

    def reject(reason: str, detail: str) -> Reject:
        return Reject(
            row["source"], row["origin"], reason, detail, Reject.preview_of(raw_text), row["doc_id"]
        )

    failed = quality_reject(text, params.clean)
    if failed:
        return reject(*failed)
    data = text.encode("utf-8")
    sha = hashlib.sha256(data).hexdigest()
    duplicate = dedup.check(row["doc_id"], sha, text)
    if duplicate:
        return reject(*duplicate)
    split = assign_split(sha, params.split)
    writers[split].add(
        {
            "doc_id": row["doc_id"],
            "source": row["source"],
            "origin": row["origin"],
            "text": text,
            "n_bytes": len(data),
            "n_chars": len(text),
            "sha256": sha,
            "split": split,
        }
    )
    return None

"""Explicit Arrow schemas for every table the text data plane writes. Stages read and write only these."""

from __future__ import annotations

import pyarrow as pa

SPLITS = ("train", "valid", "test")

RAW_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),  # file:line, row, or symbol it came from
        pa.field("text", pa.string(), nullable=True),
        pa.field("n_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
)

CLEAN_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("n_bytes", pa.int64(), nullable=False),
        pa.field("n_chars", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),  # of the cleaned text
        pa.field("split", pa.string(), nullable=False),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=True),
        pa.field("preview", pa.string(), nullable=False),  # first bytes of the rejected record
    ]
)

RAW_DOCUMENTS_FILE = "documents.parquet"
QUARANTINE_FILE = "quarantine.parquet"


def clean_shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"

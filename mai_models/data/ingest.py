"""The raw stage: read every configured source into one Parquet table plus its quarantine."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mai_models.config import IngestConfig, SourceConfig
from mai_models.data.demo_corpus import DEMO_SOURCES
from mai_models.data.quarantine import QuarantineWriter
from mai_models.data.readers import landing_fingerprint, read_source
from mai_models.data.records import Reject
from mai_models.data.schema import QUARANTINE_FILE, RAW_DOCUMENTS_FILE, RAW_SCHEMA

_BATCH_ROWS = 2048


def doc_id_for(source: str, origin: str) -> str:
    return hashlib.sha256(f"{source}\0{origin}".encode()).hexdigest()[:24]


def expected_source_labels(sources: list[SourceConfig]) -> list[str]:
    labels: list[str] = []
    for source in sources:
        labels.extend(DEMO_SOURCES if source.kind == "demo" else [source.label])
    return labels


def inputs_fingerprint(cfg: IngestConfig, root: Path) -> list[Any]:
    """What the raw stage reads, cheaply summarised, so new drops or edited files change its version."""
    import sys

    out: list[Any] = []
    for source in cfg.sources:
        if source.kind == "demo":
            out.append(["demo", sys.version])
        else:
            path = Path(source.path or "")
            out.append(
                [source.kind, str(path), landing_fingerprint(path if path.is_absolute() else root / path)]
            )
    return out


def build_raw(cfg: IngestConfig, root: Path, out_dir: Path, progress: bool = False) -> dict[str, Any]:
    quarantine = QuarantineWriter(out_dir / QUARANTINE_FILE, stage="raw_documents")
    per_source: Counter[str] = Counter()
    n_bytes = 0
    rows: list[dict[str, Any]] = []
    with pq.ParquetWriter(out_dir / RAW_DOCUMENTS_FILE, RAW_SCHEMA) as writer:
        bar = tqdm(desc="ingest", unit="doc", disable=not progress)
        for source in cfg.sources:
            for item in read_source(source, root, cfg.max_doc_bytes):
                bar.update()
                if isinstance(item, Reject):
                    quarantine.add(item)
                    continue
                data = item.text.encode("utf-8")
                rows.append(
                    {
                        "doc_id": doc_id_for(item.source, item.origin),
                        "source": item.source,
                        "origin": item.origin,
                        "text": item.text,
                        "n_bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )
                per_source[item.source] += 1
                n_bytes += len(data)
                if len(rows) >= _BATCH_ROWS:
                    writer.write_table(pa.Table.from_pylist(rows, schema=RAW_SCHEMA))
                    rows.clear()
        bar.close()
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=RAW_SCHEMA))
    quarantine.close()
    docs = sum(per_source.values())
    return {
        "docs": docs,
        "bytes": n_bytes,
        "docs_by_source": dict(sorted(per_source.items())),
        "quarantined": quarantine.count,
        "quarantined_by_reason": dict(sorted(quarantine.by_reason.items())),
        "records_seen": docs + quarantine.count,
    }

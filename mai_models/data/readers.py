"""Corpus readers. Each yields ``Record`` or ``Reject`` items and never raises on bad data lines;
configuration mistakes (missing path, wrong field name) raise ``MaiUserError`` with one clear line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mai_models.config import SourceConfig
from mai_models.data.demo_corpus import iter_demo_documents
from mai_models.data.records import Record, Reject
from mai_models.errors import MaiUserError
from mai_models.hf_datasets import saved_splits

Item = Record | Reject
TEXT_SUFFIXES = {".txt", ".md"}
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


def read_source(source: SourceConfig, root: Path, max_doc_bytes: int) -> Iterator[Item]:
    """Dispatch on ``source.kind``; paths are resolved against the project ``root``."""
    label = source.label
    if source.kind == "demo":
        yield from iter_demo_documents(source.limit_bytes)
        return
    path = _existing_path(source, root)
    if source.kind == "jsonl":
        yield from _each_file(
            path, JSONL_SUFFIXES, lambda f: read_jsonl(f, label, source.text_field, max_doc_bytes)
        )
    elif source.kind == "parquet":
        yield from _each_file(
            path, {".parquet"}, lambda f: read_parquet(f, label, source.text_field, max_doc_bytes)
        )
    elif source.kind == "textdir":
        yield from _each_file(path, TEXT_SUFFIXES, lambda f: read_text_file(f, label, max_doc_bytes))
    elif source.kind == "hf_disk":
        yield from read_hf_disk(path, label, source.text_field, max_doc_bytes)
    elif source.kind == "landing":
        yield from read_landing(path, label, source.text_field, max_doc_bytes)


def _existing_path(source: SourceConfig, root: Path) -> Path:
    path = Path(source.path or "")
    path = path if path.is_absolute() else root / path
    if not path.exists():
        raise MaiUserError(f"source '{source.label}': path does not exist: {path}")
    return path


def _each_file(path: Path, suffixes: set[str], read) -> Iterator[Item]:
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
    )
    for file in files:
        yield from read(file)


def read_jsonl(path: Path, source: str, text_field: str, max_doc_bytes: int) -> Iterator[Item]:
    seen_objects = 0
    with_field = 0
    fields_seen: set[str] = set()
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            origin = f"{path.name}:{lineno}"
            if not raw.strip():
                continue  # blank separator lines carry no data
            if len(raw) > max_doc_bytes:
                yield Reject(
                    source, origin, "too_large", f"{len(raw)} bytes > {max_doc_bytes}", Reject.preview_of(raw)
                )
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Reject(source, origin, "invalid_utf8", str(exc), Reject.preview_of(raw))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Reject(source, origin, "malformed_json", exc.msg, Reject.preview_of(line))
                continue
            if not isinstance(obj, dict):
                yield Reject(source, origin, "not_an_object", type(obj).__name__, Reject.preview_of(line))
                continue
            seen_objects += 1
            fields_seen.update(obj)
            if text_field not in obj:
                yield Reject(
                    source, origin, "missing_field", f"no '{text_field}' field", Reject.preview_of(line)
                )
                continue
            with_field += 1
            yield _record_or_reject(source, origin, obj[text_field], line)
    if seen_objects and not with_field:
        seen = ", ".join(sorted(fields_seen)[:10])
        raise MaiUserError(f"{path}: no record has the text field '{text_field}' (fields seen: {seen})")


def _record_or_reject(source: str, origin: str, value: object, raw: str) -> Item:
    if value is None:
        return Reject(source, origin, "null_text", "text is null", Reject.preview_of(raw))
    if not isinstance(value, str):
        return Reject(source, origin, "non_string_text", type(value).__name__, Reject.preview_of(raw))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON "\ud800" escapes decode to lone surrogates
        return Reject(
            source, origin, "invalid_utf8", exc.reason, Reject.preview_of(raw.encode("utf-8", "replace"))
        )
    return Record(source, origin, value)


def _cell_item(source: str, origin: str, value: object, max_doc_bytes: int) -> Item:
    """A table cell (Parquet, HF datasets) as a record, or rejected for size, null or type."""
    if isinstance(value, str) and len(value) > max_doc_bytes:
        return Reject(
            source, origin, "too_large", f"{len(value)} chars > {max_doc_bytes}", Reject.preview_of(value)
        )
    return _record_or_reject(source, origin, value, str(value))


def read_parquet(path: Path, source: str, text_field: str, max_doc_bytes: int) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        yield Reject(source, path.name, "unreadable_file", f"{type(exc).__name__}: {exc}"[:300])
        return
    columns = pfile.schema_arrow.names
    if text_field not in columns:
        raise MaiUserError(f"{path}: no column '{text_field}' (columns: {', '.join(columns[:10])})")
    row = 0
    for batch in pfile.iter_batches(columns=[text_field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            origin = f"{path.name}:row{row}"
            row += 1
            yield _cell_item(source, origin, value, max_doc_bytes)


def read_text_file(path: Path, source: str, max_doc_bytes: int) -> Iterator[Item]:
    size = path.stat().st_size
    if size > max_doc_bytes:
        with path.open("rb") as fh:
            yield Reject(
                source,
                path.name,
                "too_large",
                f"{size} bytes > {max_doc_bytes}",
                Reject.preview_of(fh.read(1200)),
            )
        return
    data = path.read_bytes()
    try:
        yield Record(source, path.name, data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        yield Reject(source, path.name, "invalid_utf8", str(exc), Reject.preview_of(data))


def read_hf_disk(path: Path, source: str, text_field: str, max_doc_bytes: int) -> Iterator[Item]:
    """A dataset written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``)."""
    for split, dataset in saved_splits(path, [text_field]):
        prefix = f"{path.name}/{split}" if split else path.name
        for row, value in enumerate(dataset[text_field]):
            origin = f"{prefix}:row{row}"
            yield _cell_item(source, origin, value, max_doc_bytes)


def read_landing(path: Path, source: str, text_field: str, max_doc_bytes: int) -> Iterator[Item]:
    """A drop directory: every file (or saved HF dataset) in it, by its format; unknown files are
    quarantined, not fatal, because drops come from outside the pipeline's control."""
    if not path.is_dir():
        raise MaiUserError(f"landing source '{source}': {path} is not a directory")
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if any((entry / m).exists() for m in _HF_MARKERS):
                yield from _lenient(read_hf_disk(entry, source, text_field, max_doc_bytes), source, entry)
            else:
                yield from read_landing(entry, source, text_field, max_doc_bytes)
        elif entry.suffix in JSONL_SUFFIXES:
            yield from _lenient(read_jsonl(entry, source, text_field, max_doc_bytes), source, entry)
        elif entry.suffix == ".parquet":
            yield from _lenient(read_parquet(entry, source, text_field, max_doc_bytes), source, entry)
        elif entry.suffix in TEXT_SUFFIXES:
            yield from read_text_file(entry, source, max_doc_bytes)
        else:
            yield Reject(
                source, entry.name, "unknown_format", f"unsupported file type '{entry.suffix or entry.name}'"
            )


def _lenient(items: Iterator[Item], source: str, entry: Path) -> Iterator[Item]:
    """In a landing drop a file with the wrong schema is one bad file, not a broken config."""
    yielded = False
    try:
        for item in items:
            yielded = True
            yield item
    except MaiUserError as exc:
        if not yielded:  # otherwise each of its lines is already quarantined with its own reason
            yield Reject(source, entry.name, "wrong_schema", str(exc)[:300])


def landing_fingerprint(path: Path) -> list[tuple[str, int, int]]:
    """Cheap change detector for drops (name, size, mtime), as DVC's state cache does."""
    if not path.exists():
        return []
    return [
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]

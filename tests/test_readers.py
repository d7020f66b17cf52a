"""Bad input: data lines are quarantined and counted exactly; configuration errors stop with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mai_models.config import IngestConfig, PipelineParams, SourceConfig, load_params
from mai_models.data.clean_documents import build_clean
from mai_models.data.ingest import build_raw
from mai_models.data.schema import QUARANTINE_FILE, RAW_DOCUMENTS_FILE
from mai_models.errors import MaiUserError

GOOD = "The quick brown fox jumps over the lazy dog while the cat watches from the windowsill. " * 4


def _ingest(tmp_path: Path, sources: list[dict], **kw) -> tuple[dict, Path]:
    out = tmp_path / "raw"
    out.mkdir()
    cfg = IngestConfig(sources=[SourceConfig(**s) for s in sources], **kw)
    return build_raw(cfg, tmp_path, out), out


def test_bad_jsonl_lines_are_quarantined_and_counted_exactly(tmp_path: Path) -> None:
    lines = [
        json.dumps({"text": GOOD}).encode(),
        b'{"text": "unterminated',  # malformed JSON
        b'{"text": "caf\xe9 latte"}',  # invalid UTF-8 (latin-1 byte)
        json.dumps({"body": GOOD}).encode(),  # this line lacks the field
        json.dumps(["not", "an", "object"]).encode(),
        json.dumps({"text": None}).encode(),
        json.dumps({"text": 42}).encode(),
        b'{"text": "lone \\ud800 surrogate"}',
        b"",  # blank separator line: not data
        json.dumps({"text": "x" * 5000}).encode(),  # huge for this test's limit
        json.dumps({"text": ""}).encode(),  # empty: kept at raw, filtered at clean
        json.dumps({"text": GOOD}).encode(),  # exact duplicate
    ]
    (tmp_path / "corpus.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    stats, out = _ingest(tmp_path, [{"kind": "jsonl", "path": "corpus.jsonl"}], max_doc_bytes=4000)
    assert stats["quarantined_by_reason"] == {
        "malformed_json": 1,
        "invalid_utf8": 2,
        "missing_field": 1,
        "not_an_object": 1,
        "null_text": 1,
        "non_string_text": 1,
        "too_large": 1,
    }
    assert stats["docs"] == 3
    assert stats["records_seen"] == stats["docs"] + stats["quarantined"] == 11
    quarantine = pq.read_table(out / QUARANTINE_FILE).to_pylist()
    assert {row["origin"] for row in quarantine} >= {"corpus.jsonl:2", "corpus.jsonl:3"}
    assert all(row["reason"] and row["stage"] == "raw_documents" for row in quarantine)

    clean_out = tmp_path / "clean"
    clean_out.mkdir()
    params = PipelineParams.model_validate({"clean": {"min_chars": 50}})
    clean_stats = build_clean(params, out, clean_out)
    assert clean_stats["rejected_by_reason"] == {"empty": 1, "exact_duplicate": 1}
    assert clean_stats["kept_docs"] + clean_stats["rejected"] == clean_stats["raw_docs"] == 3


def test_wrong_text_field_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text(json.dumps({"content": GOOD}) + "\n")
    with pytest.raises(MaiUserError, match="no record has the text field 'text'.*content"):
        _ingest(tmp_path, [{"kind": "jsonl", "path": "c.jsonl"}])


def test_wrong_parquet_column_is_a_configuration_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": [GOOD]}), tmp_path / "c.parquet")
    with pytest.raises(MaiUserError, match="no column 'text'"):
        _ingest(tmp_path, [{"kind": "parquet", "path": "c.parquet"}])


def test_hf_disk_errors_name_the_dataset_and_its_columns(tmp_path: Path) -> None:
    from datasets import Dataset

    from mai_models.data.readers import read_hf_disk

    Dataset.from_dict({"body": [GOOD]}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(MaiUserError, match=r"hf: no column 'text' \(columns: body\)$"):
        list(read_hf_disk(tmp_path / "hf", "hf_disk:hf", "text", 10_000))
    (tmp_path / "plain").mkdir()
    with pytest.raises(MaiUserError, match="plain: not a Hugging Face dataset saved with save_to_disk"):
        list(read_hf_disk(tmp_path / "plain", "hf_disk:plain", "text", 10_000))


def test_missing_path_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(MaiUserError, match="path does not exist"):
        _ingest(tmp_path, [{"kind": "textdir", "path": "nowhere"}])


def test_unknown_format_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("ingest:\n  sources:\n    - kind: xml\n      path: a.xml\n")
    with pytest.raises(MaiUserError, match=r"ingest\.sources\.0\.kind"):
        load_params(tmp_path / "params.yaml")


def test_readers_for_each_format(tmp_path: Path) -> None:
    from datasets import Dataset

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(GOOD)
    (tmp_path / "docs" / "b.md").write_text("# Title\n\n" + GOOD)
    (tmp_path / "docs" / "c.bin").write_bytes(b"\x00\x01")  # not a text file: not read by textdir
    (tmp_path / "docs" / "bad.txt").write_bytes(b"\xff\xfe broken")
    pq.write_table(pa.table({"content": [GOOD, None]}), tmp_path / "t.parquet")
    Dataset.from_dict({"text": [GOOD, GOOD + " more"]}).save_to_disk(str(tmp_path / "hf"))
    stats, out = _ingest(
        tmp_path,
        [
            {"kind": "textdir", "path": "docs", "name": "notes"},
            {"kind": "parquet", "path": "t.parquet", "text_field": "content"},
            {"kind": "hf_disk", "path": "hf"},
        ],
    )
    assert stats["docs_by_source"] == {"hf_disk:hf": 2, "notes": 2, "parquet:t.parquet": 1}
    assert stats["quarantined_by_reason"] == {"invalid_utf8": 1, "null_text": 1}
    table = pq.read_table(out / RAW_DOCUMENTS_FILE)
    assert len(set(table.column("doc_id").to_pylist())) == table.num_rows == 5


def test_landing_directory_quarantines_unknown_and_wrong_schema_files(tmp_path: Path) -> None:
    from datasets import Dataset

    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "drop1.jsonl").write_text(json.dumps({"text": GOOD}) + "\n")
    (landing / "drop2.txt").write_text(GOOD + " two")
    (landing / "notes.docx").write_bytes(b"PK\x03\x04")
    pq.write_table(pa.table({"body": [GOOD]}), landing / "wrong.parquet")
    Dataset.from_dict({"text": [GOOD + " three"]}).save_to_disk(str(landing / "hfdrop"))
    (landing / ".hidden").write_text("ignored")
    stats, _ = _ingest(tmp_path, [{"kind": "landing", "path": "landing"}])
    assert stats["docs"] == 3
    assert stats["quarantined_by_reason"] == {"unknown_format": 1, "wrong_schema": 1}


def test_demo_corpus_is_deterministic_and_labelled(tmp_path: Path) -> None:
    from mai_models.data.demo_corpus import DEMO_SOURCES, iter_demo_documents

    first = [(d.source, d.origin, d.text) for d in iter_demo_documents(limit_bytes=100_000)]
    second = [(d.source, d.origin, d.text) for d in iter_demo_documents(limit_bytes=100_000)]
    assert first == second
    assert {s for s, _, _ in first} <= set(DEMO_SOURCES)
    full = list(iter_demo_documents())
    total = sum(len(d.text.encode()) for d in full)
    assert 1_200_000 < total < 2_500_000
    assert {d.source for d in full} == set(DEMO_SOURCES)

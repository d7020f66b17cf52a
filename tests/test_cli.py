"""The `mai` CLI: user errors are one line on stderr with exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MAI = [sys.executable, "-m", "mai_models.cli"]


def _mai(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAI_ROOT": str(cwd)}
    return subprocess.run([*MAI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ingest.sources=[{kind: jsonl, path: missing.jsonl}]", "path does not exist"),
        ("ingest.sources=[{kind: csv, path: a.csv}]", "invalid parameter ingest.sources.0.kind"),
        (
            "ingest.sources=[{kind: jsonl, path: wrong_field.jsonl, text_field: body}]",
            "no record has the text field",
        ),
        ("clean.min_chars=lots", "invalid parameter clean.min_chars"),
        ("no_equals_sign", "not of the form key.sub=value"),
    ],
)
def test_configuration_errors_are_one_line(project: Path, override: str, message: str) -> None:
    (project / "wrong_field.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    done = _mai(["data", "ingest", "--no-track", "-S", override], project)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_ingest_validate_tokenize_then_reuse(project: Path) -> None:
    (project / "data" / "landing" / "drop.jsonl").write_text(
        json.dumps({"text": "A landing drop written by a data engineer about tokenizers and shards. " * 5})
        + "\n{not json\n"
    )
    first = _mai(["data", "ingest", "--no-track"], project)
    assert first.returncode == 0, first.stderr
    assert "raw_documents: built" in first.stdout and "quarantined=1" in first.stdout
    validated = _mai(["data", "validate"], project)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "raw_documents: passed" in validated.stdout and "clean_documents: passed" in validated.stdout
    tokenized = _mai(["data", "tokenize", "--no-track"], project)
    assert tokenized.returncode == 0, tokenized.stderr
    assert (project / "data" / "token_shards" / "train_text_document.bin").exists()
    again = _mai(["data", "ingest", "--no-track"], project)
    assert again.stdout.count("reused stored output") == 2

    strict = _mai(["data", "validate", "-S", "validation.max_dedup_rate=0.0"], project)
    assert strict.returncode == 1 and "dedup rate" in strict.stdout


def test_tokenize_before_ingest_says_what_to_run(project: Path) -> None:
    done = _mai(["data", "tokenize", "--no-track"], project)
    assert done.returncode == 2
    assert "needs clean_documents, which is not materialised" in done.stderr


def test_dagster_definitions_validate(project: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    dagster = Path(sys.executable).parent / "dagster"
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "pipelines.definitions"],
        cwd=repo,
        env={**os.environ, "MAI_ROOT": str(project)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Validation successful" in done.stdout + done.stderr


def test_bench_tokenize_prints_one_final_json_line(project: Path) -> None:
    done = _mai(["bench", "tokenize", "--repeats", "1"], project)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "tokenize"
    assert result["ours_median"] > 0 and result["baseline_median"] > 0
    assert result["baseline"].startswith("tokenizers.Tokenizer.encode_batch_fast")
    assert result["ratio"] == pytest.approx(result["baseline_median"] / result["ours_median"], rel=0.01)

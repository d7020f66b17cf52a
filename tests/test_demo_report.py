"""The demo as a progress report: the log filter, the progress lines, `mai status` on a real project,
and `pipelines.demo` driving a real Dagster run into a log file, a record and the closing table."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from mai_models.demo_progress import DemoProgress
from mai_models.log_noise import FilteredLog
from mai_models.tracking.sinks import JsonLinesSink

# Lines as a demo's Dagster run prints them (copied from a real log).
APEX = (
    "/w/.venv/lib/python3.11/site-packages/megatron/core/models/backends.py:21: UserWarning: "
    "Apex is not installed. Falling back to Torch Norm\n"
)
APEX_SOURCE = "  warnings.warn(\n"  # the warnings module shows the call that warned
DEBUG = (
    "2026-12-01 13:28:46 +0000 - dagster - DEBUG - __ASSET_JOB - ef8a - 28498 - arena - STEP_START - "
    'Started execution of step "arena".\n'
)
PIPES_ROW = (
    '2026-12-01 13:28:46 +0000 - dagster - INFO - __ASSET_JOB - ef8a - moe_pretrain - {"step": 3, "x": 1}\n'
)
KEPT = (
    "2026-12-01 13:28:45 +0000 - dagster - INFO - __ASSET_JOB - ef8a - arena - arena: built (version 2164)\n"
)


def test_the_log_keeps_real_lines_and_counts_the_known_noise(tmp_path: Path) -> None:
    log = FilteredLog(tmp_path / "logs" / "demo.log")
    for line in (APEX, APEX_SOURCE, DEBUG, KEPT, APEX, APEX_SOURCE, PIPES_ROW, '{"step": 3, "x": 1}\n'):
        log.write(line)
    log.close()
    text = (tmp_path / "logs" / "demo.log").read_text()
    body, tally = text.split("# known harmless lines filtered")
    assert body.strip().splitlines() == [
        DEBUG.strip(),
        KEPT.strip(),
        PIPES_ROW.strip(),
        '{"step": 3, "x": 1}',
    ]
    assert "2  Megatron: Apex not installed" in tally
    assert "2  source lines of filtered warnings" in tally
    assert "Dagster" not in tally


def _screen(written: str) -> list[str]:
    """The lines a terminal shows after ``written``: text, newlines, and the two escapes the live
    block uses (ESC[nF: up n lines to their start; ESC[J: clear to the end of the screen)."""
    lines: list[str] = [""]
    row = 0
    for token in re.split(r"(\x1b\[\d*F|\x1b\[J|\n)", written):
        if token == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        elif token == "\x1b[J":
            del lines[row + 1 :]
            lines[row] = ""
        elif token.startswith("\x1b["):
            row -= int(token[2:-1] or 1)
        elif token:
            lines[row] += token
    return lines[:-1] if lines[-1] == "" else lines


def test_on_a_terminal_each_step_is_one_line() -> None:
    """Two steps overlapping, one of them training: while they run, the live block holds one line per
    running step (the bar redrawn in place); when both ended, the screen holds their two end lines."""
    out = io.StringIO()
    progress = DemoProgress({"moe_pretrain": 4}, stream=out, tty=True, started=100.0)
    progress.step_started("moe_pretrain", 101.0)
    progress.step_started("speech_corpus", 102.0)
    for step in range(1, 5):
        progress.training_row("moe_pretrain", {"step": step, "train/loss": 5.0 - step / 10})
    shown = _screen(out.getvalue())
    assert len(shown) == 2 and "moe_pretrain [" in shown[0] and "4/4" in shown[0]
    assert shown[1] == "[ 0:02] start  speech_corpus"
    progress.step_finished("speech_corpus", 112.0, "built", "300 utterances")
    progress.step_finished("moe_pretrain", 161.0, "built", "valid bpb 2.2")
    assert _screen(out.getvalue()) == [
        "[ 0:12] built  speech_corpus  10.0 s  300 utterances",
        "[ 1:01] built  moe_pretrain  60.0 s  valid bpb 2.2",
    ]


def test_a_training_step_prints_a_tenth_at_a_time_without_a_terminal() -> None:
    """Rows as the trainer's JsonLinesSink prints them, 120 steps: start, ten progress lines, end."""
    rows = io.StringIO()
    sink = JsonLinesSink(rows)
    sink.log(0, {"perf/model_flops_per_token": 4.4e7})  # the FLOP count row carries no progress
    for step in range(1, 121):
        metrics = {"train/loss": 9.0 - step / 40, "perf/tokens_per_s": 1400.0 + step}
        if step % 40 == 0:
            metrics["valid/bits_per_byte"] = 2.5 - step / 400
        sink.log(step, metrics)
    out = io.StringIO()
    progress = DemoProgress({"moe_pretrain": 120}, stream=out, tty=False, started=100.0)
    progress.step_started("moe_pretrain", 101.0)
    for line in rows.getvalue().splitlines():
        progress.training_row("moe_pretrain", json.loads(line))
    progress.step_finished("moe_pretrain", 161.5, "built", "valid bpb 2.200, 120 steps", "abc")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[ 0:01] start  moe_pretrain"
    bars = lines[1:-1]
    assert len(bars) == 10 and all("moe_pretrain [" in b and "tok/s" in b for b in bars)
    assert "12/120" in bars[0] and "loss 8.700" in bars[0]
    assert "[########################] 120/120" in bars[-1] and "valid bpb 2.200" in bars[-1]
    assert lines[-1] == "[ 1:01] built  moe_pretrain  60.5 s  valid bpb 2.200, 120 steps"
    assert progress.record() == {
        "moe_pretrain": {
            "status": "built",
            "seconds": 60.5,
            "version": "abc",
            "figure": "valid bpb 2.200, 120 steps",
        }
    }


def test_status_names_why_a_step_is_stale(lm_workspace: Path, capsys: pytest.CaptureFixture) -> None:
    from mai_models.cli import main as mai
    from mai_models.graph import load_project
    from mai_models.step_status import freshness

    def statuses(overrides: list[str] | None = None) -> dict:
        return {n: (f.status, f.reason) for n, f in freshness(load_project(overrides)).items()}

    found = statuses()
    assert {found[n][0] for n in ("raw_documents", "clean_documents", "bpe_tokenizer", "token_shards")} == {
        "current"
    }
    assert found["moe_pretrain"] == ("missing", "not materialised")

    changed = statuses(["clean.min_chars=150"])
    assert changed["raw_documents"][0] == "current"
    assert (
        changed["clean_documents"][0] == "stale"
        and "parameters changed (clean" in changed["clean_documents"][1]
    )
    assert changed["bpe_tokenizer"] == ("stale", "upstream clean_documents is stale")

    # Rebuilt under the new parameters, the tokenizer built from the old documents is stale for that.
    load_project(["clean.min_chars=150"]).run("clean_documents")
    rebuilt = statuses(["clean.min_chars=150"])
    assert rebuilt["clean_documents"][0] == "current"
    assert rebuilt["bpe_tokenizer"][0] == "stale"
    assert rebuilt["bpe_tokenizer"][1].startswith("upstream clean_documents changed (")

    assert mai(["status", "-S", "clean.min_chars=150"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["step", "status", "time", "main", "figure"]
    tokenizer = next(line for line in out if line.startswith("bpe_tokenizer "))
    assert "stale: upstream clean_documents changed" in tokenizer and "vocab 1000" in tokenizer
    assert any(line.startswith("clean_documents ") and "current" in line and "kept" in line for line in out)


def test_the_demo_reports_a_real_dagster_run(lm_workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """`pipelines.demo` on one step and its check: progress lines, the full log in a file without the
    noise, and the record that the closing table, `mai status` and demo-quality read."""
    from mai_models.demo_report import print_demo_report, read_demo_record
    from mai_models.graph import load_project
    from mai_models.launcher import ensure_dagster_home
    from pipelines.demo import main as demo

    project = load_project()
    ensure_dagster_home(project.settings)
    assert demo("raw_documents") == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("full log: ") and "/.mai/logs/demo-" in printed[0]
    assert any(line.endswith("start  raw_documents") for line in printed)
    done = next(line for line in printed if " raw_documents  " in line and "docs" in line)
    assert re.search(r"\] (built|reused) +raw_documents +\d+\.\d s +\d+ docs", done)

    record = read_demo_record(project.settings)
    assert record["success"] and record["run_id"] and record["total_seconds"] > 0
    assert record["steps"]["raw_documents"]["version"] == project.version("raw_documents")
    assert record["checks_passed"] >= 1 and record["failed_checks"] == []
    log = Path(record["log"]).read_text()
    assert "raw_documents" in log and " - dagster - DEBUG - " in log

    print_demo_report(project.settings, list(project.steps), record)
    table = capsys.readouterr().out
    assert "demo succeeded in" in table and f"log       {record['log']}" in table
    row = next(line for line in table.splitlines() if line.startswith("raw_documents "))
    assert f"{record['steps']['raw_documents']['seconds']:.1f} s" in row
    assert next(line for line in table.splitlines() if line.startswith("moe_pretrain ")).split()[1:3] == [
        "not",
        "run",
    ]

"""Versioned steps: unchanged inputs reuse the stored output; a failed build loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mai_models.executor.versioning import MANIFEST_FILE, current_version, run_step, step_version


def _writer(text: str, calls: list[int]):
    def build(out: Path) -> tuple[dict, dict]:
        calls.append(1)
        (out / "data.txt").write_text(text)
        return {"chars": len(text)}, {"throughput": 1.0}

    return build


def test_reuse_when_version_unchanged(tmp_path: Path) -> None:
    calls: list[int] = []
    out = tmp_path / "step"
    first = run_step("s", out, "v1", _writer("hello", calls))
    again = run_step("s", out, "v1", _writer("hello", calls))
    assert not first.reused and again.reused and calls == [1]
    assert again.stats == {"chars": 5} and "reused" in again.summary
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert "throughput" not in json.dumps(manifest), "timings must stay out of DVC-tracked outputs"
    assert run_step("s", out, "v2", _writer("world", calls)).reused is False and len(calls) == 2


def test_tampered_output_is_rebuilt(tmp_path: Path) -> None:
    calls: list[int] = []
    out = tmp_path / "step"
    run_step("s", out, "v1", _writer("hello", calls))
    (out / "data.txt").write_text("hello, edited")
    assert current_version(out) is None
    assert run_step("s", out, "v1", _writer("hello", calls)).reused is False


def test_failed_build_keeps_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "step"
    run_step("s", out, "v1", _writer("kept", []))

    def broken(tmp: Path) -> dict:
        (tmp / "data.txt").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        run_step("s", out, "v2", broken)
    assert (out / "data.txt").read_text() == "kept" and current_version(out) == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["step"]


def test_version_depends_on_config_code_and_upstream() -> None:
    base = step_version("s", {"a": 1}, "code1", {"up": "u1"})
    assert base == step_version("s", {"a": 1}, "code1", {"up": "u1"})
    assert (
        len(
            {
                base,
                step_version("s", {"a": 2}, "code1", {"up": "u1"}),
                step_version("s", {"a": 1}, "code2", {"up": "u1"}),
                step_version("s", {"a": 1}, "code1", {"up": "u2"}),
            }
        )
        == 4
    )

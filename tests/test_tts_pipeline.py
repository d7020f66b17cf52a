"""The speech plane through real Dagster, great-expectations, MLflow, DVC and onnxruntime: a tiny voice
trained from flite (or espeak-ng) speech plus a user LJSpeech source with broken clips."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import yaml
from conftest import REPO, enter_project, materializations, materialize_with_resources
from dagster import DagsterInstance

from assets.checks import SPEECH_CHECKS
from assets.speech import SPEECH_ASSETS
from mai_models.settings import load_settings

pytestmark = pytest.mark.slow

SPEECH_STEPS = [
    "speech_demo_dataset",
    "speech_corpus",
    "speech_features",
    "tts_acoustic",
    "tts_vocoder",
    "mai_voice",
]
TINY_SPEECH = {
    "speech.demo.sentences": 24,
    "speech.demo.heldout_sentences": 3,
    "speech_validation.min_utterances": 10,
    "speech_validation.min_total_minutes": 0.5,
    "tts.preset": "tiny",
    "tts.wer_sentences": 2,
}


def _user_ljspeech(root: Path) -> None:
    """A user dataset in LJSpeech layout: one good clip, one corrupt file, one missing file."""
    user = root / "data" / "user_speech"
    (user / "wavs").mkdir(parents=True)
    t = np.arange(int(1.5 * 16000)) / 16000
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    sf.write(user / "wavs" / "good.wav", voice.astype(np.float32), 16000)
    (user / "wavs" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(200))
    (user / "metadata.csv").write_text(
        "good|A short hum for the test.|A short hum for the test.\n"
        "corrupt|This file is not audio.|This file is not audio.\n"
        "missing|This clip was never recorded.|This clip was never recorded.\n"
    )


def _materialize(instance: DagsterInstance, raise_on_error: bool = True):
    return materialize_with_resources([*SPEECH_ASSETS, *SPEECH_CHECKS], instance, raise_on_error)


@pytest.fixture(scope="module")
def voice_project(lm_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("speech") / "proj"
    shutil.copytree(lm_project, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in TINY_SPEECH.items():
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    params["speech"]["sources"] = [
        {"kind": "demo"},
        {"kind": "ljspeech", "path": "data/user_speech", "name": "user"},
    ]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _user_ljspeech(root)
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        instance = DagsterInstance.ephemeral()
        first = _materialize(instance)
        rerun = _materialize(instance)
        yield root, {"first": first, "rerun": rerun}


def test_speech_assets_materialise_with_checks_and_quarantine(voice_project) -> None:
    root, runs = voice_project
    first = runs["first"]
    assert first.success
    meta = materializations(first)
    assert sorted(meta) == sorted(SPEECH_STEPS)
    checks = [
        e.event_specific_data for e in first.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert [c.check_name for c in checks] == ["speech_corpus_expectations"] and checks[0].passed

    demo = meta["speech_demo_dataset"]
    assert demo["synthetic"].value is True and demo["teacher"].value in ("flite", "espeak")
    assert "SYNTHETIC" in (root / "data" / "speech_demo_dataset" / "README.md").read_text().splitlines()[0]
    corpus = meta["speech_corpus"]
    # The broken user clips are quarantined with their reasons; the good one and the demo speech train.
    assert corpus["rejected_by_reason"].value == {"missing_audio": 1, "unreadable_audio": 1}
    assert corpus["utterances"].value == 24 + 1
    quarantine = __import__("pandas").read_parquet(root / "data" / "speech_corpus" / "quarantine.parquet")
    assert sorted(quarantine["doc_id"]) == ["user_corrupt", "user_missing"]
    features = json.loads((root / "data" / "speech_features" / "features.json").read_text())
    assert features["g2p"]["backend"] == "gruut" and features["features"]["n_mels"] == 80
    assert all(m["dvc_hash"].value for m in meta.values())

    # Nothing changed: every step reuses its stored output, and says so.
    rerun = materializations(runs["rerun"])
    assert all(m["reused"].value is True for m in rerun.values())


def test_mlflow_holds_samples_plots_and_the_registered_candidate(voice_project) -> None:
    root, runs = voice_project
    meta = materializations(runs["first"])
    settings = load_settings(root=root)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    acoustic_run = meta["tts_acoustic"]["mlflow_run_id"].value
    history = client.get_metric_history(acoustic_run, "train/loss")
    assert len(history) >= 2
    steps = [a.path for a in client.list_artifacts(acoustic_run, "samples")]
    assert steps and steps[-1].endswith("step_0000012")
    files = [a.path for a in client.list_artifacts(acoustic_run, steps[-1])]
    assert any(f.endswith("_mel.png") for f in files) and any(f.endswith(".wav") for f in files)
    vocoder_files = [
        a.path for a in client.list_artifacts(meta["tts_vocoder"]["mlflow_run_id"].value, steps[-1])
    ]
    assert any(f.endswith("_vocoded.wav") for f in vocoder_files)

    version = client.get_model_version_by_alias("mai-voice", "candidate")
    assert str(version.version) == meta["mai_voice"]["model_version"].value
    assert version.tags["mai.dvc_hash"] == meta["mai_voice"]["dvc_hash"].value
    assert version.tags["mai.bundle_uri"].endswith("data/mai_voice/bundle")
    run = client.get_run(version.run_id)
    assert "final/wer" in run.data.metrics and "final/vocoder_max_abs_diff" in run.data.metrics
    assert [a.path for a in client.list_artifacts(version.run_id) if a.path == "sample.wav"]


def test_bundle_synthesises_with_onnxruntime_alone(voice_project, tmp_path: Path) -> None:
    root, _ = voice_project
    report = json.loads((root / "data" / "mai_voice" / "report.json").read_text())
    assert max(report["metrics"][k] for k in report["metrics"] if k.endswith("max_abs_diff")) < 1e-4
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import now fails
        "from pathlib import Path\n"
        "from mai_models.tts.voice import load_onnx_voice\n"
        "from mai_models.tts.audio import write_wav\n"
        f"voice = load_onnx_voice(Path({str(root / 'data' / 'mai_voice' / 'bundle')!r}))\n"
        "out = voice.synthesize('Hello there. The bundle speaks on its own!')\n"
        f"write_wav(Path({str(tmp_path / 'onnx.wav')!r}), out.wave, out.sample_rate)\n"
        "print(len(out.sentences))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    wave, sr = sf.read(tmp_path / "onnx.wav")
    assert sr == 22050 and len(wave) > sr * 0.3


def _mai(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAI_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "mai_models.cli", *args], capture_output=True, text=True, cwd=root, env=env
    )


def test_synthesize_cli_speed_stream_batch_and_bad_input(voice_project, tmp_path: Path) -> None:
    root, _ = voice_project
    normal, fast = tmp_path / "normal.wav", tmp_path / "fast.wav"
    done = _mai(root, "tts", "synthesize", "The quick brown fox jumps over the lazy dog.", "-o", str(normal))
    assert done.returncode == 0, done.stderr
    assert (
        _mai(
            root,
            "tts",
            "synthesize",
            "The quick brown fox jumps over the lazy dog.",
            "-o",
            str(fast),
            "--speed",
            "2",
        ).returncode
        == 0
    )
    assert sf.info(fast).frames < sf.info(normal).frames

    streamed = _mai(
        root, "tts", "synthesize", "One sentence. And another one.", "-o", str(tmp_path / "s.wav"), "--stream"
    )
    assert streamed.returncode == 0 and "first audio after" in streamed.stdout

    empty = _mai(root, "tts", "synthesize", "   ", "-o", str(tmp_path / "e.wav"))
    assert empty.returncode == 2 and empty.stderr.strip() == "error: text is empty"
    cyrillic = _mai(root, "tts", "synthesize", "Привет, мир", "-o", str(tmp_path / "c.wav"))
    assert cyrillic.returncode == 2 and "CYRILLIC" in cyrillic.stderr and "Traceback" not in cyrillic.stderr
    emoji = _mai(root, "tts", "synthesize", "Good news 😀 today.", "-o", str(tmp_path / "w.wav"))
    assert emoji.returncode == 0 and "warning: dropped unknown character" in emoji.stderr

    lines = tmp_path / "lines.txt"
    lines.write_text("First line to say.\n\nПривет\nThe third line, 42 words.\n")
    batch = _mai(root, "tts", "synthesize", "--file", str(lines), "--out-dir", str(tmp_path / "batch"))
    assert batch.returncode == 1 and "line 2" in batch.stderr
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["0001.wav", "0003.wav"]


def test_tts_rtf_benchmark_prints_both_figures_and_the_ratio(voice_project) -> None:
    root, _ = voice_project
    done = _mai(root, "bench", "tts-rtf", "--seconds", "8")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "tts-rtf" and result["baseline"].startswith("teacher:")
    assert result["ours_rtf"] > 0 and result["baseline_rtf"] > 0
    assert result["ratio"] == pytest.approx(result["ours_rtf"] / result["baseline_rtf"], rel=1e-2)
    assert result["time_to_first_audio_ms"] > 0 and result["ours_audio_seconds"] > 1


def test_interrupted_training_resumes_into_the_same_mlflow_run(voice_project, tmp_path: Path) -> None:
    from mai_models.config import load_params
    from mai_models.speech_pipeline import SpeechPipeline

    root, _ = voice_project
    settings = load_settings(root=root)
    params = load_params(settings.params_file, ["tts.seed=99", "tts.checkpoint_interval=4"])
    killed = SpeechPipeline(settings, params)
    killed.stop_after_step = 8
    with pytest.raises(SystemExit, match="stopped after step 8"):
        killed.run("tts_acoustic", track=True)
    first_run = killed.tracked_run_id("tts_acoustic")
    assert (killed.work_dir("tts_acoustic") / "checkpoints" / "step_0000008.pt").exists()

    again = SpeechPipeline(settings, params)
    result = again.run("tts_acoustic", track=True)
    assert not result.reused and result.stats["steps"] == 12
    assert again.tracked_run_id("tts_acoustic") == first_run
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    # Evaluation at step 6 happened before the kill, at step 12 after the resume: one run holds both.
    assert [m.step for m in client.get_metric_history(first_run, "eval/loss")] == [6, 12]

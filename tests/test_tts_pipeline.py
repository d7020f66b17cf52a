"""The speech plane through real Dagster, great-expectations, MLflow, DVC and onnxruntime: a tiny voice
trained from flite (or espeak-ng) speech plus a user LJSpeech source with broken clips, and one trained
from a user's LJSpeech folder alone, without the demo dataset or the text plane."""

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
import pandas as pd
import pytest
import soundfile as sf
import yaml
from conftest import REPO, enter_project, make_project, materializations, materialize_with_resources
from dagster import AssetKey, DagsterInstance

from assets.catalog import in_groups
from mai_models.config import load_params
from mai_models.executor.versioning import read_manifest
from mai_models.graph import COMMANDS, project
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
    assets, checks = in_groups("speech")
    return materialize_with_resources([*assets, *checks], instance, raise_on_error)


def speech_steps(params) -> list[str]:
    """The speech steps a project with ``params`` has, in build order."""
    steps = project(load_settings(), params).steps
    return [n for n in COMMANDS["tts build"] if n in steps]


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
    quarantine = pd.read_parquet(root / "data" / "speech_corpus" / "quarantine.parquet")
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
    done = _mai(root, "bench", "tts-rtf", "--seconds", "8", "--repeats", "2")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "tts-rtf" and result["baseline"].startswith("teacher ")
    assert result["repeats"] == {"ours": 2, "baseline": 2} and result["ours_2_threads"]["repeats"] == 2
    assert result["ratio"] == pytest.approx(result["baseline_median"] / result["ours_median"], rel=1e-2)
    assert 1 < result["ours_speech_seconds"] <= result["ours_audio_seconds_with_pauses"]
    assert min(result["time_to_first_audio_ms"].values()) > 0


def test_interrupted_training_resumes_into_the_same_mlflow_run(voice_project, tmp_path: Path) -> None:
    root, _ = voice_project
    settings = load_settings(root=root)
    params = load_params(settings.params_file, ["tts.seed=99", "tts.checkpoint_interval=4"])
    killed = project(settings, params, options={"stop_after_step": 8})
    with pytest.raises(SystemExit, match="stopped after step 8"):
        killed.run("tts_acoustic", track=True)
    first_run = killed.tracked_runs["tts_acoustic"]
    work = killed.context("tts_acoustic").work_dir
    assert (work / "checkpoints" / "step_0000008.pt").exists()

    again = project(settings, params)
    result, ctx = again.run("tts_acoustic", track=True)
    assert not result.reused and result.stats["steps"] == 12
    assert again.tracked_runs["tts_acoustic"] == first_run and ctx.work_dir == work
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    # Evaluation at step 6 happened before the kill, at step 12 after the resume: one run holds both.
    assert [m.step for m in client.get_metric_history(first_run, "eval/loss")] == [6, 12]


# --- a user's own recordings alone ---------------------------------------------------------------

OWN_SENTENCES = [
    "The morning train left the station on time.",
    "She packed a warm coat and a small umbrella.",
    "Our garden needs rain before the summer ends.",
    "He read the letter twice and smiled quietly.",
    "The market opens early on every weekday.",
    "A gentle wind moved across the open field.",
    "They painted the kitchen a pale shade of green.",
    "The library keeps old maps in a locked room.",
    "We walked along the river until it grew dark.",
    "The baker sold fresh bread to the whole street.",
    "Please close the window when you leave the house.",
    "The children built a castle out of wet sand.",
    "His bicycle has a bell and a bright red lamp.",
    "The concert ended with a long and quiet song.",
    "A small boat waited by the wooden pier.",
    "The teacher wrote the answer on the board.",
]
OWN_SPEECH = [
    "speech.sources=[{kind: ljspeech, path: recordings/ljspeech, name: mine}]",
    "speech.valid_fraction=0.2",
    "speech_validation.min_utterances=8",
    "speech_validation.min_total_minutes=0.2",
    "tts.preset=tiny",
    "tts.acoustic.steps=6",  # the voice only has to exist: half the tiny budget keeps the test short
    "tts.vocoder.steps=6",
    "tts.eval_interval=6",
    "tts.wer_sentences=2",
]


def _own_recordings(root: Path) -> None:
    """The user's LJSpeech folder, read aloud by the teacher program, with a corrupt and a missing clip."""
    from mai_models.tts.teacher import pick_teacher

    folder = root / "recordings" / "ljspeech"
    names = [f"mine{i:03d}" for i in range(len(OWN_SENTENCES))]
    pick_teacher().synthesize_to(OWN_SENTENCES, folder / "wavs", names=names)
    (folder / "wavs" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(200))
    lines = [f"{n}|{t}" for n, t in zip(names, OWN_SENTENCES, strict=True)]
    lines += ["corrupt|This file is not audio.", "missing|This clip was never recorded."]
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")


def _dvc_without_demo(root: Path) -> None:
    """What the README tells a DVC user with their own sources alone: regenerate dvc.yaml from the
    step graph, so the corpus stage watches their folder and nothing reads the demo dataset."""
    done = _mai(root, "graph", "dvc-yaml")
    assert done.returncode == 0, done.stderr
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert "speech_demo_dataset" not in stages and "recordings/ljspeech" in stages["speech_corpus"]["deps"]
    assert not any("speech_demo_dataset" in dep for stage in stages.values() for dep in stage["deps"])


@pytest.fixture(scope="module")
def own_voice_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, object]]:
    root = make_project(tmp_path_factory.mktemp("own_voice") / "proj", OWN_SPEECH)
    _own_recordings(root)
    _dvc_without_demo(root)
    # Left behind by an earlier setup that used the demo source: it must not be read any more.
    stale = root / "data" / "speech_demo_dataset" / "heldout"
    (stale / "wavs").mkdir(parents=True)
    (stale / "metadata.csv").write_text("h00001|A stale teacher sentence.|A stale teacher sentence.\n")
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        (root / ".mai" / "dagster").mkdir(parents=True)
        assets, checks = in_groups("speech")  # as the code location builds them, from the project params
        yield root, materialize_with_resources([*assets, *checks], DagsterInstance.ephemeral())


def test_speech_assets_follow_the_speech_sources() -> None:
    demo, _ = in_groups("speech", params=load_params(None))
    own, _ = in_groups("speech", params=load_params(None, OWN_SPEECH[:1]))

    def deps(assets: list) -> dict[str, set[str]]:
        return {
            key.to_user_string(): {d.to_user_string() for d in up}
            for a in assets
            for key, up in a.asset_deps.items()
        }

    assert deps(demo)["speech_corpus"] == {"speech_demo_dataset"}
    assert deps(demo)["speech_demo_dataset"] == {"clean_documents"}
    assert deps(demo)["mai_voice"] == {"speech_demo_dataset", "speech_corpus", "tts_acoustic", "tts_vocoder"}
    assert deps(own) == {
        "speech_corpus": set(),
        "speech_features": {"speech_corpus"},
        "tts_acoustic": {"speech_features"},
        "tts_vocoder": {"speech_corpus"},
        "mai_voice": {"speech_corpus", "tts_acoustic", "tts_vocoder"},
    }
    assert AssetKey("speech_demo_dataset") not in {k for a in own for k in a.keys}
    assert speech_steps(load_params(None, OWN_SPEECH[:1]))[0] == "speech_corpus"


def test_own_recordings_alone_make_the_voice_without_the_text_plane(own_voice_project) -> None:
    root, run = own_voice_project
    assert run.success
    meta = materializations(run)
    assert sorted(meta) == sorted(
        ["speech_corpus", "speech_features", "tts_acoustic", "tts_vocoder", "mai_voice"]
    )
    assert not (root / "data" / "clean_documents").exists()
    checks = [e.event_specific_data for e in run.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert [(c.check_name, c.passed) for c in checks] == [("speech_corpus_expectations", True)]

    corpus = meta["speech_corpus"]
    assert corpus["rejected_by_reason"].value == {"missing_audio": 1, "unreadable_audio": 1}
    assert corpus["utterances"].value == len(OWN_SENTENCES)
    assert corpus["by_source"].value == {"mine": len(OWN_SENTENCES)} and "synthetic" not in corpus
    assert read_manifest(root / "data" / "speech_corpus")["lineage"]["upstream"] == {}
    assert all(m["dvc_hash"].value for m in meta.values())

    # Held out: the corpus's own validation recordings, never trained on; the stale teacher set is ignored.
    report = json.loads((root / "data" / "mai_voice" / "report.json").read_text())
    assert report["reference"] == "recording" and report["teacher"] == {}
    assert report["heldout_sentences"] == 2 and {"wer", "recording_wer"} <= set(report["metrics"])
    utterances = pd.read_parquet(root / "data" / "speech_corpus" / "utterances.parquet")
    valid = sorted(utterances.loc[utterances["split"] == "valid", "utt_id"])
    assert sorted(p.stem for p in (root / "data" / "mai_voice" / "samples").iterdir()) == valid[:2]
    bundle = json.loads((root / "data" / "mai_voice" / "bundle" / "config.json").read_text())
    assert bundle["trained_on"] == {"recordings": True}
    client = mlflow.MlflowClient(load_settings(root=root).mlflow_tracking_uri)
    version = client.get_model_version_by_alias("mai-voice", "candidate")
    assert str(version.version) == meta["mai_voice"]["model_version"].value
    assert "mai.upstream.speech_demo_dataset" not in version.tags


def test_tts_build_cli_skips_the_demo_dataset_without_the_demo_source(own_voice_project) -> None:
    root, _ = own_voice_project
    done = _mai(root, "tts", "build", "--no-track")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == list(speech_steps(load_params(root / "params.yaml")))
    assert all("reused stored output" in ln for ln in lines)


def test_code_location_builds_the_speech_job_from_the_project_params(own_voice_project) -> None:
    root, _ = own_voice_project
    script = (
        "import json\n"
        "from pipelines.definitions import defs\n"
        "job = defs.resolve_job_def('speech_job')\n"
        "print(json.dumps(sorted(k.to_user_string() for k in job.asset_layer.executable_asset_keys)))\n"
    )
    env = {**os.environ, "MAI_ROOT": str(root)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    own_steps = speech_steps(load_params(root / "params.yaml"))
    assert json.loads(done.stdout.strip().splitlines()[-1]) == sorted(own_steps)

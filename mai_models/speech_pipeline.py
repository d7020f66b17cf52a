"""The speech plane as versioned steps, shared by the CLI, ``dvc repro`` and Dagster.

clean_documents -> speech_demo_dataset -> speech_corpus -> speech_features -> tts_acoustic --+
                                          speech_corpus -> tts_vocoder ---------------------+-> mai_voice
The demo dataset (and through it the text plane) is upstream only while ``speech.sources`` lists the
``demo`` source: a project speaking from its own recordings alone starts at speech_corpus.
Each step writes ``<data_dir>/<step>/`` (the DVC out of the stage of the same name). Training steps
checkpoint under ``<home>/work/<step>/<version>/`` so an interrupted run of the same version resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mai_models.config import PipelineParams
from mai_models.pipeline import Step, StepPipeline
from mai_models.settings import Settings
from mai_models.steps import current_version
from mai_models.tracking.mlflow_runs import DatasetInput

REGISTERED_VOICE = "mai-voice"
DEMO_STEP = "speech_demo_dataset"
_TTS = "tts"


_DATA = ("tts/audio.py", "tts/readers.py", "tts/corpus.py", "tts/frontend", "steps.py")
_MODEL = ("tts", "steps.py")

STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step(
            DEMO_STEP,
            ("clean_documents",),
            ("tts/demo_dataset.py", "tts/teacher.py", "tts/audio.py", "steps.py"),
            "SYNTHETIC LJSpeech-format speech: corpus sentences read by a teacher synthesizer.",
        ),
        Step(
            "speech_corpus",
            (DEMO_STEP,),
            _DATA,
            "Every speech source decoded, resampled, trimmed and screened; bad clips quarantined.",
        ),
        Step(
            "speech_features",
            ("speech_corpus",),
            ("tts/features.py", "tts/mel.py", "tts/frontend", "tts/audio.py", "steps.py"),
            "Phoneme ids (gruut G2P) and 80-bin log-mel frames, with the phoneme vocabulary.",
        ),
        Step(
            "tts_acoustic",
            ("speech_features",),
            _MODEL,
            "FastSpeech2-style acoustic model, durations from monotonic alignment search.",
        ),
        Step(
            "tts_vocoder",
            ("speech_corpus",),
            _MODEL,
            "Vocos-style iSTFT vocoder, multi-resolution STFT loss.",
        ),
        Step(
            "mai_voice",
            (DEMO_STEP, "speech_corpus", "tts_acoustic", "tts_vocoder"),
            _MODEL,
            "ONNX voice bundle, verified against torch; held-out samples and WER; registered mai-voice.",
        ),
    )
}


def uses_demo(params: PipelineParams) -> bool:
    """Whether the synthetic demo dataset is one of the speech sources."""
    return any(source.kind == "demo" for source in params.speech.sources)


def speech_upstream(params: PipelineParams, name: str) -> tuple[str, ...]:
    """The steps ``name`` reads under ``params``: the demo dataset only while it is a source."""
    upstream = STEPS[name].upstream
    return upstream if uses_demo(params) else tuple(up for up in upstream if up != DEMO_STEP)


def speech_steps(params: PipelineParams) -> tuple[str, ...]:
    """The steps that make this project's voice, in build order."""
    return tuple(name for name in STEPS if name != DEMO_STEP or uses_demo(params))


class SpeechPipeline(StepPipeline):
    steps = STEPS

    def __init__(self, settings: Settings, params: PipelineParams) -> None:
        super().__init__(settings, params)
        self._run_ids: dict[str, str] = {}
        self.stop_after_step: int | None = None  # tests: simulate a crash inside training

    def work_dir(self, name: str) -> Path:
        return self.settings.home / "work" / name / self.version(name)

    def upstream(self, name: str) -> tuple[str, ...]:
        return speech_upstream(self.params, name)

    def demo_dir(self) -> Path | None:
        """The demo dataset when it is a source; a stale one left by an earlier setup is never read."""
        return self.out_dir(DEMO_STEP) if uses_demo(self.params) else None

    def config_of(self, name: str) -> dict[str, Any]:
        p = self.params
        speech = p.speech.model_dump(mode="json")
        tts = p.tts.model_dump(mode="json", exclude={"threads"})
        return {
            DEMO_STEP: {"demo": speech["demo"]},
            "speech_corpus": {"speech": {k: v for k, v in speech.items() if k != "demo"}},
            "speech_features": {
                "features": p.features.model_dump(mode="json"),
                "sample_rate": p.speech.sample_rate,
            },
            "tts_acoustic": {_TTS: {k: v for k, v in tts.items() if k not in ("vocoder", "wer_sentences")}},
            "tts_vocoder": {
                _TTS: {k: v for k, v in tts.items() if k not in ("acoustic", "wer_sentences")},
                "features": p.features.model_dump(mode="json"),
            },
            "mai_voice": {_TTS: {"wer_sentences": p.tts.wer_sentences}},
        }[name]

    def inputs(self, name: str) -> Any:
        if name == DEMO_STEP:
            return self.teacher().info()  # the resolved teacher: flite and espeak give different data
        if name == "speech_corpus":
            from mai_models.tts.readers import inputs_fingerprint

            return inputs_fingerprint(self.params.speech, self.settings.root)
        return None

    def builder(self, name: str, progress: bool) -> Callable[[Path], Any]:
        return _BUILDERS[name](self)

    def teacher(self) -> Any:
        from mai_models.tts.teacher import pick_teacher

        demo = self.params.speech.demo
        return pick_teacher(demo.teacher, demo.flite_voice, demo.espeak_voice)

    def datasets(self, name: str) -> list[DatasetInput]:
        if name not in ("speech_corpus", "speech_features"):
            return []
        import pandas as pd

        table = self.out_dir("speech_corpus") / "utterances.parquet"
        columns = ["utt_id", "speaker", "source", "split", "seconds", "chars_per_second"]
        frame = pd.read_parquet(table, columns=columns)
        return [DatasetInput("speech_corpus", table, frame, "output" if name == "speech_corpus" else "input")]

    def tracked_run_id(self, name: str) -> str | None:
        return self._run_ids.get(name)

    def after_commit(self, name: str, run_id: str | None, dvc_hash: str | None) -> dict[str, Any]:
        if name != "mai_voice" or run_id is None:
            return {}
        from mai_models.tracking.registry import register_candidate

        out = self.out_dir(name)
        report = json.loads((out / "report.json").read_text())
        tags = {
            "mai.bundle_uri": (out / "bundle").as_uri(),
            "mai.data_version": current_version(out) or "",
            **({"mai.dvc_hash": dvc_hash} if dvc_hash else {}),
            **{f"mai.upstream.{k}": v for k, v in self.upstream_versions(name).items()},
            "mai.teacher": json.dumps(report.get("teacher", {}), sort_keys=True),
        }
        metrics = {k: v for k, v in report["metrics"].items() if isinstance(v, int | float)}
        params = {"preset": self.params.tts.preset, **report["parameters"]}
        version = register_candidate(self.settings, REGISTERED_VOICE, run_id, tags, params, metrics)
        return {"model_version": version, "registered_model": REGISTERED_VOICE}

    def start_tracking(self, name: str, tags: dict[str, str] | None = None) -> Any:
        """An MLflow run for a training step (reused when the same version resumes) and its sink."""
        import mlflow

        from mai_models.tracking.mlflow_runs import ensure_experiment, run_exists
        from mai_models.tracking.sinks import MLflowSink

        work = self.work_dir(name)
        work.mkdir(parents=True, exist_ok=True)
        id_file = work / "mlflow_run_id"
        experiment_id = ensure_experiment(self.settings)
        client = mlflow.MlflowClient(self.settings.mlflow_tracking_uri)
        run_id = id_file.read_text().strip() if id_file.exists() else None
        if run_id is None or not run_exists(client, run_id):
            run_id = client.create_run(
                experiment_id, run_name=f"{name}-{self.version(name)[:8]}", tags=tags or {}
            ).info.run_id
            id_file.write_text(run_id)
        self._run_ids[name] = run_id
        return MLflowSink(self.settings.mlflow_tracking_uri, run_id)


def _demo_dataset(pipe: SpeechPipeline) -> Callable[[Path], Any]:
    from mai_models.tts.demo_dataset import build_demo_speech_dataset

    return lambda out: build_demo_speech_dataset(
        pipe.params.speech.demo, pipe.settings.data_dir / "clean_documents", out
    )


def _corpus(pipe: SpeechPipeline) -> Callable[[Path], Any]:
    from mai_models.tts.corpus import build_speech_corpus
    from mai_models.tts.frontend import normalize_text

    return lambda out: build_speech_corpus(
        pipe.params.speech,
        pipe.settings.root,
        pipe.demo_dir(),
        out,
        normalize=lambda text: normalize_text(text).text,
    )


def _features(pipe: SpeechPipeline) -> Callable[[Path], Any]:
    from mai_models.tts.features import build_speech_features

    return lambda out: build_speech_features(
        pipe.params.features, pipe.params.speech.sample_rate, pipe.out_dir("speech_corpus"), out
    )


def _sink(pipe: SpeechPipeline, name: str) -> Any:
    from mai_models.tracking.sinks import FanOut, JsonLinesSink

    mlflow_sink = pipe.start_tracking(name) if pipe.track else None
    return FanOut(JsonLinesSink(), mlflow_sink)


def _training(pipe: SpeechPipeline, name: str) -> Callable[[Path], Any]:
    from mai_models.tts.train_model import train_model

    p = pipe.params
    kind, data = ("acoustic", "speech_features") if name == "tts_acoustic" else ("vocoder", "speech_corpus")

    def build(out: Path) -> tuple[dict[str, Any], dict[str, float]]:
        sink = _sink(pipe, name)
        try:
            summary = train_model(
                kind,
                p.tts,
                p.features,
                p.speech,
                pipe.out_dir(data),
                pipe.work_dir(name),
                out,
                sink,
                stop_after_step=pipe.stop_after_step,
            )
        finally:
            sink.close()
        seconds = summary.pop("seconds")
        final = {f"final_{k}": round(v, 5) for k, v in summary.pop("final").items()}
        return {**summary, **final, "preset": p.tts.preset}, {"train_seconds": seconds}

    return build


def _voice(pipe: SpeechPipeline) -> Callable[[Path], Any]:
    from mai_models.tts.release import build_voice_release

    def build(out: Path) -> tuple[dict[str, Any], dict[str, float]]:
        sink = _sink(pipe, "mai_voice")
        try:
            return build_voice_release(
                pipe.params,
                acoustic_dir=pipe.out_dir("tts_acoustic"),
                vocoder_dir=pipe.out_dir("tts_vocoder"),
                demo_dir=pipe.demo_dir(),
                corpus_dir=pipe.out_dir("speech_corpus"),
                out=out,
                sink=sink,
            )
        finally:
            sink.close()

    return build


_BUILDERS: dict[str, Callable[[SpeechPipeline], Callable[[Path], Any]]] = {
    DEMO_STEP: _demo_dataset,
    "speech_corpus": _corpus,
    "speech_features": _features,
    "tts_acoustic": lambda pipe: _training(pipe, "tts_acoustic"),
    "tts_vocoder": lambda pipe: _training(pipe, "tts_vocoder"),
    "mai_voice": _voice,
}

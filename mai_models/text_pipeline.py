"""The text data plane as four versioned steps, shared by the CLI, ``dvc repro`` and Dagster.

raw_documents -> clean_documents -> bpe_tokenizer -> token_shards
Each step writes ``<data_dir>/<step name>/`` (the DVC out of the stage of the same name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mai_models.config import PipelineParams
from mai_models.errors import MaiUserError
from mai_models.settings import Settings
from mai_models.steps import StepResult, code_version, current_version, run_step, step_version

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class TextStep:
    name: str
    upstream: tuple[str, ...]
    code_paths: tuple[str, ...]  # relative to the mai_models package
    description: str

    def code_version(self) -> str:
        return code_version(PACKAGE_DIR / p for p in self.code_paths)


_DATA_CODE = ("data", "steps.py")
_TOKENIZER_CODE = ("tokenizer", "data/schema.py", "data/clean.py", "steps.py")

STEPS: dict[str, TextStep] = {
    s.name: s
    for s in (
        TextStep(
            "raw_documents",
            (),
            _DATA_CODE,
            "Every configured source read into one Parquet table; unreadable records quarantined.",
        ),
        TextStep(
            "clean_documents",
            ("raw_documents",),
            _DATA_CODE,
            "Normalised, filtered, deduplicated documents in train/valid/test Parquet shards.",
        ),
        TextStep(
            "bpe_tokenizer",
            ("clean_documents",),
            _TOKENIZER_CODE,
            "Byte-level BPE trained on the train split; loads with PreTrainedTokenizerFast.",
        ),
        TextStep(
            "token_shards",
            ("clean_documents", "bpe_tokenizer"),
            _TOKENIZER_CODE,
            "Megatron-Core IndexedDataset .bin/.idx per split.",
        ),
    )
}


class TextPipeline:
    def __init__(self, settings: Settings, params: PipelineParams) -> None:
        self.settings = settings
        self.params = params

    def out_dir(self, name: str) -> Path:
        return self.settings.data_dir / name

    def config_of(self, name: str) -> dict[str, Any]:
        """The parameters that change a step's output (worker counts do not)."""
        p = self.params
        return {
            "raw_documents": {"ingest": p.ingest.model_dump(mode="json")},
            "clean_documents": {
                k: getattr(p, k).model_dump(mode="json") for k in ("clean", "dedup", "split")
            },
            "bpe_tokenizer": {"tokenizer": p.tokenizer.model_dump(mode="json")},
            "token_shards": {},
        }[name]

    def upstream_versions(self, name: str) -> dict[str, str]:
        versions = {}
        for up in STEPS[name].upstream:
            version = current_version(self.out_dir(up))
            if version is None:
                raise MaiUserError(f"{name} needs {up}, which is not materialised at {self.out_dir(up)}")
            versions[up] = version
        return versions

    def version(self, name: str) -> str:
        from mai_models.data.ingest import inputs_fingerprint

        step = STEPS[name]
        inputs = (
            inputs_fingerprint(self.params.ingest, self.settings.root) if name == "raw_documents" else None
        )
        return step_version(
            name, self.config_of(name), step.code_version(), self.upstream_versions(name), inputs
        )

    def run(self, name: str, force: bool = False, progress: bool = False) -> StepResult:
        step = STEPS[name]
        version = self.version(name)
        lineage = {"upstream": self.upstream_versions(name), "code_version": step.code_version()}
        build = _BUILDERS[name](self, progress)
        return run_step(name, self.out_dir(name), version, build, lineage=lineage, force=force)


def _raw(pipe: TextPipeline, progress: bool) -> Callable[[Path], Any]:
    from mai_models.data.ingest import build_raw

    return lambda out: build_raw(pipe.params.ingest, pipe.settings.root, out, progress=progress)


def _clean(pipe: TextPipeline, progress: bool) -> Callable[[Path], Any]:
    from mai_models.data.clean import build_clean

    return lambda out: build_clean(pipe.params, pipe.out_dir("raw_documents"), out, progress=progress)


def _tokenizer(pipe: TextPipeline, progress: bool) -> Callable[[Path], Any]:
    from mai_models.tokenizer.bpe import train_tokenizer

    return lambda out: train_tokenizer(pipe.params.tokenizer, pipe.out_dir("clean_documents"), out)


def _shards(pipe: TextPipeline, progress: bool) -> Callable[[Path], Any]:
    from mai_models.tokenizer.shards import build_token_shards

    def build(out: Path) -> tuple[dict[str, Any], dict[str, float]]:
        stats = build_token_shards(
            pipe.params.tokenize,
            pipe.out_dir("clean_documents"),
            pipe.out_dir("bpe_tokenizer"),
            out,
            progress=progress,
        )
        return stats.deterministic(), stats.timing()

    return build


_BUILDERS: dict[str, Callable[[TextPipeline, bool], Callable[[Path], Any]]] = {
    "raw_documents": _raw,
    "clean_documents": _clean,
    "bpe_tokenizer": _tokenizer,
    "token_shards": _shards,
}

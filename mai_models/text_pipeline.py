"""The text data plane as four versioned steps, shared by the CLI, ``dvc repro`` and Dagster.

raw_documents -> clean_documents -> bpe_tokenizer -> token_shards
Each step writes ``<data_dir>/<step name>/`` (the DVC out of the stage of the same name).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mai_models.data.schema import RAW_DOCUMENTS_FILE, SPLITS
from mai_models.pipeline import Step, StepPipeline
from mai_models.tracking.mlflow_runs import DatasetInput

# The text column is left out of logged datasets: digests and schemas stay cheap on large corpora.
DATASET_COLUMNS = ["doc_id", "source", "origin", "n_bytes", "sha256"]

_DATA_CODE = ("data", "steps.py")
_TOKENIZER_CODE = ("tokenizer", "data/schema.py", "data/clean_documents.py", "steps.py")

STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step(
            "raw_documents",
            (),
            _DATA_CODE,
            "Every configured source read into one Parquet table; unreadable records quarantined.",
        ),
        Step(
            "clean_documents",
            ("raw_documents",),
            _DATA_CODE,
            "Normalised, filtered, deduplicated documents in train/valid/test Parquet shards.",
        ),
        Step(
            "bpe_tokenizer",
            ("clean_documents",),
            _TOKENIZER_CODE,
            "Byte-level BPE trained on the train split; loads with PreTrainedTokenizerFast.",
        ),
        Step(
            "token_shards",
            ("clean_documents", "bpe_tokenizer"),
            _TOKENIZER_CODE,
            "Megatron-Core IndexedDataset .bin/.idx per split.",
        ),
    )
}


class TextPipeline(StepPipeline):
    steps = STEPS

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

    def inputs(self, name: str) -> Any:
        from mai_models.data.ingest import inputs_fingerprint

        return inputs_fingerprint(self.params.ingest, self.settings.root) if name == "raw_documents" else None

    def builder(self, name: str, progress: bool) -> Callable[[Path], Any]:
        return _BUILDERS[name](self, progress)

    def datasets(self, name: str) -> list[DatasetInput]:
        return _datasets(self, name)


def _raw(pipe: TextPipeline, progress: bool) -> Callable[[Path], Any]:
    from mai_models.data.ingest import build_raw

    return lambda out: build_raw(pipe.params.ingest, pipe.settings.root, out, progress=progress)


def _clean(pipe: TextPipeline, progress: bool) -> Callable[[Path], Any]:
    from mai_models.data.clean_documents import build_clean

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


def _datasets(pipe: TextPipeline, name: str) -> list[DatasetInput]:
    raw = pipe.out_dir("raw_documents") / RAW_DOCUMENTS_FILE
    clean = pipe.out_dir("clean_documents")
    if name == "raw_documents":
        return [DatasetInput("raw_documents", raw, _frame([raw]), "ingested")]
    if name == "clean_documents":
        out = [DatasetInput("raw_documents", raw, _frame([raw]), "input")]
        return out + [
            DatasetInput(f"clean_documents/{s}", clean, _frame(sorted(clean.glob(f"{s}-*.parquet"))), s)
            for s in SPLITS
        ]
    splits = ("train",) if name == "bpe_tokenizer" else SPLITS
    return [
        DatasetInput(f"clean_documents/{s}", clean, _frame(sorted(clean.glob(f"{s}-*.parquet"))), s)
        for s in splits
    ]


def _frame(files: list[Path]) -> Any:
    import pandas as pd

    frames = [pq.read_table(f, columns=DATASET_COLUMNS).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DATASET_COLUMNS)

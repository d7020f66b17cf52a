"""The document tables a text step logs to MLflow as datasets (digest, schema, source)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mai_models.data.schema import RAW_DOCUMENTS_FILE, SPLITS
from mai_models.tracking.mlflow_runs import DatasetInput

# The text column is left out of logged datasets: digests and schemas stay cheap on large corpora.
DATASET_COLUMNS = ["doc_id", "source", "origin", "n_bytes", "sha256"]


def raw_dataset(raw_dir: Path, context: str) -> DatasetInput:
    raw = raw_dir / RAW_DOCUMENTS_FILE
    return DatasetInput("raw_documents", raw, _frame([raw]), context)


def split_datasets(clean_dir: Path, splits: tuple[str, ...] = SPLITS) -> list[DatasetInput]:
    return [
        DatasetInput(f"clean_documents/{s}", clean_dir, _frame(sorted(clean_dir.glob(f"{s}-*.parquet"))), s)
        for s in splits
    ]


def _frame(files: list[Path]) -> Any:
    import pandas as pd

    frames = [pq.read_table(f, columns=DATASET_COLUMNS).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DATASET_COLUMNS)

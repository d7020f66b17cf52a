"""Datasets written by Hugging Face ``datasets`` with ``save_to_disk``, for both data planes (text
documents and speech): opened once, split by split, with one wording for the errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mai_models.errors import MaiUserError

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset


def saved_splits(path: Path, columns: Sequence[str], hint: str = "") -> Iterator[tuple[str, Dataset]]:
    """``(split, dataset)`` of a saved ``Dataset`` (split ``""``) or of every split of a saved
    ``DatasetDict``, in split order. MaiUserError (``hint`` appended) when ``path`` holds no saved
    dataset or, once reached, a split lacks one of ``columns``: the splits before it still count."""
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise MaiUserError(f"{path}: not a Hugging Face dataset saved with save_to_disk ({exc})") from exc
    parts = sorted(loaded.items()) if isinstance(loaded, DatasetDict) else [("", loaded)]
    for split, dataset in parts:
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise MaiUserError(
                f"{path}: no column '{missing[0]}' (columns: {', '.join(dataset.column_names[:10])}){hint}"
            )
        yield split, dataset

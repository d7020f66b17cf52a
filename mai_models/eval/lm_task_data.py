"""The dataset loader of exported lm-eval tasks; ``build_local_tasks`` copies this file next to the YAMLs.

lm-eval resolves ``dataset_kwargs: data_files:`` against the working directory, so a task directory
that moved (a build directory renamed into place, a copy on another machine) would lose its data. A
``custom_dataset: !function`` is imported from the ``.py`` file beside the YAML instead, and this
module finds its JSONL through its own ``__file__``: the task directory works from anywhere. It runs
from that copy, outside this package, so it imports nothing but the standard library and ``datasets``
(which lm-eval itself needs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets


def load_jsonl(data_file: str, split: str = "test", **_metadata: Any) -> datasets.DatasetDict:
    """``{split: rows of data_file}``, the file read beside this module, held in memory.

    lm-eval calls this with the task's ``metadata`` and ``dataset_kwargs`` merged (the CLI adds the
    model arguments to the metadata), hence the catch-all. In memory: no datasets cache is written.
    """
    path = Path(__file__).resolve().parent / data_file
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})

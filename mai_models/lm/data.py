"""Training data from the token_shards asset through Megatron's own pipeline (GPTDataset built by
BlendedMegatronDatasetBuilder), with the checks that turn bad shards into one-line errors."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mai_models.data.schema import SPLITS
from mai_models.errors import MaiUserError
from mai_models.executor.versioning import MANIFEST_FILE
from mai_models.tokenizer.bpe import TOKENIZER_FILE
from mai_models.tokenizer.shards import prefix_name


@dataclass(frozen=True)
class ShardInfo:
    vocab_size: int
    eod_id: int
    tokens: dict[str, int]
    bytes: dict[str, int]

    def bytes_per_token(self, split: str) -> float:
        return self.bytes[split] / max(self.tokens[split], 1)


def inspect_shards(shards_dir: Path, tokenizer_dir: Path) -> ShardInfo:
    """Validate that shards exist, are non-empty and were made with this tokenizer."""
    manifest_path = shards_dir / MANIFEST_FILE
    if not manifest_path.exists():
        raise MaiUserError(f"no token shards at {shards_dir}: materialise token_shards first")
    stats = json.loads(manifest_path.read_text())["stats"]
    train = stats["splits"].get("train", {})
    if not train.get("docs"):
        raise MaiUserError(f"token shards at {shards_dir} have no training documents")
    for split in ("train", "valid"):
        prefix = shards_dir / prefix_name(split)
        if stats["splits"].get(split, {}).get("docs") and not (
            prefix.with_suffix(".bin").exists() and prefix.with_suffix(".idx").exists()
        ):
            raise MaiUserError(f"token shard {prefix}.bin/.idx is missing")
    from mai_models.tokenizer.bpe import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    vocab = tokenizer.get_vocab_size()
    import hashlib

    digest = hashlib.sha256((tokenizer_dir / TOKENIZER_FILE).read_bytes()).hexdigest()
    if stats["vocab_size"] != vocab or stats.get("tokenizer_sha256", digest) != digest:
        raise MaiUserError(
            f"tokenizer/shard mismatch: shards were written with vocab {stats['vocab_size']} "
            f"(tokenizer {stats.get('tokenizer_sha256', '?')[:12]}), tokenizer at {tokenizer_dir} has vocab "
            f"{vocab} ({digest[:12]}); re-materialise token_shards"
        )
    return ShardInfo(
        vocab_size=vocab,
        eod_id=stats["eod_id"],
        tokens={s: stats["splits"].get(s, {}).get("tokens", 0) for s in SPLITS},
        bytes={s: stats["splits"].get(s, {}).get("bytes", 0) for s in SPLITS},
    )


def build_datasets(
    shards_dir: Path,
    tokenizer_dir: Path,
    seq_length: int,
    num_samples: dict[str, int],
    seed: int,
    cache_dir: Path,
) -> dict[str, Any]:
    """GPTDatasets for train and valid (valid is None when that split is empty)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.core.tokenizers import MegatronTokenizer

    tokenizer = MegatronTokenizer.from_pretrained(
        str(tokenizer_dir), metadata_path={"library": "huggingface"}
    )
    present = {s: (shards_dir / prefix_name(s)).with_suffix(".bin").exists() for s in ("train", "valid")}
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend_per_split=[
            ([str(shards_dir / prefix_name(s))], None) if present.get(s) else None
            for s in ("train", "valid", "test")
        ],
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=str(cache_dir),
    )
    sizes = [num_samples.get("train", 0), num_samples.get("valid", 0) if present["valid"] else None, None]
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    return {"train": train, "valid": valid}


def batch_from(dataset: Any, start: int, size: int) -> dict[str, torch.Tensor]:
    """Samples [start, start+size) modulo the dataset length, stacked; deterministic for resume."""
    items = [dataset[(start + i) % len(dataset)] for i in range(size)]
    return {
        key: torch.from_numpy(np.stack([np.asarray(item[key]) for item in items]))
        for key in ("tokens", "labels", "loss_mask", "position_ids")
    }

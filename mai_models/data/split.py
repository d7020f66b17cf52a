"""Stable train/valid/test assignment by document hash: a document keeps its split across reruns
and corpus growth, so evaluation data never leaks into training."""

from __future__ import annotations

import hashlib

from mai_models.config import SplitConfig


def assign_split(sha256: str, cfg: SplitConfig) -> str:
    digest = hashlib.sha256(f"{cfg.salt}:{sha256}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.valid_fraction:
        return "valid"
    return "train"

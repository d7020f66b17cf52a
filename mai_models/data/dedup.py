"""Exact dedup by content hash and near-duplicate removal with MinHash LSH (datasketch)."""

from __future__ import annotations

import re

from datasketch import LeanMinHash, MinHash, MinHashLSH

from mai_models.config import DedupConfig
from mai_models.errors import MaiUserError

_WORD = re.compile(r"\w+")


def shingles(text: str, size: int) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


class Deduplicator:
    """Keeps the first document of each duplicate group, in input order."""

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg
        self._by_hash: dict[str, str] = {}
        try:
            self._lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
        except ValueError as exc:  # e.g. too few LSH bands for a threshold this close to 1
            raise MaiUserError(
                f"dedup.near_dup_threshold={cfg.near_dup_threshold} with dedup.num_perm={cfg.num_perm}: {exc}; "
                "raise num_perm or lower the threshold"
            ) from exc
        self._sigs: dict[str, LeanMinHash] = {}

    def check(self, doc_id: str, sha256: str, text: str) -> tuple[str, str] | None:
        """Register the document, or return (reason, detail) if it duplicates a kept one."""
        kept = self._by_hash.get(sha256)
        if kept is not None:
            return "exact_duplicate", f"same content as {kept}"
        sig = MinHash(num_perm=self.cfg.num_perm, seed=1)
        sig.update_batch(list(shingles(text, self.cfg.shingle_words)))
        lean = LeanMinHash(sig)
        # LSH returns candidates; confirm with the estimated Jaccard so the threshold means what it says.
        best_id, best = None, 0.0
        for other in self._lsh.query(lean):
            similarity = lean.jaccard(self._sigs[other])
            if similarity > best:
                best_id, best = other, similarity
        if best_id is not None and best >= self.cfg.near_dup_threshold:
            return "near_duplicate", f"jaccard~{best:.2f} with {best_id}"
        self._by_hash[sha256] = doc_id
        self._lsh.insert(doc_id, lean)
        self._sigs[doc_id] = lean
        return None

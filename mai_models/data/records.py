"""What readers yield: a readable record, or a rejected one with its reason."""

from __future__ import annotations

from dataclasses import dataclass

PREVIEW_CHARS = 300


@dataclass(frozen=True, slots=True)
class Record:
    source: str
    origin: str
    text: str


@dataclass(frozen=True, slots=True)
class Reject:
    source: str
    origin: str
    reason: str
    detail: str
    preview: str = ""
    doc_id: str | None = None

    @staticmethod
    def preview_of(data: bytes | str) -> str:
        if isinstance(data, bytes):
            data = data[: PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
        return data[:PREVIEW_CHARS]

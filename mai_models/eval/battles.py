"""Arena battles in FastChat's schema, so that our local arena logs and public arena dumps share one format.

One battle is one pairwise human or judge verdict between ``model_a`` and ``model_b``. On disk a log is
JSON Lines, one battle per line, with FastChat's column names.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
FRAME_COLUMNS = ["model_a", "model_b", "winner", "judge", "turn", "anony", "language", "tstamp"]


@dataclass(frozen=True)
class Battle:
    """One pairwise verdict; ``winner`` is one of ``WINNERS``."""

    model_a: str
    model_b: str
    winner: str
    judge: str
    turn: int = 1
    anony: bool = True
    language: str = "English"
    tstamp: float = field(default_factory=time.time)
    conv_metadata: dict[str, Any] = field(default_factory=dict)
    question_id: str | None = None

    def __post_init__(self) -> None:
        if self.winner not in WINNERS:
            raise ValueError(
                f"invalid winner {self.winner!r} for {self.model_a} vs {self.model_b}: "
                f"expected one of {', '.join(repr(w) for w in WINNERS)}"
            )


_FIELD_NAMES = {f.name for f in fields(Battle)}


def write_battles_jsonl(battles: Iterable[Battle], path: str | Path) -> Path:
    """Write ``battles`` to ``path`` as JSON Lines (parent directories created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for battle in battles:
            fh.write(json.dumps(asdict(battle), ensure_ascii=False) + "\n")
    return path


def read_battles_jsonl(path: str | Path) -> list[Battle]:
    """Battles from a JSON Lines file; blank lines are skipped.

    Columns outside the schema (public dumps also carry e.g. conversations) are ignored, so a FastChat
    export can be read directly; a bad row raises ValueError naming its line.
    """
    path = Path(path)
    battles: list[Battle] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                battles.append(Battle(**{k: v for k, v in row.items() if k in _FIELD_NAMES}))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
    return battles


def battles_frame(battles: Iterable[Battle]) -> pd.DataFrame:
    """The battles as a DataFrame with ``FRAME_COLUMNS``, in the given order (Elo depends on it)."""
    rows = [[getattr(b, c) for c in FRAME_COLUMNS] for b in battles]
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)

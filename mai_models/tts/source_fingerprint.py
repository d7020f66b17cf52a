"""Change detection for the speech sources (nothing is read here)."""

from __future__ import annotations

from pathlib import Path

from mai_models.tts.config import SpeechConfig


def inputs_fingerprint(cfg: SpeechConfig, root: Path) -> dict[str, list[tuple[str, int, int]]]:
    """Cheap change detector for the non-demo sources: (file, size, mtime) of everything under
    each source path, as DVC's state cache does. The demo source is versioned by its own stage."""
    result: dict[str, list[tuple[str, int, int]]] = {}
    for source in cfg.sources:
        if source.kind == "demo":
            continue
        path = Path(source.path or "")
        path = path if path.is_absolute() else root / path
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            files = []
        base = path if path.is_dir() else path.parent
        result[source.label] = [
            (str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
        ]
    return result

"""``map`` over worker processes, for scoring work whose libraries hold the GIL (pocketsphinx, WORLD,
DNSMOS's session calls in speechmos): threads gave no speed-up, processes use every core."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def process_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int | None = None) -> list[Any]:
    """``[fn(x) for x in items]`` in order, over ``workers`` processes (default: one per CPU, at most one
    per item). ``fn`` must be a module-level function. With one worker it runs here, in this process.

    Spawned, not forked: the caller may hold ONNX Runtime or torch thread pools, which a forked child
    inherits broken. As with any spawned pool, a script that calls this needs the usual
    ``if __name__ == "__main__":`` guard (each worker imports the script's main module)."""
    count = min(workers or os.cpu_count() or 1, len(items))
    if count <= 1:
        return [fn(item) for item in items]
    with ProcessPoolExecutor(max_workers=count, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, items))

"""Metric names that stay the same across retrainings. An evaluation names the systems it scored
(``mai-moe-v3``, ``teacher:flite-slt``); logged as such, each retraining would get new metric keys and
no chart could follow a model from one version to the next. In MLflow a system is named by its role:
``candidate`` (the version under evaluation), ``champion`` (any other registered version it faced)
and ``teacher``; baselines (``ngram-3``, ``dense-baseline``) keep their names, which do not change."""

from __future__ import annotations

import re

# A registered model's version as the evaluations name it: "<model>-v<number>".
_VERSIONED = re.compile(r"(?<![\w-])[a-z][a-z0-9-]*-v\d+(?!\d)")
# The speech teacher, "teacher:<engine>-<voice>": the engine differs between machines (flite, espeak).
_TEACHER = re.compile(r"teacher:[A-Za-z0-9-]+")


def stable_key(key: str, candidate: str | None = None) -> str:
    key = _TEACHER.sub("teacher", key)
    return _VERSIONED.sub(lambda m: "candidate" if m.group(0) == candidate else "champion", key)


def stable_metric_names(metrics: dict[str, float], candidate: object = None) -> dict[str, float]:
    """``metrics`` with every system named by its role; ``candidate`` is the evaluated version's name."""
    name = candidate if isinstance(candidate, str) else None
    return {stable_key(key, name): value for key, value in metrics.items()}

"""Local lm-evaluation-harness tasks built from our held-out documents (hub datasets are unreachable).

``mai_heldout_cloze``: multiple choice. Each passage is cut after its first ``context_words`` words;
the true next ``continuation_words`` words compete with the same span taken from other held-out
passages. Scored by log-likelihood (acc, and acc_norm which divides by the choice's byte length).
``mai_heldout_ppl``: rolling log-likelihood of whole documents (word/byte perplexity, bits per byte).

Both are ordinary lm-eval YAML configs over local JSONL files (``dataset_path: json``), so any lm-eval
model can run them, and ``run_lm_eval`` runs them offline with our ``mai`` adapter.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

CLOZE_TASK = "mai_heldout_cloze"
PPL_TASK = "mai_heldout_ppl"
TAG = "mai_heldout"
_WORD = re.compile(r"\S+")


def cloze_items(
    texts: Sequence[str],
    context_words: int = 24,
    continuation_words: int = 8,
    distractors: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One item per passage long enough: ``{doc_id, context, choices, label}``.

    Distractors are the words at the same position in other passages, so they share register and
    length with the answer; all choices get single-space whitespace so that line breaks cannot give
    the answer away.
    """
    need = context_words + continuation_words
    eligible = []
    for doc_id, text in enumerate(texts):
        spans = [m.span() for m in _WORD.finditer(text)]
        if len(spans) >= need:
            context = text[: spans[context_words - 1][1]]
            words = text[spans[context_words][0] : spans[need - 1][1]].split()
            eligible.append((doc_id, context, " ".join(words)))
    if len(eligible) < 2:
        raise ValueError(f"need at least 2 passages of >= {need} words for a cloze task, got {len(eligible)}")
    rng = random.Random(seed)
    items = []
    for doc_id, context, answer in eligible:
        pool = sorted({cont for other, _, cont in eligible if other != doc_id and cont != answer})
        choices = rng.sample(pool, min(distractors, len(pool)))
        if not choices:
            continue  # every other passage continues identically: no distractor to offer
        label = rng.randrange(len(choices) + 1)
        choices.insert(label, answer)
        items.append({"doc_id": doc_id, "context": context, "choices": choices, "label": label})
    return items


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _task_config(task: str, data_file: Path, cache_dir: Path, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": task,
        "tag": [TAG],
        "dataset_path": "json",
        # Absolute paths: lm-eval resolves data files against the working directory, not the YAML's.
        # A private cache keeps the datasets library from writing to the user's HF cache.
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        **body,
        "metadata": {"version": 1.0},
    }


def build_local_tasks(
    texts: Sequence[str],
    out_dir: Path,
    context_words: int = 24,
    continuation_words: int = 8,
    distractors: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Write both task YAMLs and their JSONL data into ``out_dir``; returns task names and counts."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / ".hf_cache"
    items = cloze_items(texts, context_words, continuation_words, distractors, seed)
    docs = [{"doc_id": i, "text": t} for i, t in enumerate(texts) if t.strip()]
    _write_jsonl(out_dir / f"{CLOZE_TASK}.jsonl", items)
    _write_jsonl(out_dir / f"{PPL_TASK}.jsonl", docs)
    cloze = _task_config(
        CLOZE_TASK,
        out_dir / f"{CLOZE_TASK}.jsonl",
        cache,
        {
            "output_type": "multiple_choice",
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "target_delimiter": " ",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        },
    )
    ppl = _task_config(
        PPL_TASK,
        out_dir / f"{PPL_TASK}.jsonl",
        cache,
        {
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "text",
            "metric_list": [
                {"metric": metric, "aggregation": aggregation, "higher_is_better": False}
                for metric, aggregation in (
                    ("word_perplexity", "weighted_perplexity"),
                    ("byte_perplexity", "weighted_perplexity"),
                    ("bits_per_byte", "bits_per_byte"),
                )
            ],
        },
    )
    for config in (cloze, ppl):
        (out_dir / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return {
        "task_dir": str(out_dir),
        "tasks": [CLOZE_TASK, PPL_TASK],
        "tag": TAG,
        "cloze_items": len(items),
        "ppl_docs": len(docs),
        "chance_acc": sum(1 / len(i["choices"]) for i in items) / max(1, len(items)),
    }


def run_lm_eval(
    model_args: str | dict[str, Any],
    task_dir: Path,
    tasks: Sequence[str] = (CLOZE_TASK, PPL_TASK),
    limit: int | float | None = None,
    bootstrap_iters: int = 0,
    include_defaults: bool = False,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` with our ``mai`` model over the tasks in ``task_dir``, offline.

    Returns ``{task: {metric: value}}`` (lm-eval's ``",none"`` filter suffix dropped, ``samples``
    added). Built-in lm-eval tasks are not indexed unless ``include_defaults`` (saves seconds).
    """
    # Nothing here needs the hub; saying so stops datasets/transformers from trying it and timing out.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    import mai_models.eval.lm_eval_adapter  # noqa: F401  (registers the "mai" model)

    manager = TaskManager(include_path=str(Path(task_dir).resolve()), include_defaults=include_defaults)
    results = lm_eval.simple_evaluate(
        model="mai",
        model_args=model_args,
        tasks=list(tasks),
        limit=limit,
        task_manager=manager,
        bootstrap_iters=bootstrap_iters,
        log_samples=False,
    )
    if results is None:  # only non-zero ranks get None; we run one process
        raise RuntimeError("lm_eval returned no results")
    summary: dict[str, Any] = {}
    for task, metrics in results["results"].items():
        row = {key.split(",")[0]: value for key, value in metrics.items() if key != "alias"}
        row["samples"] = results.get("n-samples", {}).get(task, {}).get("effective")
        summary[task] = row
    return summary

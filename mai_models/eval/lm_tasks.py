"""Local lm-evaluation-harness tasks built from our held-out documents (hub datasets are unreachable).

``mai_heldout_cloze``: multiple choice. Each passage is cut after its first ``context_words`` words;
the true next ``continuation_words`` words compete with the same span taken from other held-out
passages. Scored by log-likelihood (acc, and acc_norm which divides by the choice's byte length).
``mai_heldout_ppl``: rolling log-likelihood of whole documents (word/byte perplexity, bits per byte).

Both are ordinary lm-eval YAML configs over local JSONL files, loaded by a ``custom_dataset`` module
written beside them (``lm_task_data``), so the directory works wherever it is moved and from any
working directory: any lm-eval model can run them (``lm_eval --include_path DIR --tasks TAG``), and
``run_lm_eval`` runs them offline with our ``mai`` adapter.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mai_models.eval import lm_task_data

CLOZE_TASK = "mai_heldout_cloze"
PPL_TASK = "mai_heldout_ppl"
TAG = "mai_heldout"
# The loader's file name beside the YAMLs; lm-eval imports ``!function <module>.<name>`` from there.
LOADER_MODULE = "mai_heldout_data"
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


class _Function(str):
    """A YAML ``!function`` reference, resolved by lm-eval against the ``.py`` files beside the YAML."""


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskDumper.add_representer(_Function, lambda dumper, ref: dumper.represent_scalar("!function", str(ref)))


def _task_config(task: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": task,
        "tag": [TAG],
        "custom_dataset": _Function(f"{LOADER_MODULE}.{lm_task_data.load_jsonl.__name__}"),
        # A bare file name: the loader reads it beside itself, not from the working directory.
        "dataset_kwargs": {"data_file": f"{task}.jsonl"},
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
    """Write both task YAMLs, their JSONL data and the loader into ``out_dir``; returns file and task
    names and counts. Nothing written names ``out_dir``: the directory can be renamed or copied."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = cloze_items(texts, context_words, continuation_words, distractors, seed)
    docs = [{"doc_id": i, "text": t} for i, t in enumerate(texts) if t.strip()]
    _write_jsonl(out_dir / f"{CLOZE_TASK}.jsonl", items)
    _write_jsonl(out_dir / f"{PPL_TASK}.jsonl", docs)
    shutil.copyfile(lm_task_data.__file__, out_dir / f"{LOADER_MODULE}.py")
    cloze = _task_config(
        CLOZE_TASK,
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
        (out_dir / f"{config['task']}.yaml").write_text(
            yaml.dump(config, Dumper=_TaskDumper, sort_keys=False)
        )
    return {
        # Names, not paths: the caller may move the directory (a build directory renamed into place).
        "files": sorted(p.name for p in out_dir.iterdir()),
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
    bootstrap_iters: int = 100,
    include_defaults: bool = False,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` with our ``mai`` model over the tasks in ``task_dir``, offline.

    Returns ``{task: {metric: value}}`` (lm-eval's ``",none"`` filter suffix dropped, ``samples``
    added). Built-in lm-eval tasks are not indexed unless ``include_defaults`` (saves seconds).

    ``<metric>_stderr`` is there where lm-eval can estimate it: analytically for means (acc,
    acc_norm: no resampling, so ``bootstrap_iters`` costs nothing there; it only has to be > 0, as
    0 switches every estimate off), by ``bootstrap_iters`` resamples for the metrics lm-eval
    bootstraps (median, F1, BLEU, ...); perplexities and bits per byte have none and are left out
    rather than reported as ``"N/A"``.
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
        row = {
            key.split(",")[0]: value for key, value in metrics.items() if key != "alias" and value != "N/A"
        }
        row["samples"] = results.get("n-samples", {}).get(task, {}).get("effective")
        summary[task] = row
    return summary

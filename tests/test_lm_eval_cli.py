"""The exported lm-eval tasks under the stock ``lm_eval`` CLI, outside the factory.

A `tiny` model is trained for two steps and exported to Hugging Face; the tasks are built in a
temporary directory that is then renamed into place, as a step commits its output. ``lm_eval --model
hf`` runs them from another working directory (a relative ``--include_path``) and must give what our
``mai`` adapter gives through ``run_lm_eval``: the same accuracies and standard errors, and the same
log-likelihood for every choice.

Texts are cut to 14 words so that every request fits the tiny model's 64-token window: lm-eval's
``hf`` model truncates long requests from the left while ours slides a window, and that difference is
not the one under test. Built from the train split because the small corpus holds six test documents.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_hf_export import _train_and_finalize

from mai_models.eval.lm_tasks import CLOZE_TASK, PPL_TASK, build_local_tasks, run_lm_eval

pytestmark = pytest.mark.slow

LM_EVAL = Path(sys.executable).with_name("lm_eval")
LIMIT = 24
WORDS = 14


@pytest.fixture(scope="module")
def hf_dir(lm_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mai_models.export.hf import export_hf
    from mai_models.lm.process_groups import destroy_parallel

    root = tmp_path_factory.mktemp("cli") / "proj"
    shutil.copytree(lm_project, root, symlinks=True)
    threads = torch.get_num_threads()
    try:
        model_dir = _train_and_finalize(root, None)
    finally:
        destroy_parallel()  # the trainer leaves one-rank groups up; later tests start clean
        torch.set_num_threads(threads)
    out = root / "data" / "hf_export"
    export_hf(model_dir, out)
    return out


def _texts(lm_project: Path, hf_dir: Path) -> list[str]:
    from mai_models.eval.lm_metrics import heldout_texts
    from mai_models.eval.scoring import load_scoring_model

    model = load_scoring_model(hf_dir=str(hf_dir))
    cut = [
        " ".join(t.split()[:WORDS]) for t in heldout_texts(lm_project / "data" / "clean_documents", "train")
    ]
    # With the EOD in front, a request of < window tokens is one forward pass on either side.
    return [t for t in cut if len(model.encode(t)) < model.max_length][: LIMIT + 6]


def _stock_cli(cwd: Path, include_path: str, task: str, model_args: str, out: Path) -> dict:
    """``lm_eval`` as a user would type it; returns its results file and per-document samples."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(out / "hf_home"),  # nothing lands in the user's cache
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [str(LM_EVAL), "--model", "hf", "--model_args", model_args, "--include_path", include_path]
    cmd += ["--tasks", task, "--limit", str(LIMIT), "--device", "cpu", "--batch_size", "1"]
    cmd += ["--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    (samples,) = out.rglob(f"samples_{task}_*.jsonl")
    return {
        "results": json.loads(results.read_text())["results"][task],
        "samples": [json.loads(line) for line in samples.read_text().splitlines()],
    }


def test_stock_cli_scores_the_moved_tasks_as_the_mai_adapter(
    lm_project: Path, hf_dir: Path, tmp_path: Path
) -> None:
    from lm_eval.api.instance import Instance

    from mai_models.eval.lm_eval_adapter import MaiLM

    texts = _texts(lm_project, hf_dir)
    building = tmp_path / "data" / ".lm_evaluation.tmp-1234" / "lm_eval_tasks"
    info = build_local_tasks(texts, building, context_words=10, continuation_words=WORDS - 10)
    assert info["cloze_items"] >= LIMIT and info["ppl_docs"] >= LIMIT
    task_dir = tmp_path / "data" / "lm_evaluation" / "lm_eval_tasks"
    task_dir.parent.mkdir(parents=True)
    building.rename(task_dir)
    building.parent.rmdir()  # the build directory is gone, as after a step commits
    assert str(tmp_path) not in "".join(p.read_text() for p in task_dir.iterdir())  # no absolute paths

    ours = run_lm_eval({"hf_dir": str(hf_dir)}, task_dir, limit=LIMIT)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    include = os.path.relpath(task_dir, elsewhere)  # relative to a working directory that is not the tasks'

    # Cloze: add_bos_token puts the EOD before the context, as the adapter and the training stream do.
    cloze = _stock_cli(
        elsewhere, include, CLOZE_TASK, f"pretrained={hf_dir},add_bos_token=True", tmp_path / "c"
    )
    theirs, mine = cloze["results"], ours[CLOZE_TASK]
    assert mine["samples"] == LIMIT and len(cloze["samples"]) == LIMIT
    for metric in ("acc", "acc_norm"):
        assert theirs[f"{metric},none"] == mine[metric]
        assert theirs[f"{metric}_stderr,none"] == pytest.approx(mine[f"{metric}_stderr"], rel=1e-12)
        assert mine[f"{metric}_stderr"] == pytest.approx(
            math.sqrt(mine[metric] * (1 - mine[metric]) / (LIMIT - 1))
        )
    adapter = MaiLM(hf_dir=str(hf_dir))
    for sample in cloze["samples"]:
        args = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]
        requests = [Instance("loglikelihood", sample["doc"], pair, i) for i, pair in enumerate(args)]
        expected = [ll for ll, _ in adapter.loglikelihood(requests)]
        assert [float(ll) for ll, _ in sample["filtered_resps"]] == pytest.approx(expected, abs=1e-4)

    # Perplexity: lm-eval's rolling scorer already puts the EOD (its prefix token) first; no BOS.
    ppl = _stock_cli(elsewhere, include, PPL_TASK, f"pretrained={hf_dir}", tmp_path / "p")
    assert len(ppl["samples"]) == ours[PPL_TASK]["samples"] == LIMIT
    for metric in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
        assert ppl["results"][f"{metric},none"] == pytest.approx(ours[PPL_TASK][metric], rel=1e-5)
        assert f"{metric}_stderr" not in ours[PPL_TASK]  # lm-eval has no estimate: left out, not "N/A"

"""The arena submission bundle: what an arena needs to evaluate the champion, with a manifest whose
checksums, registry entry and DVC hashes tie it back to the raw data.

arena_submission/<model>-v<version>/
  api_endpoint.json        FastChat's endpoint entry (OpenAI-compatible `mai serve`)
  question.jsonl           the pinned prompts, Arena-Hard question schema
  model_answer/<model>.jsonl  answers in the Arena-Hard-Auto schema, with style metadata
  arena/{text,speech}/     battles (FastChat schema), leaderboard.csv, leaderboard.png
  voice/                   the ONNX voice bundle
  README.md                model card
  manifest.json            checksums, MLflow version and alias, DVC hashes, lineage, git commit
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.eval.champions import CHAMPION_FILE, DECISION_FILE, opponent_dir
from mai_models.executor.step import StepContext
from mai_models.tracking.registry import CANDIDATE_ALIAS, CHAMPION_ALIAS, LM_MODEL, VOICE_MODEL
from mai_models.tracking.warm_start import ancestry

MANIFEST = "manifest.json"
REQUIRED = ("api_endpoint.json", "question.jsonl", "README.md", MANIFEST)


def style_metadata(answer: str, token_len: int) -> dict[str, Any]:
    """Arena-Hard's style features of one answer."""
    return {
        "token_len": token_len,
        "header_count": {
            f"h{i}": len(re.findall(rf"^{'#' * i} ", answer, re.MULTILINE)) for i in range(1, 7)
        },
        "list_count": {
            "ordered": len(re.findall(r"^\s*\d+\. ", answer, re.MULTILINE)),
            "unordered": len(re.findall(r"^\s*[-*+] ", answer, re.MULTILINE)),
        },
        "bold_count": {
            "**": len(re.findall(r"\*\*[^*\n]+\*\*", answer)),
            "__": len(re.findall(r"__[^_\n]+__", answer)),
        },
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


SUBMISSION_FILE = "submission.json"


def build_submission(ctx: StepContext, out: Path) -> dict[str, Any]:
    """The bundle of whoever holds ``champion`` after the gate: built for a newly promoted candidate,
    carried over from the previous output for a kept champion, and none while there is no champion."""
    champions = json.loads((ctx.input("champion") / CHAMPION_FILE).read_text())
    lm = champions[LM_MODEL]
    if lm["version"] is None:
        status = {"status": "no_champion", "bundle": None, "reason": lm["reason"]}
    elif lm["changed"]:
        status = {
            "status": "submitted",
            "bundle": _build_bundle(ctx, out, champions),
            "reason": lm["reason"],
        }
    else:
        model = f"{LM_MODEL}-v{lm['version']}"
        previous = ctx.output / model
        carried = (previous / MANIFEST).exists()
        if carried:
            shutil.copytree(previous, out / model)
        status = {
            "status": "kept",
            "bundle": model if carried else None,
            "reason": lm["reason"] + ("" if carried else f"; {model}'s bundle is not in this work tree"),
        }
    (out / SUBMISSION_FILE).write_text(json.dumps(status, indent=2, sort_keys=True) + "\n")
    return status


def _build_bundle(ctx: StepContext, out: Path, champions: dict[str, Any]) -> str:
    from mai_models.eval.scoring import MegatronScoringModel
    from mai_models.lm.inference import load_pretrained
    from mai_models.tracking.mlflow_runs import git_commit

    settings = ctx.settings
    decisions = json.loads((ctx.input("arena") / DECISION_FILE).read_text())
    candidate_version = champions[LM_MODEL]["version"]
    model = f"{LM_MODEL}-v{candidate_version}"
    bundle = out / model
    bundle.mkdir(parents=True)

    endpoint = {
        model: {
            "model_name": model,
            "api_type": "openai",
            "api_base": "http://127.0.0.1:8000/v1",
            "api_key": "$MAI_SERVE_API_KEY",
            "anony_only": False,
            "recommended_config": {"temperature": 0.7, "top_p": 1.0},
            "text-arena": True,
            "vision-arena": False,
        }
    }
    (bundle / "api_endpoint.json").write_text(json.dumps(endpoint, indent=2) + "\n")

    prompts = json.loads((ctx.input("arena") / "text" / "questions.json").read_text())
    questions = [
        {
            "uid": p["question_id"],
            "category": "mai-heldout",
            "subcategory": "continuation",
            "prompt": p["prompt"],
        }
        for p in prompts
    ]
    _jsonl(bundle / "question.jsonl", questions)

    lm = load_pretrained(ctx.input("moe_pretrain"))
    scorer = MegatronScoringModel(lm, name=model)
    answers = []
    texts = scorer.generate_batch(
        [q["prompt"] for q in questions], max_new_tokens=ctx.params.evaluation.generation_tokens
    )
    for q, text in zip(questions, texts, strict=True):
        answers.append(
            {
                "uid": q["uid"],
                "ans_id": hashlib.sha256(f"{model}:{q['uid']}:{text}".encode()).hexdigest()[:22],
                "model": model,
                "messages": [
                    {"role": "user", "content": q["prompt"]},
                    {"role": "assistant", "content": {"answer": text}},
                ],
                "tstamp": time.time(),
                "metadata": style_metadata(text, len(scorer.encode(text))),
            }
        )
    _jsonl(bundle / "model_answer" / f"{model}.jsonl", answers)

    for plane in ("text", "speech"):
        shutil.copytree(ctx.input("arena") / plane, bundle / "arena" / plane)
    voice = champions[VOICE_MODEL]
    voice_version = voice["version"]
    if voice_version is not None:
        kept = None if voice["changed"] else opponent_dir(ctx, VOICE_MODEL)
        shutil.copytree((kept[1] if kept else ctx.input("mai_voice")) / "bundle", bundle / "voice")

    metrics = json.loads((ctx.input("lm_evaluation") / "metrics.json").read_text())
    chain = ctx.lineage()
    models = ancestry(settings, LM_MODEL, str(candidate_version))
    (bundle / "README.md").write_text(_model_card(model, metrics, decisions, chain, voice_version, models))
    files = {
        str(p.relative_to(bundle)): _sha256(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    by_step = {c["step"]: c for c in chain}
    manifest = {
        "model": model,
        "mlflow": {
            "tracking_uri": settings.mlflow_tracking_uri,
            "registered_model": LM_MODEL,
            "version": str(candidate_version),
            "aliases": [CANDIDATE_ALIAS, CHAMPION_ALIAS],
            "voice": {"registered_model": VOICE_MODEL, "version": voice_version},
        },
        "dvc": {
            s: by_step[s]["dvc_hash"]
            for s in ("clean_documents", "bpe_tokenizer", "token_shards", "moe_pretrain", "mai_voice")
        },
        "lineage": chain,
        "model_lineage": models,
        "git_commit": git_commit(settings.root),
        "files": files,
    }
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    problems = validate_submission(bundle)
    if problems:
        raise MaiUserError(f"submission bundle failed its schema check: {problems[0]}")
    return model


def _model_card(
    model: str,
    metrics: dict[str, Any],
    decisions: dict[str, Any],
    chain: list[dict[str, Any]],
    voice: Any,
    models: list[dict[str, Any]],
) -> str:
    heldout = metrics.get("heldout", {})
    lines = [
        f"# {model}",
        "",
        "A Megatron-Core mixture-of-experts language model trained by the MAI Foundry pipeline"
        + (
            f", with its companion voice `{VOICE_MODEL}` v{voice} (ONNX bundle in `voice/`)."
            if voice
            else f"; no `{VOICE_MODEL}` version is champion yet, so no voice is included."
        ),
        "",
        "## Metrics (held-out test split)",
        "",
        "| model | bits per byte | perplexity (per token) |",
        "| --- | --- | --- |",
        *[f"| {name} | {m['bpb']:.4f} | {m['perplexity']:.2f} |" for name, m in heldout.items()],
        "",
        f"Local lm-eval tasks: `{json.dumps(metrics.get('lm_eval', {}), default=str)[:600]}`",
        "",
        "## Gate",
        "",
        *[f"- {m}: {d['outcome']} — {d['reason']}" for m, d in decisions.items()],
        "",
        "## Model lineage",
        "",
        "Each version below was warm started from the one before it (`lm.init_from: champion`).",
        "",
        *[f"- {line}" for line in _model_lines(models)],
        "",
        "## Data lineage",
        "",
        "| step | data version | DVC hash |",
        "| --- | --- | --- |",
        *[f"| {c['step']} | {c['version']} | {c['dvc_hash']} |" for c in chain],
        "",
        "## Intended use and limits",
        "",
        "A research and pipeline-validation model: small, trained on CPython documentation, English only.",
        "It is not instruction-tuned and produces unreliable text; do not use it for decisions or advice.",
        "The voice was trained on synthetic speech from a teacher synthesizer (see the speech dataset card).",
        "",
    ]
    return "\n".join(lines)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def validate_submission(bundle: Path) -> list[str]:
    """Schema problems of a submission bundle, one line each (empty: valid)."""
    problems = [f"missing {name}" for name in REQUIRED if not (bundle / name).is_file()]
    if problems:
        return problems
    try:
        endpoint = json.loads((bundle / "api_endpoint.json").read_text())
        manifest = json.loads((bundle / MANIFEST).read_text())
        questions = _read_jsonl(bundle / "question.jsonl")
    except json.JSONDecodeError as exc:
        return [f"invalid JSON: {exc}"]
    for name, entry in endpoint.items():
        for key in ("model_name", "api_type", "api_base", "recommended_config", "text-arena"):
            if key not in entry:
                problems.append(f"api_endpoint.json[{name}] lacks {key}")
    uids = set()
    for i, q in enumerate(questions):
        missing = {"uid", "category", "prompt"} - set(q)
        if missing:
            problems.append(f"question.jsonl line {i + 1} lacks {sorted(missing)}")
        uids.add(q.get("uid"))
    answer_files = sorted((bundle / "model_answer").glob("*.jsonl"))
    if not answer_files:
        problems.append("model_answer/ holds no <model>.jsonl")
    for path in answer_files:
        for i, row in enumerate(_read_jsonl(path)):
            missing = {"uid", "ans_id", "model", "messages", "tstamp", "metadata"} - set(row)
            if missing:
                problems.append(f"{path.name} line {i + 1} lacks {sorted(missing)}")
                continue
            if row["uid"] not in uids:
                problems.append(f"{path.name} line {i + 1}: uid {row['uid']} is not a question")
            meta = row["metadata"]
            if not {"token_len", "header_count", "list_count", "bold_count"} <= set(meta):
                problems.append(f"{path.name} line {i + 1}: style metadata incomplete")
            roles = [m.get("role") for m in row["messages"]]
            if roles[-1:] != ["assistant"] or "answer" not in row["messages"][-1].get("content", {}):
                problems.append(f"{path.name} line {i + 1}: last message is not an assistant answer")
    for key in ("model", "mlflow", "dvc", "lineage", "git_commit", "files"):
        if key not in manifest:
            problems.append(f"manifest.json lacks {key}")
    for rel, digest in manifest.get("files", {}).items():
        path = bundle / rel
        if not path.is_file():
            problems.append(f"manifest lists {rel}, which is missing")
        elif _sha256(path) != digest:
            problems.append(f"checksum mismatch: {rel}")
    return problems


def find_bundle(path: Path) -> Path:
    if (path / MANIFEST).exists():
        return path
    found = sorted(path.glob(f"*/{MANIFEST}"))
    if not found:
        raise MaiUserError(f"no submission bundle ({MANIFEST}) at {path}")
    return found[-1].parent


def _model_lines(models: list[dict[str, Any]]) -> list[str]:
    """One line per model version: the data it was trained on and the version it started from."""
    lines = []
    for link in models:
        data = ", ".join(f"{k}@{v}" for k, v in sorted(link["data"].items())) or "unrecorded data"
        start = f"warm start from {link['parent']}" if link["parent"] else "from scratch"
        lines.append(f"{link['version']}  {start}, trained on {data}")
    return lines


def format_lineage(bundle: Path) -> str:
    """The model versions the bundle's model descends from (v1 -> v2), then the chain from it back
    to the raw data versions, one step per line."""
    manifest = json.loads((find_bundle(bundle) / MANIFEST).read_text())
    registry = manifest["mlflow"]
    commit = str(manifest.get("git_commit"))[:12]
    lines = [
        f"{manifest['model']}  (MLflow {registry['registered_model']} v{registry['version']}, git {commit})"
    ]
    models = manifest.get("model_lineage") or []  # bundles made before retraining existed have none
    if models:
        lines.append("  models: " + " -> ".join(link["version"] for link in models))
        lines.extend(f"    {line}" for line in _model_lines(models))
    for link in reversed(manifest["lineage"]):
        ups = ", ".join(f"{k}@{v}" for k, v in sorted(link["upstream"].items())) or "sources"
        lines.append(
            f"  <- {link['step']:20s} {link['version']}  dvc {str(link['dvc_hash'])[:12]}  from {ups}"
        )
    return "\n".join(lines)

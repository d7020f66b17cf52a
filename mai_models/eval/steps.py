"""What each evaluation step builds (see mai_models.eval_pipeline for the graph)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mai_models.errors import MaiUserError
from mai_models.lm.launch import REGISTERED_MODEL
from mai_models.speech_pipeline import REGISTERED_VOICE

if TYPE_CHECKING:
    from mai_models.eval_pipeline import EvalPipeline

NGRAM_FILE = "ngram.npz"
DENSE_NAME = "dense-baseline"


def _dump(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _name(model: str, version: Any) -> str:
    return f"{model}-v{version}" if version else model


# ---------------------------------------------------------------------------------------------- hf export
def build_hf_export(pipe: EvalPipeline, out: Path) -> dict[str, Any]:
    from mai_models.export.hf import export_hf

    report = export_hf(pipe.out_dir("moe_pretrain"), out, verify_tokens=64)
    return {k: v for k, v in report.items() if k != "files"}


# ------------------------------------------------------------------------------------------ lm evaluation
def _candidate_lm(pipe: EvalPipeline) -> Any:
    from mai_models.eval.scoring import MegatronScoringModel
    from mai_models.lm.inference import load_pretrained

    version = pipe.candidates()[REGISTERED_MODEL]["version"]
    lm = load_pretrained(pipe.out_dir("moe_pretrain"))
    return lm, MegatronScoringModel(lm, name=_name(REGISTERED_MODEL, version))


def _dense_lm(pipe: EvalPipeline) -> Any:
    from mai_models.eval.scoring import MegatronScoringModel
    from mai_models.lm.inference import load_pretrained

    return MegatronScoringModel(load_pretrained(pipe.out_dir("dense_pretrain")), name=DENSE_NAME)


def build_lm_evaluation(pipe: EvalPipeline, out: Path) -> tuple[dict[str, Any], dict[str, float]]:
    import torch

    from mai_models.eval.lm_metrics import bits_per_byte, generation_samples, heldout_texts
    from mai_models.eval.lm_tasks import build_local_tasks, run_lm_eval
    from mai_models.eval.ngram import train_ngram_on_split

    cfg = pipe.params.evaluation
    clean = pipe.out_dir("clean_documents")
    texts = heldout_texts(clean, "test", limit=cfg.test_docs)
    if not texts:
        raise MaiUserError(f"{clean} has no test documents to evaluate on")
    lm, candidate = _candidate_lm(pipe)
    ngram = train_ngram_on_split(clean, pipe.out_dir("bpe_tokenizer"), order=cfg.ngram_order)
    ngram.name = f"ngram-{cfg.ngram_order}"
    ngram.save(out / NGRAM_FILE)

    dense = _dense_lm(pipe)
    metrics: dict[str, Any] = {"candidate": candidate.name, "baselines": [ngram.name, dense.name]}
    metrics["heldout"] = {m.name: bits_per_byte(m, texts) for m in (candidate, dense, ngram)}

    # Router health on evaluation data: one batch of held-out tokens through the MoE layers.
    ids = [tok for text in texts for tok in [candidate.eod_id, *candidate.encode(text)]][: 8 * lm.max_length]
    rows = max(1, len(ids) // lm.max_length)
    batch = torch.tensor(ids[: rows * lm.max_length]).view(rows, -1)
    _, router = lm.logits_with_router_stats(batch)
    metrics["router"] = router

    task_dir = out / "lm_eval_tasks"
    tasks = build_local_tasks(texts, task_dir, seed=cfg.seed)
    metrics["lm_eval"] = {
        candidate.name: run_lm_eval(
            {"megatron_dir": str(pipe.out_dir("moe_pretrain"))}, task_dir, limit=cfg.lm_eval_limit
        ),
        dense.name: run_lm_eval({"scoring_model": dense}, task_dir, limit=cfg.lm_eval_limit),
        ngram.name: run_lm_eval({"ngram": str(out / NGRAM_FILE)}, task_dir, limit=cfg.lm_eval_limit),
    }
    metrics["lm_eval_tasks"] = tasks
    prompts = [" ".join(t.split()[:24]) for t in texts[:4]]
    samples = generation_samples(candidate, prompts, cfg.generation_tokens)
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    _dump(out / "metrics.json", metrics)
    timings = {"generation_seconds": sum(s["seconds"] for s in samples)}
    heldout = metrics["heldout"]
    stats = {
        "candidate": candidate.name,
        "candidate_bpb": heldout[candidate.name]["bpb"],
        "candidate_perplexity": heldout[candidate.name]["perplexity"],
        "dense_bpb": heldout[dense.name]["bpb"],
        "ngram_bpb": heldout[ngram.name]["bpb"],
        "moe_beats_dense": heldout[candidate.name]["bpb"] < heldout[dense.name]["bpb"],
        "test_docs": len(texts),
        "router": _router_summary(router),
        "lm_eval": {
            m: {t: r.get("acc", r.get("bits_per_byte")) for t, r in res.items()}
            for m, res in metrics["lm_eval"].items()
        },
    }
    return stats, timings


def _router_summary(router: dict[str, Any]) -> dict[str, float]:
    """Per-layer router lists (one value per MoE layer) reduced to their means and worst layer."""
    summary = {}
    for key in ("load_imbalance", "router_entropy", "dropped_token_rate"):
        values = [float(v) for v in router.get(key, [])]
        if values:
            summary[f"mean_{key}"] = round(sum(values) / len(values), 4)
            summary[f"max_{key}"] = round(max(values), 4)
    return summary


# ----------------------------------------------------------------------------------------- tts evaluation
def build_tts_evaluation(pipe: EvalPipeline, out: Path) -> tuple[dict[str, Any], dict[str, float]]:
    import pandas as pd

    from mai_models.eval.tts_metrics import (
        compare_with_teacher,
        evaluate_tts,
        load_references,
        voice_synthesizer,
    )
    from mai_models.speech_pipeline import uses_demo
    from mai_models.tts.asr import Transcriber
    from mai_models.tts.release import heldout_references

    cfg = pipe.params.evaluation
    if uses_demo(pipe.params):
        heldout = pipe.out_dir("speech_demo_dataset") / "heldout"
        if not (heldout / "metadata.csv").exists():
            raise MaiUserError(f"no held-out speech at {heldout}: the TTS evaluation needs reference audio")
        refs = load_references(heldout, limit=cfg.tts_sentences)
    else:
        # Without the demo source, the corpus's own validation recordings (never trained on) are the
        # references, as for the voice's release report.
        found, _ = heldout_references(None, pipe.out_dir("speech_corpus"), cfg.tts_sentences)
        refs = [{**r, "normalized_text": r["text"], "audio_path": r.pop("audio")} for r in found]
        if not refs:
            raise MaiUserError("speech_corpus has no validation clips to evaluate the voice on")
    version = pipe.candidates()[REGISTERED_VOICE]["version"]
    voice = _name(REGISTERED_VOICE, version)
    demo = pipe.params.speech.demo
    from mai_models.tts.teacher import pick_teacher

    teacher = pick_teacher(demo.teacher, demo.flite_voice, demo.espeak_voice)
    transcriber = Transcriber()
    frame, summaries = compare_with_teacher(
        voice_synthesizer(pipe.out_dir("mai_voice") / "bundle", pipe.params.tts.threads),
        refs,
        transcriber,
        name=voice,
        teacher=teacher,
    )
    teacher_name = next(name for name in summaries if name != voice)
    champion = opponent_dir(pipe, REGISTERED_VOICE, "mai_voice")
    if champion:
        # The champion voice speaks the same sentences, so the speech arena can compare it.
        champ_frame, summaries[champion[0]] = evaluate_tts(
            voice_synthesizer(champion[1] / "bundle", pipe.params.tts.threads), refs, transcriber, champion[0]
        )
        frame = pd.concat([frame, champ_frame], ignore_index=True)
    # Timings stay out of the versioned table (they differ per run); the summary and MLflow keep them.
    timing = [c for c in frame.columns if c.endswith("_time_s") or c in ("synth_seconds", "rtf")]
    frame.drop(columns=timing).to_parquet(out / "per_utterance.parquet", index=False)
    _dump(out / "summary.json", {"candidate": voice, "teacher": teacher_name, "systems": summaries})
    stats = {
        name: {
            k: round(v, 4)
            for k, v in s.items()
            if k in ("wer", "cer", "mean_mcd_db", "mean_f0_rmse_hz", "mean_dnsmos_ovrl")
        }
        for name, s in summaries.items()
    }
    timings = {f"{name}_rtf": s["rtf"] for name, s in summaries.items()}
    return {"candidate": voice, "utterances": len(refs), "systems": stats}, timings


# ---------------------------------------------------------------------------------------------- the arena
def opponent_dir(pipe: EvalPipeline, model: str, step: str) -> tuple[str, Path] | None:
    """Name and output directory of the champion the candidate faces (None: no champion, or the
    candidate itself). The work tree holds only the newest training output, so an older champion is
    restored from the DVC cache by the hash recorded on its registry version."""
    from mai_models.steps import current_version
    from mai_models.tracking.dvc import restore_output

    opponent = pipe.opponent(model)
    if opponent is None or str(opponent["version"]) == str(pipe.candidates()[model]["version"]):
        return None
    name = _name(model, opponent["version"])
    tags = opponent["tags"]
    if tags.get("mai.data_version") and tags["mai.data_version"] == current_version(pipe.out_dir(step)):
        return name, pipe.out_dir(step)
    restored = pipe.settings.home / "champions" / name
    if current_version(restored) != tags.get("mai.data_version"):
        if "mai.dvc_hash" not in tags:
            raise MaiUserError(f"champion {name} has no mai.dvc_hash tag: its weights cannot be restored")
        restore_output(pipe.settings, tags["mai.dvc_hash"], restored)
    return name, restored


def opponent_name(pipe: EvalPipeline, model: str) -> str | None:
    opponent = pipe.opponent(model)
    return _name(model, opponent["version"]) if opponent else None


def build_arena(pipe: EvalPipeline, out: Path) -> dict[str, Any]:
    import pandas as pd

    from mai_models.eval.arena import pinned_prompts, speech_battles, text_battles, write_arena
    from mai_models.eval.battles import battles_frame
    from mai_models.eval.gate import decide_promotion
    from mai_models.eval.lm_metrics import heldout_texts
    from mai_models.eval.ngram import NGramLM
    from mai_models.eval.ratings import leaderboard
    from mai_models.eval.scoring import MegatronScoringModel
    from mai_models.lm.inference import load_pretrained

    cfg = pipe.params.evaluation
    _, candidate = _candidate_lm(pipe)
    ngram = NGramLM.load(pipe.out_dir("lm_evaluation") / NGRAM_FILE)
    contestants = {candidate.name: candidate, ngram.name: ngram, DENSE_NAME: _dense_lm(pipe)}
    champion = opponent_dir(pipe, REGISTERED_MODEL, "moe_pretrain")
    if champion:
        contestants[champion[0]] = MegatronScoringModel(load_pretrained(champion[1]), name=champion[0])
    prompts = pinned_prompts(
        heldout_texts(pipe.out_dir("clean_documents"), "test"), cfg.arena_prompts, cfg.seed
    )
    battles = text_battles(contestants, prompts, _judge(cfg), cfg.seed)

    rating = {"rounds": cfg.bootstrap_rounds, "seed": cfg.seed, "prior_ties": cfg.rating_prior_ties}
    board = leaderboard(battles_frame(battles), **rating)
    write_arena(out / "text", battles, board, "text arena")
    (out / "text" / "questions.json").write_text(json.dumps(prompts, indent=1) + "\n")
    text_floor = {"ngram": ngram.name, "dense": DENSE_NAME, "none": None}[cfg.text_floor]
    lm_decision = decide_promotion(board, candidate.name, opponent_name(pipe, REGISTERED_MODEL), text_floor)

    per_utt = pd.read_parquet(pipe.out_dir("tts_evaluation") / "per_utterance.parquet")
    scores = {
        system: {
            r["utt_id"]: {"wer": float(r["wer"]), "mcd": float(r.get("mcd_db", math.nan))}
            for _, r in rows.iterrows()
        }
        for system, rows in per_utt.groupby("system")
    }
    summary = json.loads((pipe.out_dir("tts_evaluation") / "summary.json").read_text())
    s_battles = speech_battles(scores, cfg.seed)
    s_board = leaderboard(battles_frame(s_battles), **rating)
    write_arena(out / "speech", s_battles, s_board, "speech arena")
    speech_floor = summary.get("teacher") if cfg.speech_floor == "teacher" else None
    voice_decision = decide_promotion(
        s_board, summary["candidate"], opponent_name(pipe, REGISTERED_VOICE), speech_floor
    )

    decisions = {
        REGISTERED_MODEL: _decision(lm_decision, pipe.candidates()[REGISTERED_MODEL]["version"]),
        REGISTERED_VOICE: _decision(voice_decision, pipe.candidates()[REGISTERED_VOICE]["version"]),
    }
    _dump(out / "decision.json", decisions)
    return {
        "text_battles": len(battles),
        "speech_battles": len(s_battles),
        "text_leaderboard": _board(board),
        "speech_leaderboard": _board(s_board),
        "decisions": {m: {"outcome": d["outcome"], "reason": d["reason"]} for m, d in decisions.items()},
    }


def _judge(cfg: Any) -> Any:
    from mai_models.eval.judges import OpenAIJudge, ReferenceLikelihoodJudge

    if cfg.judge == "reference-likelihood":
        return ReferenceLikelihoodJudge(cfg.tie_tolerance)
    if not (cfg.judge_base_url and cfg.judge_model):
        raise MaiUserError(
            "evaluation.judge=openai needs evaluation.judge_base_url and evaluation.judge_model"
        )
    key = os.environ.get("MAI_JUDGE_API_KEY")
    return OpenAIJudge(cfg.judge_base_url, cfg.judge_model, key, max_new_tokens=cfg.generation_tokens)


def _board(board: Any) -> list[dict[str, Any]]:
    """Leaderboard rows as strict JSON: an unbounded side is the string "inf" / "-inf"."""

    def plain(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 2) if math.isfinite(value) else str(value)
        return value.item() if hasattr(value, "item") else value

    return [
        {
            k: plain(v)
            for k, v in row.items()
            if k in ("model", "rating", "lower", "upper", "separated", "battles", "win_rate")
        }
        for row in board.to_dict(orient="records")
    ]


def _decision(decision: Any, version: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {**asdict(decision), "promote": decision.promote, "version": version}


def record_decisions(pipe: EvalPipeline, decisions: dict[str, Any]) -> dict[str, Any]:
    """Every decision and its reason on the candidate's version; the alias is the champion step's."""
    import mlflow

    client = mlflow.MlflowClient(pipe.settings.mlflow_tracking_uri)
    recorded = {}
    for model, decision in decisions.items():
        version = decision.get("version")
        if not version:
            continue
        client.set_model_version_tag(model, str(version), "mai.gate.decision", decision["outcome"])
        client.set_model_version_tag(model, str(version), "mai.gate.reason", decision["reason"])
        recorded[model] = {"version": version, "outcome": decision["outcome"]}
    return {"gate": recorded}


# ------------------------------------------------------------------------------------------- the champion
def build_champion(pipe: EvalPipeline, out: Path) -> dict[str, Any]:
    """Who holds ``champion`` once the gate's decision is applied (the alias moves after the commit)."""
    from mai_models.eval_pipeline import CHAMPION_FILE, DECISION_FILE

    decisions = json.loads((pipe.out_dir("arena") / DECISION_FILE).read_text())
    champions = {}
    for model, decision in decisions.items():
        if not decision.get("promote") and decision["outcome"] not in ("keep", "below_floor"):
            raise MaiUserError(f"{model}: the gate could not decide ({decision['reason']})")
        opponent = pipe.opponent(model)
        if decision["promote"]:
            holder = str(decision["version"])
        else:
            holder = str(opponent["version"]) if opponent else None
        champions[model] = {
            "version": holder,
            "changed": bool(decision["promote"]),
            "previous": str(opponent["version"]) if opponent else None,
            "outcome": decision["outcome"],
            "reason": decision["reason"],
        }
    _dump(out / CHAMPION_FILE, champions)
    return {m: {"version": c["version"], "changed": c["changed"]} for m, c in champions.items()}


def apply_champions(pipe: EvalPipeline, champions: dict[str, Any]) -> dict[str, Any]:
    """Move the alias to each promoted version, remembering the champion it replaced."""
    import mlflow

    from mai_models.eval_pipeline import CHAMPION_ALIAS, PREVIOUS_CHAMPION_TAG

    client = mlflow.MlflowClient(pipe.settings.mlflow_tracking_uri)
    for model, champion in champions.items():
        if champion["changed"]:
            version = champion["version"]
            client.set_model_version_tag(
                model, version, PREVIOUS_CHAMPION_TAG, champion["previous"] or "none"
            )
            client.set_registered_model_alias(model, CHAMPION_ALIAS, version)
    return {"champions": {m: c["version"] for m, c in champions.items()}}


def attach_to_model_version(pipe: EvalPipeline, model: str, metrics_file: Path) -> dict[str, Any]:
    """Evaluation results on the candidate version's run, so the registry page shows them."""
    import mlflow

    version = pipe.candidates()[model]["version"]
    if not version:
        return {}
    client = mlflow.MlflowClient(pipe.settings.mlflow_tracking_uri)
    run_id = client.get_model_version(model, str(version)).run_id
    data = json.loads(metrics_file.read_text())
    flat = _numbers(data, "eval")
    for key, value in flat.items():
        client.log_metric(run_id, key, value)
    client.log_artifact(run_id, str(metrics_file), "evaluation")
    client.set_model_version_tag(model, str(version), "mai.evaluated", "true")
    return {"evaluated_version": version}


def _numbers(data: Any, prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_numbers(value, f"{prefix}/{key}"))
    elif isinstance(data, int | float) and not isinstance(data, bool) and math.isfinite(data):
        out[prefix.replace(" ", "_").replace(",", "_")[:250]] = float(data)
    return out


# -------------------------------------------------------------------------------------- arena submission
def build_arena_submission(pipe: EvalPipeline, out: Path) -> dict[str, Any]:
    from mai_models.export.submission import build_submission

    return build_submission(pipe, out)

"""Evaluation, the local arena and the arena submission as versioned steps.

moe_pretrain -> hf_export ------------------------------------------+
moe_pretrain, clean_documents, bpe_tokenizer -> lm_evaluation --+   |
mai_voice, speech_demo_dataset -> tts_evaluation ---------------+-> arena -> arena_submission
The arena's decision (promote the candidate to ``champion`` or keep the champion) is recorded in its
output and applied to the MLflow registry after the step is committed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mai_models.lm.launch import REGISTERED_MODEL
from mai_models.pipeline import Step, StepPipeline
from mai_models.speech_pipeline import REGISTERED_VOICE
from mai_models.tracking.state import read_state

CHAMPION_ALIAS = "champion"
DECISION_FILE = "decision.json"

STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step(
            "hf_export",
            ("moe_pretrain",),
            ("export", "lm/inference.py", "steps.py"),
            "The Megatron MoE checkpoint as a Hugging Face checkpoint, logits checked against ours.",
        ),
        Step(
            "lm_evaluation",
            ("moe_pretrain", "dense_pretrain", "clean_documents", "bpe_tokenizer"),
            ("eval", "lm/inference.py", "steps.py"),
            "Held-out bits per byte, local lm-eval tasks, router diagnostics, samples; n-gram baseline.",
        ),
        Step(
            "tts_evaluation",
            ("mai_voice", "speech_demo_dataset"),
            ("eval", "tts/voice.py", "tts/engine.py", "steps.py"),
            "RTF, MCD-DTW, F0 RMSE, WER/CER and DNSMOS of the voice and of its teacher, per utterance.",
        ),
        Step(
            "arena",
            ("lm_evaluation", "tts_evaluation"),
            ("eval", "steps.py"),
            "Battles on pinned held-out prompts, Bradley-Terry ratings with bootstrap CIs, the gate.",
        ),
        Step(
            "arena_submission",
            ("arena", "hf_export", "lm_evaluation", "mai_voice"),
            ("export", "eval", "steps.py"),
            "api_endpoint.json, questions, Arena-Hard answers, battles, model card, manifest.",
        ),
    )
}


def registered_version(settings: Any, model: str, alias: str) -> dict[str, Any] | None:
    """The version behind ``alias`` with its tags, or None."""
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    try:
        version = client.get_model_version_by_alias(model, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return {"version": str(version.version), "run_id": version.run_id, "tags": dict(version.tags)}


class EvalPipeline(StepPipeline):
    steps = STEPS

    def config_of(self, name: str) -> dict[str, Any]:
        return {"evaluation": self.params.evaluation.model_dump(mode="json")} if name != "hf_export" else {}

    def inputs(self, name: str) -> Any:
        if name != "arena":
            return None
        # Who holds the champion alias decides who the candidate must beat.
        return {
            model: (registered_version(self.settings, model, CHAMPION_ALIAS) or {}).get("version")
            for model in (REGISTERED_MODEL, REGISTERED_VOICE)
        }

    def builder(self, name: str, progress: bool) -> Callable[[Path], Any]:
        from mai_models.eval import steps as eval_steps

        return lambda out: getattr(eval_steps, f"build_{name}")(self, out)

    def artifacts(self, name: str) -> list[Path]:
        out = self.out_dir(name)
        files = {
            "arena": [out / "text", out / "speech", out / DECISION_FILE],
            "lm_evaluation": [out / "metrics.json", out / "samples.jsonl"],
            "tts_evaluation": [out / "summary.json", out / "per_utterance.parquet"],
        }.get(name, [])
        return [f for f in files if f.exists()]

    def candidates(self) -> dict[str, dict[str, Any]]:
        """The registered candidate versions this evaluation is about (from the training steps)."""
        lm = read_state(self.settings, "moe_pretrain")
        voice = read_state(self.settings, "mai_voice").get("extra") or {}
        return {
            REGISTERED_MODEL: {"version": lm.get("model_version"), "dir": self.out_dir("moe_pretrain")},
            REGISTERED_VOICE: {"version": voice.get("model_version"), "dir": self.out_dir("mai_voice")},
        }

    def after_commit(self, name: str, run_id: str | None, dvc_hash: str | None) -> dict[str, Any]:
        if name == "lm_evaluation":
            from mai_models.eval.steps import attach_to_model_version

            return attach_to_model_version(self, REGISTERED_MODEL, self.out_dir(name) / "metrics.json")
        if name == "tts_evaluation":
            from mai_models.eval.steps import attach_to_model_version

            return attach_to_model_version(self, REGISTERED_VOICE, self.out_dir(name) / "summary.json")
        if name == "arena":
            from mai_models.eval.steps import apply_decisions

            return apply_decisions(self, json.loads((self.out_dir(name) / DECISION_FILE).read_text()))
        return {}

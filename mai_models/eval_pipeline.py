"""Evaluation, the local arena and the arena submission as versioned steps.

moe_pretrain -> hf_export ------------------------------------------+
moe_pretrain, clean_documents, bpe_tokenizer -> lm_evaluation --+   |
mai_voice, speech_demo_dataset -> tts_evaluation ---------------+-> arena -> champion -> arena_submission

The arena decides (promote, keep, below the floor) and records the decision; its blocking
``champion_gate`` check runs next, and only then does the ``champion`` step move the MLflow alias. The
submission bundle is made for whoever holds ``champion`` after that.
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
CHAMPION_FILE = "champion.json"
# Set on a version when the gate promotes it: the champion it replaced ("none" for the first).
PREVIOUS_CHAMPION_TAG = "mai.gate.previous_champion"
# The evaluation fields each step reads: a gate setting must not re-run the model evaluations.
_CONFIG_FIELDS = {
    "lm_evaluation": {"test_docs", "lm_eval_limit", "ngram_order", "generation_tokens", "seed"},
    "tts_evaluation": {"tts_sentences"},
    "arena_submission": {"generation_tokens"},
}

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
            "champion",
            ("arena",),
            ("eval", "steps.py"),
            "Applies the gate's decision to the registry: who holds the champion alias, and since when.",
        ),
        Step(
            "arena_submission",
            ("champion", "arena", "hf_export", "lm_evaluation", "mai_voice"),
            ("export", "eval", "steps.py"),
            "The champion's bundle: api_endpoint.json, questions, Arena-Hard answers, battles, manifest.",
        ),
    )
}


def eval_upstream(params: Any, name: str) -> tuple[str, ...]:
    """The TTS evaluation's references are the demo's held-out set only while demo is a speech source;
    otherwise the corpus's validation recordings."""
    from mai_models.speech_pipeline import uses_demo

    upstream = STEPS[name].upstream
    if name == "tts_evaluation" and not uses_demo(params):
        return tuple("speech_corpus" if up == "speech_demo_dataset" else up for up in upstream)
    return upstream


def registered_version(
    settings: Any, model: str, alias: str | None = None, number: str | None = None
) -> dict[str, Any] | None:
    """The version behind ``alias`` (or with that ``number``) with its tags, or None."""
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    try:
        if number is not None:
            version = client.get_model_version(model, str(number))
        else:
            version = client.get_model_version_by_alias(model, str(alias))
    except mlflow.exceptions.MlflowException:
        return None
    return {"version": str(version.version), "run_id": version.run_id, "tags": dict(version.tags)}


class EvalPipeline(StepPipeline):
    steps = STEPS

    def __init__(self, settings: Any, params: Any) -> None:
        super().__init__(settings, params)
        self._opponents: dict[str, dict[str, Any] | None] = {}

    def upstream(self, name: str) -> tuple[str, ...]:
        return eval_upstream(self.params, name)

    def config_of(self, name: str) -> dict[str, Any]:
        if name in ("hf_export", "champion"):
            return {}
        fields = _CONFIG_FIELDS.get(name)
        return {"evaluation": self.params.evaluation.model_dump(mode="json", include=fields)}

    def inputs(self, name: str) -> Any:
        # Who the candidate must beat is part of the version of the steps that compare against it.
        models = {"arena": (REGISTERED_MODEL, REGISTERED_VOICE), "tts_evaluation": (REGISTERED_VOICE,)}
        if name not in models:
            return None
        return {model: (self.opponent(model) or {}).get("version") for model in models[name]}

    def opponent(self, model: str) -> dict[str, Any] | None:
        """The champion this evaluation's candidate faces: the alias holder, except when the gate already
        promoted this very candidate; then the champion it replaced, so that re-running the chain after a
        promotion replays the same arena instead of a new one. Looked up once per pipeline: applying
        the gate moves the alias only to the candidate, which then names this same opponent."""
        if model not in self._opponents:
            self._opponents[model] = self._find_opponent(model)
        return self._opponents[model]

    def _find_opponent(self, model: str) -> dict[str, Any] | None:
        holder = registered_version(self.settings, model, CHAMPION_ALIAS)
        candidate = self.candidates()[model]["version"]
        if holder is None or str(holder["version"]) != str(candidate):
            return holder
        previous = holder["tags"].get(PREVIOUS_CHAMPION_TAG)
        if previous is None:
            return holder  # set by hand, not by the gate: a re-evaluation of the champion
        if previous == "none":
            return None
        return registered_version(self.settings, model, number=previous)

    def builder(self, name: str, progress: bool) -> Callable[[Path], Any]:
        from mai_models.eval import steps as eval_steps

        return lambda out: getattr(eval_steps, f"build_{name}")(self, out)

    def artifacts(self, name: str) -> list[Path]:
        out = self.out_dir(name)
        files = {
            "arena": [out / "text", out / "speech", out / DECISION_FILE],
            "champion": [out / CHAMPION_FILE],
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
            from mai_models.eval.steps import record_decisions

            return record_decisions(self, json.loads((self.out_dir(name) / DECISION_FILE).read_text()))
        if name == "champion":
            from mai_models.eval.steps import apply_champions

            return apply_champions(self, json.loads((self.out_dir(name) / CHAMPION_FILE).read_text()))
        return {}

"""The one figure that says how a step went, read from its stored manifest (and state): what the demo's
progress lines, its closing table and ``mai status`` show next to the step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mai_models.executor.versioning import read_manifest
from mai_models.settings import Settings
from mai_models.tracking.state import read_state

Stats = dict[str, Any]


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "?"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _sci(value: Any) -> str:
    return f"{value:.1e}" if isinstance(value, int | float) else "?"


def _training(stats: Stats) -> str:
    return f"valid bpb {_num(stats.get('final_valid_bpb'))}, {stats.get('steps', '?')} steps"


def _lm_evaluation(stats: Stats) -> str:
    return (
        f"bpb MoE {_num(stats.get('candidate_bpb'))} / dense {_num(stats.get('dense_bpb'))}"
        f" / 3-gram {_num(stats.get('ngram_bpb'))}"
    )


def _tts_evaluation(stats: Stats) -> str:
    systems = stats.get("systems") or {}
    ours = systems.get(stats.get("candidate"), {})
    teacher = next((s for name, s in systems.items() if name.startswith("teacher")), {})
    return f"WER {_num(ours.get('wer'), 2)} (teacher {_num(teacher.get('wer'), 2)})"


def _arena(stats: Stats) -> str:
    decisions = stats.get("decisions") or {}
    return ", ".join(f"{model} {d.get('outcome')}" for model, d in decisions.items()) or "no decisions"


def _champion(stats: Stats) -> str:
    held = [
        f"{model} v{c['version']}" for model, c in stats.items() if isinstance(c, dict) and c.get("version")
    ]
    return "champion " + ", ".join(held) if held else "no champion yet"


def _tts_training(stats: Stats) -> str:
    return f"mel L1 {_num(stats.get('final_mel_l1'))}, {stats.get('steps', '?')} steps"


FIGURES: dict[str, Callable[[Stats], str]] = {
    "raw_documents": lambda s: f"{s.get('docs')} docs, {s.get('quarantined', 0)} quarantined",
    "clean_documents": lambda s: f"{s.get('kept_docs')} kept, {s.get('rejected')} rejected",
    "bpe_tokenizer": lambda s: f"vocab {s.get('vocab_size')}",
    "token_shards": lambda s: f"{_count((s.get('totals') or {}).get('tokens'))} tokens",
    "moe_pretrain": _training,
    "dense_pretrain": _training,
    "speech_demo_dataset": lambda s: f"{s.get('sentences')} sentences by {s.get('teacher')}",
    "speech_corpus": lambda s: f"{s.get('utterances')} utterances, {_num(s.get('minutes'), 1)} min",
    "speech_features": lambda s: f"{s.get('utterances')} utterances, {s.get('frames')} frames",
    "tts_acoustic": _tts_training,
    "tts_vocoder": _tts_training,
    "mai_voice": lambda s: f"WER {_num(s.get('wer'), 2)} (teacher {_num(s.get('teacher_wer'), 2)})",
    "hf_export": lambda s: f"{s.get('architecture')}, max |logit diff| {_sci(s.get('max_abs_logits_diff'))}",
    "lm_evaluation": _lm_evaluation,
    "tts_evaluation": _tts_evaluation,
    "arena": _arena,
    "champion": _champion,
    "arena_submission": lambda s: f"bundle {s.get('bundle')}" if s.get("bundle") else str(s.get("status")),
}


def main_figure(settings: Settings, name: str) -> str:
    """The step's figure from its stored output; empty when it has none (or is not materialised)."""
    manifest = read_manifest(settings.data_dir / name)
    if manifest is None:
        return ""
    stats = manifest.get("stats") or {}
    extra = read_state(settings, name).get("extra") or {}
    figure = FIGURES.get(name)
    text = figure(stats) if figure else ""
    if extra.get("model_version"):
        text += f"; registered {extra.get('registered_model')} v{extra['model_version']}"
    return text

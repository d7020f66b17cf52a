"""Pluggable arena judges. The default needs no network: the model that gives the human-written
reference continuation the higher per-byte likelihood wins. Any OpenAI-compatible endpoint can judge
instead (Arena-Hard verdict labels, two games with positions swapped). Speech is judged by ASR
accuracy, then mel-cepstral distortion."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from mai_models.eval.scoring import ScoringModel

VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
_VERDICT = re.compile(r"\[\[(A>>B|A>B|A=B|B>A|B>>A)\]\]")


@dataclass(frozen=True)
class Verdict:
    winner: str  # FastChat: model_a | model_b | tie | tie (bothbad)
    detail: dict[str, Any]


def reference_bits_per_byte(model: ScoringModel, prompt: str, reference: str) -> float:
    """Bits per byte the model spends on ``reference`` when it follows ``prompt``."""
    context = [model.eod_id, *model.encode(prompt)]
    ids = context + model.encode(" " + reference.lstrip())
    logprobs = model.token_logprobs(ids)[len(context) - 1 :]
    return -float(logprobs.sum()) / (len(reference.encode()) * math.log(2))


class ReferenceLikelihoodJudge:
    """Lower bits per byte on the reference wins; within ``tolerance`` bits per byte is a tie."""

    name = "reference-likelihood"

    def __init__(self, tolerance: float = 0.01) -> None:
        self.tolerance = tolerance

    def judge(self, prompt: str, reference: str, a: ScoringModel, b: ScoringModel) -> Verdict:
        bpb_a = reference_bits_per_byte(a, prompt, reference)
        bpb_b = reference_bits_per_byte(b, prompt, reference)
        better = "model_a" if bpb_a < bpb_b else "model_b"
        winner = "tie" if abs(bpb_a - bpb_b) <= self.tolerance else better
        return Verdict(winner, {"bpb_a": round(bpb_a, 5), "bpb_b": round(bpb_b, 5)})


JUDGE_PROMPT = (
    "Please act as an impartial judge and compare two assistant answers to the user prompt below, "
    "using the reference answer as a guide. Output your final verdict as exactly one label: "
    "[[A>>B]] (A is much better), [[A>B]], [[A=B]], [[B>A]] or [[B>>A]] (B is much better).\n\n"
    "<|User Prompt|>\n{prompt}\n\n<|Reference Answer|>\n{reference}\n\n"
    "<|The Start of Assistant A's Answer|>\n{answer_a}\n<|The End of Assistant A's Answer|>\n\n"
    "<|The Start of Assistant B's Answer|>\n{answer_b}\n<|The End of Assistant B's Answer|>"
)


def parse_verdict(text: str) -> str | None:
    found = _VERDICT.findall(text or "")
    return found[-1] if found else None


def combine_games(first: str | None, second_swapped: str | None) -> str:
    """Two games, the second with positions swapped: map the second back, then sum the scores
    (strong verdicts count 3, as in Arena-Hard). An unparseable game counts as a tie."""
    score = {"A>>B": 3, "A>B": 1, "A=B": 0, "B>A": -1, "B>>A": -3}
    total = score.get(first or "A=B", 0) - score.get(second_swapped or "A=B", 0)
    return "model_a" if total > 0 else "model_b" if total < 0 else "tie"


class OpenAIJudge:
    """Any OpenAI-compatible chat endpoint as the judge (e.g. a local vLLM or a hosted model)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_new_tokens: int = 128,
    ) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or "unused")
        self.model = model
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.name = f"openai:{model}"
        self._answers: dict[tuple[str, str], str] = {}

    def answer_all(self, contestants: Any, prompts: list[str]) -> None:
        """Every contestant answers every prompt up front, one batch per contestant, instead of one
        generation per battle."""
        for contestant in contestants:
            texts = contestant.generate_batch(prompts, max_new_tokens=self.max_new_tokens)
            self._answers.update({(contestant.name, p): t for p, t in zip(prompts, texts, strict=True)})

    def _answer(self, contestant: Any, prompt: str) -> str:
        # Each contestant answers a prompt once, however many battles it fights on it.
        key = (contestant.name, prompt)
        if key not in self._answers:
            self._answers[key] = contestant.generate(prompt, max_new_tokens=self.max_new_tokens)
        return self._answers[key]

    def judge(self, prompt: str, reference: str, a: Any, b: Any) -> Verdict:
        """Contestants answer (greedy), then two judged games with positions swapped."""
        verdict = self.judge_answers(prompt, reference, self._answer(a, prompt), self._answer(b, prompt))
        return verdict

    def _game(self, prompt: str, reference: str, answer_a: str, answer_b: str) -> str | None:
        reply = self.client.chat.completions.create(
            model=self.model,
            temperature=self.temperature,
            messages=[
                {
                    "role": "user",
                    "content": JUDGE_PROMPT.format(
                        prompt=prompt, reference=reference, answer_a=answer_a, answer_b=answer_b
                    ),
                }
            ],
        )
        return parse_verdict(reply.choices[0].message.content or "")

    def judge_answers(self, prompt: str, reference: str, answer_a: str, answer_b: str) -> Verdict:
        first = self._game(prompt, reference, answer_a, answer_b)
        second = self._game(prompt, reference, answer_b, answer_a)
        return Verdict(combine_games(first, second), {"game_1": first, "game_2_swapped": second})


def speech_verdict(a: dict[str, float], b: dict[str, float], wer_tolerance: float = 1e-9) -> Verdict:
    """Per sentence: lower WER wins; equal WER falls back to lower MCD."""
    if abs(a["wer"] - b["wer"]) > wer_tolerance:
        winner = "model_a" if a["wer"] < b["wer"] else "model_b"
    elif (
        math.isfinite(a.get("mcd", math.nan))
        and math.isfinite(b.get("mcd", math.nan))
        and a["mcd"] != b["mcd"]
    ):
        winner = "model_a" if a["mcd"] < b["mcd"] else "model_b"
    else:
        winner = "tie"
    return Verdict(
        winner, {"wer_a": a["wer"], "wer_b": b["wer"], "mcd_a": a.get("mcd"), "mcd_b": b.get("mcd")}
    )

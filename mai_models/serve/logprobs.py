"""Log-probabilities in OpenAI's two response shapes (as vLLM serves them):

- completions (legacy): ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``, parallel lists;
  ``top_logprobs`` holds one ``{token text: logprob}`` per token with the ``logprobs`` most likely
  tokens and, as at vLLM, the chosen one (tokens with the same text share the more likely one's key).
  An echoed prompt's first token has ``None`` for both, as it has no context to be predicted from.
  ``text_offset`` counts characters into the returned text.
- chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}``.

The log-probabilities are the model's own distribution (before temperature and nucleus), vLLM's
default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mai_models.serve.backends import Tokenizer
from mai_models.serve.batcher import TokenScore


class CompletionLogprobs:
    """Formats successive runs of scored tokens (one per streamed chunk), keeping the text offset."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.offset = 0

    def format(self, scores: Sequence[TokenScore]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for score in scores:
            text = self.tokenizer.token_text(score.token)
            out["tokens"].append(text)
            out["token_logprobs"].append(score.logprob)
            out["text_offset"].append(self.offset)
            self.offset += len(text)
            if score.logprob is None:
                out["top_logprobs"].append(None)
                continue
            # Tokens can share a text (byte pieces of one character all read U+FFFD): the most likely
            # one keeps the key, the chosen token's own entry only fills a key still free.
            top: dict[str, float] = {}
            for token, logprob in (*score.top, (score.token, score.logprob)):
                top.setdefault(self.tokenizer.token_text(token), logprob)
            out["top_logprobs"].append(top)
        return out


def chat_logprobs(scores: Sequence[TokenScore], tokenizer: Tokenizer) -> dict[str, Any]:
    def entry(token: int, logprob: float | None) -> dict[str, Any]:
        text = tokenizer.token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = [
        {**entry(s.token, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top]} for s in scores
    ]
    return {"content": content, "refusal": None}

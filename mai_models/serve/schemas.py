"""The request bodies of the OpenAI endpoints, as pydantic models (the routes check what pydantic
cannot: unsupported options, ``n``, stop sequences)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from mai_models.serve.errors import ApiError
from mai_models.tokenizer.bpe import EOD_TOKEN, IM_END_TOKEN, IM_START_TOKEN

MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat (completions allow 5; vLLM 20 for both)
_CONTROL_TOKENS = (IM_START_TOKEN, IM_END_TOKEN, EOD_TOKEN)


def _is_off(value: Any) -> bool:
    """Whether an unsupported OpenAI option is set to its do-nothing value, which clients often send."""
    return value in (None, False, 0, "", [], {}, "none", "auto", "audio", ["text"], {"type": "text"})


class OpenAIRequest(BaseModel):
    """Unknown fields are an error, as with OpenAI; OpenAI options this server does not implement are an
    error only when set to something other than their off value; bookkeeping fields are ignored."""

    model_config = ConfigDict(extra="allow")
    IGNORED: ClassVar[frozenset[str]] = frozenset(
        {
            "user",
            "metadata",
            "store",
            "service_tier",
            "safety_identifier",
            "prompt_cache_key",
            "prompt_cache_retention",
            "prompt_cache_options",
        }
    )
    UNSUPPORTED: ClassVar[frozenset[str]] = frozenset()

    model: StrictStr

    def check_extras(self) -> None:
        for key, value in (self.model_extra or {}).items():
            if key in self.IGNORED or (key in self.UNSUPPORTED and _is_off(value)):
                continue
            if key in self.UNSUPPORTED:
                raise ApiError(
                    400, f"'{key}' is not supported by this server.", param=key, code="unsupported_parameter"
                )
            raise ApiError(
                400, f"Unrecognized request argument supplied: {key}", param=key, code="unknown_parameter"
            )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class GenerationRequest(OpenAIRequest):
    UNSUPPORTED: ClassVar[frozenset[str]] = frozenset({"logit_bias", "presence_penalty", "frequency_penalty"})

    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    n: StrictInt | None = Field(None, ge=1)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    ignore_eos: StrictBool = Field(False, description="vLLM extension: generate exactly max_tokens")

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
            raise ApiError(400, f"'stop' takes up to {MAX_STOP_SEQUENCES} non-empty strings.", param="stop")
        return tuple(stops)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # "name" and the like change nothing here
    role: StrictStr
    content: StrictStr | list[ContentPart] | None = None


class ChatRequest(GenerationRequest):
    UNSUPPORTED: ClassVar[frozenset[str]] = GenerationRequest.UNSUPPORTED | {
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "response_format",
        "audio",
        "modalities",
        "prediction",
        "reasoning_effort",
        "verbosity",
        "web_search_options",
        "moderation",
    }

    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def top(self) -> int | None:
        """Alternatives per token (None: no log-probabilities); top_logprobs needs logprobs, as at OpenAI."""
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(
                400, "top_logprobs requires logprobs to be true.", param="top_logprobs", code="invalid_value"
            )
        return (self.top_logprobs or 0) if self.logprobs else None

    def turns(self) -> list[dict[str, str]]:
        """The messages as ``{"role", "content"}`` turns for the chat template."""
        if not self.messages:
            raise ApiError(
                400, "'messages' must contain at least one message.", param="messages", code="empty_array"
            )
        out = []
        for i, message in enumerate(self.messages):
            role = "system" if message.role == "developer" else message.role
            if role not in ("system", "user", "assistant"):
                raise ApiError(
                    400,
                    f"Role '{message.role}' is not supported: use system, developer, user or assistant.",
                    param=f"messages[{i}].role",
                )
            content = message.content
            if content is None:
                raise ApiError(400, "Message content is required.", param=f"messages[{i}].content")
            if isinstance(content, list):
                if any(part.type != "text" or part.text is None for part in content):
                    raise ApiError(
                        400, "Only text content parts are supported.", param=f"messages[{i}].content"
                    )
                content = "\n".join(part.text or "" for part in content)
            # A control token in a message would let the text forge turns of the conversation.
            for token in _CONTROL_TOKENS:
                if token in content:
                    raise ApiError(
                        400,
                        f"Message content must not contain the control token {token}.",
                        param=f"messages[{i}].content",
                    )
            out.append({"role": role, "content": content})
        return out


class CompletionRequest(GenerationRequest):
    UNSUPPORTED: ClassVar[frozenset[str]] = GenerationRequest.UNSUPPORTED | {"suffix"}

    prompt: StrictStr | list[StrictInt] | list[StrictStr]
    best_of: StrictInt | None = Field(None, ge=1)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: StrictBool = False


class SpeechRequest(OpenAIRequest):
    UNSUPPORTED: ClassVar[frozenset[str]] = frozenset({"instructions", "stream_format"})

    input: StrictStr
    voice: StrictStr
    response_format: StrictStr = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)

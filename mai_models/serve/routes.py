"""The OpenAI wire format over the backends: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions`` (both with SSE streaming) and ``/v1/audio/speech``.

Every client mistake is a 4xx with OpenAI's error body (``errors``); a 500 means a fault of the
server itself. Limits (``ServeSettings``):

- request body over ``max_body_bytes``: 413, read before any parsing (``slots.RequestGuard``);
- ``max_tokens`` over ``max_tokens_limit``, or prompt + completion over the model's context: 400;
- speech ``input`` over ``max_speech_chars``: 400;
- at most ``max_concurrency`` generations (text and speech together) run at once. A request over the
  limit queues for a slot up to ``queue_timeout_s`` (at most ``max_queue`` waiting), then gets 429 with
  ``Retry-After``. Queueing briefly absorbs bursts without making a client retry; a timeout of 0
  turns it into an immediate 429.

Inference runs on a thread pool (``jobs.InferencePool``), so the event loop keeps answering while a
model computes; the text generations of all its workers meet in one continuous batch
(``batcher``). ``logprobs``/``top_logprobs`` and completions' ``echo`` answer in OpenAI's shapes
(``logprobs``). Each endpoint is a thin closure over the shared :class:`Served` state; the work is in
the module's functions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from mai_models.errors import MaiUserError
from mai_models.generation import TextPiece
from mai_models.serve.audio import audio_formats, encode_audio
from mai_models.serve.backends import SpeechBackend, TextBackend, complete_text, stream_text
from mai_models.serve.errors import ApiError, add_error_handlers, unknown_model
from mai_models.serve.jobs import Events, InferencePool
from mai_models.serve.limits import ServeSettings
from mai_models.serve.logprobs import CompletionLogprobs, chat_logprobs
from mai_models.serve.schemas import ChatRequest, CompletionRequest, GenerationRequest, SpeechRequest
from mai_models.serve.slots import RequestGuard

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class Served:
    """What every endpoint shares: the models, the limits and the inference pool."""

    text: TextBackend | None
    speech: SpeechBackend | None
    settings: ServeSettings
    pool: InferencePool
    formats: list[str] = field(default_factory=list)  # speech response formats this host encodes
    started: int = field(default_factory=lambda: int(time.time()))

    def model_cards(self) -> list[dict[str, Any]]:
        names = [b.name for b in (self.text, self.speech) if b is not None]
        return [
            {"id": n, "object": "model", "created": self.started, "owned_by": "mai-foundry"} for n in names
        ]

    def batching(self) -> dict[str, Any] | None:
        """The text model's batch sizes so far (decode steps per batch size), when it batches."""
        batcher = getattr(self.text, "batcher", None)
        return batcher.stats() if batcher is not None else None

    def text_backend(self, model: str) -> TextBackend:
        if self.text is None or model != self.text.name:
            raise unknown_model(model)
        return self.text

    def check_generation(self, req: GenerationRequest, requested: int | None, param: str) -> None:
        """What pydantic cannot check of a text request: unsupported options, n, the token limit, stops."""
        req.check_extras()
        if (req.n or 1) != 1:
            raise ApiError(400, "Only n=1 is supported.", param="n")
        limit = self.settings.max_tokens_limit
        if requested is not None and requested > limit:
            raise ApiError(
                400,
                f"{param} is too large: {requested}. This server allows at most {limit} completion tokens.",
                param=param,
                code="invalid_value",
            )
        req.stops()


def create_app(
    text: TextBackend | None, speech: SpeechBackend | None, settings: ServeSettings | None = None
) -> FastAPI:
    settings = settings or ServeSettings()
    pool = InferencePool(settings)
    served = Served(text, speech, settings, pool, audio_formats() if speech is not None else [])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()

    app = FastAPI(title="MAI Foundry OpenAI-compatible API", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(RequestGuard, settings=settings)
    add_error_handlers(app)
    _add_routes(app, served)
    return app


def _add_routes(app: FastAPI, served: Served) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "text_model": served.text.name if served.text else None,
            "voice": served.speech.name if served.speech else None,
            "active": served.pool.slots.active,
            "waiting": served.pool.slots.waiting,
            "batching": served.batching(),
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": served.model_cards()}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for card in served.model_cards():
            if card["id"] == model_id:
                return card
        raise unknown_model(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> Any:
        return await chat_completion(served, req)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        return await text_completion(served, req)

    @app.post("/v1/audio/speech")
    async def audio_speech(req: SpeechRequest) -> Response:
        return await speech_audio(served, req)


# --- text ----------------------------------------------------------------------------------------------


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _max_tokens_for(requested: int | None, default: int, prompt_len: int, backend: TextBackend) -> int:
    room = backend.max_context - prompt_len
    if room <= 0 or (requested is not None and requested > room):
        raise ApiError(
            400,
            f"This model's maximum context length is {backend.max_context} tokens. However, you "
            f"requested {prompt_len + (requested or 1)} tokens ({prompt_len} in the prompt, "
            f"{requested or 1} for the completion).",
            param="max_tokens" if room > 0 else None,
            code="context_length_exceeded",
        )
    return requested if requested is not None else max(1, min(default, room))


def _sampling(
    req: GenerationRequest, max_new_tokens: int, logprobs: int | None, echo: bool = False
) -> dict[str, Any]:
    """The keyword arguments of ``stream_text``/``complete_text``; OpenAI samples at temperature 1
    unless told otherwise."""
    return {
        "max_new_tokens": max_new_tokens,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "stop": req.stops(),
        "seed": req.seed,
        "ignore_eos": req.ignore_eos,
        "logprobs": logprobs,
        "echo": echo,
    }


def _include_usage(req: GenerationRequest) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


async def chat_completion(served: Served, req: ChatRequest) -> Any:
    # max_completion_tokens is the newer name of max_tokens; it wins when both are sent, as at OpenAI
    newer = req.max_completion_tokens is not None
    requested = req.max_completion_tokens if newer else req.max_tokens
    served.check_generation(req, requested, "max_completion_tokens" if newer else "max_tokens")
    backend = served.text_backend(req.model)
    prompt = backend.chat_template(req.turns())
    prompt_ids = await run_in_threadpool(backend.tokenizer.encode, prompt)
    max_new = _max_tokens_for(requested, served.settings.max_tokens_limit, len(prompt_ids), backend)
    top = req.top()
    params = _sampling(req, max_new, top)
    common = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": backend.name}

    def logprobs(scores: tuple[Any, ...]) -> dict[str, Any] | None:
        return chat_logprobs(scores, backend.tokenizer) if top is not None else None

    if req.stream:
        chunk = {**common, "object": "chat.completion.chunk"}

        def choice(delta: dict[str, str], finish: str | None, scores: tuple[Any, ...] = ()) -> dict[str, Any]:
            lp = logprobs(scores)
            return {
                **chunk,
                "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}],
            }

        def render(piece: TextPiece) -> Events:
            if not piece.text:
                return [choice({}, piece.finish_reason, piece.logprobs)] if piece.finish_reason else []
            out = [choice({"content": piece.text}, None, piece.logprobs)]
            return out + ([choice({}, piece.finish_reason)] if piece.finish_reason else [])

        def tail(tokens: int) -> Events:
            usage = {**chunk, "choices": [], "usage": _usage(len(prompt_ids), tokens)}
            return [usage] if _include_usage(req) else []

        head = [choice({"role": "assistant", "content": ""}, None)]
        return await served.pool.stream(
            partial(stream_text, backend, prompt_ids, **params), render, head, tail
        )
    done = await served.pool.run(partial(complete_text, backend, prompt_ids, **params))
    message = {"role": "assistant", "content": done.text}
    lp = logprobs(done.logprobs)
    return {
        **common,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "logprobs": lp, "finish_reason": done.finish_reason}],
        "usage": _usage(len(prompt_ids), done.tokens),
    }


async def text_completion(served: Served, req: CompletionRequest) -> Any:
    served.check_generation(req, req.max_tokens, "max_tokens")
    if (req.best_of or 1) != 1:
        raise ApiError(400, "Only best_of=1 is supported.", param="best_of")
    backend = served.text_backend(req.model)
    prompt_ids = await _prompt_ids(req.prompt, backend)
    max_new = _max_tokens_for(req.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, len(prompt_ids), backend)
    params = _sampling(req, max_new, req.logprobs, req.echo)
    common = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
    common["model"] = backend.name
    offsets = CompletionLogprobs(backend.tokenizer)  # one per response: offsets run across its chunks

    def logprobs(scores: tuple[Any, ...]) -> dict[str, Any] | None:
        return offsets.format(scores) if req.logprobs is not None else None

    if req.stream:

        def choice(piece: TextPiece) -> dict[str, Any]:
            lp = logprobs(piece.logprobs)
            first = {"index": 0, "text": piece.text, "logprobs": lp, "finish_reason": piece.finish_reason}
            return {**common, "choices": [first]}

        def render(piece: TextPiece) -> Events:
            return [choice(piece)] if piece.text or piece.finish_reason else []

        def tail(tokens: int) -> Events:
            usage = {**common, "choices": [], "usage": _usage(len(prompt_ids), tokens)}
            return [usage] if _include_usage(req) else []

        return await served.pool.stream(partial(stream_text, backend, prompt_ids, **params), render, [], tail)
    done = await served.pool.run(partial(complete_text, backend, prompt_ids, **params))
    lp = logprobs(done.logprobs)
    return {
        **common,
        "choices": [{"index": 0, "text": done.text, "logprobs": lp, "finish_reason": done.finish_reason}],
        "usage": _usage(len(prompt_ids), done.tokens),
    }


async def _prompt_ids(prompt: str | list[int] | list[str], backend: TextBackend) -> list[int]:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        ids = [int(t) for t in prompt]
        if any(not 0 <= t < backend.vocab_size for t in ids):
            raise ApiError(400, f"Token ids must lie in [0, {backend.vocab_size}).", param="prompt")
        return ids
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(
                400,
                "Send exactly one prompt per request (batched prompts are not supported).",
                param="prompt",
            )
        prompt = prompt[0]
    if not prompt:
        raise ApiError(400, "'prompt' is empty.", param="prompt")
    ids = await run_in_threadpool(backend.tokenizer.encode, str(prompt))
    if not ids:
        raise ApiError(400, "'prompt' encodes to no tokens.", param="prompt")
    return ids


# --- speech --------------------------------------------------------------------------------------------


async def speech_audio(served: Served, req: SpeechRequest) -> Response:
    req.check_extras()
    speech = served.speech
    if speech is None or req.model != speech.name:
        raise unknown_model(req.model)
    formats = served.formats
    if req.response_format not in formats:
        raise ApiError(
            400,
            f"response_format '{req.response_format}' is not supported; use one of {', '.join(formats)}.",
            param="response_format",
        )
    if not req.input.strip():
        raise ApiError(400, "'input' is empty: there is nothing to say.", param="input")
    limit = served.settings.max_speech_chars
    if len(req.input) > limit:
        raise ApiError(
            400,
            f"'input' is {len(req.input)} characters; at most {limit} are allowed.",
            param="input",
            code="string_above_max_length",
        )

    def synthesize() -> tuple[bytes, str]:
        try:
            result = speech.synthesize(req.input, req.speed)
        except MaiUserError as exc:
            raise ApiError(400, str(exc), param="input", code="invalid_input") from exc
        return encode_audio(result.wave, result.sample_rate, req.response_format)

    audio, media_type = await served.pool.run(synthesize)
    return Response(audio, media_type=media_type)

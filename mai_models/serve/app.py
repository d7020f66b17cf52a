"""The OpenAI wire format over the backends: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions`` (both with SSE streaming) and ``/v1/audio/speech``.

Every client mistake is a 4xx with OpenAI's error body ``{"error": {"message", "type", "param",
"code"}}``; a 500 means a fault of the server itself. Limits (``ServeSettings``):

- request body over ``max_body_bytes``: 413, read before any parsing;
- ``max_tokens`` over ``max_tokens_limit``, or prompt + completion over the model's context: 400;
- speech ``input`` over ``max_speech_chars``: 400;
- at most ``max_concurrency`` generations (text and speech together) run at once. A request over the
  limit queues for a slot up to ``queue_timeout_s`` (at most ``max_queue`` waiting), then gets 429 with
  ``Retry-After``. Queueing briefly absorbs bursts without making a client retry; a timeout of 0
  turns it into an immediate 429.

Inference runs on a thread pool of ``max_concurrency`` workers, so the event loop keeps answering
(health checks, other requests' streams) while a model computes.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, ClassVar, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mai_models.errors import MaiUserError
from mai_models.serve.backends import (
    SamplingParams,
    SpeechBackend,
    TextBackend,
    TextPiece,
    complete_text,
    stream_text,
)
from mai_models.serve.limits import ServeSettings
from mai_models.tokenizer.bpe import EOD_TOKEN, IM_END_TOKEN, IM_START_TOKEN

_LOG = logging.getLogger(__name__)
T = TypeVar("T")

OPEN_PATHS = frozenset({"/health"})  # answered without an API key, for load balancers
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_STOP_SEQUENCES = 4
PCM_RATE = 24_000  # OpenAI's "pcm" format is 24 kHz 16-bit little-endian mono
# (soundfile format, subtype, media type) per response_format
_SOUNDFILE_FORMATS = {
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
}
_CONTROL_TOKENS = (IM_START_TOKEN, IM_END_TOKEN, EOD_TOKEN)


# --- errors ------------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _param_path(loc: tuple[Any, ...]) -> str | None:
    """``messages[0].content`` from pydantic's ``("body", "messages", 0, "content", "str")``."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper():
            continue  # the union member pydantic tried (str, list[...], a class name): noise to a client
        else:
            path += f".{part}" if path else part
    return path or None


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return ApiError(
            400,
            "We could not parse the JSON body of your request: this API expects a JSON payload.",
            code="invalid_json",
        )
    param = _param_path(tuple(first["loc"]))
    if param is None:
        return ApiError(
            400,
            "The request body must be a JSON object sent as 'Content-Type: application/json'.",
            code="invalid_request_body",
        )
    if first["type"] == "missing":
        return ApiError(
            400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    return ApiError(400, f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value")


# --- request schemas ---------------------------------------------------------------------------------


def _is_off(value: Any) -> bool:
    """Whether an unsupported OpenAI option is set to its do-nothing value, which clients often send."""
    return value in (None, False, 0, "", [], {}, "none", "auto", "audio", ["text"], {"type": "text"})


class _OpenAIRequest(BaseModel):
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


class _GenerationRequest(_OpenAIRequest):
    UNSUPPORTED: ClassVar[frozenset[str]] = frozenset(
        {"logit_bias", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty"}
    )

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


class ChatRequest(_GenerationRequest):
    UNSUPPORTED: ClassVar[frozenset[str]] = _GenerationRequest.UNSUPPORTED | {
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


class CompletionRequest(_GenerationRequest):
    UNSUPPORTED: ClassVar[frozenset[str]] = _GenerationRequest.UNSUPPORTED | {"echo", "suffix"}

    prompt: StrictStr | list[StrictInt] | list[StrictStr]
    best_of: StrictInt | None = Field(None, ge=1)


class SpeechRequest(_OpenAIRequest):
    UNSUPPORTED: ClassVar[frozenset[str]] = frozenset({"instructions", "stream_format"})

    input: StrictStr
    voice: StrictStr
    response_format: StrictStr = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)


# --- concurrency -------------------------------------------------------------------------------------


class GenerationSlots:
    """At most ``slots`` generations at once; others wait up to ``timeout`` seconds (``max_queue`` of
    them at most), then are refused."""

    def __init__(self, slots: int, timeout: float, max_queue: int) -> None:
        self._semaphore = asyncio.Semaphore(slots)
        self.timeout, self.max_queue = timeout, max_queue
        self.active = self.waiting = 0

    async def acquire(self) -> bool:
        if not self._semaphore.locked():
            await self._semaphore.acquire()  # a free slot: returns without suspending
        else:
            if self.timeout <= 0 or self.waiting >= self.max_queue:
                return False
            self.waiting += 1
            try:
                await asyncio.wait_for(self._semaphore.acquire(), self.timeout)
            except TimeoutError:
                return False
            finally:
                self.waiting -= 1
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1
        self._semaphore.release()


def _busy() -> ApiError:
    return ApiError(
        429,
        "The server is busy: every generation slot stayed taken. Retry shortly.",
        type_="requests",
        code="rate_limit_exceeded",
        headers={"Retry-After": "1"},
    )


# --- body size and API key, before any parsing ---------------------------------------------------------


class _Guard:
    """Checks the API key, then reads the whole body (refusing it past ``max_body_bytes``) before the
    app parses anything, so an oversized or unauthenticated request costs no JSON parsing."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app = app
        self.max_bytes = settings.max_body_bytes
        self.key = settings.api_key.get_secret_value().encode() if settings.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"] not in OPEN_PATHS:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                error = ApiError(
                    401,
                    "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await error.response()(scope, receive, send)
                return
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large().response()(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:  # chunked bodies declare no length
                await self._too_large().response()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the client to disconnect

        await self.app(scope, replay, send)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"Request body is larger than {self.max_bytes} bytes.", code="request_too_large")


# --- audio -------------------------------------------------------------------------------------------


def audio_formats() -> list[str]:
    import soundfile as sf

    available = sf.available_formats()
    return [f for f, (major, _, _) in _SOUNDFILE_FORMATS.items() if major in available] + ["pcm"]


def encode_audio(wave: Any, sample_rate: int, response_format: str) -> tuple[bytes, str]:
    import numpy as np

    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    if response_format == "pcm":
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(PCM_RATE, sample_rate)
        resampled = resample_poly(wave, PCM_RATE // g, sample_rate // g) if sample_rate != PCM_RATE else wave
        pcm = (np.clip(resampled, -1.0, 1.0) * 32767).astype("<i2")
        return pcm.tobytes(), "audio/pcm"
    import soundfile as sf

    major, subtype, media_type = _SOUNDFILE_FORMATS[response_format]
    buffer = io.BytesIO()
    sf.write(buffer, wave, sample_rate, format=major, subtype=subtype)
    return buffer.getvalue(), media_type


# --- the app -----------------------------------------------------------------------------------------


def _sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(
    text: TextBackend | None, speech: SpeechBackend | None, settings: ServeSettings | None = None
) -> FastAPI:
    settings = settings or ServeSettings()
    executor = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="mai-serve")
    slots = GenerationSlots(settings.max_concurrency, settings.queue_timeout_s, settings.max_queue)
    streams: set[threading.Event] = set()  # cancel flags of running streams, set at shutdown
    formats = audio_formats() if speech is not None else []
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        for cancelled in list(streams):
            cancelled.set()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="MAI Foundry OpenAI-compatible API", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(_Guard, settings=settings)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(MaiUserError)
    async def _user_error(_: Request, exc: MaiUserError) -> JSONResponse:
        return ApiError(400, str(exc), code="invalid_input").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        else:
            message = str(exc.detail)
        return ApiError(exc.status_code, message, code=None, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _fault(_: Request, exc: Exception) -> JSONResponse:
        _LOG.exception("request failed", exc_info=exc)
        return ApiError(
            500, "The server had an error while processing your request.", type_="server_error"
        ).response()

    async def run_job(fn: Callable[[], T]) -> T:
        """``fn`` on the inference pool, holding a slot until it has really finished (a client that
        goes away does not free its slot while the model still computes)."""
        if not await slots.acquire():
            raise _busy()
        future = asyncio.get_running_loop().run_in_executor(executor, fn)
        future.add_done_callback(lambda _: slots.release())
        return await asyncio.shield(future)

    async def run_stream(
        produce: Callable[[threading.Event], Iterator[TextPiece]],
        render: Callable[[TextPiece], list[dict[str, Any]]],
        head: list[dict[str, Any]],
        tail: Callable[[int], list[dict[str, Any]]],
    ) -> StreamingResponse:
        """SSE of a generation on the inference pool. The slot is taken before the 200 goes out, so a
        busy server still answers 429; a client that disconnects stops the generation at its next token."""
        if not await slots.acquire():
            raise _busy()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()
        streams.add(cancelled)

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed under us: the server is shutting down
                cancelled.set()

        def work() -> None:
            try:
                for piece in produce(cancelled):
                    put(("piece", piece))
                    if cancelled.is_set():
                        break
            except Exception as exc:
                put(("error", exc))
            finally:
                put(("end", None))

        def finished(_: Any) -> None:
            slots.release()
            streams.discard(cancelled)

        loop.run_in_executor(executor, work).add_done_callback(finished)

        async def events() -> AsyncIterator[bytes]:
            tokens = 0
            try:
                for payload in head:
                    yield _sse(payload)
                while True:
                    kind, value = await queue.get()
                    if kind == "end":
                        for payload in tail(tokens):
                            yield _sse(payload)
                        break
                    if kind == "error":
                        error = value if isinstance(value, ApiError) else _stream_error(value)
                        yield _sse(error.body())
                        break
                    tokens = value.tokens
                    for payload in render(value):
                        yield _sse(payload)
                yield b"data: [DONE]\n\n"
            finally:
                cancelled.set()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    def text_backend(model: str) -> TextBackend:
        if text is None or model != text.name:
            raise _unknown_model(model)
        return text

    def max_tokens_for(requested: int | None, default: int, prompt_len: int, backend: TextBackend) -> int:
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

    def sampling(req: _GenerationRequest, max_tokens: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            stop=req.stops(),
            seed=req.seed,
            ignore_eos=req.ignore_eos,
        )

    def check_common(req: _GenerationRequest, requested: int | None, param: str = "max_tokens") -> None:
        req.check_extras()
        if (req.n or 1) != 1:
            raise ApiError(400, "Only n=1 is supported.", param="n")
        if requested is not None and requested > settings.max_tokens_limit:
            raise ApiError(
                400,
                f"{param} is too large: {requested}. This server allows at most "
                f"{settings.max_tokens_limit} completion tokens.",
                param=param,
                code="invalid_value",
            )
        req.stops()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "text_model": text.name if text else None,
            "voice": speech.name if speech else None,
            "active": slots.active,
            "waiting": slots.waiting,
        }

    def model_cards() -> list[dict[str, Any]]:
        names = [b.name for b in (text, speech) if b is not None]
        return [{"id": n, "object": "model", "created": started, "owned_by": "mai-foundry"} for n in names]

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": model_cards()}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for card in model_cards():
            if card["id"] == model_id:
                return card
        raise _unknown_model(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> Any:
        # max_completion_tokens is the newer name of max_tokens; it wins when both are sent, as at OpenAI
        newer = req.max_completion_tokens is not None
        requested = req.max_completion_tokens if newer else req.max_tokens
        check_common(req, requested, "max_completion_tokens" if newer else "max_tokens")
        backend = text_backend(req.model)
        prompt = backend.chat_template(_chat_messages(req.messages))
        prompt_ids = await run_in_threadpool(backend.tokenizer.encode, prompt)
        params = sampling(req, max_tokens_for(requested, settings.max_tokens_limit, len(prompt_ids), backend))
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        common = {"id": reply_id, "created": created, "model": backend.name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunk = {**common, "object": "chat.completion.chunk"}

            def choice(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
                return {
                    **chunk,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }

            def render(piece: TextPiece) -> list[dict[str, Any]]:
                out = [choice({"content": piece.text}, None)] if piece.text else []
                return out + ([choice({}, piece.finish_reason)] if piece.finish_reason else [])

            def tail(tokens: int) -> list[dict[str, Any]]:
                return (
                    [{**chunk, "choices": [], "usage": _usage(len(prompt_ids), tokens)}]
                    if include_usage
                    else []
                )

            return await run_stream(
                partial(stream_text, backend, prompt_ids, params),
                render,
                [choice({"role": "assistant", "content": ""}, None)],
                tail,
            )
        content, tokens, finish = await run_job(partial(complete_text, backend, prompt_ids, params))
        return {
            **common,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": _usage(len(prompt_ids), tokens),
        }

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        check_common(req, req.max_tokens)
        if (req.best_of or 1) != 1:
            raise ApiError(400, "Only best_of=1 is supported.", param="best_of")
        backend = text_backend(req.model)
        prompt_ids = await _prompt_ids(req.prompt, backend)
        params = sampling(
            req, max_tokens_for(req.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, len(prompt_ids), backend)
        )
        common = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        common["model"] = backend.name
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def choice(text_: str, finish: str | None) -> dict[str, Any]:
                return {
                    **common,
                    "choices": [{"index": 0, "text": text_, "logprobs": None, "finish_reason": finish}],
                }

            def render(piece: TextPiece) -> list[dict[str, Any]]:
                return [choice(piece.text, piece.finish_reason)] if piece.text or piece.finish_reason else []

            def tail(tokens: int) -> list[dict[str, Any]]:
                return (
                    [{**common, "choices": [], "usage": _usage(len(prompt_ids), tokens)}]
                    if include_usage
                    else []
                )

            return await run_stream(partial(stream_text, backend, prompt_ids, params), render, [], tail)
        content, tokens, finish = await run_job(partial(complete_text, backend, prompt_ids, params))
        return {
            **common,
            "choices": [{"index": 0, "text": content, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(len(prompt_ids), tokens),
        }

    @app.post("/v1/audio/speech")
    async def audio_speech(req: SpeechRequest) -> Response:
        req.check_extras()
        if speech is None or req.model != speech.name:
            raise _unknown_model(req.model)
        if req.response_format not in formats:
            raise ApiError(
                400,
                f"response_format '{req.response_format}' is not supported; use one of {', '.join(formats)}.",
                param="response_format",
            )
        if not req.input.strip():
            raise ApiError(400, "'input' is empty: there is nothing to say.", param="input")
        if len(req.input) > settings.max_speech_chars:
            raise ApiError(
                400,
                f"'input' is {len(req.input)} characters; at most {settings.max_speech_chars} are allowed.",
                param="input",
                code="string_above_max_length",
            )

        def synthesize() -> tuple[bytes, str]:
            try:
                result = speech.synthesize(req.input, req.speed)
            except MaiUserError as exc:
                raise ApiError(400, str(exc), param="input", code="invalid_input") from exc
            return encode_audio(result.wave, result.sample_rate, req.response_format)

        audio, media_type = await run_job(synthesize)
        return Response(audio, media_type=media_type)

    return app


def _unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or is not served here.",
        param="model",
        code="model_not_found",
    )


def _stream_error(exc: BaseException) -> ApiError:
    if isinstance(exc, MaiUserError):
        return ApiError(400, str(exc), code="invalid_input")
    _LOG.error("generation failed mid-stream", exc_info=exc)
    return ApiError(500, "The server had an error while generating.", type_="server_error")


def _chat_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    if not messages:
        raise ApiError(
            400, "'messages' must contain at least one message.", param="messages", code="empty_array"
        )
    out = []
    for i, message in enumerate(messages):
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
                raise ApiError(400, "Only text content parts are supported.", param=f"messages[{i}].content")
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

"""Generations on a thread pool of ``max_concurrency`` workers, so the event loop keeps answering
(health checks, other requests' streams) while a model computes. Each job holds a generation slot
until it has really finished; a streamed job sends its pieces as server-sent events."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse

from mai_models.generation import TextPiece
from mai_models.serve.errors import ApiError, busy, stream_error
from mai_models.serve.limits import ServeSettings
from mai_models.serve.slots import GenerationSlots

T = TypeVar("T")
Events = list[dict[str, Any]]


def _sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


class InferencePool:
    def __init__(self, settings: ServeSettings) -> None:
        self.executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrency, thread_name_prefix="mai-serve"
        )
        self.slots = GenerationSlots(settings.max_concurrency, settings.queue_timeout_s, settings.max_queue)
        self._streams: set[threading.Event] = set()  # cancel flags of running streams, set at shutdown

    def close(self) -> None:
        for cancelled in list(self._streams):
            cancelled.set()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn`` on the pool, holding a slot until it has really finished (a client that goes away
        does not free its slot while the model still computes)."""
        if not await self.slots.acquire():
            raise busy()
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn)
        future.add_done_callback(lambda _: self.slots.release())
        return await asyncio.shield(future)

    async def stream(
        self,
        produce: Callable[..., Iterator[TextPiece]],
        render: Callable[[TextPiece], Events],
        head: Events,
        tail: Callable[[int], Events],
    ) -> StreamingResponse:
        """SSE of ``produce(cancelled=...)`` on the pool: the ``head`` events, each piece ``render``-ed,
        then ``tail(completion tokens)`` and ``[DONE]``. The slot is taken before the 200 goes out, so
        a busy server still answers 429; a client that disconnects stops the generation at its next
        token."""
        if not await self.slots.acquire():
            raise busy()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()
        self._streams.add(cancelled)

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed under us: the server is shutting down
                cancelled.set()

        def work() -> None:
            try:
                for piece in produce(cancelled=cancelled):
                    put(("piece", piece))
                    if cancelled.is_set():
                        break
            except Exception as exc:
                put(("error", exc))
            finally:
                put(("end", None))

        def finished(_: Any) -> None:
            self.slots.release()
            self._streams.discard(cancelled)

        loop.run_in_executor(self.executor, work).add_done_callback(finished)

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
                        error = value if isinstance(value, ApiError) else stream_error(value)
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

"""What a request must get past before the app parses it or a model runs for it: the API key and the
body size (``RequestGuard``, an ASGI middleware), then a free generation slot (``GenerationSlots``)."""

from __future__ import annotations

import asyncio
import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mai_models.serve.errors import ApiError
from mai_models.serve.limits import ServeSettings

OPEN_PATHS = frozenset({"/health"})  # answered without an API key, for load balancers


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


class RequestGuard:
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

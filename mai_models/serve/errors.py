"""OpenAI's error body ``{"error": {"message", "type", "param", "code"}}`` for every failure: client
mistakes are 4xx, a fault of the server itself is a 500 that says nothing about its cause."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mai_models.errors import MaiUserError

_LOG = logging.getLogger(__name__)
# pydantic's names for the union member it tried: noise to a client in a parameter path
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


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


def _param_path(loc: tuple[Any, ...]) -> str | None:
    """``messages[0].content`` from pydantic's ``("body", "messages", 0, "content", "str")``."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper():
            continue  # the union member pydantic tried (str, list[...], a class name)
        else:
            path += f".{part}" if path else part
    return path or None


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first problem pydantic found, as OpenAI words it."""
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


def busy() -> ApiError:
    return ApiError(
        429,
        "The server is busy: every generation slot stayed taken. Retry shortly.",
        type_="requests",
        code="rate_limit_exceeded",
        headers={"Retry-After": "1"},
    )


def unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or is not served here.",
        param="model",
        code="model_not_found",
    )


def stream_error(exc: BaseException) -> ApiError:
    """What a stream that already answered 200 sends as its last event when generation fails."""
    if isinstance(exc, MaiUserError):
        return ApiError(400, str(exc), code="invalid_input")
    _LOG.error("generation failed mid-stream", exc_info=exc)
    return ApiError(500, "The server had an error while generating.", type_="server_error")


def add_error_handlers(app: FastAPI) -> None:
    """Every exception a request can raise, as an OpenAI error body."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

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

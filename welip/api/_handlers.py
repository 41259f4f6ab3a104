"""FastAPI exception handlers that answer every error in the OpenAI error body."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from welip.api._errors import OpenAIError, invalid_request

OnError = Callable[[Request, OpenAIError], None]


def add_error_handlers(
    app: FastAPI, *, service: str, logger: logging.Logger, on_error: OnError | None = None
) -> None:
    """Answer OpenAI errors, validation errors, HTTP errors and anything unexpected (500) alike.

    ``service`` names the app in the 500 message and ``logger`` logs the unexpected ones;
    ``on_error`` sees every error before it is answered (the trust layer records its code
    for audit and metrics).
    """

    def answer(request: Request, error: OpenAIError) -> JSONResponse:
        if on_error is not None:
            on_error(request, error)
        return error.to_response()

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"]) or None
        message = str(first["msg"])
        return answer(request, invalid_request(f"{param}: {message}" if param else message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        return answer(request, OpenAIError(exc.status_code, str(exc.detail), code=code, headers=headers))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        error = OpenAIError(
            500, f"The {service} failed to handle the request.", type="server_error", code="internal_error"
        )
        return answer(request, error)

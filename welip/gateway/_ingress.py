"""The WeLIP gateway: the Ray Serve ingress in front of the ``ray.serve.llm`` engines.

It stays thin on purpose. Per request it assigns an id, checks the body, picks the
engine by ``model`` and relays the engine's answer; later layers (auth, limits,
audit, guardrails) wrap the same two generation routes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException

import welip
from welip.api import (
    OpenAIError,
    engine_error,
    invalid_request,
    model_not_found,
    parse_chat,
    parse_completion,
    sse_events,
)
from welip.api._requests import ChatCompletionRequest, CompletionRequest
from welip.serving import GatewayConfig

logger = logging.getLogger("welip.gateway")

# Ray Serve's proxy echoes the client's X-Request-Id (or mints one) on every
# response and hands it to the replica as this header; the engine request reuses it.
REQUEST_ID_HEADER = "x-request-id"


def _request_body_schema(name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


app = FastAPI(
    title="WeLIP gateway",
    version=welip.__version__,
    description="OpenAI-compatible API in front of WeLIP's vLLM engines.",
)


@app.exception_handler(OpenAIError)
async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
    return exc.to_response()


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first["loc"]) or None
    message = str(first["msg"])
    return invalid_request(f"{param}: {message}" if param else message, param=param).to_response()


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    error = OpenAIError(exc.status_code, str(exc.detail), code=code, headers=dict(exc.headers or {}))
    return error.to_response()


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s", request.url.path)
    return OpenAIError(
        500, "The gateway failed to handle the request.", type="server_error", code="internal_error"
    ).to_response()


def _openapi() -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ChatCompletionRequest, CompletionRequest):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    app.openapi_schema = schema
    return schema


app.openapi = _openapi  # type: ignore[method-assign]


async def _relay(first: Any, stream: DeploymentResponseGenerator) -> AsyncIterator[str]:
    """Forward the engine stream; cancel the engine request if the client leaves."""
    finished = False
    try:
        async for text in sse_events(first, stream):
            yield text
        finished = True
    finally:
        if not finished:
            # A client disconnect cancels this generator: abort the generation in
            # the engine instead of letting it run on to max_tokens.
            stream.cancel()


# Serve pickles the FastAPI app when this decorator runs: everything a route calls
# must be defined above this line.
@serve.ingress(app)
class Gateway:
    """Ingress deployment: OpenAI routes over a dict of engine handles keyed by model id."""

    def __init__(
        self,
        engines: dict[str, DeploymentHandle],
        model_cards: list[dict[str, Any]],
        config: GatewayConfig,
    ) -> None:
        self._engines = engines
        self._streams = {model_id: h.options(stream=True) for model_id, h in engines.items()}
        self._cards = model_cards
        self._config = config

    @app.get("/health", summary="The gateway process is alive")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Every engine answers its health check")
    async def ready(self) -> JSONResponse:
        async def check(handle: DeploymentHandle) -> str:
            try:
                await asyncio.wait_for(handle.check_health.remote(), self._config.ready_timeout_s)
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                return f"unavailable: {type(exc).__name__}"
            return "ok"

        results = await asyncio.gather(*(check(h) for h in self._engines.values()))
        models = dict(zip(self._engines, results, strict=True))
        ok = all(r == "ok" for r in results)
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "models": models}, status_code=200 if ok else 503
        )

    @app.get("/v1/models", summary="List served models")
    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": self._cards}

    @app.get("/v1/models/{model_id:path}", summary="Describe one model")
    async def get_model(self, model_id: str) -> dict[str, Any]:
        for card in self._cards:
            if card["id"] == model_id:
                return card
        raise model_not_found(model_id)

    @app.post(
        "/v1/chat/completions",
        summary="Chat completion",
        openapi_extra=_request_body_schema("ChatCompletionRequest"),
    )
    async def chat_completions(self, request: Request) -> Response:
        body = parse_chat(await request.body())
        return await self._generate(body, "chat", request)

    @app.post(
        "/v1/completions", summary="Text completion", openapi_extra=_request_body_schema("CompletionRequest")
    )
    async def completions(self, request: Request) -> Response:
        body = parse_completion(await request.body())
        return await self._generate(body, "completions", request)

    async def _generate(self, body: Any, method: str, request: Request) -> Response:
        handle = self._streams.get(body.model)
        if handle is None:
            raise model_not_found(body.model)
        body.request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        stream: DeploymentResponseGenerator = getattr(handle, method).remote(body, None)
        try:
            first = await asyncio.wait_for(stream.__anext__(), self._config.first_response_timeout_s)
        except StopAsyncIteration:
            raise OpenAIError(
                502, "The engine returned no response.", type="server_error", code="engine_error"
            ) from None
        except TimeoutError:
            stream.cancel()
            raise OpenAIError(
                504, "The engine did not answer in time.", type="server_error", code="timeout"
            ) from None
        except BaseException:
            stream.cancel()
            raise
        head = first[0] if isinstance(first, list) and first else first
        error = engine_error(head)
        if error is not None:
            stream.cancel()
            raise error
        if not getattr(body, "stream", False):
            return Response(first.model_dump_json(), media_type="application/json")
        return StreamingResponse(
            _relay(first, stream),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

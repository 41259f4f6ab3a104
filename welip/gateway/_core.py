"""What the gateway does per request, independent of where it runs.

The gateway reaches engines through :class:`EngineClient`: a Ray Serve handle to an
``LLMServer`` deployment, or the ``LLMServer`` of the replica it runs in. The HTTP
app (``_app.py``) and the two deployment shapes (``_deployments.py``) compose this.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray.serve.handle import DeploymentHandle

from welip.api import OpenAIError, engine_error, model_not_found, sse_events
from welip.serving import GatewayConfig

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

    def generate(self, method: str, body: Any) -> EngineStream:
        """Start ``method`` (``chat`` or ``completions``) on ``body``."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""
        ...


class HandleEngine:
    """An engine in another replica, reached through a Serve deployment handle."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle
        self._stream = handle.options(stream=True)

    def generate(self, method: str, body: Any) -> EngineStream:
        stream: EngineStream = getattr(self._stream, method).remote(body, None)
        return stream

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

    def generate(self, method: str, body: Any) -> EngineStream:
        return LocalStream(getattr(self._server.engine, method)(body, None))

    async def check_health(self) -> None:
        await self._server.check_health()


class GatewayCore:
    """Routes OpenAI requests to engines by ``model`` and relays their answers."""

    def __init__(
        self, engines: dict[str, EngineClient], model_cards: list[dict[str, Any]], config: GatewayConfig
    ) -> None:
        self.engines = engines
        self.model_cards = model_cards
        self.config = config

    async def ready(self) -> JSONResponse:
        """200 when every engine passes its health check in time, else 503."""

        async def check(engine: EngineClient) -> str:
            try:
                await asyncio.wait_for(engine.check_health(), self.config.ready_timeout_s)
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                return f"unavailable: {type(exc).__name__}"
            return "ok"

        results = await asyncio.gather(*(check(e) for e in self.engines.values()))
        models = dict(zip(self.engines, results, strict=True))
        ok = all(r == "ok" for r in results)
        body = {"status": "ok" if ok else "unavailable", "models": models}
        return JSONResponse(body, status_code=200 if ok else 503)

    def model_card(self, model_id: str) -> dict[str, Any]:
        """The ``/v1/models/{id}`` entry, or 404 ``model_not_found``."""
        for card in self.model_cards:
            if card["id"] == model_id:
                return card
        raise model_not_found(model_id)

    async def generate(self, body: Any, method: str, request: Request) -> Response:
        """Run a checked request on its engine; errors are raised before any byte is sent."""
        engine = self.engines.get(body.model)
        if engine is None:
            raise model_not_found(body.model)
        body.request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        stream = engine.generate(method, body)
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
            _relay(first, stream), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )


async def _relay(first: Any, stream: EngineStream) -> AsyncIterator[str]:
    """Forward the engine stream; abort the generation if the client leaves."""
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

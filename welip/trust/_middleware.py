"""The trust layer as ASGI middleware: auth before any route, settlement after the last byte."""

from __future__ import annotations

import asyncio
import logging
import uuid

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from welip.api import OpenAIError
from welip.trust._context import RequestContext
from welip.trust._telemetry import tracer
from welip.trust._trust import Trust

logger = logging.getLogger("welip.gateway")


def body_too_large(limit: int) -> OpenAIError:
    """413 ``request_too_large``: a body over ``limits.max_body_bytes``."""
    return OpenAIError(
        413,
        f"The request body is larger than the {limit} bytes this server accepts.",
        code="request_too_large",
    )


class TrustMiddleware:
    """ASGI middleware: auth before any route, settlement after the last byte.

    Every HTTP request gets a :class:`RequestContext` (in the scope, see
    :func:`~welip.trust.context_of`) and the ``welip.gateway.request`` span. The caller
    is authenticated and the route family checked before the app runs, and a body over
    ``limits.max_body_bytes`` (or the bound ``body_limits`` sets for its method and
    path, such as file uploads') is refused (413) before it is read whole: by its
    Content-Length, or as soon as a chunked body passes the bound. When the response
    has been sent, or the client has left, :meth:`Trust.settle` closes the request's
    books.
    """

    def __init__(
        self, app: ASGIApp, trust: Trust, body_limits: dict[tuple[str, str], int] | None = None
    ) -> None:
        self.app = app
        self.trust = trust
        self.body_limits = body_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        ctx = RequestContext(
            method=scope["method"],
            route=scope["path"],
            request_id=headers.get("x-request-id") or uuid.uuid4().hex,
        )
        # A caller's W3C traceparent (an agent calling the gateway) makes this span its child;
        # it is the current span while the request runs, the parent of every span below it.
        ctx.span = tracer.start_span(
            "welip.gateway.request", context=propagate.extract(headers), kind=trace.SpanKind.SERVER
        )
        token = otel_context.attach(trace.set_span_in_context(ctx.span))
        scope.setdefault("state", {})["welip"] = ctx

        limit = self.body_limits.get(
            (scope["method"], scope["path"]), self.trust.config.limits.max_body_bytes
        )
        received = 0
        cut = False  # the body passed the bound while the app read it
        started = False  # the client has the start of a response
        replaced = False  # the app's own answer to the cut body gave way to the 413

        async def forward(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                ctx.status = message["status"]
            await send(message)

        async def respond(error: OpenAIError) -> None:
            ctx.error_code = error.code
            await error.to_response()(scope, receive, forward)

        async def receive_bounded() -> Message:
            nonlocal received, cut
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut = True
                    raise body_too_large(limit)
            return message

        async def send_and_watch(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return
            if cut and not started:
                # However the app answered the body it could not read (FastAPI's own body
                # parsing makes any error a 400), the caller is told why: 413.
                replaced = True
                await respond(body_too_large(limit))
                return
            await forward(message)

        try:
            try:
                client = scope.get("client")  # (host, port); failed authentications count per host
                ctx.source = client[0] if client else None
                await self.trust.authenticate(ctx, headers, source=ctx.source)
            except OpenAIError as exc:
                await respond(exc)
                return
            if _declared_over(headers.get("content-length", ""), limit):
                await respond(body_too_large(limit))
                return
            try:
                await self.app(scope, receive_bounded, send_and_watch)
            except Exception:
                if not cut or (started and not replaced):
                    raise
                if not started:  # the app let the refusal through unanswered
                    await respond(body_too_large(limit))
        except asyncio.CancelledError:
            ctx.error_code = ctx.error_code or "client_disconnected"
            raise
        finally:
            if not ctx.status:
                ctx.status = 499  # the client left before any answer
            try:
                self.trust.settle(ctx)
            except Exception:
                logger.exception("settling request %s failed", ctx.request_id)
            otel_context.detach(token)


def _declared_over(content_length: str, limit: int) -> bool:
    """Whether a Content-Length header declares more than ``limit`` bytes."""
    if not (content_length.isascii() and content_length.isdigit()):
        return False  # absent (a chunked body: counted as it arrives) or malformed (the server refuses it)
    return len(content_length) > 18 or int(content_length) > limit

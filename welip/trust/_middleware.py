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


class TrustMiddleware:
    """ASGI middleware: auth before any route, settlement after the last byte.

    Every HTTP request gets a :class:`RequestContext` (in the scope, see
    :func:`~welip.trust.context_of`) and the ``welip.gateway.request`` span. The caller
    is authenticated and the route family checked before the app runs; when the
    response has been sent, or the client has left, :meth:`Trust.settle` closes the
    request's books.
    """

    def __init__(self, app: ASGIApp, trust: Trust) -> None:
        self.app = app
        self.trust = trust

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

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
            await send(message)

        try:
            try:
                await self.trust.authenticate(ctx, headers)
            except OpenAIError as exc:
                ctx.error_code = exc.code
                await exc.to_response()(scope, receive, send_and_watch)
                return
            await self.app(scope, receive, send_and_watch)
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

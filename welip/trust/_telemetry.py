"""What the trust layer reports per request: Prometheus metrics, the request span, the access log.

The names are the gateway's wherever the trust layer runs (``welip_gateway_*``
metrics, the ``welip.gateway.request`` span, the ``welip.gateway.access`` logger):
dashboards, alert rules and log queries read them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span
from ray.util import metrics

from welip.trust._auth import Principal
from welip.trust._context import RequestContext

# One line per request, when its answer has been sent (JSON with the trace id in Serve's logs).
access_log = logging.getLogger("welip.gateway.access")
tracer = trace.get_tracer("welip.gateway")


class Telemetry:
    """Prometheus counters and histograms, exported through Ray's metrics agent (per model and key id)."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "welip_gateway_requests",
            description="Requests answered by the gateway.",
            tag_keys=("model", "key_id", "status", "cache"),
        )
        self.tokens = metrics.Counter(
            "welip_gateway_tokens",
            description="Prompt and completion tokens.",
            tag_keys=("model", "key_id", "kind"),
        )
        self.rejections = metrics.Counter(
            "welip_gateway_rejections",
            description="Requests answered with an error, by reason (auth, permission, rate_limit, "
            "guardrail, backpressure, invalid_request, not_found, engine, other) and OpenAI error code.",
            tag_keys=("model", "key_id", "reason", "code"),
        )
        self.latency = metrics.Histogram(
            "welip_gateway_request_latency_s",
            description="Time from arrival to the last byte sent.",
            boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
            tag_keys=("model",),
        )
        self.ttft = metrics.Histogram(
            "welip_gateway_ttft_s",
            description="Time from arrival to the first streamed chunk of an answer.",
            boundaries=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
            tag_keys=("model",),
        )
        self.cache_lookups = metrics.Counter(
            "welip_gateway_cache_lookups",
            description=(
                "Response cache lookups, by result (hit; coalesced: joined a running generation; miss)."
            ),
            tag_keys=("model", "result"),
        )

    def observe_ttft(self, ctx: RequestContext) -> None:
        """The engine's first answer to a streamed request is in hand: its time to first token."""
        self.ttft.observe(time.perf_counter() - ctx.started, tags={"model": ctx.model or ""})

    def settled(self, ctx: RequestContext) -> None:
        """Count a request whose response has been sent, end its span and write its access-log line."""
        model = ctx.model or ""
        key_id = metric_key_id(ctx.principal)
        latency_s = time.perf_counter() - ctx.started
        self.requests.inc(
            1, tags={"model": model, "key_id": key_id, "status": str(ctx.status), "cache": ctx.cache or ""}
        )
        if ctx.status >= 400:
            code = ctx.error_code or ""
            reason = rejection_reason(ctx.status, code)
            self.rejections.inc(1, tags={"model": model, "key_id": key_id, "reason": reason, "code": code})
        for kind, count in (("prompt", ctx.prompt_tokens), ("completion", ctx.completion_tokens)):
            if count:
                self.tokens.inc(count, tags={"model": model, "key_id": key_id, "kind": kind})
        self.latency.observe(latency_s, tags={"model": model})
        if ctx.cache:
            self.cache_lookups.inc(1, tags={"model": model, "result": ctx.cache})
        if ctx.span is not None:
            _annotate(ctx.span, ctx)
            ctx.span.end()
        access_log.info("request", extra=ctx.log_fields(latency_s))


def metric_key_id(principal: Principal) -> str:
    """The ``key_id`` label: the API key's id; for OIDC callers their role, so the label stays bounded."""
    if principal.key_id:
        return principal.key_id
    if principal.kind == "oidc":
        return f"oidc:{principal.role or 'none'}"
    return principal.id


def rejection_reason(status: int, code: str) -> str:
    """The ``reason`` label of an error answer: a small fixed set, the exact code beside it."""
    if code == "content_policy_violation":
        return "guardrail"
    if code in ("model_overloaded", "rate_limiter_unavailable", "audit_unavailable"):
        return "backpressure"
    by_status = {401: "auth", 403: "permission", 404: "not_found", 429: "rate_limit"}
    if status in by_status:
        return by_status[status]
    if status in (400, 409, 413, 415, 422):
        return "invalid_request"
    return "engine" if status >= 500 else "other"


def _annotate(span: Span, ctx: RequestContext) -> None:
    attributes: dict[str, Any] = {
        # The engine's own span under this one is the LLM span; this is the request's chain.
        "openinference.span.kind": "CHAIN",
        "http.request.method": ctx.method,
        "http.route": ctx.route,
        "http.response.status_code": ctx.status,
        "welip.request_id": ctx.request_id,
        "welip.principal.id": ctx.principal.id,
        "welip.principal.role": ctx.principal.role or "",
        "user.id": ctx.principal.id,
    }
    if ctx.model:
        attributes["llm.model_name"] = ctx.model
        attributes["gen_ai.request.model"] = ctx.model
    if ctx.prompt_tokens is not None:
        attributes["llm.token_count.prompt"] = ctx.prompt_tokens
        attributes["gen_ai.usage.input_tokens"] = ctx.prompt_tokens
    if ctx.completion_tokens is not None:
        attributes["llm.token_count.completion"] = ctx.completion_tokens
        attributes["gen_ai.usage.output_tokens"] = ctx.completion_tokens
        attributes["llm.token_count.total"] = (ctx.prompt_tokens or 0) + ctx.completion_tokens
    if ctx.error_code:
        attributes["welip.error_code"] = ctx.error_code
    if ctx.cache:
        attributes["welip.cache"] = ctx.cache
    if ctx.verdicts.items:
        attributes["welip.guardrails"] = [f"{v.direction}:{v.kind}:{v.action}" for v in ctx.verdicts.items]
    span.set_attributes(attributes)
    if ctx.status >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR, ctx.error_code or ""))

"""The gateway's trust layer: identity, access, limits, guardrails, cache, audit, telemetry.

:class:`TrustMiddleware` wraps every HTTP request of the gateway app: it opens a
:class:`RequestContext`, authenticates the caller and checks the route family before
any route code runs, and when the response has been sent (a stream included) it
settles the request: token buckets reconciled, metrics counted, the span ended, the
audit record queued. Inference routes call :meth:`Trust.admit` once the body is
parsed, for the per-model checks (model allow list, input guardrails, prompt size,
rate limits, in-flight bound).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from ray.util import metrics

from welip.api import OpenAIError
from welip.gateway._audit import AuditWriter
from welip.gateway._auth import ANONYMOUS, Authenticator, Principal, authorize
from welip.gateway._cache import MemoryResponseCache, RedisResponseCache, ResponseCache
from welip.gateway._config import GatewayConfig
from welip.gateway._guardrails import (
    StreamGuard,
    TextGuard,
    Verdicts,
    content_policy_violation,
    guard_request,
)
from welip.gateway._limits import Bucket, Decision, MemoryRateLimiter, RateLimiter, RedisRateLimiter
from welip.store import Database

logger = logging.getLogger("welip.gateway")
# One line per request, when its answer has been sent (JSON with the trace id in Serve's logs).
access_log = logging.getLogger("welip.gateway.access")
tracer = trace.get_tracer("welip.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Route families, by path prefix; the first match decides. Paths that match none
# (the OpenAPI spec, docs, unknown paths answered 404) need only a valid caller.
ROUTE_PERMISSIONS: tuple[tuple[str, str], ...] = (
    ("/v1/chat/completions", "inference"),
    ("/v1/completions", "inference"),
    ("/v1/models", "inference"),
    ("/v1/embeddings", "embeddings"),
    ("/admin", "admin"),
    ("/agents", "agents"),
    ("/threads", "agents"),
    ("/runs", "agents"),
    ("/eval", "eval_submit"),
    ("/finetune", "finetune_submit"),
)


def route_permission(path: str) -> str | None:
    """The permission a path needs, or None for any authenticated caller."""
    for prefix, permission in ROUTE_PERMISSIONS:
        if path == prefix or path.startswith(prefix + "/"):
            return permission
    return None


@dataclass
class RequestContext:
    """What the trust layer knows about one request, from arrival to audit record."""

    method: str
    route: str
    request_id: str
    audit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    started: float = field(default_factory=time.perf_counter)
    principal: Principal = ANONYMOUS
    model: str | None = None
    status: int = 0
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    charged_tokens: int = 0
    buckets: list[Bucket] = field(default_factory=list)
    cache: str | None = None
    verdicts: Verdicts = field(default_factory=Verdicts)
    in_flight_model: str | None = None
    body: str | None = None
    span: Any = None

    def log_fields(self, latency_s: float) -> dict[str, Any]:
        """The request's access-log fields: never the key, never the prompt."""
        p = self.principal
        return {
            "request_id": self.request_id[:128],
            "principal": p.id,
            "key_id": p.key_id,
            "role": p.role,
            "model": self.model,
            "method": self.method,
            # `path`: Serve puts its matched route template in the record's `route`.
            "path": self.route[:256],
            "status": self.status,
            "error_code": self.error_code,
            "latency_ms": round(latency_s * 1000, 3),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cache": self.cache,
        }

    def record(self, replica: str | None) -> dict[str, Any]:
        """The audit record: never the key, the prompt only if asked for."""
        p = self.principal
        return {
            "id": self.audit_id,
            "ts": self.ts.isoformat(),
            "request_id": self.request_id[:128],
            "principal": p.id,
            "principal_kind": p.kind,
            "key_id": p.key_id,
            "role": p.role,
            "method": self.method[:8],
            "route": self.route[:256],
            "model": self.model[:128] if self.model else None,
            "status": self.status,
            "error_code": self.error_code,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "cache": self.cache,
            "guardrails": self.verdicts.items or None,
            "replica": replica,
            "body": self.body,
        }


class TokenCounter:
    """Counts prompt tokens with the model's own tokenizer, cheaply enough for every request.

    Rendering the chat template costs ~0.5 ms per request on the event loop; instead
    each message's text is encoded (Rust, ~20 us) and the template's own tokens are
    added as two constants measured once: per message, and per conversation (the
    generation prompt, a default system prompt). The result may exceed the engine's
    count by a few tokens, never undercount by more than boundary merges; token
    limits are reconciled with the engine's exact usage after the answer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._per_message, self._per_conversation, self._per_conversation_system = 0, 0, 0
        if getattr(tokenizer, "chat_template", None):
            one = self._template([{"role": "user", "content": "x"}])
            three = self._template(
                [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "x"},
                    {"role": "user", "content": "x"},
                ]
            )
            x = self._encode("x")
            self._per_message = max(0, (three - one - 2 * x) // 2)
            self._per_conversation = max(0, one - x - self._per_message)
            # Templates that add a default system prompt drop it when the caller sends one.
            with_system = self._template(
                [{"role": "system", "content": "x"}, {"role": "user", "content": "x"}]
            )
            self._per_conversation_system = max(0, with_system - 2 * x - 2 * self._per_message)

    @classmethod
    def load(cls, path: str) -> TokenCounter:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path))

    def _template(self, messages: list[dict[str, Any]]) -> int:
        ids = self._tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def _encode(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def count_texts(self, texts: list[str]) -> list[int]:
        """Tokens of each text as the model's tokenizer encodes it, special tokens included."""
        return [len(ids) for ids in self._tokenizer(texts, verbose=False)["input_ids"]]

    def count(self, body: Any) -> int:
        messages = getattr(body, "messages", None)
        if messages is not None:
            has_system = bool(messages) and messages[0].get("role") in ("system", "developer")
            total = self._per_conversation_system if has_system else self._per_conversation
            for message in messages:
                total += self._per_message
                content = message.get("content")
                if isinstance(content, str):
                    total += self._encode(content)
                elif isinstance(content, list):
                    texts = [p.get("text") for p in content if isinstance(p, dict)]
                    total += sum(self._encode(t) for t in texts if isinstance(t, str))
            return total
        prompt = body.prompt
        if isinstance(prompt, str):
            return len(self._tokenizer.encode(prompt))
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            return sum(len(self._tokenizer.encode(p)) for p in prompt)
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            return sum(len(p) for p in prompt)
        return len(prompt) if isinstance(prompt, list) else 0


class _Metrics:
    """Prometheus counters, exported through Ray's metrics agent (per model and key id)."""

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
            description="Response cache lookups, by result (hit, miss).",
            tag_keys=("model", "result"),
        )


class Trust:
    """Every trust component of one gateway replica, composed."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        database: Database | None,
        redis: Any | None,
        replica: str | None = None,
        token_counters: dict[str, TokenCounter] | None = None,
    ) -> None:
        self.config = config
        self.database = database
        self.replica = replica
        self.auth_enabled = config.auth.enabled
        self.authenticator = Authenticator(config.auth, database) if config.auth.enabled else None
        prefix = config.limits.redis_prefix
        self.limiter: RateLimiter = RedisRateLimiter(redis, prefix) if redis else MemoryRateLimiter()
        self.cache: ResponseCache | None = None
        if config.cache.enabled:
            self.cache = (
                RedisResponseCache(redis, prefix, config.cache.ttl_s)
                if redis
                else MemoryResponseCache(config.cache.max_entries, config.cache.ttl_s)
            )
        self.audit = (
            AuditWriter(database.write_audit, config.audit)
            if config.audit.enabled and database is not None
            else None
        )
        self.token_counters = token_counters or {}
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics = _Metrics()
        guard = config.guardrails
        self._guards: dict[str | None, tuple[TextGuard, TextGuard]] = {
            None: (
                TextGuard(guard.input, "input", guard.window_chars),
                TextGuard(guard.output, "output", guard.window_chars),
            )
        }
        for role, override in guard.by_role.items():
            self._guards[role] = (
                TextGuard(override.input or guard.input, "input", guard.window_chars),
                TextGuard(override.output or guard.output, "output", guard.window_chars),
            )

    @property
    def counts_tokens(self) -> bool:
        """Whether admission needs the prompt's token count."""
        limits = self.config.limits
        return bool(
            self.config.guardrails.max_prompt_tokens
            or limits.default_tpm
            or (self.auth_enabled and self.database is not None)  # keys may carry tpm/budgets
        )

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()

    # -- per request --------------------------------------------------------------

    async def authenticate(self, ctx: RequestContext, headers: dict[str, str]) -> None:
        """Identify the caller and check the route family (raises 401/403)."""
        if self.authenticator is None or ctx.route in self.config.auth.public_paths:
            return
        with tracer.start_as_current_span("welip.auth") as span:
            ctx.principal = await self.authenticator.authenticate(headers.get("authorization"))
            span.set_attributes({"welip.principal.kind": ctx.principal.kind, "user.id": ctx.principal.id})
            authorize(ctx.principal, route_permission(ctx.route))

    def guards(self, principal: Principal) -> tuple[TextGuard, TextGuard]:
        return self._guards.get(principal.role, self._guards[None])

    def stream_guard(self, ctx: RequestContext) -> StreamGuard | None:
        output = self.guards(ctx.principal)[1]
        return StreamGuard(output, ctx.verdicts) if output.active else None

    async def admit(self, ctx: RequestContext, body: Any, engine_model: str | None = None) -> dict[str, str]:
        """Per-model checks before the engine; returns headers for the response.

        ``engine_model``: the served model whose engine runs an adapter or alias request
        (its tokenizer counts the prompt, its in-flight bound applies).
        """
        ctx.model = body.model
        authorize(ctx.principal, None, body.model)
        model = engine_model or body.model
        input_guard, output_guard = self.guards(ctx.principal)
        if output_guard.active and getattr(body, "logprobs", None):
            # Token logprobs carry the raw text the output guardrail would have changed.
            raise OpenAIError(
                400,
                "Output guardrails apply to your role, and logprobs would bypass them. Use a role "
                "without output guardrails (guardrails.by_role) for log-likelihood evaluation.",
                param="logprobs",
                code="logprobs_not_allowed",
            )
        if input_guard.active:
            with tracer.start_as_current_span("welip.guardrails.input") as span:
                guard_request(body, input_guard, ctx.verdicts)
                verdicts = [f"{v['kind']}:{v['action']}" for v in ctx.verdicts.items]
                span.set_attribute("welip.guardrails", verdicts)
        prompt_tokens = longest = 0
        texts = getattr(body, "input", None)  # embeddings: each input is a prompt of its own
        counter = self.token_counters.get(model)
        if counter is not None and self.counts_tokens:
            if isinstance(texts, list):
                counts = counter.count_texts(texts)
                prompt_tokens, longest = sum(counts), max(counts, default=0)
            else:
                prompt_tokens = longest = counter.count(body)
            ctx.prompt_tokens = prompt_tokens
        limit = self.config.guardrails.max_prompt_tokens
        if limit is not None and longest > limit:
            ctx.verdicts.add("input", "max_prompt_tokens", "block")
            what = "An input" if isinstance(texts, list) else "The prompt"
            raise content_policy_violation(
                f"{what} has {longest} tokens; this gateway allows at most {limit}."
            )
        bound = self.config.limits.max_in_flight_per_model
        if bound is not None:
            # Before the rate limit, so a request refused here spends none of the key's quota;
            # the slot is released in finish() whatever happens next.
            if self._in_flight.get(model, 0) >= bound:
                raise OpenAIError(
                    503,
                    f"The model `{model}` is at capacity ({bound} requests in flight); retry shortly.",
                    type="server_error",
                    code="model_overloaded",
                    headers={"retry-after": "1"},
                )
            self._in_flight[model] = self._in_flight.get(model, 0) + 1
            ctx.in_flight_model = model
        return await self._rate_limit(ctx, prompt_tokens)

    async def admit_route(self, ctx: RequestContext, subject: str) -> dict[str, str]:
        """The caller's request limits for a request that runs no engine itself (an agent run).

        ``subject`` (the assistant) is recorded as the request's model in audit and metrics.
        """
        ctx.model = subject
        return await self._rate_limit(ctx, 0)

    async def _rate_limit(self, ctx: RequestContext, prompt_tokens: int) -> dict[str, str]:
        p = ctx.principal
        limits = self.config.limits
        buckets, costs = [], []
        rpm = p.rpm or limits.default_rpm
        tpm = p.tpm or limits.default_tpm
        if rpm:
            buckets.append(Bucket("requests", rpm))
            costs.append(1)
        if tpm:
            buckets.append(Bucket("tokens", tpm))
            costs.append(prompt_tokens)
        if p.token_budget:
            buckets.append(Bucket("budget", p.token_budget, period_ms=0))
            costs.append(prompt_tokens)
        if not buckets:
            return {}
        try:
            with tracer.start_as_current_span("welip.rate_limit") as span:
                span.set_attribute("welip.rate_limit.buckets", [b.name for b in buckets])
                decision: Decision = await self.limiter.admit(p.id, buckets, costs)
                span.set_attribute("welip.rate_limit.allowed", decision.allowed)
        except Exception as exc:  # noqa: BLE001 - Redis down: refuse rather than admit unmetered
            logger.warning("rate limiter unavailable: %s", exc)
            raise OpenAIError(
                503,
                "The rate limiter is unavailable; try again shortly.",
                type="server_error",
                code="rate_limiter_unavailable",
                headers={"retry-after": "5"},
            ) from None
        if not decision.allowed:
            what = {
                "requests": "requests per minute",
                "tokens": "tokens per minute",
                "budget": "token budget",
            }
            raise OpenAIError(
                429,
                f"Rate limit reached for {p.id} on {what.get(decision.denied_by or '', 'limits')}: "
                f"limit {decision.limits.get(decision.denied_by or '', 0)}. "
                f"Retry after {decision.headers().get('retry-after')} s.",
                type="requests" if decision.denied_by == "requests" else "tokens",
                code="rate_limit_exceeded",
                headers=decision.headers(),
            )
        ctx.buckets = [b for b in buckets if b.name != "requests"]
        ctx.charged_tokens = prompt_tokens
        return decision.headers()

    def finish(self, ctx: RequestContext) -> None:
        """Settle a request whose response has been sent (or abandoned)."""
        if ctx.in_flight_model is not None:
            self._in_flight[ctx.in_flight_model] -= 1
        used = (ctx.prompt_tokens or 0) + (ctx.completion_tokens or 0)
        if ctx.buckets and used != ctx.charged_tokens:
            delta = used - ctx.charged_tokens
            self._spawn(self.limiter.charge(ctx.principal.id, ctx.buckets, [delta] * len(ctx.buckets)))
        model = ctx.model or ""
        key_id = metric_key_id(ctx.principal)
        latency_s = time.perf_counter() - ctx.started
        self._metrics.requests.inc(
            1, tags={"model": model, "key_id": key_id, "status": str(ctx.status), "cache": ctx.cache or ""}
        )
        if ctx.status >= 400:
            code = ctx.error_code or ""
            reason = rejection_reason(ctx.status, code)
            self._metrics.rejections.inc(
                1, tags={"model": model, "key_id": key_id, "reason": reason, "code": code}
            )
        for kind, count in (("prompt", ctx.prompt_tokens), ("completion", ctx.completion_tokens)):
            if count:
                self._metrics.tokens.inc(count, tags={"model": model, "key_id": key_id, "kind": kind})
        self._metrics.latency.observe(latency_s, tags={"model": model})
        if ctx.cache:
            self._metrics.cache_lookups.inc(1, tags={"model": model, "result": ctx.cache})
        if ctx.span is not None:
            _annotate(ctx.span, ctx)
            ctx.span.end()
        access_log.info("request", extra=ctx.log_fields(latency_s))
        # Probes of the public paths (/health, /ready every few seconds) are not audited.
        probe = ctx.route in self.config.auth.public_paths and ctx.status < 400
        if self.audit is not None and not probe:
            self.audit.submit(ctx.record(self.replica))

    def observe_ttft(self, ctx: RequestContext) -> None:
        """The first chunk of a streamed answer is leaving now."""
        self._metrics.ttft.observe(time.perf_counter() - ctx.started, tags={"model": ctx.model or ""})

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception as exc:  # noqa: BLE001 - reconciliation is best effort once answered
                logger.warning("token reconciliation failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


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
    if code in ("model_overloaded", "rate_limiter_unavailable"):
        return "backpressure"
    by_status = {401: "auth", 403: "permission", 404: "not_found", 429: "rate_limit"}
    if status in by_status:
        return by_status[status]
    if status in (400, 409, 413, 415, 422):
        return "invalid_request"
    return "engine" if status >= 500 else "other"


def _annotate(span: Any, ctx: RequestContext) -> None:
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
        attributes["welip.guardrails"] = [
            f"{v['direction']}:{v['kind']}:{v['action']}" for v in ctx.verdicts.items
        ]
    span.set_attributes(attributes)
    if ctx.status >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR, ctx.error_code or ""))


def context_of(request: Any) -> RequestContext | None:
    """The request's :class:`RequestContext`, set by :class:`TrustMiddleware`."""
    state = request.scope.get("state") or {}
    ctx = state.get("welip")
    return ctx if isinstance(ctx, RequestContext) else None


def record_error(request: Any, error: OpenAIError) -> None:
    """Note the code of the error a request is answered with, for its audit record and metrics."""
    ctx = context_of(request)
    if ctx is not None:
        ctx.error_code = error.code


class TrustMiddleware:
    """ASGI middleware: auth before any route, settlement after the last byte."""

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
                self.trust.finish(ctx)
            except Exception:
                logger.exception("settling request %s failed", ctx.request_id)
            otel_context.detach(token)


async def build_trust(
    config: GatewayConfig, model_sources: dict[str, str], embedding_sources: dict[str, str] | None = None
) -> Trust:
    """The trust layer of one replica, connected to the database and Redis named by the environment.

    The database (``WELIP_DATABASE_URL``, SQLite by default) is opened and migrated
    only when auth or audit needs it; Redis (``WELIP_REDIS_URL``) only when set.
    Tokenizers are loaded for each model (``embedding_sources``: embedding models) when a
    limit or guardrail counts tokens.
    """
    from ray import serve

    from welip.models import resolve_model_path
    from welip.serving import resolve_embedding_path
    from welip.store import redis_from_env

    database = None
    if config.auth.enabled or config.audit.enabled:
        database = Database()
        await asyncio.to_thread(database.upgrade)
    redis = redis_from_env()
    try:
        replica: str | None = serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not inside a Serve replica (tests, scripts)
        replica = None
    trust = Trust(config, database=database, redis=redis, replica=replica)
    if trust.counts_tokens:
        for model_id, source in model_sources.items():
            path = await asyncio.to_thread(resolve_model_path, source)
            trust.token_counters[model_id] = await asyncio.to_thread(TokenCounter.load, path)
        for model_id, source in (embedding_sources or {}).items():
            path = await asyncio.to_thread(resolve_embedding_path, source)
            trust.token_counters[model_id] = await asyncio.to_thread(TokenCounter.load, path)
    logger.info(
        "gateway trust: auth=%s database=%s redis=%s audit=%s cache=%s",
        config.auth.enabled,
        database.engine.dialect.name if database else None,
        "on" if redis else "off (per-replica limits)",
        config.audit.enabled,
        config.cache.enabled,
    )
    return trust

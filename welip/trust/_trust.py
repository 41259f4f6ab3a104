"""The trust layer of one replica, composed: identity, access, limits, guardrails, cache, audit, telemetry.

An ingress calls it at four points of a request, as Ray Serve LLM's request
middleware chain and Starlette's middleware do:

* on arrival, :class:`~welip.trust.TrustMiddleware` opens the request's context,
  authenticates the caller, checks the route family and takes room for the request's
  audit record (:meth:`Trust.authenticate`);
* before inference, :meth:`Trust.admit` runs the per-model checks (model grant, choices
  and ``max_tokens`` within bounds, input guardrails, prompt size, in-flight bound, rate
  limits charged for what the request may generate) and looks a deterministic
  request up in the response cache; :meth:`Trust.admit_run` admits a request that runs
  no engine itself (an agent run), and :meth:`Trust.mint_caller_token` gives the run a
  caller token for the gateway calls it makes on its caller's behalf;
* on the answer, :meth:`Trust.filter_answer` (a whole answer) or the filter from
  :meth:`Trust.stream_filter` (each batch of SSE events) applies the output guardrail
  and takes the engine's usage;
* after the last byte, :meth:`Trust.settle` reconciles the token buckets, counts the
  request, ends its span and queues its audit record.

The per-request calls take the request's :class:`RequestContext`, or ``None`` in an app
built without the middleware: then they admit everything and change nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from welip.api import OpenAIError, invalid_request
from welip.store import AuditStore, Database
from welip.trust._audit import AuditWriter
from welip.trust._auth import (
    ANONYMOUS,
    OPEN,
    Authenticator,
    FailureBudget,
    Principal,
    authorize,
    route_permission,
)
from welip.trust._cache import InFlight, MemoryResponseCache, RedisResponseCache, ResponseCache, cache_key
from welip.trust._config import TrustConfig
from welip.trust._context import RequestContext
from welip.trust._delegation import CALLER_TOKEN_HEADER
from welip.trust._guardrails import (
    StreamGuard,
    TextGuard,
    content_policy_violation,
    guard_json,
    guard_request,
    guard_response,
    guarded_body,
    judge_json,
    judge_request,
    judge_response,
)
from welip.trust._limits import Bucket, Decision, MemoryRateLimiter, RateLimiter, RedisRateLimiter, Refusals
from welip.trust._stream import StreamFilter
from welip.trust._telemetry import Telemetry, tracer
from welip.trust._tokens import TokenCounter

logger = logging.getLogger("welip.gateway")

CACHE_HEADER = "x-welip-cache"
_MAX_HAND_OVERS = 3  # leaders of one cache key that may end without an answer before a request goes alone


def audit_unavailable() -> OpenAIError:
    """503 ``audit_unavailable``: the audit has no room for the request's record."""
    return OpenAIError(
        503,
        "The audit log cannot take more records now (its database is unreachable or slow and its "
        "spool is full); try again shortly.",
        type="server_error",
        code="audit_unavailable",
        headers={"retry-after": "5"},
    )


@dataclass(frozen=True)
class Admission:
    """What admission decided for a request it let through."""

    headers: dict[str, str] = field(default_factory=dict)
    """For the response: the caller's rate limits, and whether the cache answered."""
    cached: bytes | None = None
    """An answer from the response cache (JSON), to send without asking the engine."""
    force_usage: bool = False
    """Ask the engine for the final usage chunk the client did not request (the stream filter strips it)."""


class Trust:
    """Every trust component of one replica, composed; the calls an ingress makes per request."""

    def __init__(
        self,
        config: TrustConfig,
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
        for path in config.auth.public_paths:
            if config.auth.enabled and route_permission(path) is not None:
                logger.warning(
                    "auth.public_paths lists %s, a %s route: it still asks for a key or token",
                    path,
                    route_permission(path),
                )
        prefix = config.limits.redis_prefix
        self.limiter: RateLimiter = RedisRateLimiter(redis, prefix) if redis else MemoryRateLimiter()
        self.refusals = Refusals(config.limits.refusal_memory_s)
        self.cache: ResponseCache | None = None
        if config.cache.enabled:
            self.cache = (
                RedisResponseCache(redis, prefix, config.cache.ttl_s)
                if redis
                else MemoryResponseCache(config.cache.max_entries, config.cache.ttl_s)
            )
        self.in_flight_answers = InFlight() if config.cache.enabled and config.cache.coalesce else None
        self.audit = (
            AuditWriter(AuditStore(database).write_audit, config.audit)
            if config.audit.enabled and database is not None
            else None
        )
        # Records of callers that never authenticated, per client address (a guessing flood's).
        per_minute = config.audit.max_unauthenticated_records_per_minute
        self._unauthenticated = FailureBudget(per_minute) if per_minute is not None else None
        self.token_counters = token_counters or {}
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.telemetry = Telemetry()
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

    @property
    def guards_input(self) -> bool:
        """Whether some role's input guardrails apply (they read token-id prompts with a tokenizer)."""
        return any(input_guard.active for input_guard, _ in self._guards.values())

    def close(self) -> None:
        """Write the queued audit records (to the database or the spool) and stop the writer."""
        if self.audit is not None:
            self.audit.close()

    # -- on arrival ---------------------------------------------------------------

    async def authenticate(
        self, ctx: RequestContext, headers: dict[str, str], source: str | None = None
    ) -> None:
        """Identify the caller, check the route family and take room for the audit record.

        Raises 401/403, 429 for ``source``, or 503 ``audit_unavailable`` when the audit
        cannot promise the request its record (``audit.max_queue_records``).
        With auth off every caller is :data:`~welip.trust._auth.OPEN`. A public path that
        needs no permission is answered to the anonymous caller, who holds no permission
        and no model; any other route, listed as public or not, needs a key or token.
        ``source`` is the client's address, which failed authentications are counted by.
        """
        permission = route_permission(ctx.route)
        if permission is None and ctx.route in self.config.auth.public_paths:
            if self.authenticator is None:
                ctx.principal = OPEN
            return
        if self.authenticator is None:
            ctx.principal = OPEN
        else:
            with tracer.start_as_current_span("welip.auth") as span:
                ctx.principal = await self.authenticator.authenticate(
                    headers.get("authorization"), source, headers.get(CALLER_TOKEN_HEADER)
                )
                span.set_attributes({"welip.principal.kind": ctx.principal.kind, "user.id": ctx.principal.id})
                if ctx.principal.via is not None:
                    span.set_attribute("welip.principal.via", ctx.principal.via)
                authorize(ctx.principal, permission)
        if self.audit is not None:
            # One audit row per admitted request: no room for its record, no admission.
            if not self.audit.reserve():
                raise audit_unavailable()
            ctx.audit_reserved = True

    def check_model(self, ctx: RequestContext | None, model: str) -> None:
        """404 ``model_not_found``, as for a model that does not exist, unless the caller may use ``model``.

        An ingress calls it before it looks the model up, so that nothing it answers about a
        model (an embedding model sent to chat, a text model sent to embeddings) reaches a
        caller who may not use it.
        """
        if ctx is not None:
            authorize(ctx.principal, None, model)

    # -- before inference ---------------------------------------------------------

    async def admit(
        self,
        ctx: RequestContext | None,
        body: Any,
        raw: bytes,
        *,
        engine_model: str | None = None,
        target_model: str | None = None,
        max_model_len: int | None = None,
    ) -> Admission:
        """Let a chat, completion or embedding request through to its engine, or raise the refusal.

        Checks the caller may use ``body.model``, refuses more choices (``n``,
        ``best_of``) than ``limits.max_choices_per_request`` and a ``max_tokens`` beyond
        the model's context, refuses logprobs where output guardrails apply, applies the
        input guardrails (which may redact ``body`` in place), counts the prompt's tokens
        against ``max_prompt_tokens``, takes an in-flight slot and charges the rate limits
        with what the request may use: its prompt and, for a generation, every choice up
        to ``max_tokens`` (by default the rest of the context). :meth:`settle` gives back
        what the engine did not use. The input guardrail's judge, where the caller's role
        has one, is asked last (a model call, never made for a request refused already). A
        deterministic non-streamed generation is then looked up in the response cache.

        Args:
            ctx: The request's context (``None``: admit without checks).
            body: The parsed request.
            raw: The body as received: the audit record keeps it (as the input guardrails
                left it) with ``audit.record_prompts``,
                and the cache key is made from it.
            engine_model: The served model whose engine runs an adapter or alias request
                (its tokenizer counts the prompt, its in-flight bound applies).
            target_model: The concrete model an alias names now, so that an alias switch
                never serves the old model's cached answers.
            max_model_len: The engine's context length, in tokens (``None``: not configured;
                ``limits.default_max_model_len`` is assumed).
        """
        if ctx is None:
            return Admission()
        ctx.model = body.model
        authorize(ctx.principal, None, body.model)
        self._check_refused(ctx)
        model = engine_model or body.model
        context = max_model_len or self.config.limits.default_max_model_len
        generates = not _is_embedding(body)
        if generates:
            _check_bounds(body, self.config.limits.max_choices_per_request, context)
        self._check_input(ctx, body, self.token_counters.get(model))
        prompt_tokens = self._count_prompt(ctx, body, model)
        self._take_slot(ctx, model)
        reserved = _completion_reserve(body, prompt_tokens, context) if generates else 0
        headers = await self._rate_limit(ctx, prompt_tokens, reserved, _max_tokens_field(body))
        # The judges last: a model call per request, never made for a request refused already.
        await self._judge_input(ctx, body, self.token_counters.get(model))
        if self.config.audit.record_prompts:
            # What the input guardrails redacted is never recorded: the body as they left it.
            redacted = any(v.direction == "input" and v.action == "redact" for v in ctx.verdicts.items)
            ctx.body = guarded_body(body, raw) if redacted else raw.decode("utf-8", "replace")
        if getattr(body, "stream", False):
            options = body.stream_options
            # Usage feeds limits, metrics and audit; the client gets it only if asked.
            ctx.strip_usage = options is None or not options.include_usage
            return Admission(headers, force_usage=ctx.strip_usage)
        if self.cache is None or _is_embedding(body):
            return Admission(headers)
        return Admission(headers, await self._look_up(self.cache, ctx, raw, target_model, headers))

    async def admit_run(
        self, ctx: RequestContext | None, subject: str, model: str | None = None, tokens: int = 0
    ) -> Admission:
        """Admit a request that runs no engine itself (an agent run) on the caller's own grants and limits.

        Refuses, as the gateway would the run's own LLM calls: 404 ``model_not_found`` when
        the caller may not use ``model`` (the model the run calls), 429 when its requests per
        minute, tokens per minute or token budget lack ``tokens`` (what the run's first call
        asks for at least). One request is taken; the tokens are only checked, since the
        gateway charges the run's calls themselves to the caller (see :meth:`mint_caller_token`).
        ``subject`` (the assistant) is recorded as the request's model in audit and metrics.
        """
        if ctx is None:
            return Admission()
        ctx.model = subject
        if model is not None:
            authorize(ctx.principal, None, model)
        self._check_refused(ctx)
        headers = await self._rate_limit(ctx, tokens)
        if ctx.buckets and ctx.charged_tokens:
            # A check, not a reservation: the run's calls are charged at the gateway.
            refund = [-ctx.charged_tokens] * len(ctx.buckets)
            try:
                await self.limiter.charge(ctx.principal.id, ctx.buckets, refund)
            except Exception as exc:  # noqa: BLE001 - the run is admitted; the tokens refill
                logger.warning("token refund after an agent run's admission failed: %s", exc)
        ctx.buckets, ctx.charged_tokens = [], 0
        return Admission(headers)

    def mint_caller_token(self, principal: Principal, ttl_s: float) -> str | None:
        """A caller token naming ``principal`` for ``ttl_s`` seconds: gateway calls made on its behalf.

        ``None`` where there is nobody to name (auth off, an anonymous caller) or no secret
        (``auth.caller_token_secret_env`` unset): the calls are then the service key's own.
        """
        tokens = self.authenticator.caller_tokens if self.authenticator is not None else None
        if tokens is None or principal.kind not in ("api_key", "oidc"):
            return None
        return tokens.mint(principal, ttl_s)

    def _guards_for(self, principal: Principal) -> tuple[TextGuard, TextGuard]:
        return self._guards.get(principal.role, self._guards[None])

    def _check_input(self, ctx: RequestContext, body: Any, tokens: TokenCounter | None) -> None:
        """Refuse logprobs and token ids where output guardrails apply; apply the input guardrails.

        The input guardrails may redact ``body``; they read a token-id prompt with ``tokens``,
        the model's tokenizer.
        """
        input_guard, output_guard = self._guards_for(ctx.principal)
        logprobs = getattr(body, "logprobs", None)
        # Token logprobs carry the raw text the output guardrail would have changed (a
        # completion's `logprobs: 0` too: the sampled tokens themselves), and token ids it.
        if output_guard.active and getattr(body, "return_token_ids", None):
            raise OpenAIError(
                400,
                "Output guardrails apply to your role, and token ids would bypass them. Use a role "
                "without output guardrails (guardrails.by_role) to receive token ids.",
                param="return_token_ids",
                code="token_ids_not_allowed",
            )
        if output_guard.active and logprobs is not None and logprobs is not False:
            raise OpenAIError(
                400,
                "Output guardrails apply to your role, and logprobs would bypass them. Use a role "
                "without output guardrails (guardrails.by_role) for log-likelihood evaluation.",
                param="logprobs",
                code="logprobs_not_allowed",
            )
        if output_guard.judge is not None and getattr(body, "stream", False):
            # A judge rules on the whole answer; a stream would be sent before it could.
            raise OpenAIError(
                400,
                "An output guardrail judges whole answers for your role: ask without `stream`.",
                param="stream",
                code="stream_not_allowed",
            )
        if input_guard.active:
            with tracer.start_as_current_span("welip.guardrails.input") as span:
                guard_request(body, input_guard, ctx.verdicts, tokens)
                verdicts = [f"{v.kind}:{v.action}" for v in ctx.verdicts.items]
                span.set_attribute("welip.guardrails", verdicts)

    async def _judge_input(self, ctx: RequestContext, body: Any, tokens: TokenCounter | None) -> None:
        """The input guardrail's judge, if the caller's role has one, on the text the model will read."""
        input_guard = self._guards_for(ctx.principal)[0]
        if input_guard.judge is not None:
            with tracer.start_as_current_span("welip.guardrails.judge") as span:
                span.set_attribute("welip.guardrails.direction", "input")
                await judge_request(body, input_guard, ctx.verdicts, tokens)

    def _count_prompt(self, ctx: RequestContext, body: Any, model: str) -> int:
        """The prompt's tokens, when a limit needs them; refuses a prompt over ``max_prompt_tokens``."""
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
        return prompt_tokens

    def _take_slot(self, ctx: RequestContext, model: str) -> None:
        """One of the model's in-flight slots, or 503 when ``max_in_flight_per_model`` are taken."""
        bound = self.config.limits.max_in_flight_per_model
        if bound is not None:
            # Before the rate limit, so a request refused here spends none of the key's quota;
            # the slot is released in settle() whatever happens next.
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

    def _check_refused(self, ctx: RequestContext) -> None:
        """429 at once for a caller this replica just refused for a limit no request can pass now."""
        decision = self.refusals.refused(ctx.principal.id)
        if decision is not None:
            raise _rate_limited(ctx.principal, decision)

    async def _rate_limit(
        self,
        ctx: RequestContext,
        prompt_tokens: int,
        reserved: int = 0,
        param: str | None = None,
    ) -> dict[str, str]:
        """Take one request and ``prompt_tokens + reserved`` tokens from the caller's buckets, or refuse.

        ``reserved``: the completion tokens a generation may use, named by ``param``
        (its ``max_tokens`` field) in a refusal.
        """
        p = ctx.principal
        limits = self.config.limits
        buckets, costs = [], []
        rpm = p.rpm or limits.default_rpm
        tpm = p.tpm or limits.default_tpm
        tokens = prompt_tokens + reserved
        if rpm:
            buckets.append(Bucket("requests", rpm))
            costs.append(1)
        budget = p.token_budget
        if tpm:
            buckets.append(Bucket("tokens", tpm))
            costs.append(tokens)
        if budget:
            buckets.append(Bucket("budget", budget, period_ms=0))
            costs.append(tokens)
        if not buckets:
            return {}
        asked = (
            f" This request may use {tokens} tokens: its prompt ({prompt_tokens}) and {reserved} "
            f"to generate (each choice up to `{param}`, by default the rest of the model's context)."
            if reserved
            else ""
        )
        for bucket in buckets:
            if bucket.name != "requests" and tokens > bucket.capacity:
                # Waiting would never admit it: say so, and what to lower, instead of a 429.
                raise invalid_request(
                    f"The request is larger than the whole {_LIMIT_NAMES[bucket.name]} of {p.id} "
                    f"({bucket.capacity}).{asked} Lower `{param or 'max_tokens'}` or `n`, or shorten "
                    "the prompt.",
                    param=param if reserved else None,
                    code="request_over_token_limit",
                )
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
            self.refusals.remember(p.id, decision)
            raise _rate_limited(p, decision, asked, param)
        ctx.buckets = [b for b in buckets if b.name != "requests"]
        ctx.charged_tokens = tokens
        return decision.headers()

    async def _look_up(
        self,
        cache: ResponseCache,
        ctx: RequestContext,
        raw: bytes,
        target_model: str | None,
        headers: dict[str, str],
    ) -> bytes | None:
        """The cached answer to a deterministic request; the cache header says whether there was one."""
        payload = json.loads(raw)
        if target_model is not None:
            payload["model"] = target_model  # an alias switch must not serve the old model's answers
        p = ctx.principal
        # Per principal unless configured otherwise: a hit must not tell one caller what another sent.
        partition = [p.role] if self.config.cache.scope == "role" else [p.id, p.role]
        ctx.cache_key = cache_key(payload, partition)
        if ctx.cache_key is None:
            return None
        cached = await cache.get(ctx.cache_key)
        ctx.cache = "hit" if cached is not None else "miss"
        if cached is None and self.in_flight_answers is not None:
            cached = await self._join(self.in_flight_answers, ctx)
        headers[CACHE_HEADER] = ctx.cache
        if cached is not None:
            ctx.count_usage(json.loads(cached).get("usage"))
        return cached

    async def _join(self, in_flight: InFlight, ctx: RequestContext) -> bytes | None:
        """The answer of the identical generation running in this replica, or None: this request leads one.

        A leader that ends without an answer hands the key on: a follower then leads (after
        a few hand-overs, the request generates on its own).
        """
        assert ctx.cache_key is not None  # nosec B101 # the caller has made it
        for _ in range(_MAX_HAND_OVERS):
            generation, leads = in_flight.lead_or_follow(ctx.cache_key)
            if leads:
                ctx.cache_lead = generation
                return None
            # Shielded: a follower whose client leaves must not end the leader's generation.
            answer = await asyncio.shield(generation)
            if answer is not None:
                ctx.cache = "coalesced"
                return answer
        return None

    # -- on the answer -------------------------------------------------------------

    async def filter_answer(self, ctx: RequestContext | None, answer: Any) -> bytes:
        """A whole (non-streamed) answer's bytes to send: usage taken, output guardrail applied, cached.

        Raises the output guardrail's refusal (400) before any byte is sent.
        """
        if ctx is not None:
            usage = getattr(answer, "usage", None)
            ctx.count_usage(usage.model_dump() if usage is not None else None)
            output = self._guards_for(ctx.principal)[1]
            if output.active:
                guard_response(answer, output, ctx.verdicts)
            if output.judge is not None:
                with tracer.start_as_current_span("welip.guardrails.judge") as span:
                    span.set_attribute("welip.guardrails.direction", "output")
                    await judge_response(answer, output, ctx.verdicts)
        data: bytes = answer.model_dump_json().encode()
        if ctx is not None and ctx.cache_key is not None and self.cache is not None:
            await self.cache.put(ctx.cache_key, data)
            self._end_lead(ctx, data)
        return data

    def _end_lead(self, ctx: RequestContext, answer: bytes | None) -> None:
        """Give the generation this request leads to its followers (None: they generate)."""
        if ctx.cache_lead is not None and ctx.cache_key is not None and self.in_flight_answers is not None:
            self.in_flight_answers.finish(ctx.cache_key, ctx.cache_lead, answer)
            ctx.cache_lead = None

    def stream_filter(self, ctx: RequestContext | None) -> StreamFilter:
        """The filter a streamed answer's SSE events pass through on their way to the client.

        Asked for when the engine's first answer is in hand: that moment is the request's
        time to first token.
        """
        if ctx is None:
            return StreamFilter()
        self.telemetry.observe_ttft(ctx)
        output = self._guards_for(ctx.principal)[1]
        guard = StreamGuard(output, ctx.verdicts) if output.active else None
        return StreamFilter(ctx, guard)

    def guards_output(self, ctx: RequestContext | None) -> bool:
        """Whether an output guardrail applies to the request's caller."""
        return ctx is not None and self._guards_for(ctx.principal)[1].active

    async def filter_json(self, ctx: RequestContext | None, value: Any) -> Any:
        """``value`` (JSON-ready data an app returns: an agent's state, a run's result, an event) as the
        caller's output guardrail leaves it: every string checked, PII redacted, then judged.

        Raises the output guardrail's refusal (400 ``content_policy_violation``; 503
        ``guardrail_unavailable`` from a fail-closed judge that gave no verdict).
        """
        if ctx is None:
            return value
        output = self._guards_for(ctx.principal)[1]
        if not output.active:
            return value
        checked = guard_json(value, output, ctx.verdicts)
        if output.judge is not None:
            await judge_json(checked, output, ctx.verdicts)
        return checked

    def count_usage(self, ctx: RequestContext | None, usage: Mapping[str, Any] | None) -> None:
        """The usage a model reported for an answer that passes no filter (embeddings)."""
        if ctx is not None:
            ctx.count_usage(usage)

    # -- after the last byte ---------------------------------------------------------

    def settle(self, ctx: RequestContext) -> None:
        """Close the books of a request whose response has been sent (or abandoned)."""
        self._end_lead(ctx, None)  # ended with no answer to share (refused, failed, abandoned)
        if ctx.in_flight_model is not None:
            self._in_flight[ctx.in_flight_model] -= 1
        if ctx.completion_tokens is None and ctx.streamed_tokens:
            # The stream ended before its usage chunk (the client left, the output guardrail
            # cut it): what was generated is what the engine streamed.
            ctx.completion_tokens = ctx.streamed_tokens
        used = (ctx.prompt_tokens or 0) + (ctx.completion_tokens or 0)
        if ctx.buckets and used != ctx.charged_tokens:
            delta = used - ctx.charged_tokens
            if delta < 0:
                self.refusals.refunded(ctx.principal.id)  # tokens given back: ask the limiter again
            self._spawn(self.limiter.charge(ctx.principal.id, ctx.buckets, [delta] * len(ctx.buckets)))
        self.telemetry.settled(ctx)
        # Probes of the public paths (/health, /ready every few seconds) are not audited;
        # a listed route that needs a permission is no probe (it asked for credentials).
        route = ctx.route
        probe = (
            route in self.config.auth.public_paths and route_permission(route) is None and ctx.status < 400
        )
        if self.audit is not None:
            self._record(self.audit, ctx, probe)

    def _record(self, audit: AuditWriter, ctx: RequestContext, probe: bool) -> None:
        """Queue the request's audit record: an admitted one's always, a refused one's if bounds allow."""
        if ctx.audit_reserved:
            ctx.audit_reserved = False
            if probe:
                audit.release()
            else:
                audit.submit(ctx.record(self.replica), reserved=True)
            return
        if probe:
            return
        budget = self._unauthenticated
        if ctx.principal is ANONYMOUS and budget is not None:
            # Never authenticated: a few records per address and minute, the rest only counted.
            source = ctx.source or ""
            if budget.retry_after_s(source) is not None:
                audit.drop("unauthenticated")
                return
            budget.spend(source)
        audit.submit(ctx.record(self.replica))

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception as exc:  # noqa: BLE001 - reconciliation is best effort once answered
                logger.warning("token reconciliation failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# The route families whose POSTs admit() lets through: counted against rpm on arrival.


def _is_embedding(body: Any) -> bool:
    return isinstance(getattr(body, "input", None), list)  # each input is a prompt of its own


def _choices(body: Any) -> tuple[str, int]:
    """The field that sets how many sequences each prompt generates (``n``, or a larger ``best_of``)."""
    n = getattr(body, "n", None) or 1
    best_of = getattr(body, "best_of", None)  # not a field of vLLM's models: kept as an extra if sent
    if isinstance(best_of, int) and best_of > n:
        return "best_of", best_of
    return "n", n


def _max_tokens_field(body: Any) -> str:
    """The field that bounds each choice's length (``max_completion_tokens`` first, as in vLLM)."""
    if getattr(body, "max_completion_tokens", None) is not None:
        return "max_completion_tokens"
    return "max_tokens"


def _check_bounds(body: Any, most_choices: int, context: int) -> None:
    """400 naming the field: more choices than ``most_choices``, a ``max_tokens`` the context cannot hold."""
    field_name, choices = _choices(body)
    if choices > most_choices:
        raise invalid_request(
            f"`{field_name}` is {choices}; this gateway generates at most {most_choices} choices "
            "per request.",
            param=field_name,
        )
    for field_name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, field_name, None)
        if isinstance(value, int) and value > context:
            raise invalid_request(
                f"`{field_name}` is {value}, more than the model's context of {context} tokens "
                "(prompt included) can hold.",
                param=field_name,
            )


def _completion_reserve(body: Any, prompt_tokens: int, context: int) -> int:
    """The most completion tokens a generation request may produce.

    Each of its prompts (a completion may send several) generates its choices, each up
    to ``max_tokens`` and to what the context leaves after the prompt (vLLM's default
    when ``max_tokens`` is unset). Only the prompts' total is known, which bounds the sum.
    """
    prompt = getattr(body, "prompt", None)
    prompts = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list) else 1
    per_choice = getattr(body, _max_tokens_field(body), None) or context
    return _choices(body)[1] * max(0, min(prompts * per_choice, prompts * context - prompt_tokens))


async def build_trust(
    config: TrustConfig, model_sources: dict[str, str], embedding_sources: dict[str, str] | None = None
) -> Trust:
    """The trust layer of one replica, connected to the database and Redis named by the environment.

    The database (``WELIP_DATABASE_URL``, SQLite by default) is opened and migrated
    only when auth or audit needs it; Redis (``WELIP_REDIS_URL``) only when set.
    Tokenizers are loaded for each model (``embedding_sources``: embedding models) when a
    limit or guardrail counts tokens, or input guardrails read token-id prompts.
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
    if trust.counts_tokens or trust.guards_input:
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


_LIMIT_NAMES = {"requests": "requests per minute", "tokens": "tokens per minute", "budget": "token budget"}


def _rate_limited(p: Principal, decision: Decision, asked: str = "", param: str | None = None) -> OpenAIError:
    """The 429 for a refusal: which limit, when to retry, and (for tokens) what to lower."""
    denied = decision.denied_by or ""
    return OpenAIError(
        429,
        f"Rate limit reached for {p.id} on {_LIMIT_NAMES.get(denied, 'limits')}: "
        f"limit {decision.limits.get(denied, 0)}. "
        f"Retry after {decision.headers().get('retry-after')} s."
        + (asked + f" A lower `{param}` needs fewer." if denied != "requests" and asked else ""),
        type="requests" if denied == "requests" else "tokens",
        code="rate_limit_exceeded",
        headers=decision.headers(),
    )

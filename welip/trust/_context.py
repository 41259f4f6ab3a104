"""What the trust layer knows about one request, from arrival to its audit record.

:class:`~welip.trust.TrustMiddleware` opens a :class:`RequestContext` per HTTP request
and keeps it in the ASGI scope; route code reaches it with :func:`context_of`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import Span
from starlette.requests import Request

from welip.api import OpenAIError
from welip.trust._audit import AuditRecord
from welip.trust._auth import ANONYMOUS, OPEN, Principal
from welip.trust._guardrails import Verdicts
from welip.trust._limits import Bucket


@dataclass
class RequestContext:
    """What the trust layer knows about one request, from arrival to audit record."""

    method: str
    route: str
    request_id: str
    audit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    principal: Principal = ANONYMOUS  # until authenticated: no permission, no model
    model: str | None = None
    status: int = 0
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Choice chunks a streamed answer brought, one token each as vLLM streams them: the
    # completion charged when no usage chunk came (the client left, a guardrail cut the stream).
    streamed_tokens: int = 0
    charged_tokens: int = 0
    buckets: list[Bucket] = field(default_factory=list)
    cache: str | None = None  # hit | miss | coalesced, when the request was cacheable
    cache_key: str | None = None
    cache_lead: asyncio.Future[bytes | None] | None = None  # the generation this request leads
    strip_usage: bool = False  # usage was asked of the engine for accounting, not by the client
    verdicts: Verdicts = field(default_factory=Verdicts)
    in_flight_model: str | None = None
    source: str | None = None  # the client's address (the connection's peer)
    audit_reserved: bool = False  # admitted with room promised for its audit record
    body: str | None = None
    span: Span | None = None

    def count_usage(self, usage: Mapping[str, Any] | None) -> None:
        """Take the engine's own token counts (an OpenAI ``usage`` object) over admission's estimate."""
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens")

    def log_fields(self, latency_s: float) -> dict[str, Any]:
        """The request's access-log fields: never the key, never the prompt."""
        p = self.principal
        return {
            "request_id": self.request_id[:128],
            "principal": p.id,
            "key_id": p.key_id,
            "role": p.role,
            "via": p.via,
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

    def record(self, replica: str | None) -> AuditRecord:
        """The audit record: never the key, the prompt only if asked for."""
        p = self.principal
        return AuditRecord(
            id=self.audit_id,
            ts=self.ts.isoformat(),
            request_id=self.request_id[:128],
            principal=p.id,
            principal_kind=p.kind,
            key_id=p.key_id,
            role=p.role,
            via=p.via,
            method=self.method[:8],
            route=self.route[:256],
            model=self.model[:128] if self.model else None,
            status=self.status,
            error_code=self.error_code,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 3),
            cache=self.cache,
            guardrails=self.verdicts.items or None,
            replica=replica,
            body=self.body,
        )


def context_of(request: Request) -> RequestContext | None:
    """The request's :class:`RequestContext`, set by :class:`~welip.trust.TrustMiddleware`."""
    state = request.scope.get("state") or {}
    ctx = state.get("welip")
    return ctx if isinstance(ctx, RequestContext) else None


def principal_of(request: Request) -> Principal:
    """Who is calling; ``OPEN`` (allowed everything) in an app without the trust middleware."""
    ctx = context_of(request)
    return ctx.principal if ctx is not None else OPEN


def record_error(request: Request, error: OpenAIError) -> None:
    """Note the code of the error a request is answered with, for its audit record and metrics."""
    ctx = context_of(request)
    if ctx is not None:
        ctx.error_code = error.code

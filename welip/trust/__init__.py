"""The trust layer every ingress shares: identity, access, limits, guardrails, cache, audit, telemetry.

The gateway and the agents app wrap their HTTP app in :class:`TrustMiddleware`
(request context, authentication, route family; :meth:`Trust.settle` after the last
byte) and call :class:`Trust` around inference: :meth:`Trust.admit` before the engine,
:meth:`Trust.filter_answer` or :meth:`Trust.stream_filter` on its answer. A service
calls the gateway on a caller's behalf with a caller token (:class:`CallerTokens`).
"""

from welip.trust._auth import Principal, oidc_principal_id, permission_denied
from welip.trust._config import (
    AuditConfig,
    AuthConfig,
    CacheConfig,
    GuardrailPolicy,
    GuardrailsConfig,
    JudgeConfig,
    LimitsConfig,
    OIDCConfig,
    PresidioConfig,
    RoleConfig,
    TrustConfig,
)
from welip.trust._context import RequestContext, context_of, principal_of, record_error
from welip.trust._delegation import CALLER_TOKEN_HEADER, CallerTokens
from welip.trust._guardrails import find_pii
from welip.trust._limits import Bucket, MemoryRateLimiter, RedisRateLimiter
from welip.trust._middleware import TrustMiddleware, body_too_large
from welip.trust._stream import StreamFilter
from welip.trust._tokens import TokenCounter
from welip.trust._trust import Admission, Trust, build_trust

__all__ = [
    "CALLER_TOKEN_HEADER",
    "Admission",
    "AuditConfig",
    "AuthConfig",
    "Bucket",
    "CacheConfig",
    "CallerTokens",
    "GuardrailPolicy",
    "GuardrailsConfig",
    "JudgeConfig",
    "LimitsConfig",
    "MemoryRateLimiter",
    "OIDCConfig",
    "PresidioConfig",
    "Principal",
    "RedisRateLimiter",
    "RequestContext",
    "RoleConfig",
    "StreamFilter",
    "TokenCounter",
    "Trust",
    "TrustConfig",
    "TrustMiddleware",
    "body_too_large",
    "build_trust",
    "context_of",
    "find_pii",
    "oidc_principal_id",
    "permission_denied",
    "principal_of",
    "record_error",
]

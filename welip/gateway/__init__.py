"""The gateway: OpenAI routes in front of every engine, as a Serve ingress, with its trust layer."""

from welip.gateway._app import build_gateway_app
from welip.gateway._auth import Authenticator, Principal
from welip.gateway._config import (
    AuditConfig,
    AuthConfig,
    CacheConfig,
    GatewayConfig,
    GuardrailPolicy,
    GuardrailsConfig,
    LimitsConfig,
    OIDCConfig,
    RoleConfig,
    ServingConfig,
)
from welip.gateway._core import EngineClient, GatewayCore, HandleEngine, LocalEngine
from welip.gateway._deployments import EngineGateway, Gateway
from welip.gateway._guardrails import find_pii
from welip.gateway._trust import (
    TokenCounter,
    Trust,
    TrustMiddleware,
    build_trust,
    context_of,
    record_error,
)

__all__ = [
    "AuditConfig",
    "AuthConfig",
    "Authenticator",
    "CacheConfig",
    "EngineClient",
    "EngineGateway",
    "Gateway",
    "GatewayConfig",
    "GatewayCore",
    "GuardrailPolicy",
    "GuardrailsConfig",
    "HandleEngine",
    "LimitsConfig",
    "LocalEngine",
    "OIDCConfig",
    "Principal",
    "RoleConfig",
    "ServingConfig",
    "TokenCounter",
    "Trust",
    "TrustMiddleware",
    "build_gateway_app",
    "build_trust",
    "context_of",
    "find_pii",
    "record_error",
]

"""The gateway: OpenAI routes in front of every engine, as a Serve ingress, behind the trust layer.

The trust layer itself (auth, limits, guardrails, cache, audit, telemetry) is
:mod:`welip.trust`; :class:`GatewayConfig` extends its :class:`~welip.trust.TrustConfig`.
"""

from welip.gateway._app import build_gateway_app
from welip.gateway._cards import ModelCard
from welip.gateway._config import BatchesConfig, FilesConfig, GatewayConfig, ServingConfig
from welip.gateway._core import EngineClient, GatewayCore, HandleEngine, LocalEngine
from welip.gateway._deployments import EngineGateway, Gateway

__all__ = [
    "BatchesConfig",
    "EngineClient",
    "EngineGateway",
    "FilesConfig",
    "Gateway",
    "GatewayConfig",
    "GatewayCore",
    "HandleEngine",
    "LocalEngine",
    "ModelCard",
    "ServingConfig",
    "build_gateway_app",
]

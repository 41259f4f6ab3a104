"""The gateway: OpenAI routes in front of every engine, as a Serve ingress."""

from welip.gateway._app import build_gateway_app
from welip.gateway._core import EngineClient, GatewayCore, HandleEngine, LocalEngine
from welip.gateway._deployments import EngineGateway, Gateway

__all__ = [
    "EngineClient",
    "EngineGateway",
    "Gateway",
    "GatewayCore",
    "HandleEngine",
    "LocalEngine",
    "build_gateway_app",
]

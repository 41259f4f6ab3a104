"""The gateway's two deployment shapes.

* :class:`EngineGateway` (default): the gateway runs inside the first model's
  engine replicas. Requests for that model call the engine in-process; other
  models are one handle hop away. On a small CPU box this removes a process and a
  message per streamed chunk from the token path.
* :class:`Gateway`: a separate ingress deployment over handles to every engine,
  scaled on its own (``gateway.num_replicas``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.llm import LLMConfig

from welip.gateway._app import build_gateway_app
from welip.gateway._core import EngineClient, GatewayCore, HandleEngine, LocalEngine
from welip.serving import GatewayConfig, PreparedLLMServer


@serve.ingress()
class Gateway:
    """Standalone ingress: OpenAI routes over handles to the engine deployments."""

    def __init__(
        self, engines: dict[str, DeploymentHandle], model_cards: list[dict[str, Any]], config: GatewayConfig
    ) -> None:
        clients: dict[str, EngineClient] = {m: HandleEngine(h) for m, h in engines.items()}
        self._core = GatewayCore(clients, model_cards, config)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_gateway_app(self._core)


@serve.ingress()
class EngineGateway(PreparedLLMServer):
    """An engine replica that is also the gateway (one level below ``LLMServer``)."""

    async def __init__(  # type: ignore[misc]
        self,
        llm_config: LLMConfig,
        *,
        peers: dict[str, DeploymentHandle],
        model_cards: list[dict[str, Any]],
        gateway_config: GatewayConfig,
        **kwargs: Any,
    ) -> None:
        await super().__init__(llm_config, **kwargs)
        clients: dict[str, EngineClient] = {llm_config.model_id: LocalEngine(self)}
        clients.update({m: HandleEngine(h) for m, h in peers.items()})
        order = [card["id"] for card in model_cards]
        self._core = GatewayCore({m: clients[m] for m in order}, model_cards, gateway_config)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_gateway_app(self._core)

"""The gateway's two deployment shapes.

* :class:`EngineGateway` (default): the gateway runs inside the first model's
  engine replicas. Requests for that model call the engine in-process; other
  models are one handle hop away. On a small CPU box this removes a process and a
  message per streamed chunk from the token path.
* :class:`Gateway`: a separate ingress deployment over handles to every engine,
  scaled on its own (``gateway.num_replicas``).

Both reach embedding models (``EmbeddingServer`` deployments) through handles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.llm import LLMConfig

from welip.gateway._app import build_gateway_app
from welip.gateway._batches import RayJobLauncher
from welip.gateway._cards import ModelCard
from welip.gateway._catalog import Catalog
from welip.gateway._config import GatewayConfig
from welip.gateway._core import (
    EmbeddingClient,
    EngineClient,
    GatewayCore,
    HandleEmbedder,
    HandleEngine,
    LocalEngine,
)
from welip.observability import install_log_context, setup_tracing
from welip.serving import PreparedLLMServer
from welip.store import BatchStore, Database, FileStore, storage_url_from_env
from welip.trust import Trust, build_trust


@serve.ingress()
class Gateway:
    """Standalone ingress: OpenAI routes over handles to the engine deployments."""

    def __init__(
        self,
        engines: dict[str, DeploymentHandle],
        model_cards: list[ModelCard],
        config: GatewayConfig,
        lora_models: list[str] | None = None,
        no_prompt_logprobs: list[str] | None = None,
        embedders: dict[str, DeploymentHandle] | None = None,
        embedding_cards: list[ModelCard] | None = None,
    ) -> None:
        self._no_prompt_logprobs = set(no_prompt_logprobs or [])
        self._clients: dict[str, EngineClient] = {m: HandleEngine(h) for m, h in engines.items()}
        self._embedders = _embedding_clients(embedders)
        self._embedding_cards = embedding_cards or []
        self._model_cards = model_cards
        self._config = config
        self._catalog = Catalog(list(engines), lora_models or [], config.catalog_refresh_s)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        install_log_context()
        setup_tracing("gateway")
        trust = await build_trust(self._config, _sources(self._model_cards), _sources(self._embedding_cards))
        self._trust = trust
        return build_gateway_app(
            GatewayCore(
                self._clients,
                self._model_cards,
                self._config,
                trust,
                self._catalog,
                self._no_prompt_logprobs,
                embedders=self._embedders,
                embedding_cards=self._embedding_cards,
                files=_file_store(trust),
                batches=_batch_store(trust),
                launcher=RayJobLauncher(self._config.batches),
            )
        )

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown: write the queued audit records.
        trust = getattr(self, "_trust", None)
        if trust is not None:
            trust.close()


@serve.ingress()
class EngineGateway(PreparedLLMServer):
    """An engine replica that is also the gateway (one level below ``LLMServer``)."""

    async def __init__(  # type: ignore[misc]
        self,
        llm_config: LLMConfig,
        *,
        peers: dict[str, DeploymentHandle],
        model_cards: list[ModelCard],
        gateway_config: GatewayConfig,
        lora_models: list[str] | None = None,
        no_prompt_logprobs: list[str] | None = None,
        embedders: dict[str, DeploymentHandle] | None = None,
        embedding_cards: list[ModelCard] | None = None,
        **kwargs: Any,
    ) -> None:
        install_log_context()  # before vLLM reconfigures logging at engine start
        setup_tracing("gateway")  # before the engine's own call: this process is named the gateway
        await super().__init__(llm_config, **kwargs)
        clients: dict[str, EngineClient] = {llm_config.model_id: LocalEngine(self)}
        clients.update({m: HandleEngine(h) for m, h in peers.items()})
        order = [card.id for card in model_cards]
        trust = await build_trust(gateway_config, _sources(model_cards), _sources(embedding_cards or []))
        catalog = Catalog(order, lora_models or [], gateway_config.catalog_refresh_s)
        self._core = GatewayCore(
            {m: clients[m] for m in order},
            model_cards,
            gateway_config,
            trust,
            catalog,
            set(no_prompt_logprobs or []),
            embedders=_embedding_clients(embedders),
            embedding_cards=embedding_cards,
            files=_file_store(trust),
            batches=_batch_store(trust),
            launcher=RayJobLauncher(gateway_config.batches),
        )

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_gateway_app(self._core)

    async def __del__(self) -> None:
        # Write the queued audit records, then let LLMServer stop the engine.
        core = getattr(self, "_core", None)
        if core is not None:
            await asyncio.to_thread(core.trust.close)
        await super().__del__()


def _file_store(trust: Trust) -> FileStore | Callable[[], FileStore]:
    """/v1/files' store on the trust layer's database; with auth and audit off, what opens the
    one the environment names on the first /v1/files request (serving alone needs no database)."""
    storage_url = storage_url_from_env()
    if trust.database is not None:
        return FileStore(trust.database, storage_url)

    def open_store() -> FileStore:
        database = Database()
        database.upgrade()
        return FileStore(database, storage_url)

    return open_store


def _batch_store(trust: Trust) -> BatchStore | Callable[[], BatchStore]:
    """/v1/batches' store, on the trust layer's database or (auth and audit off) opened on first use."""
    if trust.database is not None:
        return BatchStore(trust.database)

    def open_store() -> BatchStore:
        database = Database()
        database.upgrade()
        return BatchStore(database)

    return open_store


def _sources(cards: list[ModelCard]) -> dict[str, str]:
    return {card.id: card.source or card.root for card in cards}


def _embedding_clients(handles: dict[str, DeploymentHandle] | None) -> dict[str, EmbeddingClient]:
    return {model: HandleEmbedder(handle) for model, handle in (handles or {}).items()}

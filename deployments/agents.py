"""Serve app builder: the agents (LangGraph graphs behind the Agent Protocol API).

Referenced from Serve YAML and the KubeRay RayService as
``import_path: deployments.agents:build_app``, usually with ``route_prefix: /agents``
beside the gateway app on the same port. Assistants serve the shipped graphs or your own,
imported from ``graph_paths`` (folders in the image or a mounted volume).

The trust layer is the gateway's (:mod:`welip.trust`: API keys, OIDC, roles: route family
``agents``; request limits; audit log), configured under ``trust``. A run is admitted on
its caller's own grants and limits, and its LLM and embeddings calls carry a caller token
minted for the caller (``trust.auth.caller_token_secret_env``), so that the gateway counts
and audits them under the caller, via the agents service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from pydantic import Field
from ray import serve
from ray.serve.deployment import Application

from welip.agents import (
    AgentRuntime,
    AgentsConfig,
    AgentStore,
    ItemStore,
    RunRow,
    build_agents_app,
    build_store_router,
    compile_graphs,
    import_graph,
    open_checkpointer,
    resolve_agents,
    resolve_graph_paths,
    send_caller_token,
)
from welip.observability import install_log_context, setup_tracing
from welip.store import Database
from welip.trust import (
    Principal,
    Trust,
    TrustConfig,
    TrustMiddleware,
    build_trust,
    context_of,
    principal_of,
    record_error,
)

if TYPE_CHECKING:
    from welip.rag import GatewayEmbeddings

logger = logging.getLogger("welip.agents")

# The principal a request admitted a run for: the run's task, created in the request's
# context, finds it there when it starts.
_run_caller: ContextVar[Principal | None] = ContextVar("welip_run_caller", default=None)


def delegation(
    trust: Trust, agents: dict[str, Any], run_timeout_s: float
) -> tuple[Callable[[Request, str], Awaitable[None]], Callable[[RunRow], str | None]]:
    """The admission of a run, and the caller token minted as the run starts (the runtime's hooks).

    A run is admitted on its caller's own grants and limits for the agent's model
    (:meth:`Trust.admit_run`); its token names that caller and lasts the run's timeout.
    """

    async def admit(request: Request, assistant_id: str) -> None:
        llm = agents[assistant_id].llm
        await trust.admit_run(context_of(request), assistant_id, llm.model, llm.max_tokens)
        _run_caller.set(principal_of(request))

    def mint(run: RunRow) -> str | None:
        principal = _run_caller.get()
        if principal is None or principal.id != run.owner:
            return None
        return trust.mint_caller_token(principal, run_timeout_s)

    return admit, mint


def store_embeddings(config: AgentsConfig) -> GatewayEmbeddings | None:
    """The gateway's embeddings endpoint for the ``/store`` API (None: no model configured)."""
    store = config.store
    if store.embeddings_model is None:
        return None
    from welip.rag import GatewayEmbeddings

    key = os.environ.get(store.api_key_env, "") if store.api_key_env else ""
    return GatewayEmbeddings(
        store.embeddings_base_url,
        store.embeddings_model,
        key or None,
        timeout_s=store.embeddings_timeout_s,
        request_hooks=[send_caller_token],
    )


class AgentsAppConfig(AgentsConfig):
    """The agents app: the runtime's settings plus the trust layer in front of it."""

    trust: TrustConfig = Field(
        default_factory=TrustConfig,
        description="Auth, roles, limits and audit, as the inference gateway's (route family `agents`).",
    )


class CallerOutputGuard:
    """The caller's output guardrail (``trust.guardrails.output``, by role) on the agents API's answers."""

    def __init__(self, trust: Trust) -> None:
        self._trust = trust

    def active(self, request: Request) -> bool:
        return self._trust.guards_output(context_of(request))

    async def apply(self, request: Request, value: Any) -> Any:
        return await self._trust.filter_json(context_of(request), value)


@serve.ingress()
class AgentServer:
    """One replica: every assistant's compiled graph, the shared store, the HTTP app."""

    def __init__(self, config: AgentsAppConfig, agents: list[Any]) -> None:
        self._config = config
        self._agents = agents
        self._stack = contextlib.AsyncExitStack()

    async def __serve_build_asgi_app__(self) -> FastAPI:
        install_log_context()
        setup_tracing("agents")
        config = self._config
        database = Database()
        await asyncio.to_thread(database.upgrade)
        checkpointer = await self._stack.enter_async_context(open_checkpointer(database.url))
        graphs = compile_graphs(self._agents, checkpointer, graph_paths=config.graph_paths)
        try:
            replica: str | None = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (tests)
            replica = None
        trust = await build_trust(config.trust, {})
        self._trust = trust
        agents = {a.assistant_id: a for a in self._agents}
        admit, mint = delegation(trust, agents, config.run_timeout_s)
        if trust.auth_enabled and trust.authenticator and trust.authenticator.caller_tokens is None:
            logger.warning(
                "no caller token secret (trust.auth.caller_token_secret_env): agents' LLM calls "
                "are counted and audited under the agents service key, not their callers"
            )
        store = AgentStore(database, stale_run_s=config.stale_run_s)
        items = ItemStore(database, config.store, embeddings=store_embeddings(config))
        runtime = AgentRuntime(
            graphs, agents, store, checkpointer, config, replica=replica, mint_caller_token=mint, items=items
        )
        runtime.start_cleanup()
        self._runtime = runtime

        def owner_of(request: Request) -> str:
            return principal_of(request).id

        def store_caller_token(request: Request) -> str | None:
            # Lasts one embeddings call: the store's search and put embed as their caller.
            return trust.mint_caller_token(principal_of(request), config.store.embeddings_timeout_s + 30)

        app = build_agents_app(
            runtime,
            owner_of,
            admit,
            on_error=record_error,
            output_guard=CallerOutputGuard(trust),
            store_router=build_store_router(items, owner_of, config.caller_json, store_caller_token),
        )
        app.add_middleware(TrustMiddleware, trust=trust)
        logger.info("agents replica %s serving %s", replica, sorted(graphs))
        return app

    async def __del__(self) -> None:
        runtime = getattr(self, "_runtime", None)
        if runtime is not None:
            await runtime.close()
        trust = getattr(self, "_trust", None)
        if trust is not None:
            await asyncio.to_thread(trust.close)
        await self._stack.aclose()


def build_app(args: dict[str, Any]) -> Application:
    """Build the agents app from ``args`` (validated as :class:`AgentsAppConfig`)."""
    config = AgentsAppConfig.model_validate(args)
    agents = resolve_agents(config)
    # Absolute, so that every replica imports from the same folders; each graph imported
    # here too, so that a wrong path fails the deploy naming the assistant, not a replica.
    config = config.model_copy(update={"graph_paths": resolve_graph_paths(config)})
    for agent in agents:
        if not agent.builtin:
            try:
                import_graph(agent.graph, config.graph_paths)
            except ValueError as exc:
                raise ValueError(f"assistant {agent.assistant_id!r}: {exc}") from exc
    deployment = serve.deployment(
        name="WelipAgents",
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.num_cpus, "runtime_env": {"env_vars": config.env_vars}},
    )(AgentServer)
    return deployment.bind(config=config, agents=agents)

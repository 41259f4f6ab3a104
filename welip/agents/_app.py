"""Assembly of the agents service: checkpointer, chat models, retrievers, graphs, HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi

from welip.agents._api import Admit, OutputGuard, OwnerOf, body_schemas, build_agents_router
from welip.agents._caller import send_caller_token
from welip.agents._config import AgentConfig, ChatModelConfig, RetrievalConfig
from welip.agents._custom import load_graph
from welip.agents._graphs import GRAPHS
from welip.agents._runtime import AgentRuntime
from welip.agents._store import checkpoint_serde
from welip.api import OnError, add_error_handlers
from welip.observability import inject_traceparent

logger = logging.getLogger("welip.agents")
_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('welip.langgraph.setup'))"
_CONNECT_TIMEOUT_S = 5


@contextlib.asynccontextmanager
async def open_checkpointer(database_url: str) -> AsyncIterator[Any]:
    """LangGraph's checkpointer on WeLIP's database: PostgreSQL, or the SQLite file.

    PostgreSQL is named in either of libpq's forms, several hosts and
    ``target_session_attrs=read-write`` included (see :func:`welip.store.postgres_conninfo`).
    After a failover the pool checks each connection before lending it and reconnects to the
    host that is read-write now; a call that meets the dying server raises psycopg's
    ``OperationalError`` (the run fails with it) instead of waiting.

    Raises:
        ValueError: ``database_url`` names neither PostgreSQL nor SQLite, or is a
            PostgreSQL URL libpq would not take.
    """
    from welip.store import postgres_conninfo

    conninfo = postgres_conninfo(database_url)
    if conninfo is not None:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg import AsyncConnection
        from psycopg.conninfo import conninfo_to_dict
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        from welip.store import statement_timeout_ms_from_env

        # A host that does not answer is given up on (libpq then tries the next one).
        timeout: dict[str, Any] = {}
        if "connect_timeout" not in conninfo_to_dict(conninfo):
            timeout["connect_timeout"] = _CONNECT_TIMEOUT_S
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        kwargs.update(timeout)
        # The pool's statements are bound like every WeLIP connection's; the setup's are not.
        bounded = {**kwargs, "options": f"-c statement_timeout={statement_timeout_ms_from_env()}"}
        if "statement_timeout" in conninfo:
            bounded = kwargs  # the URL sets its own
        pool = AsyncConnectionPool(
            conninfo,
            kwargs=bounded,
            min_size=1,
            max_size=8,
            open=False,
            # Pooled connections to a primary that has gone are found before a run gets one.
            check=AsyncConnectionPool.check_connection,
        )
        async with pool:
            await pool.open(wait=True, timeout=30)
            saver = AsyncPostgresSaver(pool, serde=checkpoint_serde())  # type: ignore[arg-type]
            # Replicas start together: one runs LangGraph's migrations at a time. The others
            # poll with pg_try_advisory_lock instead of blocking in pg_advisory_lock: a
            # session blocked in a query holds a snapshot, and the migrations' CREATE INDEX
            # CONCURRENTLY would wait for it forever (or past a statement timeout: they run
            # on a connection of their own, without one).
            async with await AsyncConnection.connect(conninfo, autocommit=True, **timeout) as lock:
                while not (await (await lock.execute(_TRY_LOCK)).fetchone())[0]:  # type: ignore[index]
                    await asyncio.sleep(0.2)
                try:
                    async with await AsyncConnection.connect(conninfo, **kwargs) as setup:
                        await AsyncPostgresSaver(setup).setup()
                finally:
                    await lock.execute("SELECT pg_advisory_unlock(hashtext('welip.langgraph.setup'))")
            yield saver
        return
    if not database_url.startswith("sqlite"):
        raise ValueError(f"agents need PostgreSQL or SQLite, not {database_url.split(':', 1)[0]}")
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = database_url.split("///", 1)[1] if "///" in database_url else ":memory:"
    path = os.path.expanduser(path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(path, timeout=30) as conn:
        sqlite_saver = AsyncSqliteSaver(conn, serde=checkpoint_serde())
        await sqlite_saver.setup()
        yield sqlite_saver


def chat_model(config: ChatModelConfig, transport: httpx.AsyncBaseTransport | None = None) -> Any:
    """LangChain's ``ChatOpenAI`` on the configured endpoint: service key, run's caller token, trace headers.

    ``transport``: an httpx transport to send through (tests pass ``httpx.MockTransport``).
    """
    from langchain_openai import ChatOpenAI

    key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    client = httpx.AsyncClient(
        timeout=config.timeout_s,
        transport=transport,
        event_hooks={"request": [inject_traceparent, send_caller_token]},
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
    )
    return ChatOpenAI(
        base_url=config.base_url,
        api_key=key or "EMPTY",
        model=config.model,
        temperature=config.temperature,
        max_completion_tokens=config.max_tokens,
        timeout=config.timeout_s,
        max_retries=config.max_retries,
        http_async_client=client,
        stream_usage=True,
    )


def gateway_chat_model(llm: ChatModelConfig | None = None, **overrides: Any) -> Any:
    """The chat model for your own graph: LangChain's ``ChatOpenAI`` on the WeLIP gateway.

    Its calls carry the agents' service key and the current run's caller token, so the
    gateway applies the caller's quotas and guardrails and audits them under the caller.
    ``llm`` is the assistant's ``llm`` config (a factory taking the ``AgentConfig`` gets it);
    ``overrides`` are :class:`ChatModelConfig` fields (``model=...``, ``max_tokens=...``).

    Raises:
        pydantic.ValidationError: an override that is not a valid ``ChatModelConfig`` field.
    """
    base = (llm or ChatModelConfig()).model_dump()
    return chat_model(ChatModelConfig.model_validate({**base, **overrides}))


class LazyRetriever:
    """A retriever over a LanceDB table opened on first use (the table may be ingested later)."""

    def __init__(self, config: RetrievalConfig, llm: ChatModelConfig) -> None:
        self.config = config
        self.llm = llm
        self._retriever: Any = None

    async def retrieve(self, query: str) -> list[Any]:
        if self._retriever is None:
            from welip.rag import GatewayEmbeddings, Retriever, VectorStore

            key = os.environ.get(self.llm.api_key_env, "") if self.llm.api_key_env else ""
            try:
                store = VectorStore.open(self.config.table, self.config.storage_url)
            except Exception as exc:
                raise RuntimeError(
                    f"The retrieval table `{self.config.table}` cannot be opened ({exc}); "
                    "ingest documents first: python jobs/ingest.py --config configs/rag/welip_docs.yaml"
                ) from exc
            embeddings = GatewayEmbeddings(
                self.config.embeddings_base_url or self.llm.base_url,
                self.config.embeddings_model,
                key or None,
                request_hooks=[send_caller_token],
            )
            self._retriever = Retriever(
                store=store, embeddings=embeddings, top_k=self.config.top_k, mode=self.config.mode
            )
        return list(await self._retriever.retrieve(query))


def compile_graphs(
    agents: list[AgentConfig],
    checkpointer: Any,
    models: dict[str, Any] | None = None,
    graph_paths: Sequence[str] = (),
) -> dict[str, Any]:
    """Each agent's graph compiled with the checkpointer.

    ``models`` overrides the shipped graphs' chat models by assistant id; your own graphs are
    imported from ``graph_paths`` (:func:`welip.agents.load_graph`).

    Raises:
        ValueError: naming the assistant and the path, for a graph that cannot be loaded.
    """
    graphs = {}
    for agent in agents:
        if not agent.builtin:
            graphs[agent.assistant_id] = load_graph(agent, checkpointer, graph_paths)
            continue
        model = (models or {}).get(agent.assistant_id) or chat_model(agent.llm)
        retriever = LazyRetriever(agent.retrieval, agent.llm) if agent.retrieval else None
        graph = GRAPHS[agent.graph](agent, model, retriever)
        graphs[agent.assistant_id] = graph.compile(checkpointer=checkpointer, name=agent.assistant_id)
    return graphs


def build_agents_app(
    runtime: AgentRuntime,
    owner_of: OwnerOf,
    admit: Admit | None = None,
    on_error: OnError | None = None,
    output_guard: OutputGuard | None = None,
    store_router: APIRouter | None = None,
) -> FastAPI:
    """The FastAPI app of one agents replica (wrap it in the trust middleware to protect it).

    ``on_error`` sees every error answered (the trust layer records its code);
    ``output_guard`` checks every graph value the API returns (the caller's output guardrail);
    ``store_router`` serves LangGraph's ``/store`` (:func:`build_store_router`).
    """
    import welip

    app = FastAPI(
        title="WeLIP agents",
        version=welip.__version__,
        description="Agent Protocol: threads, runs (wait, stream), interrupts, over LangGraph graphs.",
    )

    @app.get("/health", summary="The agents replica is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(build_agents_router(runtime, owner_of, admit, output_guard))
    if store_router is not None:
        app.include_router(store_router)
    add_error_handlers(app, service="agents service", logger=logger, on_error=on_error)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(body_schemas("#/components/schemas/{model}"))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

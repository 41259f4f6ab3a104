"""Schemathesis over the agents app's /openapi.json, as an admin and as a limited key (issue 16).

The app is wired as deployments/agents.py serves it: the trust middleware (API keys in
SQLite, audit, the caller's request limits) in front of the Agent Protocol API, over the
real runtime, store and checkpointer, with fake chat models that answer every run.
Every operation gets generated valid and invalid requests, some on a thread the caller
owns; no answer may be a 5xx, and every 4xx is an OpenAI error body.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI, Request
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from tests.openapi_fuzz import fuzz, operations, request_kwargs
from tests.unit.agents.test_api import RAG, REACT, FakeRetriever
from welip.agents import (
    AgentRuntime,
    AgentsConfig,
    AgentStore,
    ItemStore,
    StoreConfig,
    build_agents_app,
    build_rag_graph,
    build_store_router,
    compile_graphs,
    open_checkpointer,
)
from welip.rag import GatewayEmbeddings
from welip.store import Database, KeyStore
from welip.trust import Trust, TrustConfig, TrustMiddleware, context_of, principal_of, record_error

ADMIN_KEY = "wlp_admin-secret-for-agents-schemathesis"
EXAMPLES = 20  # per operation, caller and generation mode
TRUST = {
    "auth": {
        "enabled": True,
        "admin_key_env": "TEST_AGENTS_SCHEMATHESIS_ADMIN_KEY",
        "roles": {
            "admin": {"permissions": ["agents", "admin"]},
            "limited": {"permissions": ["agents"], "models": ["docs"]},
        },
    },
    "audit": {"enabled": True, "flush_interval_s": 0.05},
}


def _models() -> dict[str, Any]:
    final = json.dumps({"thought": "t", "action": "final_answer", "action_input": "done"})
    return {
        "docs": GenericFakeChatModel(messages=itertools.cycle([AIMessage("An answer [c0ffee01].")])),
        "tools": GenericFakeChatModel(messages=itertools.cycle([AIMessage(final)])),
    }


def _fake_embeddings(request: httpx.Request) -> httpx.Response:
    texts = json.loads(request.content)["input"]
    vectors = [[float(len(t) % 7), 1.0, float(t.count("a"))] for t in texts]
    return httpx.Response(200, json={"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]})


def _app(runtime: AgentRuntime, trust: Trust | None, items: ItemStore) -> FastAPI:
    """The agents app as deployments/agents.py builds it (the store's embeddings faked)."""
    if trust is None:
        store = build_store_router(items, lambda request: "anyone")
        return build_agents_app(runtime, lambda request: "anyone", store_router=store)

    async def admit(request: Request, assistant_id: str) -> None:
        await trust.admit_run(context_of(request), assistant_id)

    def owner_of(request: Request) -> str:
        return principal_of(request).id

    app = build_agents_app(
        runtime, owner_of, admit, on_error=record_error, store_router=build_store_router(items, owner_of)
    )
    app.add_middleware(TrustMiddleware, trust=trust)
    return app


SCHEMA = schemathesis.openapi.from_dict(
    _app(
        AgentRuntime({}, {}, None, None, AgentsConfig(agents=[RAG, REACT])),  # type: ignore[arg-type]
        None,
        ItemStore(Database("sqlite://"), StoreConfig()),
    ).openapi()
)
OPERATIONS = operations(SCHEMA)


class Target:
    """The app on an event loop of its own, and the callers' keys."""

    def __init__(self, portal: BlockingPortal, app: FastAPI, keys: dict[str, str]) -> None:
        self.portal, self.app, self.keys = portal, app, keys

    def send(self, case: Any, caller: str) -> httpx.Response:
        kwargs = request_kwargs(case)
        kwargs["headers"] = {**kwargs.get("headers", {}), "Authorization": f"Bearer {self.keys[caller]}"}
        return self.portal.call(self._call, kwargs)

    async def _call(self, kwargs: dict[str, Any]) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)  # a 500, as served
        async with httpx.AsyncClient(transport=transport, base_url="http://agents") as client:
            return await client.request(**kwargs)


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp_path: Path = tmp_path_factory.mktemp("agents")
    url = f"sqlite:///{tmp_path}/welip.db"
    database = Database(url)
    database.upgrade()
    settings = {**TRUST, "audit": {**TRUST["audit"], "spool_dir": str(tmp_path / "spool")}}  # type: ignore[dict-item]
    with pytest.MonkeyPatch.context() as patch, start_blocking_portal() as portal:
        patch.setenv("TEST_AGENTS_SCHEMATHESIS_ADMIN_KEY", ADMIN_KEY)
        trust = Trust(TrustConfig.model_validate(settings), database=database, redis=None)
        _, limited = KeyStore(database).create_key(name="limited", role="limited", rpm=600)
        config = AgentsConfig(agents=[RAG, REACT], max_pending_runs_per_thread=4)

        async def start() -> tuple[AgentRuntime, Any]:
            stack = open_checkpointer(url)
            checkpointer = await stack.__aenter__()
            graphs = compile_graphs([RAG, REACT], checkpointer, _models())
            graphs["docs"] = build_rag_graph(RAG, _models()["docs"], FakeRetriever()).compile(
                checkpointer=checkpointer
            )
            runtime = AgentRuntime(
                graphs, {"docs": RAG, "tools": REACT}, AgentStore(database), checkpointer, config
            )
            return runtime, stack

        runtime, stack = portal.call(start)
        embeddings = GatewayEmbeddings(
            "http://gateway/v1", "all-minilm-l6-v2", transport=httpx.MockTransport(_fake_embeddings)
        )
        items = ItemStore(database, StoreConfig(max_items_per_owner=50), embeddings=embeddings)
        target = Target(portal, _app(runtime, trust, items), {"admin": ADMIN_KEY, "limited": limited})
        yield target

        async def stop() -> None:
            await runtime.close()
            await stack.__aexit__(None, None, None)

        portal.call(stop)
    trust.close()
    database.dispose()


def _steer(operation: Any, thread_id: str) -> Any:
    """Cases on a thread the caller owns, for a known assistant: generated ids never are."""
    names = {p.name for p in operation.path_parameters}
    if "thread_id" not in names and len(operation.body) == 0:
        return None

    def steer(mode: Any) -> Any:
        path = {"thread_id": thread_id} if "thread_id" in names else None

        def owned(case: Any) -> Any:
            if isinstance(case.body, dict) and operation.path.endswith(("/runs", "/wait", "/stream")):
                case.body.setdefault("assistant_id", "docs")
                case.body["assistant_id"] = "docs"
            return case

        return operation.as_strategy(generation_mode=mode, path_parameters=path).map(owned)

    return steer


@pytest.mark.parametrize("caller", ["admin", "limited"])
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_every_operation_answers_without_5xx_and_errors_in_the_openai_shape(
    agents: Target, label: str, caller: str
) -> None:
    operation = OPERATIONS[label]
    auth = {"Authorization": f"Bearer {agents.keys[caller]}"}
    created = agents.portal.call(
        agents._call, {"method": "POST", "url": "/threads", "json": {}, "headers": auth}
    )
    fuzz(
        operation,
        lambda case: agents.send(case, caller),
        max_examples=EXAMPLES,
        steer=_steer(operation, created.json()["thread_id"]),
    )


def test_the_spec_declares_the_bodies_the_routes_read() -> None:
    """The routes parse their bodies themselves (OpenAI-shaped errors): the spec still names them."""
    for label in (
        "POST /threads",
        "POST /threads/search",
        "PATCH /threads/{thread_id}",
        "POST /threads/{thread_id}/runs",
        "PUT /store/items",
        "POST /store/items/search",
    ):
        assert len(OPERATIONS[label].body) > 0, label

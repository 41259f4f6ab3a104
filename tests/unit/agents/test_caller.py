"""A run's LLM calls carry its own caller's token: the gateway counts and audits them under the caller.

The runs use the real ``chat_model`` (LangChain's ChatOpenAI on httpx): first against a
recording transport, then against the gateway app itself (in process, fake engine), with
the agents app behind the trust layer as ``deployments/agents.py`` wires it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request

from deployments.agents import delegation
from tests.unit.agents.test_api import RAG, REACT, FakeRetriever, sse
from tests.unit.gateway.test_app import FakeEngine, served_card
from tests.unit.trust.test_trust import FakeCounter, _answer
from welip.agents import (
    AgentRuntime,
    AgentsConfig,
    AgentStore,
    ChatModelConfig,
    RunRow,
    build_agents_app,
    build_rag_graph,
    chat_model,
    compile_graphs,
    open_checkpointer,
)
from welip.gateway import GatewayConfig, GatewayCore, build_gateway_app
from welip.store import AuditStore, Database, KeyStore
from welip.trust import Bucket, Trust, TrustConfig, TrustMiddleware, principal_of, record_error

SECRET = "caller-token-secret-for-the-unit-tests-0123456789"
QUESTION = {"messages": [{"role": "user", "content": "API keys?"}]}


def _completion(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    text = "Use welip keys create [c0ffee01]."
    if body.get("stream"):
        chunks = [
            {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"], **part}
            for part in (
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            )
        ]
        events = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=events, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json=json.loads(_answer(text).model_dump_json()))


@contextlib.asynccontextmanager
async def _agents(
    tmp_path: Path, transport: httpx.AsyncBaseTransport, **runtime_kwargs: Any
) -> AsyncIterator[tuple[Any, Database]]:
    url = f"sqlite:///{tmp_path}/welip.db"
    database = Database(url)
    database.upgrade()
    llm = chat_model(ChatModelConfig(base_url="http://gateway/v1", api_key_env="TEST_AGENTS_KEY"), transport)
    async with open_checkpointer(url) as checkpointer:
        graphs = compile_graphs([RAG, REACT], checkpointer, {"docs": llm, "tools": llm})
        graphs["docs"] = build_rag_graph(RAG, llm, FakeRetriever()).compile(checkpointer=checkpointer)
        runtime = AgentRuntime(
            graphs,
            {"docs": RAG, "tools": REACT},
            AgentStore(database),
            checkpointer,
            AgentsConfig(agents=[RAG, REACT]),
            **runtime_kwargs,
        )
        yield runtime, database
        await runtime.close()
    database.dispose()


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agents")


def test_each_runs_llm_calls_carry_its_own_callers_token(tmp_path: Path) -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def gateway(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)  # the runs overlap
        seen.append((request.headers.get("x-welip-caller-token"), request.headers.get("authorization")))
        return _completion(request)

    def mint(run: RunRow) -> str:
        return f"token-of-{run.owner}"

    async def go() -> None:
        async with _agents(tmp_path, httpx.MockTransport(gateway), mint_caller_token=mint) as (runtime, _):
            app = build_agents_app(runtime, lambda r: r.headers["x-user"])
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://a"
            ) as client:

                async def ask(user: str, route: str) -> Any:
                    body = {"assistant_id": "docs", "input": QUESTION, "if_not_exists": "create"}
                    if route == "stream":
                        body["stream_mode"] = ["values", "messages-tuple"]
                    response = await client.post(
                        f"/threads/{user}-{route}/runs/{route}", json=body, headers={"x-user": user}
                    )
                    assert response.status_code == 200
                    return sse(response.text) if route == "stream" else response.json()

                results = await asyncio.gather(
                    *(ask(user, route) for user in ("alice", "bob", "carol") for route in ("wait", "stream"))
                )
                assert all(results)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_AGENTS_KEY", "wlp_service")
        asyncio.run(go())
    assert sorted(seen) == sorted(
        (f"token-of-{user}", "Bearer wlp_service") for user in ("alice", "bob", "carol") for _ in range(2)
    )


def test_without_a_minter_the_calls_are_the_services_own(tmp_path: Path) -> None:
    seen: list[str | None] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-welip-caller-token"))
        return _completion(request)

    async def go() -> None:
        async with _agents(tmp_path, httpx.MockTransport(gateway)) as (runtime, _):
            app = build_agents_app(runtime, lambda r: "alice")
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://a"
            ) as client:
                body = {"assistant_id": "docs", "input": QUESTION, "if_not_exists": "create"}
                assert (await client.post("/threads/t/runs/wait", json=body)).status_code == 200

    asyncio.run(go())
    assert seen == [None]


# -- the agents app and the gateway, both behind the trust layer ---------------------------

AUTH = {
    "enabled": True,
    "key_cache_s": 0,
    "caller_token_secret_env": "TEST_CALLER_TOKEN_SECRET",
    "roles": {
        "user": {"permissions": ["inference", "agents"]},
        "agents-service": {"permissions": ["inference", "embeddings", "delegate"]},
    },
}


def _wait_for(database: Database, route: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [r for r in AuditStore(database).query_audit(limit=1000) if r["route"] == route]
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"expected {n} audit rows for {route}")


def test_an_agent_run_is_its_callers_at_the_agents_app_and_at_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CALLER_TOKEN_SECRET", SECRET)
    trust_config = {"auth": AUTH, "audit": {"enabled": True, "flush_interval_s": 0.05}}
    url = f"sqlite:///{tmp_path}/welip.db"
    database = Database(url)
    database.upgrade()
    keys = KeyStore(database)
    service_record, service = keys.create_key(name="agents", role="agents-service")
    caller, caller_key = keys.create_key(name="a", role="user")
    spent, spent_key = keys.create_key(name="spent", role="user", token_budget=1000)
    other_model, other_model_key = keys.create_key(name="o", role="user", models=["another-model"])
    monkeypatch.setenv("TEST_AGENTS_KEY", service)

    engine = FakeEngine([_answer("Use welip keys create [c0ffee01].", 5, 6)])
    model = ChatModelConfig().model  # the agents' default model
    gateway_config = GatewayConfig.model_validate(
        {**trust_config, "audit": {**trust_config["audit"], "spool_dir": str(tmp_path / "spool-gw")}}
    )
    gateway_trust = Trust(
        gateway_config, database=database, redis=None, token_counters={model: FakeCounter()}
    )
    core = GatewayCore({model: engine}, [served_card(model)], gateway_config, gateway_trust)  # type: ignore[arg-type]
    gateway = httpx.ASGITransport(app=build_gateway_app(core))

    agents_config = TrustConfig.model_validate(
        {**trust_config, "audit": {**trust_config["audit"], "spool_dir": str(tmp_path / "spool-ag")}}
    )
    agents_trust = Trust(agents_config, database=database, redis=None)
    agents = {"docs": RAG, "tools": REACT}
    admit, mint = delegation(agents_trust, agents, run_timeout_s=60)

    def owner_of(request: Request) -> str:
        return principal_of(request).id

    async def go() -> None:
        async with _agents(tmp_path, gateway, mint_caller_token=mint) as (runtime, _):
            app = build_agents_app(runtime, owner_of, admit, on_error=record_error)
            app.add_middleware(TrustMiddleware, trust=agents_trust)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://a"
            ) as client:
                body = {"assistant_id": "docs", "input": QUESTION, "if_not_exists": "create"}

                def as_(key: str) -> dict[str, str]:
                    return {"authorization": f"Bearer {key}"}

                answered = await client.post("/threads/t1/runs/wait", json=body, headers=as_(caller_key))
                assert answered.status_code == 200, answered.text
                assert "__error__" not in answered.json()
                # 900 of the budget's 1000 tokens are spent (without Redis each app keeps its
                # own buckets: here the agents app's); a call of the run asks for up to 256.
                await agents_trust.limiter.charge(spent.id, [Bucket("budget", 1000, period_ms=0)], [900])
                refused = await client.post("/threads/t2/runs/wait", json=body, headers=as_(spent_key))
                assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limit_exceeded")
                assert refused.headers["retry-after"]
                hidden = await client.post("/threads/t3/runs/wait", json=body, headers=as_(other_model_key))
                assert (hidden.status_code, hidden.json()["error"]["code"]) == (404, "model_not_found")

    asyncio.run(go())
    gateway_trust.close()
    agents_trust.close()
    [llm_call] = _wait_for(database, "/v1/chat/completions", 1)
    assert (llm_call["principal"], llm_call["key_id"], llm_call["via"], llm_call["status"]) == (
        caller.id,
        caller.id,
        service_record.id,
        200,
    )
    runs = _wait_for(database, "/threads/t1/runs/wait", 1)
    assert [(r["principal"], r["model"], r["status"]) for r in runs] == [(caller.id, "docs", 200)]
    assert len(engine.calls) == 1  # neither refused run reached the engine
    assert spent.id and other_model.id
    database.dispose()

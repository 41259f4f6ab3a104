"""Your own graphs, by import path from a folder outside ``welip/``: loaded, described, run with the
unchanged ``langgraph-sdk`` (interrupt, resume, state), their LLM calls the caller's own.

The graphs are tests/fixtures/agents/fixture_graphs/orders.py; the shipped example is
examples/agents/. The same graph on the session cluster: tests/integration/test_agents_custom.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError
from langgraph_sdk.schema import Command
from pydantic import ValidationError

from deployments.agents import AgentsAppConfig, build_app
from tests.unit.agents.test_caller import _completion
from welip.agents import (
    AgentConfig,
    AgentRuntime,
    AgentsConfig,
    AgentStore,
    build_agents_app,
    compile_graphs,
    import_graph,
    load_graph,
    open_checkpointer,
    resolve_agents,
    resolve_graph_paths,
)
from welip.agents import _app as agents_app
from welip.store import Database

REPO = Path(__file__).resolve().parents[3]
GRAPH_PATHS = [str(REPO / "tests/fixtures/agents")]
LLM = {"base_url": "http://gateway/v1", "api_key_env": "TEST_AGENTS_KEY"}


def agent(assistant_id: str, graph: str) -> AgentConfig:
    return AgentConfig.model_validate(
        {"assistant_id": assistant_id, "name": assistant_id.title(), "graph": graph, "llm": LLM}
    )


ORDERS = agent("orders", "fixture_graphs.orders:make_graph")
PER_RUN = agent("per-run", "fixture_graphs.orders:per_run")
COMPILED = agent("compiled", "fixture_graphs.orders:compiled")
ORDER = {"messages": [{"role": "user", "content": "Two teas"}], "item": " Tea ", "quantity": 2}


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[httpx.Request]]:
    """The gateway the graphs' LLM calls reach: a recording transport under the real chat model."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _completion(request)

    real = agents_app.chat_model
    monkeypatch.setattr(agents_app, "chat_model", lambda config: real(config, httpx.MockTransport(record)))
    monkeypatch.setenv("TEST_AGENTS_KEY", "wlp_service")
    yield seen


@contextlib.asynccontextmanager
async def sdk(
    tmp_path: Path, agents: list[AgentConfig], graph_paths: list[str] = GRAPH_PATHS
) -> AsyncIterator[tuple[LangGraphClient, LangGraphClient, AgentRuntime]]:
    """alice's and bob's unchanged SDK clients on an app serving ``agents``."""
    url = f"sqlite:///{tmp_path}/welip.db"
    database = Database(url)
    database.upgrade()
    async with open_checkpointer(url) as checkpointer:
        graphs = compile_graphs(agents, checkpointer, graph_paths=graph_paths)
        runtime = AgentRuntime(
            graphs,
            {a.assistant_id: a for a in agents},
            AgentStore(database),
            checkpointer,
            AgentsConfig(agents=agents, graph_paths=graph_paths),
            mint_caller_token=lambda run: f"token-of-{run.owner}",
        )
        app = build_agents_app(runtime, lambda r: r.headers.get("x-user", "alice"))
        transport = httpx.ASGITransport(app=app)
        alice = LangGraphClient(httpx.AsyncClient(transport=transport, base_url="http://agents"))
        bob = LangGraphClient(
            httpx.AsyncClient(transport=transport, base_url="http://agents", headers={"x-user": "bob"})
        )
        async with alice, bob:
            yield alice, bob, runtime
        await runtime.close()
    database.dispose()


def test_sdk_runs_an_imported_graph_through_its_interrupt_and_the_llm_call_is_the_callers(
    tmp_path: Path, gateway: list[httpx.Request]
) -> None:
    async def go() -> None:
        async with sdk(tmp_path, [ORDERS]) as (alice, bob, _):
            (found,) = await alice.assistants.search(graph_id="fixture_graphs.orders:make_graph")
            assert found["assistant_id"] == "orders"
            schemas = await alice.assistants.get_schemas("orders")
            assert {"messages", "item", "quantity", "approved", "receipt"} <= set(
                schemas["state_schema"]["properties"]
            )
            assert schemas["input_schema"]["properties"]["quantity"]["type"] == "integer"
            thread = await alice.threads.create()
            tid = thread["thread_id"]
            parts = [
                p
                async for p in alice.runs.stream(
                    tid, "orders", input=ORDER, stream_mode=["values", "updates"]
                )
            ]
            events = [p.event for p in parts]
            assert events[0] == "metadata" and "values" in events and "updates" in events
            # The subgraph priced the order; the run stopped at the approval.
            updates = [p.data for p in parts if p.event == "updates"]
            (priced,) = [u["pricing"] for u in updates if "pricing" in u]
            assert priced["item"] == "tea" and priced["draft"] == "2 x tea = 6 EUR"
            (stop,) = [u["__interrupt__"] for u in updates if "__interrupt__" in u]
            assert stop[0]["value"]["question"] == "Place the order 2 x tea = 6 EUR?"
            state = await alice.threads.get_state(tid)
            assert state["next"] == ["approve"] and not gateway
            assert (await alice.threads.get(tid))["status"] == "interrupted"

            # Another principal: the thread does not exist for bob.
            with pytest.raises(NotFoundError):
                await bob.threads.get_state(tid)
            # (The SDK's reconnecting `runs.wait` raises httpx's error.)
            with pytest.raises(httpx.HTTPStatusError) as caught:
                await bob.runs.wait(tid, "orders", command=Command(resume={"approved": True}))
            assert caught.value.response.status_code == 404

            values = await alice.runs.wait(tid, "orders", command=Command(resume={"approved": True}))
            assert isinstance(values, dict)
            assert values["receipt"] == "receipt-tea-2" and values["approved"] is True
            assert values["messages"][-1]["content"] == "Use welip keys create [c0ffee01]."
            assert (await alice.threads.get(tid))["status"] == "idle"

    asyncio.run(go())
    # One LLM call, under the service key, carrying the run's caller (alice).
    (call,) = gateway
    assert call.headers["x-welip-caller-token"] == "token-of-alice"
    assert call.headers["authorization"] == "Bearer wlp_service"


def test_a_declined_order_is_not_placed_and_resume_needs_an_interrupt(
    tmp_path: Path, gateway: list[httpx.Request]
) -> None:
    async def go() -> None:
        async with sdk(tmp_path, [ORDERS]) as (alice, _, _):
            tid = (await alice.threads.create())["thread_id"]
            await alice.runs.wait(tid, "orders", input=ORDER)
            values = await alice.runs.wait(tid, "orders", command=Command(resume=False))
            assert isinstance(values, dict)
            assert values["messages"][-1]["content"] == "Order declined." and "receipt" not in values

    asyncio.run(go())
    assert not gateway


def test_the_sdk_draws_an_assistants_graph_and_describes_its_subgraphs(tmp_path: Path) -> None:
    async def go() -> None:
        async with sdk(tmp_path, [ORDERS]) as (alice, _, _):
            drawn = await alice.assistants.get_graph("orders")
            nodes = {node["id"] for node in drawn["nodes"]}
            assert {"pricing", "approve", "act", "confirm"} <= nodes
            assert {"source": "__start__", "target": "pricing"} in [
                {k: e[k] for k in ("source", "target")} for e in drawn["edges"]
            ]
            deep = {node["id"] for node in (await alice.assistants.get_graph("orders", xray=True))["nodes"]}
            assert {"pricing:normalize", "pricing:price"} <= deep and "pricing:price" not in nodes
            with pytest.raises(UnprocessableEntityError, match="xray"):
                await alice.assistants.get_graph("orders", xray=99)
            with pytest.raises(NotFoundError):
                await alice.assistants.get_graph("nope")
            # The subgraph's own schemas, by namespace.
            subgraphs = await alice.assistants.get_subgraphs("orders")
            assert list(subgraphs) == ["pricing"]
            assert {"item", "quantity", "draft"} <= set(subgraphs["pricing"]["state_schema"]["properties"])
            assert list(await alice.assistants.get_subgraphs("orders", namespace="pricing")) == ["pricing"]
            assert await alice.assistants.get_subgraphs("orders", namespace="nope") == {}

    asyncio.run(go())


def test_a_per_run_factory_gets_the_runs_config_and_a_compiled_graph_gets_welips_checkpointer(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with sdk(tmp_path, [PER_RUN, COMPILED]) as (alice, _, runtime):
            assert type(runtime.graphs["per-run"]).__name__ == "PerRunGraph"
            tid = (await alice.threads.create())["thread_id"]
            config: Any = {"configurable": {"price_eur": 5}}
            values = await alice.runs.wait(tid, "per-run", input=ORDER, config=config)
            assert isinstance(values, dict)
            assert values["draft"] == "2 x tea = 10 EUR" and values["__interrupt__"]
            values = await alice.runs.wait(tid, "per-run", command=Command(resume=True), config=config)
            assert isinstance(values, dict) and values["receipt"] == "receipt-tea-2"
            # State and history read through the graph built as the replica started.
            history = await alice.threads.get_history(tid)
            assert history[0]["values"]["receipt"] == "receipt-tea-2"

            other = (await alice.threads.create())["thread_id"]
            values = await alice.runs.wait(other, "compiled", input=ORDER)
            assert isinstance(values, dict) and values["__interrupt__"]
            assert (await alice.threads.get_state(other))["next"] == ["approve"]

    asyncio.run(go())


def test_input_state_updates_and_commands_are_checked_against_the_graphs_schemas(tmp_path: Path) -> None:
    async def go() -> None:
        async with sdk(tmp_path, [COMPILED]) as (alice, _, _):
            tid = (await alice.threads.create())["thread_id"]

            async def refused(call: Any) -> str:
                with pytest.raises(UnprocessableEntityError) as caught:
                    await call
                return str(caught.value)

            assert "input.colour" in await refused(
                alice.runs.create(tid, "compiled", input={**ORDER, "colour": "red"})
            )
            assert "input.quantity" in await refused(
                alice.runs.create(tid, "compiled", input={**ORDER, "quantity": "many"})
            )
            assert "input.messages" in await refused(
                alice.runs.create(tid, "compiled", input={"messages": [{"role": "user"}]})
            )
            # Bounded as every free-form JSON a caller sends (128 keys by default).
            many = {"messages": [{"role": "user", "content": str(i)} for i in range(70)]}
            assert "input is over the bound of 128 keys" in await refused(
                alice.runs.create(tid, "compiled", input=many)
            )
            await alice.runs.wait(tid, "compiled", input=ORDER)
            assert "values.receipt" in await refused(alice.threads.update_state(tid, {"receipt": 7}))
            assert "values.steps" in await refused(alice.threads.update_state(tid, {"steps": 0}))
            assert "goto ['act'] is not allowed" in await refused(
                alice.runs.create(tid, "compiled", command=Command(goto="act"))
            )
            assert "command.update.nope" in await refused(
                alice.runs.create(tid, "compiled", command=Command(resume=True, update={"nope": 1}))
            )
            # What the state schema allows is written: the approval is resumed on a new quantity.
            await alice.threads.update_state(tid, {"quantity": 3})
            assert (await alice.threads.get_state(tid))["values"]["quantity"] == 3

    asyncio.run(go())


def test_configs_and_graphs_that_cannot_work_are_refused_naming_the_assistant_and_path(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValidationError, match="graph_paths are local folders"):
        AgentsConfig(agents=[ORDERS], graph_paths=["https://example.com/graphs.zip"])
    with pytest.raises(ValidationError, match="graph"):
        agent("x", "fixture_graphs.orders")  # no attribute
    with pytest.raises(ValidationError, match="configure the shipped graphs"):
        AgentConfig.model_validate({**ORDERS.model_dump(), "tools": ["calculator"]})
    for graph, cause in [
        ("fixture_graphs.missing:graph", "cannot import fixture_graphs.missing"),
        ("fixture_graphs.orders:nothing", "has no attribute nothing"),
        ("fixture_graphs.orders:not_a_graph", "int is neither a graph nor a factory"),
    ]:
        with pytest.raises(ValueError, match=cause) as caught:
            load_graph(agent("broken", graph), None, GRAPH_PATHS)
        assert f"assistant 'broken', graph {graph}" in str(caught.value)
    args = {"agents": [agent("broken", "fixture_graphs.missing:graph").model_dump()]}
    with pytest.raises(ValueError, match=r"'broken'.*fixture_graphs\.missing"):
        build_app({**args, "graph_paths": ["tests/fixtures/agents"]})
    with pytest.raises(ValueError, match="not a folder"):
        build_app({**args, "graph_paths": [str(tmp_path / "absent")]})


def test_the_shipped_graphs_keep_their_own_schemas_and_strict_updates(tmp_path: Path) -> None:
    from tests.unit.agents.test_api import REACT

    async def go() -> None:
        async with sdk(tmp_path, [REACT, COMPILED]) as (alice, _, _):
            schemas = await alice.assistants.get_schemas("tools")
            assert schemas["input_schema"]["title"] == "AgentInput"
            assert "steps" in schemas["state_schema"]["properties"]
            assert (await alice.assistants.get("tools"))["graph_id"] == "react"

    asyncio.run(go())


def test_the_example_deploys_by_editing_the_serve_config_and_refunds_after_approval(
    tmp_path: Path, gateway: list[httpx.Request], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    serve_config = yaml.safe_load((REPO / "configs/serve/local.yaml").read_text())
    (args,) = [a["args"] for a in serve_config["applications"] if a["name"] == "agents"]
    # The edit examples/agents/README.md shows.
    args = {
        **args,
        "graph_paths": ["examples/agents"],
        "agents": [*args["agents"], "examples/agents/support.yaml"],
    }
    build_app(args)  # imports the graph: a wrong path would fail here
    config = AgentsAppConfig.model_validate(args)
    (support,) = [a for a in resolve_agents(config) if a.assistant_id == "support"]
    support = support.model_copy(update={"llm": support.llm.model_copy(update=LLM)})
    paths = resolve_graph_paths(config)

    async def go() -> None:
        async with sdk(tmp_path, [support], paths) as (alice, _, _):
            tid = (await alice.threads.create())["thread_id"]
            question = {"messages": [{"role": "user", "content": "Order #1001 arrived broken."}]}
            parts = [
                p
                async for p in alice.runs.stream(
                    tid, "support", input=question, stream_mode=["values", "updates"]
                )
            ]
            (stop,) = [
                p.data["__interrupt__"] for p in parts if p.event == "updates" and "__interrupt__" in p.data
            ]
            assert stop[0]["value"]["question"] == "Refund 49 EUR for order 1001?"
            assert (await alice.threads.get_state(tid))["next"] == ["approve_refund"]
            values = await alice.runs.wait(tid, "support", command=Command(resume={"approved": True}))
            assert isinstance(values, dict) and values["refund"] == "refund-1001-49eur"
            assert values["messages"][-1]["type"] == "ai"

    asyncio.run(go())
    (call,) = gateway
    assert call.headers["x-welip-caller-token"] == "token-of-alice"


def test_a_graph_folder_cannot_shadow_an_installed_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder's own `colorsys` (a standard library module nothing here has imported yet).
    (tmp_path / "colorsys.py").write_text("SHADOWED = True\n")
    (tmp_path / "shadow_graph.py").write_text("import colorsys\n\ngraph = colorsys\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    imported = import_graph("shadow_graph:graph", [str(tmp_path)])
    assert not hasattr(imported, "SHADOWED")  # the standard library's colorsys
    assert sys.path[-1] == str(tmp_path)

"""Your own graph on the session cluster: tests/fixtures/agents/fixture_graphs/orders.py, served by
import path from the agents app's ``graph_paths`` (outside ``welip/``), driven by the unchanged
``langgraph-sdk`` (async and sync), its LLM call made through the gateway as the caller's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client, get_sync_client
from langgraph_sdk.errors import NotFoundError
from langgraph_sdk.schema import Command

from tests.integration.conftest import ADMIN_KEY

pytestmark = pytest.mark.integration

ORDER = {"messages": [{"role": "user", "content": "Two teas"}], "item": " Tea ", "quantity": 2}


def _caller_key(http: httpx.Client, name: str) -> dict[str, Any]:
    return dict(http.post("/admin/keys", json={"name": name, "role": "agent-user"}).json())


def test_the_async_sdk_drives_an_imported_graph_through_its_interrupt_as_the_callers_own(
    base_url: str, http: httpx.Client
) -> None:
    caller = _caller_key(http, "agents-custom-async")
    url = f"{base_url}/agents"

    async def go() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        client = get_client(url=url, headers={"Authorization": f"Bearer {caller['key']}"})
        other = get_client(url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        (found,) = await client.assistants.search(graph_id="fixture_graphs.orders:make_graph")
        assert found["assistant_id"] == "orders"
        schemas = await client.assistants.get_schemas("orders")
        assert {"item", "quantity", "approved", "receipt"} <= set(schemas["state_schema"]["properties"])
        thread = await client.threads.create(metadata={"custom": True})
        tid = thread["thread_id"]
        parts = [
            p async for p in client.runs.stream(tid, "orders", input=ORDER, stream_mode=["values", "updates"])
        ]
        # Another principal does not see the thread, nor can it resume it.
        with pytest.raises(NotFoundError):
            await other.threads.get(tid)
        with pytest.raises(NotFoundError):
            await other.threads.get_state(tid)
        interrupted = await client.threads.get(tid)
        result = await client.runs.wait(tid, "orders", command=Command(resume={"approved": True}))
        assert isinstance(result, dict)
        return parts, dict(interrupted), result

    parts, interrupted, result = asyncio.run(go())
    assert parts[0].event == "metadata"
    updates = [p.data for p in parts if p.event == "updates"]
    (priced,) = [u["pricing"] for u in updates if "pricing" in u]
    assert priced["draft"] == "2 x tea = 6 EUR"  # the subgraph ran
    (stop,) = [u["__interrupt__"] for u in updates if "__interrupt__" in u]
    assert stop[0]["value"]["question"] == "Place the order 2 x tea = 6 EUR?"
    assert any(p.event == "values" for p in parts)
    assert interrupted["status"] == "interrupted"
    assert result["receipt"] == "receipt-tea-2" and "__error__" not in result, result
    assert result["messages"][-1]["type"] == "ai" and result["messages"][-1]["content"]

    # The graph's LLM call went through the gateway as the caller's, via the agents service.
    service = next(k["id"] for k in http.get("/admin/keys").json()["data"] if k["name"] == "agents-service")
    deadline = time.monotonic() + 30
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not rows:
        audit = http.get("/admin/audit", params={"limit": 500}).json()["data"]
        rows = [r for r in audit if r["route"] == "/v1/chat/completions" and r["key_id"] == caller["id"]]
        time.sleep(0.5)
    assert {(r["principal"], r["via"], r["status"]) for r in rows} == {(caller["id"], service, 200)}


def test_the_sync_sdk_runs_waits_and_resumes_an_imported_graph(base_url: str, http: httpx.Client) -> None:
    caller = _caller_key(http, "agents-custom-sync")
    client = get_sync_client(url=f"{base_url}/agents", headers={"Authorization": f"Bearer {caller['key']}"})
    assert client.assistants.get("orders")["graph_id"] == "fixture_graphs.orders:make_graph"
    tid = client.threads.create()["thread_id"]
    stopped = client.runs.wait(tid, "orders", input={**ORDER, "quantity": 3})
    assert isinstance(stopped, dict) and stopped["__interrupt__"][0]["value"]["draft"] == "3 x tea = 9 EUR"
    state = client.threads.get_state(tid)
    assert state["next"] == ["approve"]
    parts = list(client.runs.stream(tid, "orders", command=Command(resume=False), stream_mode="values"))
    assert parts[-1].event == "values" and parts[-1].data["messages"][-1]["content"] == "Order declined."
    assert client.threads.get_state(tid)["values"]["approved"] is False
    # What is not a key of the graph's state is refused, naming it.
    refused = httpx.post(
        f"{base_url}/agents/threads/{tid}/state",
        json={"values": {"colour": "red"}},
        headers={"Authorization": f"Bearer {caller['key']}"},
        timeout=60,
    )
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "values.colour"

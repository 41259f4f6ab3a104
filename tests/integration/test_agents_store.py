"""LangGraph's ``/store`` API on the session cluster: the unchanged ``langgraph-sdk`` clients (sync
and async) against the agents app's two replicas, items in PostgreSQL, queries and items embedded
by the gateway's all-MiniLM-L6-v2 as their caller.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

MEMORIES = {
    "pets": {"text": "My dog loves to chase the ball in the park"},
    "food": {"text": "I cook spaghetti carbonara every Sunday"},
    "work": {"text": "The quarterly budget review is on Monday"},
}


def _key(http: httpx.Client, name: str) -> dict[str, Any]:
    """A new API key of the role that may use the agents API only."""
    return dict(http.post("/admin/keys", json={"name": name, "role": "agent-user"}).json())


def test_the_sdk_puts_and_searches_by_meaning_and_another_principal_sees_nothing(
    base_url: str, http: httpx.Client
) -> None:
    from langgraph_sdk import get_client, get_sync_client
    from langgraph_sdk.errors import NotFoundError

    alice_key, bob_key = _key(http, "store-alice"), _key(http, "store-bob")
    url = f"{base_url}/agents"
    alice_sync = get_sync_client(
        url=url, api_key=None, headers={"Authorization": f"Bearer {alice_key['key']}"}
    )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for key, value in MEMORIES.items():
        alice_sync.store.put_item(["memories"], key, value)
    timings["put_ms"] = 1000 * (time.perf_counter() - started) / len(MEMORIES)
    assert alice_sync.store.get_item(["memories"], "food")["value"] == MEMORIES["food"]

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        alice = get_client(url=url, api_key=None, headers={"Authorization": f"Bearer {alice_key['key']}"})
        bob = get_client(url=url, api_key=None, headers={"Authorization": f"Bearer {bob_key['key']}"})
        begun = time.perf_counter()
        dinner = await alice.store.search_items(["memories"], query="What do I like to eat for dinner?")
        timings["search_ms"] = 1000 * (time.perf_counter() - begun)
        with pytest.raises(NotFoundError):
            await bob.store.get_item(["memories"], "food")
        assert (await bob.store.search_items(["memories"], query="dinner"))["items"] == []
        assert (await bob.store.list_namespaces())["namespaces"] == []
        return dinner["items"], (await alice.store.search_items([], query="a puppy playing outside"))["items"]

    dinner, puppy = asyncio.run(go())
    print(f"store over the session gateway: {timings}")  # the measurement the report quotes
    assert dinner[0]["key"] == "food", dinner
    assert puppy[0]["key"] == "pets", puppy
    assert dinner[0]["score"] > dinner[1]["score"]
    # The embeddings calls went through the gateway as alice's own, via the agents service.
    service = next(k["id"] for k in http.get("/admin/keys").json()["data"] if k["name"] == "agents-service")
    deadline = time.monotonic() + 30
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(rows) < len(MEMORIES) + 2:
        audit = http.get("/admin/audit", params={"limit": 500}).json()["data"]
        rows = [r for r in audit if r["route"] == "/v1/embeddings" and r["key_id"] == alice_key["id"]]
        time.sleep(0.5)
    assert len(rows) == len(MEMORIES) + 2, rows
    assert {(r["via"], r["status"]) for r in rows} == {(service, 200)}

"""LangGraph's ``/store`` API on the agents app, driven by the unchanged ``langgraph-sdk`` clients
(async and sync), each over PostgreSQL on 127.0.0.1:5432 (a database for this module, dropped
after) and over SQLite (the default database).

Embeddings come from a fake ``/v1/embeddings`` endpoint (``httpx.MockTransport``): a bag of
words hashed into 256 dimensions, so an item sharing the query's words ranks first. The real
gateway's embeddings are in tests/integration/test_agents_store.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import struct
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from langgraph_sdk.client import LangGraphClient, SyncLangGraphClient
from langgraph_sdk.errors import APIStatusError, NotFoundError

from tests.unit.agents.test_api import RAG, REACT
from welip.agents import (
    CALLER_TOKEN_HEADER,
    AgentRuntime,
    AgentsConfig,
    AgentStore,
    CallerJsonLimits,
    ItemStore,
    StoreConfig,
    build_agents_app,
    build_store_router,
    send_caller_token,
)
from welip.rag import GatewayEmbeddings
from welip.store import Database, Keyring, agent_store_items, utcnow

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVICE_KEY = "wlp_agents-service-key"
DIMENSIONS = 256


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    """A fresh PostgreSQL database, migrated; dropped after the module."""
    name = f"welip_kvstore_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 (make services)")
    db = Database(f"postgresql://postgres@127.0.0.1:5432/{name}")
    db.upgrade()
    yield db
    db.dispose()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, database: Database, tmp_path: Path) -> Iterator[Database]:
    """The module's PostgreSQL database with no items in it; or a new SQLite file (the default)."""
    if request.param == "sqlite":
        sqlite = Database(f"sqlite:///{tmp_path}/welip.db")
        sqlite.upgrade()
        yield sqlite
        sqlite.dispose()
        return
    with database.engine.begin() as conn:
        conn.execute(agent_store_items.delete())
    yield database


def _vector(text: str) -> list[float]:
    vector = [0.0] * DIMENSIONS
    for word in "".join(c if c.isalnum() else " " for c in text.lower()).split():
        vector[zlib.crc32(word.encode()) % DIMENSIONS] += 1.0
    return vector


class FakeEmbeddings:
    """The gateway's ``POST /v1/embeddings``, recording what each request carried."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], list[str]]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append((dict(request.headers), list(body["input"])))
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(t)} for i, t in enumerate(body["input"])
        ]
        return httpx.Response(200, json={"object": "list", "data": data, "model": body["model"]})

    def client(self) -> GatewayEmbeddings:
        return GatewayEmbeddings(
            "http://gateway/v1",
            "all-minilm-l6-v2",
            SERVICE_KEY,
            transport=httpx.MockTransport(self.handle),
            request_hooks=[send_caller_token],
        )


def _owner(request: Request) -> str:
    return request.headers.get("x-user", "alice")


def _app(items: ItemStore, limits: CallerJsonLimits | None = None) -> FastAPI:
    """The agents app with the store router, as deployments/agents.py assembles it."""
    runtime = AgentRuntime({}, {}, None, None, AgentsConfig(agents=[RAG, REACT]))  # type: ignore[arg-type]
    router = build_store_router(items, _owner, limits, lambda request: f"token-of-{_owner(request)}")
    return build_agents_app(runtime, _owner, store_router=router)


@contextlib.asynccontextmanager
async def sdk(app: FastAPI) -> AsyncIterator[tuple[LangGraphClient, LangGraphClient, httpx.AsyncClient]]:
    """alice's and bob's async SDK clients on ``app``, and a raw client (alice) for what the SDK refuses."""
    transport = httpx.ASGITransport(app=app)
    alice = LangGraphClient(httpx.AsyncClient(transport=transport, base_url="http://agents"))
    bob = LangGraphClient(
        httpx.AsyncClient(transport=transport, base_url="http://agents", headers={"x-user": "bob"})
    )
    async with alice, bob, httpx.AsyncClient(transport=transport, base_url="http://agents") as raw:
        yield alice, bob, raw


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _status(call: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(APIStatusError) as caught:
        await call
    return caught.value.status_code, caught.value.response.json()["error"]


MEMORIES = {
    "m1": {"text": "Alice loves pepperoni pizza on Fridays", "kind": "food", "stars": 5},
    "m2": {"text": "Alice runs a marathon every spring", "kind": "sport", "stars": 3},
    "m3": {"text": "Alice drinks green tea in the morning", "kind": "food", "stars": 4},
}


def test_put_get_search_delete_and_namespaces_with_the_async_sdk(db: Database) -> None:
    fake = FakeEmbeddings()
    items = ItemStore(db, StoreConfig(), embeddings=fake.client())

    async def main() -> None:
        async with sdk(_app(items)) as (alice, _, _):
            for key, value in MEMORIES.items():
                await alice.store.put_item(["memories", "alice"], key, value)
            await alice.store.put_item(["prefs", "ui"], "theme", {"text": "dark mode"}, index=False)

            item = await alice.store.get_item(["memories", "alice"], "m1")
            assert item["namespace"] == ["memories", "alice"] and item["key"] == "m1"
            assert item["value"] == MEMORIES["m1"]
            assert item["created_at"] == item["updated_at"]

            # The item sharing the query's words ranks first, with scores best first.
            found = (await alice.store.search_items(["memories"], query="pizza on Fridays"))["items"]
            assert found[0]["key"] == "m1"
            scores = [i["score"] for i in found]
            assert scores == sorted(scores, reverse=True) and scores[-1] < scores[0] <= 1.0001
            # Filters: equality and operators on top-level fields; limit and offset page the ranking.
            food = await alice.store.search_items(["memories"], query="tea", filter={"kind": "food"})
            assert [i["key"] for i in food["items"]] == ["m3", "m1"]
            starred = await alice.store.search_items([], filter={"stars": {"$gte": 4}, "kind": {"$ne": "x"}})
            assert {i["key"] for i in starred["items"]} == {"m1", "m3"}
            assert all(i["score"] is None for i in starred["items"])
            second = await alice.store.search_items(["memories"], query="pizza on Fridays", limit=1, offset=1)
            assert [i["key"] for i in second["items"]] == [found[1]["key"]]
            # Without a query: newest first; `index: false` items are listed but never ranked.
            listed = await alice.store.search_items([])
            assert [i["key"] for i in listed["items"]] == ["theme", "m3", "m2", "m1"]
            ranked = await alice.store.search_items([], query="dark mode")
            assert "theme" not in [i["key"] for i in ranked["items"]]
            assert (await alice.store.search_items(["memories", "bob"]))["items"] == []
            assert (await alice.store.search_items(["Memories"]))["items"] == []  # labels are case-sensitive
            assert (await alice.store.search_items(["memo"]))["items"] == []  # whole labels only

            namespaces = await alice.store.list_namespaces()
            assert namespaces["namespaces"] == [["memories", "alice"], ["prefs", "ui"]]
            assert (await alice.store.list_namespaces(prefix=["prefs"]))["namespaces"] == [["prefs", "ui"]]
            assert (await alice.store.list_namespaces(suffix=["alice"]))["namespaces"] == [
                ["memories", "alice"]
            ]
            assert (await alice.store.list_namespaces(prefix=["*", "ui"]))["namespaces"] == [["prefs", "ui"]]
            assert (await alice.store.list_namespaces(max_depth=1))["namespaces"] == [["memories"], ["prefs"]]
            assert (await alice.store.list_namespaces(limit=1, offset=1))["namespaces"] == [["prefs", "ui"]]

            # A put replaces the value; created_at stays.
            await asyncio.sleep(0.01)
            await alice.store.put_item(["memories", "alice"], "m1", {"text": "Alice now prefers sushi"})
            replaced = await alice.store.get_item(["memories", "alice"], "m1")
            assert replaced["value"] == {"text": "Alice now prefers sushi"}
            assert (
                replaced["created_at"] == item["created_at"] and replaced["updated_at"] > item["updated_at"]
            )
            first = (await alice.store.search_items(["memories"], query="sushi"))["items"][0]
            assert first["key"] == "m1"

            await alice.store.delete_item(["memories", "alice"], "m1")
            with pytest.raises(NotFoundError):
                await alice.store.get_item(["memories", "alice"], "m1")
            await alice.store.delete_item(["memories", "alice"], "m1")  # nothing there: still fine

        # Each put was embedded once (not the `index: false` one), each query once, all as alice.
        texts = [texts for _, texts in fake.requests]
        assert ["dark mode"] in texts and len(texts) == 3 + 4 + 2
        assert all(h[CALLER_TOKEN_HEADER] == "token-of-alice" for h, _ in fake.requests)
        assert all(h["authorization"] == f"Bearer {SERVICE_KEY}" for h, _ in fake.requests)
        assert texts[0] == [json.dumps(MEMORIES["m1"], ensure_ascii=False)]  # the default field `$`

    run(main())


def test_the_sync_sdk_puts_searches_and_gets(db: Database) -> None:
    items = ItemStore(db, StoreConfig(), embeddings=FakeEmbeddings().client())
    with TestClient(_app(items), base_url="http://agents") as http:
        client = SyncLangGraphClient(http)
        for key, value in MEMORIES.items():
            client.store.put_item(["memories"], key, value, index=["text"])
        found = client.store.search_items(["memories"], query="marathon in spring", limit=2)
        assert found["items"][0]["key"] == "m2" and len(found["items"]) == 2
        assert client.store.get_item(["memories"], "m3")["value"] == MEMORIES["m3"]
        with pytest.raises(NotFoundError):
            client.store.get_item(["memories"], "nope")


def test_another_principals_items_are_404_and_their_namespaces_never_listed(db: Database) -> None:
    items = ItemStore(db, StoreConfig(), embeddings=FakeEmbeddings().client())

    async def main() -> None:
        async with sdk(_app(items)) as (alice, bob, _):
            await alice.store.put_item(["notes"], "secret", {"text": "alice's plan"})
            status, error = await _status(bob.store.get_item(["notes"], "secret"))
            assert (status, error["code"]) == (404, "item_not_found")
            assert (await bob.store.search_items([], query="alice's plan"))["items"] == []
            assert (await bob.store.search_items(["notes"]))["items"] == []
            assert (await bob.store.list_namespaces())["namespaces"] == []
            await bob.store.delete_item(["notes"], "secret")  # deletes bob's own (none)
            # The same address is bob's own item, separate from alice's.
            await bob.store.put_item(["notes"], "secret", {"text": "bob's"})
            assert (await alice.store.get_item(["notes"], "secret"))["value"] == {"text": "alice's plan"}
            assert (await bob.store.get_item(["notes"], "secret"))["value"] == {"text": "bob's"}

    run(main())


def test_expired_items_are_gone_refreshed_ones_live_on_and_the_cleanup_deletes_them(db: Database) -> None:
    items = ItemStore(db, StoreConfig(), embeddings=FakeEmbeddings().client())

    async def main() -> None:
        async with sdk(_app(items)) as (alice, _, _):
            await alice.store.put_item(["t"], "short", {"text": "gone soon"}, ttl=0.01)  # type: ignore[arg-type]
            await alice.store.put_item(["t"], "read", {"text": "kept by reads"}, ttl=0.02)  # type: ignore[arg-type]
            await alice.store.put_item(["t"], "unread", {"text": "read without refresh"}, ttl=0.02)  # type: ignore[arg-type]
            await alice.store.put_item(["t"], "forever", {"text": "no ttl"})
            assert (await alice.store.get_item(["t"], "short"))["key"] == "short"
            await asyncio.sleep(0.8)  # 0.6 s past `short`'s TTL; 0.4 s before the others'
            await alice.store.get_item(["t"], "read")  # refreshes by default (LangGraph's)
            await alice.store.get_item(["t"], "unread", refresh_ttl=False)
            with pytest.raises(NotFoundError):
                await alice.store.get_item(["t"], "short")
            await asyncio.sleep(0.8)  # `unread` expired; `read` has 0.4 s left
            keys = {i["key"] for i in (await alice.store.search_items(["t"], refresh_ttl=False))["items"]}
            assert keys == {"read", "forever"}
            ranked = await alice.store.search_items(["t"], query="gone soon read without refresh")
            assert {i["key"] for i in ranked["items"]} == {"read", "forever"}
            assert (await alice.store.list_namespaces())["namespaces"] == [["t"]]

        # The app's clean-up loop deletes the expired rows.
        runtime = AgentRuntime({}, {}, AgentStore(db), None, AgentsConfig(agents=[RAG, REACT]), items=items)  # type: ignore[arg-type]
        await runtime.cleanup_once()
        with db.engine.connect() as conn:
            left = set(conn.execute(sa.select(agent_store_items.c.key)).scalars())
        assert left == {"read", "forever"}

    run(main())


def test_bounds_are_4xx_naming_the_field(db: Database) -> None:
    config = StoreConfig(max_items_per_owner=3, max_namespace_depth=3, max_key_chars=16, max_ttl_minutes=60)
    items = ItemStore(db, config, embeddings=FakeEmbeddings().client())
    limits = CallerJsonLimits(max_bytes=512)

    async def main() -> None:
        async with sdk(_app(items, limits)) as (alice, _, raw):

            async def refused(call: Any, status: int, param: str | None) -> str:
                got, error = await _status(call)
                assert (got, error["param"]) == (status, param), error
                return str(error["message"])

            assert "512" in await refused(alice.store.put_item(["a"], "k", {"text": "x" * 600}), 422, "value")
            await refused(alice.store.put_item(["a", "b", "c", "d"], "k", {}), 422, "namespace")
            await refused(alice.store.put_item([], "k", {}), 422, "namespace")
            await refused(alice.store.put_item([""], "k", {}), 422, "namespace")
            await refused(alice.store.put_item(["langgraph"], "k", {}), 422, "namespace")
            await refused(alice.store.put_item(["a"], "k" * 17, {}), 422, "key")
            await refused(alice.store.put_item(["a"], "", {}), 422, "key")
            await refused(alice.store.put_item(["a"], "k\x00", {}), 422, "key")
            await refused(alice.store.put_item(["a"], "k", {}, ttl=61), 422, "ttl")
            await refused(alice.store.put_item(["a"], "k", {}, ttl=-1), 422, "ttl")
            await refused(alice.store.put_item(["a"], "k", {}, index=["x"] * 17), 422, "index")
            await refused(alice.store.search_items(["a"], limit=1001), 422, "limit")
            await refused(alice.store.search_items(["a"], offset=-1), 422, "offset")
            await refused(alice.store.search_items(["a"], filter={"x": {"$regex": "."}}), 422, "filter.x")
            await refused(alice.store.list_namespaces(limit=0), 422, "limit")
            await refused(alice.store.get_item(["a"], "k", params={"typo": "1"}), 422, "typo")
            # What the SDK itself refuses, sent raw: a label with a period, an unknown field.
            dotted = await raw.get("/store/items", params={"namespace": "a..b", "key": "k"})
            assert dotted.status_code == 422 and dotted.json()["error"]["param"] == "namespace"
            unknown = await raw.put(
                "/store/items", json={"namespace": ["a"], "key": "k", "value": {}, "x": 1}
            )
            assert unknown.status_code == 422 and unknown.json()["error"]["param"] == "x"
            lone = await raw.put(
                "/store/items", content=b'{"namespace": ["a"], "key": "k", "value": {"t": "\\ud800"}}'
            )
            assert lone.status_code == 422 and lone.json()["error"]["param"] == "value"
            assert (await raw.put("/store/items", content=b"{")).status_code == 400
            # NUL inside a value is stored and read back as it is.
            await alice.store.put_item(["a"], "nul", {"t": "a\x00b"})
            assert (await alice.store.get_item(["a"], "nul"))["value"] == {"t": "a\x00b"}

            # Three live items per principal: a fourth new key is refused; replacing one is not.
            await alice.store.put_item(["a"], "k1", {"n": 1})
            await alice.store.put_item(["a"], "k2", {"n": 2})
            status, error = await _status(alice.store.put_item(["a"], "k3", {"n": 3}))
            assert (status, error["code"]) == (409, "store_full")
            await alice.store.put_item(["a"], "k2", {"n": 22})
            await alice.store.delete_item(["a"], "nul")
            await alice.store.put_item(["a"], "k3", {"n": 3})

    run(main())


def test_semantic_search_without_an_embeddings_model_is_501_and_plain_search_works(db: Database) -> None:
    items = ItemStore(db, StoreConfig(embeddings_model=None), embeddings=FakeEmbeddings().client())

    async def main() -> None:
        async with sdk(_app(items)) as (alice, _, _):
            await alice.store.put_item(["a"], "k", {"text": "hello"})  # not indexed: nothing to index with
            status, error = await _status(alice.store.search_items(["a"], query="hello"))
            assert (status, error["code"], error["param"]) == (501, "not_implemented", "query")
            status, error = await _status(alice.store.put_item(["a"], "k", {"text": "x"}, index=["text"]))
            assert (status, error["param"]) == (501, "index")
            assert [i["key"] for i in (await alice.store.search_items(["a"]))["items"]] == ["k"]

    run(main())


def test_an_embeddings_failure_is_a_502_naming_it(db: Database) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}
        )

    embeddings = GatewayEmbeddings(
        "http://gateway/v1", "all-minilm-l6-v2", transport=httpx.MockTransport(refuse)
    )
    items = ItemStore(db, StoreConfig(), embeddings=embeddings)

    async def main() -> None:
        async with sdk(_app(items)) as (alice, _, _):
            status, error = await _status(alice.store.search_items(["a"], query="hello"))
            assert (status, error["code"]) == (502, "embeddings_failed") and "rate_limit_exceeded" in error[
                "message"
            ]
            assert (await _status(alice.store.put_item(["a"], "k", {"text": "hello"})))[0] == 502
            assert (await alice.store.search_items(["a"]))["items"] == [], "a failed put stores nothing"

    run(main())


def test_values_are_encrypted_at_rest_and_filter_and_query_still_work(db: Database) -> None:
    keyring, _ = Keyring.generate("k1")
    items = ItemStore(db, StoreConfig(), embeddings=FakeEmbeddings().client(), keyring=keyring)

    async def main() -> None:
        async with sdk(_app(items)) as (alice, _, _):
            for key, value in MEMORIES.items():
                await alice.store.put_item(["memories"], key, value)
            found = await alice.store.search_items(["memories"], query="green tea", filter={"kind": "food"})
            assert [i["key"] for i in found["items"]] == ["m3", "m1"]
            assert (await alice.store.get_item(["memories"], "m1"))["value"] == MEMORIES["m1"]

    run(main())
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(agent_store_items.c.value, agent_store_items.c.embedding)).all()
    assert len(rows) == 3
    for value, embedding in rows:
        assert isinstance(value, str) and value.startswith("wlpenc:v1:k1:") and "pizza" not in value
        assert len(embedding) == 4 * DIMENSIONS  # what search can still see: the vector, not the value
    # A sealed value moved onto another item's row does not decrypt.
    with db.engine.begin() as conn:
        m1 = conn.execute(
            sa.select(agent_store_items.c.value).where(agent_store_items.c.key == "m1")
        ).scalar()
        conn.execute(agent_store_items.update().where(agent_store_items.c.key == "m2").values(value=m1))
    with pytest.raises(ValueError, match="fails authentication"):
        items.get("alice", ["memories"], "m2", refresh_ttl=False)


def test_search_over_a_thousand_items_stays_fast(db: Database) -> None:
    """1000 items of 384-dimension vectors: a ranked search is tens of milliseconds, not seconds."""
    import random

    rng = random.Random(7)
    items = ItemStore(db, StoreConfig())
    now = utcnow()
    with db.engine.begin() as conn:
        conn.execute(
            agent_store_items.insert(),
            [
                {
                    "owner": "alice",
                    "namespace": "bulk",
                    "key": f"k{i}",
                    "value": {"n": i},
                    "embedding": struct.pack("<384f", *(rng.gauss(0, 1) for _ in range(384))),
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(1000)
            ],
        )
    query = [rng.gauss(0, 1) for _ in range(384)]
    items.search(
        "alice", ["bulk"], value_filter={}, limit=10, offset=0, query_vector=query, refresh_ttl=False
    )
    started = time.perf_counter()
    found = items.search(
        "alice", ["bulk"], value_filter={}, limit=10, offset=0, query_vector=query, refresh_ttl=False
    )
    elapsed = time.perf_counter() - started
    assert len(found) == 10 and [f.score for f in found] == sorted([f.score for f in found], reverse=True)  # type: ignore[type-var]
    assert elapsed < 1.0, f"ranked search over 1000 items took {elapsed:.3f} s"


def test_a_ranked_search_pages_in_rank_order_past_filtered_out_items(db: Database) -> None:
    """600 items whose similarity to the query falls with their number; a filter keeps the even
    ones: page 41 of 5 is the 201st to 205th even item (read past several batches of rows)."""
    import math

    items = ItemStore(db, StoreConfig())
    now = utcnow()
    rows = []
    for i in range(600):
        angle = i * math.pi / 1200  # item i is i/1200 of a half turn away from the query
        rows.append(
            {
                "owner": "alice",
                "namespace": "ranked",
                "key": f"k{i}",
                "value": {"n": i, "even": i % 2 == 0},
                "embedding": struct.pack("<2f", math.cos(angle), math.sin(angle)),
                "created_at": now,
                "updated_at": now,
            }
        )
    with db.engine.begin() as conn:
        conn.execute(agent_store_items.insert(), rows)

    def page(value_filter: dict[str, Any], limit: int, offset: int) -> list[int]:
        found = items.search(
            "alice",
            ["ranked"],
            value_filter=value_filter,
            limit=limit,
            offset=offset,
            query_vector=[1.0, 0.0],
            refresh_ttl=False,
        )
        return [f.value["n"] for f in found]

    assert page({"even": True}, 5, 200) == [400, 402, 404, 406, 408]
    assert page({}, 3, 300) == [300, 301, 302]
    assert page({"even": True}, 10, 295) == [590, 592, 594, 596, 598]
    assert page({"n": {"$gt": 597}}, 10, 0) == [598, 599]

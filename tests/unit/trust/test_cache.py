"""The response cache as callers see it: a hit never tells one caller what another sent, and
concurrent identical requests share one generation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.unit.gateway.test_app import served_card
from tests.unit.trust.test_trust import CHAT, SECURE, FakeEngine, _answer, _bearer, _client
from welip.api import parse_chat
from welip.gateway import GatewayConfig, GatewayCore, build_gateway_app
from welip.store import Database, KeyStore
from welip.trust import RequestContext, Trust, TrustConfig
from welip.trust._auth import OPEN

DETERMINISTIC = {**CHAT, "temperature": 0}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/welip.db")
    database.upgrade()
    yield database
    database.dispose()


def _two_users(db: Database, tmp_path: Path, **cache: Any) -> tuple[TestClient, FakeEngine, str, str]:
    engine = FakeEngine([_answer("4")])
    auth = {k: v for k, v in SECURE["auth"].items() if k not in ("oidc", "admin_key_env")}
    client, _ = _client(db, tmp_path, {"m": engine}, auth=auth, cache={"enabled": True, **cache})
    _, alice = KeyStore(db).create_key(name="alice", role="user")
    _, bob = KeyStore(db).create_key(name="bob", role="user")
    return client, engine, alice, bob


def _cache_header(client: TestClient, key: str) -> str:
    response = client.post("/v1/chat/completions", json=DETERMINISTIC, headers=_bearer(key))
    assert response.status_code == 200
    return response.headers["x-welip-cache"]


def test_a_cache_hit_never_tells_one_caller_what_another_sent(db: Database, tmp_path: Path) -> None:
    client, engine, alice, bob = _two_users(db, tmp_path)
    assert _cache_header(client, alice) == "miss"
    assert _cache_header(client, bob) == "miss"  # same role, same prompt: still bob's own cache
    assert _cache_header(client, alice) == "hit"
    assert _cache_header(client, bob) == "hit"
    assert len(engine.calls) == 2


def test_callers_of_one_role_share_answers_only_when_configured(db: Database, tmp_path: Path) -> None:
    client, engine, alice, bob = _two_users(db, tmp_path, scope="role")
    assert _cache_header(client, alice) == "miss"
    assert _cache_header(client, bob) == "hit"
    assert len(engine.calls) == 1


# -- concurrent identical requests share one generation ---------------------------------


def _concurrently(engine: FakeEngine, n: int, **cache: Any) -> list[Any]:
    core = GatewayCore(
        {"m": engine},  # type: ignore[dict-item]
        [served_card("m")],
        GatewayConfig(cache={"enabled": True, **cache}),
    )
    app = build_gateway_app(core)

    async def run() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await asyncio.gather(
                *(client.post("/v1/chat/completions", json=DETERMINISTIC) for _ in range(n))
            )

    return asyncio.run(run())


def test_concurrent_identical_requests_share_one_generation() -> None:
    engine = FakeEngine([_answer("4")], delay_s=0.2)
    responses = _concurrently(engine, 5)
    assert [r.status_code for r in responses] == [200] * 5
    assert sorted(r.headers["x-welip-cache"] for r in responses) == ["coalesced"] * 4 + ["miss"]
    assert len({r.content for r in responses}) == 1
    assert len(engine.calls) == 1


def test_without_coalescing_every_concurrent_request_generates() -> None:
    engine = FakeEngine([_answer("4")], delay_s=0.2)
    responses = _concurrently(engine, 3, coalesce=False)
    assert [r.headers["x-welip-cache"] for r in responses] == ["miss"] * 3
    assert len(engine.calls) == 3


def _context() -> RequestContext:
    return RequestContext(method="POST", route="/v1/chat/completions", request_id="r", principal=OPEN)


def test_a_leader_that_ends_without_an_answer_hands_the_generation_to_a_follower() -> None:
    trust = Trust(TrustConfig(cache={"enabled": True}), database=None, redis=None)
    raw = json.dumps(DETERMINISTIC).encode()

    async def run() -> None:
        leader = _context()
        assert (await trust.admit(leader, parse_chat(raw), raw)).cached is None
        followers = [_context(), _context()]
        waiting = [asyncio.create_task(trust.admit(f, parse_chat(raw), raw)) for f in followers]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in waiting)  # both wait for the leader
        leader.status = 400  # refused by the output guardrail: no answer to share
        trust.settle(leader)
        await asyncio.sleep(0.05)
        done = [t for t in waiting if t.done()]
        assert len(done) == 1 and done[0].result().cached is None  # the new leader generates
        new_leader = followers[waiting.index(done[0])]
        sent = await trust.filter_answer(new_leader, _answer("4"))
        last = await waiting[1 - waiting.index(done[0])]
        assert (last.cached, last.headers["x-welip-cache"]) == (sent, "coalesced")
        assert len(trust.in_flight_answers or ()) == 0

    asyncio.run(run())


def test_a_follower_whose_client_leaves_does_not_end_the_generation() -> None:
    trust = Trust(TrustConfig(cache={"enabled": True}), database=None, redis=None)
    raw = json.dumps(DETERMINISTIC).encode()

    async def run() -> None:
        leader = _context()
        await trust.admit(leader, parse_chat(raw), raw)
        gone = asyncio.create_task(trust.admit(_context(), parse_chat(raw), raw))
        stays = asyncio.create_task(trust.admit(_context(), parse_chat(raw), raw))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.05)
        sent = await trust.filter_answer(leader, _answer("4"))
        assert (await stays).cached == sent
        assert gone.cancelled()

    asyncio.run(run())

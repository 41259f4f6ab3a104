"""The response cache as two callers see it: a hit never tells one caller what another sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.trust.test_trust import CHAT, SECURE, FakeEngine, _answer, _bearer, _client
from welip.store import Database, KeyStore

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

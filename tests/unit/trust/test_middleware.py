"""The trust middleware's bound on request bodies: 413 before a body is read whole, audited once.

Over the gateway app (fake engines, embedded SQLite, in-process limits), as a caller
sees it: by Content-Length, and while a chunked body (no Content-Length) arrives.
"""
# The fixtures db, env and rsa_key are test_trust's, imported: their parameters redefine them.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from tests.unit.gateway.test_app import FakeEngine
from tests.unit.trust.test_trust import (  # noqa: F401 - fixtures
    ADMIN_KEY,
    CHAT,
    FakeCounter,
    _answer,
    _bearer,
    _client,
    _wait_for_audit,
    db,
    env,
    rsa_key,
)
from welip.store import AuditStore, Database
from welip.trust._telemetry import rejection_reason

MIB = 1024 * 1024
CHUNK = 64 * 1024


def _chat_body(content_bytes: int) -> bytes:
    return json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * content_bytes}]}).encode()


async def _chunked(head: bytes, total_bytes: int, tail: bytes, pulled: list[int]) -> AsyncIterator[bytes]:
    """A body sent in 64 KiB chunks (no Content-Length); ``pulled`` counts the chunks taken."""
    yield head
    for _ in range(total_bytes // CHUNK):
        pulled.append(1)
        yield b"x" * CHUNK
    yield tail


def _post_chunked(
    app: Any, path: str, chunks: AsyncIterator[bytes], headers: dict[str, str]
) -> httpx.Response:
    # httpx's ASGI transport hands the app one chunk per receive(), as a server does;
    # the sync TestClient would read the whole body first.
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.post(path, content=chunks, headers=headers)

    return asyncio.run(go())


def _assert_too_large(response_status: int, body: dict[str, object]) -> None:
    assert response_status == 413
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")


def test_a_body_over_the_default_bound_is_refused_by_its_content_length_and_audited_once(
    env: None, db: Database, tmp_path: Path
) -> None:
    engine = FakeEngine([_answer("4")])
    client, _ = _client(db, tmp_path, {"m": engine})
    response = client.post(
        "/v1/chat/completions", content=_chat_body(4 * MIB + 1024), headers=_bearer(ADMIN_KEY)
    )
    _assert_too_large(response.status_code, response.json())
    assert engine.calls == []
    (row,) = _wait_for_audit(db, 1)
    time.sleep(0.2)
    assert len(AuditStore(db).query_audit(limit=10)) == 1
    assert (row["status"], row["error_code"], row["principal"]) == (413, "request_too_large", "admin-key")
    assert rejection_reason(413, "request_too_large") == "invalid_request"
    # Under the bound the same caller is served.
    ok = client.post("/v1/chat/completions", content=_chat_body(1024), headers=_bearer(ADMIN_KEY))
    assert ok.status_code == 200


def test_a_chunked_body_is_cut_at_the_bound_without_reading_the_rest(
    env: None, db: Database, tmp_path: Path
) -> None:
    engine = FakeEngine([_answer("4")])
    client, _ = _client(db, tmp_path, {"m": engine})
    pulled: list[int] = []
    head, tail = b'{"model": "m", "messages": [{"role": "user", "content": "', b'"}]}'
    response = _post_chunked(
        client.app, "/v1/chat/completions", _chunked(head, 16 * MIB, tail, pulled), _bearer(ADMIN_KEY)
    )
    assert "content-length" not in response.request.headers
    _assert_too_large(response.status_code, response.json())
    assert engine.calls == []
    assert len(pulled) <= 4 * MIB // CHUNK + 1  # stopped at the bound, not at the body's end
    (row,) = _wait_for_audit(db, 1)
    assert (row["status"], row["error_code"]) == (413, "request_too_large")


def test_a_route_that_lets_fastapi_parse_its_body_answers_413_too(
    env: None, db: Database, tmp_path: Path
) -> None:
    # FastAPI turns any error while reading a body into its own 400; the caller must still see 413.
    client, _ = _client(db, tmp_path, {"m": FakeEngine([_answer("4")])})
    pulled: list[int] = []
    chunks = _chunked(b'{"role": "user", "name": "', 16 * MIB, b'"}', pulled)
    response = _post_chunked(client.app, "/admin/keys", chunks, _bearer(ADMIN_KEY))
    _assert_too_large(response.status_code, response.json())
    assert len(pulled) <= 4 * MIB // CHUNK + 1
    assert client.get("/admin/keys", headers=_bearer(ADMIN_KEY)).json()["data"] == []


def test_the_bound_is_limits_max_body_bytes(env: None, db: Database, tmp_path: Path) -> None:
    engine = FakeEngine([_answer("4")])
    client, _ = _client(db, tmp_path, {"m": engine}, limits={"max_body_bytes": 1024})
    small = client.post("/v1/chat/completions", content=_chat_body(512), headers=_bearer(ADMIN_KEY))
    assert small.status_code == 200
    big = client.post("/v1/chat/completions", content=_chat_body(2048), headers=_bearer(ADMIN_KEY))
    _assert_too_large(big.status_code, big.json())
    assert "1024 bytes" in big.json()["error"]["message"]
    assert len(engine.calls) == 1

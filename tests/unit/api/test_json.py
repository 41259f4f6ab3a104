"""Request bodies as strict JSON: what the gateway's OpenAI routes answer to bodies no parser should take.

Nesting past the bound, non-finite numbers, invalid UTF-8 and over-long integers are
a 400 ``invalid_json`` in the OpenAI error shape, never a 500, and never reach an
engine. (The agents app shares the parser: tests/unit/agents/test_api.py.)
"""
# The fixtures db, env and rsa_key are test_trust's, imported: their parameters redefine them.
# ruff: noqa: F811

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.unit.gateway.test_app import FakeEngine, served_card
from tests.unit.trust.test_trust import (  # noqa: F401 - fixtures
    ADMIN_KEY,
    _bearer,
    _client,
    _wait_for_audit,
    db,
    env,
    rsa_key,
)
from welip.gateway import GatewayConfig, GatewayCore, build_gateway_app
from welip.store import AuditStore, Database

# What each route needs besides `model`, as JSON text.
ROUTES = {
    "/v1/chat/completions": '"messages": [{"role": "user", "content": "hi"}]',
    "/v1/completions": '"prompt": "hi"',
    "/v1/embeddings": '"input": "hi"',
}
DEEP = 100_000
BAD_VALUES = {
    "nested past the recursion limit": "[" * DEEP + "]" * DEEP,
    "nested past the bound": '{"a": ' * 65 + "1" + "}" * 65,
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "a float that overflows to infinity": "1e999",
    "an integer over Python's digit limit": "1" * 5000,
}


def _body(route: str, value: str) -> bytes:
    return f'{{"model": "m", {ROUTES[route]}, "temperature": {value}}}'.encode()


@pytest.fixture
def gateway() -> tuple[TestClient, FakeEngine]:
    engine = FakeEngine([])
    core = GatewayCore({"m": engine}, [served_card("m")], GatewayConfig())  # type: ignore[dict-item]
    return TestClient(build_gateway_app(core), raise_server_exceptions=False), engine


def _assert_invalid_json(status: int, body: dict[str, object]) -> None:
    assert status == 400
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_json")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("why", BAD_VALUES)
def test_bodies_no_strict_parser_takes_are_400_invalid_json(
    gateway: tuple[TestClient, FakeEngine], route: str, why: str
) -> None:
    client, engine = gateway
    response = client.post(route, content=_body(route, BAD_VALUES[why]))
    _assert_invalid_json(response.status_code, response.json())
    assert engine.calls == []


@pytest.mark.parametrize("route", ROUTES)
def test_invalid_utf8_is_400_invalid_json(gateway: tuple[TestClient, FakeEngine], route: str) -> None:
    client, engine = gateway
    response = client.post(route, content=_body(route, '"cafe"').replace(b"cafe", b"caf\xe9"))
    _assert_invalid_json(response.status_code, response.json())
    assert engine.calls == []


def test_a_refused_body_is_audited_as_its_400_not_as_a_client_that_left(
    env: None, db: Database, tmp_path: Path
) -> None:
    client, _ = _client(db, tmp_path, {"m": FakeEngine([])})
    client = TestClient(client.app, raise_server_exceptions=False)
    route = "/v1/chat/completions"
    response = client.post(
        route, content=_body(route, BAD_VALUES["nested past the recursion limit"]), headers=_bearer(ADMIN_KEY)
    )
    _assert_invalid_json(response.status_code, response.json())
    (row,) = _wait_for_audit(db, 1)
    time.sleep(0.2)
    assert len(AuditStore(db).query_audit(limit=10)) == 1
    assert (row["status"], row["error_code"]) == (400, "invalid_json")


def test_nesting_up_to_the_bound_and_finite_numbers_are_accepted() -> None:
    from welip.api import MAX_JSON_DEPTH, OpenAIError, load_json

    def body(depth: int) -> bytes:  # the object itself is the first level
        inner = "[" * (depth - 1) + "]" * (depth - 1)
        return f'{{"a": {inner}, "t": 0.5, "n": 12, "big": 1e308}}'.encode()

    value = load_json(body(MAX_JSON_DEPTH))
    assert json.dumps(value["a"]).replace(" ", "") == "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    assert (value["t"], value["n"], value["big"]) == (0.5, 12, 1e308)
    with pytest.raises(OpenAIError) as refused:
        load_json(body(MAX_JSON_DEPTH + 1))
    assert (refused.value.status_code, refused.value.code) == (400, "invalid_json")
    # Brackets inside strings are text, not nesting.
    assert load_json(('{"s": "' + "[" * 1000 + '"}').encode()) == {"s": "[" * 1000}

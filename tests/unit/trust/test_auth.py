"""Authentication as an attacker sees it: no timing or message oracles, bounded work per failed attempt.

Over the gateway app with fake engines and an embedded SQLite key store (helpers from
``test_trust``), or the :class:`Authenticator` called directly.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.unit.trust.test_trust import (
    ADMIN_KEY,
    AUDIENCE,
    CHAT,
    ISSUER,
    SECURE,
    FakeEngine,
    _answer,
    _bearer,
    _client,
)
from welip.api import OpenAIError
from welip.store import Database, KeyStore, hash_key
from welip.trust import TrustConfig
from welip.trust import _auth as auth_module
from welip.trust._auth import ANONYMOUS, Authenticator


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/welip.db")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN_KEY)


def _auth(**overrides: Any) -> dict[str, Any]:
    """SECURE's auth section without OIDC (which needs a key in the environment), with overrides."""
    auth = {k: v for k, v in SECURE["auth"].items() if k != "oidc"}
    return {**auth, **overrides}


def test_the_admin_key_digest_is_compared_in_constant_time(
    admin_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    authenticator = Authenticator(TrustConfig.model_validate({"auth": _auth()}).auth, None)
    principal = asyncio.run(authenticator.authenticate(f"Bearer {ADMIN_KEY}"))
    assert principal.role == "admin"
    digest = hash_key(ADMIN_KEY)
    assert (digest, digest) in compared


def test_a_random_key_flood_never_evicts_valid_keys(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    _, key = KeyStore(db).create_key(name="u", role="user")
    authenticator = Authenticator(TrustConfig.model_validate({"auth": _auth(key_cache_s=3600)}).auth, db)

    async def flood() -> None:
        assert (await authenticator.authenticate(f"Bearer {key}")).role == "user"
        # Every random key misses; the store answers fast so the flood is cheap to run.
        monkeypatch.setattr(KeyStore, "key_by_hash", lambda self, digest: None)
        for i in range(100_002):
            with pytest.raises(OpenAIError) as refused:
                await authenticator.authenticate(f"Bearer wlp_random-{i}")
            assert refused.value.status_code == 401

    asyncio.run(flood())

    def down(self: KeyStore, digest: str) -> None:
        raise ConnectionError("database down")

    monkeypatch.setattr(KeyStore, "key_by_hash", down)
    # The valid key is still known: it keeps working while the database is down.
    assert asyncio.run(authenticator.authenticate(f"Bearer {key}")).role == "user"


def test_failed_authentications_are_limited_per_client_address(
    admin_env: None, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine([_answer("4")])
    client, _ = _client(db, tmp_path, {"m": engine}, auth=_auth())
    _, key = KeyStore(db).create_key(name="u", role="user")
    assert client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key)).status_code == 200
    lookups = 0
    real_lookup = KeyStore.key_by_hash

    def counted(self: KeyStore, digest: str) -> Any:
        nonlocal lookups
        lookups += 1
        return real_lookup(self, digest)

    monkeypatch.setattr(KeyStore, "key_by_hash", counted)
    # The failure bucket refills one attempt per 2 s: on a loaded machine 50 requests may take
    # longer than that, so the replica's clock stands still while the flood runs.
    frozen_s = time.monotonic()
    monkeypatch.setattr(auth_module, "time", SimpleNamespace(monotonic=lambda: frozen_s))
    flood = [
        client.post("/v1/chat/completions", json=CHAT, headers=_bearer(f"wlp_{secrets.token_urlsafe(32)}"))
        for _ in range(50)
    ]
    statuses = [r.status_code for r in flood]
    budget = 30  # auth.max_auth_failures_per_minute's default
    assert statuses[:budget] == [401] * budget
    assert set(statuses[budget:]) == {429}
    refused = flood[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    assert int(refused.headers["retry-after"]) >= 1
    assert lookups <= budget  # refused attempts cost no database query
    # Keys this replica already knows, and the admin key, still get through from that address.
    assert client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key)).status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT, headers=_bearer(ADMIN_KEY)).status_code == 200
    assert len(engine.calls) == 3
    assert TrustConfig().auth.max_auth_failures_per_minute == budget


def test_jwks_fetch_errors_are_logged_not_echoed_to_the_caller(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    detail = 'Fail to fetch data from the url, err: "<urlopen error [Errno 111] Connection refused>"'

    def unreachable(self: jwt.PyJWKClient) -> Any:
        raise jwt.PyJWKClientConnectionError(f"{detail} http://idp.internal:8080/jwks")

    monkeypatch.setattr(jwt.PyJWKClient, "fetch_data", unreachable)
    oidc = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": "http://idp.internal:8080/jwks",
        "default_role": "user",
    }
    client, _ = _client(db, tmp_path, {"m": FakeEngine([_answer("4")])}, auth=_auth(oidc=oidc))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    with caplog.at_level(logging.WARNING, logger="welip.gateway"):
        response = client.post("/v1/chat/completions", json=CHAT, headers=_bearer(token))
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "auth_unavailable" and "retry-after" in response.headers
    assert "idp.internal" not in response.text and "refused" not in response.text
    assert any("idp.internal" in record.getMessage() for record in caplog.records)


def test_a_public_path_never_grants_inference_to_an_anonymous_caller(
    admin_env: None, db: Database, tmp_path: Path
) -> None:
    engine = FakeEngine([_answer("4")])
    public = ["/health", "/ready", "/openapi.json", "/v1/chat/completions"]
    client, _ = _client(db, tmp_path, {"m": engine}, auth=_auth(public_paths=public))
    anonymous = client.post("/v1/chat/completions", json=CHAT)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    assert not engine.calls
    _, key = KeyStore(db).create_key(name="u", role="user")
    assert client.post("/v1/chat/completions", json=CHAT, headers=_bearer(key)).status_code == 200
    # Public paths that need no permission stay open.
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_the_anonymous_principal_holds_no_permission_and_no_model() -> None:
    assert ANONYMOUS.permissions == frozenset()
    assert not ANONYMOUS.may_use("m")

"""What a caller learns about models it may not use: nothing a model it names at random would not tell.

A forbidden model answers exactly as an unknown one (404 ``model_not_found``) on every
route; errors list no model the caller may not use; ``/v1/models`` names no storage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.gateway.test_app import FakeEngine, _chunk, served_card
from tests.unit.gateway.test_embeddings import FakeEmbedder
from welip.gateway import GatewayConfig, GatewayCore, ModelCard, build_gateway_app
from welip.gateway._catalog import Catalog
from welip.store import CatalogStore, Database, KeyStore
from welip.trust import Trust

ROLES = {
    "limited": {"permissions": ["inference", "embeddings"], "models": ["m", "mini"]},
    "user": {"permissions": ["inference", "embeddings"]},
}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/welip.db")
    database.upgrade()
    yield database
    database.dispose()


def _gateway(db: Database, catalog: Catalog | None = None) -> tuple[TestClient, dict[str, Any]]:
    config = GatewayConfig.model_validate({"auth": {"enabled": True, "key_cache_s": 0, "roles": ROLES}})
    trust = Trust(config, database=db, redis=None)
    engines = {"m": FakeEngine([[_chunk("a")]]), "secret": FakeEngine([[_chunk("s")]])}
    embedders = {"mini": FakeEmbedder(), "secret-embed": FakeEmbedder()}
    core = GatewayCore(
        dict(engines),  # type: ignore[arg-type]
        [served_card(m) for m in engines],
        config,
        trust,
        catalog,
        embedders=dict(embedders),  # type: ignore[arg-type]
        embedding_cards=[ModelCard(id=e, created=0, root=e) for e in embedders],
    )
    return TestClient(build_gateway_app(core)), {**engines, **embedders}


def _error(response: Any, model: str) -> tuple[int, dict[str, Any]]:
    """Status and error body, with the model's name masked so two answers compare."""
    error = dict(response.json()["error"])
    error["message"] = error["message"].replace(f"`{model}`", "`<model>`")
    return response.status_code, error


def test_a_forbidden_model_answers_exactly_as_an_unknown_one(db: Database) -> None:
    client, served = _gateway(db)
    _, key = KeyStore(db).create_key(name="l", role="limited")
    headers = {"Authorization": f"Bearer {key}"}
    requests = {
        "/v1/chat/completions": lambda model: {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
        },
        "/v1/completions": lambda model: {"model": model, "prompt": "hi"},
        "/v1/embeddings": lambda model: {"model": model, "input": "cat"},
    }
    for path, body in requests.items():
        unknown = _error(client.post(path, json=body("nope"), headers=headers), "nope")
        assert unknown[0] == 404 and unknown[1]["code"] == "model_not_found"
        for forbidden in ("secret", "secret-embed"):
            answer = client.post(path, json=body(forbidden), headers=headers)
            assert _error(answer, forbidden) == unknown, (path, forbidden)
    for forbidden in ("secret", "secret-embed"):
        described = client.get(f"/v1/models/{forbidden}", headers=headers)
        assert _error(described, forbidden) == _error(client.get("/v1/models/nope", headers=headers), "nope")
    listed = [card["id"] for card in client.get("/v1/models", headers=headers).json()["data"]]
    assert listed == ["m", "mini"]
    assert not served["secret"].calls and not served["secret-embed"].calls


def test_an_embeddings_error_names_no_model_the_caller_may_not_use(db: Database) -> None:
    client, _ = _gateway(db)
    _, key = KeyStore(db).create_key(name="l", role="limited")
    refused = client.post(
        "/v1/embeddings", json={"model": "m", "input": "cat"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_supported"
    assert "secret" not in refused.text
    assert "`mini`" in refused.json()["error"]["message"]  # the one it may use
    anonymous = client.post("/v1/embeddings", json={"model": "m", "input": "cat"})
    assert anonymous.status_code == 401
    assert "mini" not in anonymous.text and "secret" not in anonymous.text


def test_models_name_no_storage_location(db: Database) -> None:
    catalog = Catalog(["m", "secret"], ["m"], refresh_s=60, database=db)
    client, _ = _gateway(db, catalog)
    adapter = (
        CatalogStore(db)
        .register_adapter(
            name="faq",
            version=None,
            base_model_id="m",
            uri="s3://welip-artifacts/adapters/faq/7f3a",
            kind="sft",
            mlflow_run_id=None,
            lineage={},
        )
        .id
    )
    CatalogStore(db).set_alias("prod", adapter)
    _, key = KeyStore(db).create_key(name="u", role="user")
    headers = {"Authorization": f"Bearer {key}"}
    listed = client.get("/v1/models", headers=headers)
    assert listed.status_code == 200
    assert "s3://" not in listed.text and "welip-artifacts" not in listed.text
    cards = {card["id"]: card for card in listed.json()["data"]}
    assert (cards[adapter]["root"], cards[adapter]["parent"]) == (adapter, "m")
    assert (cards["prod"]["root"], cards["prod"]["parent"]) == (adapter, "m")
    described = client.get(f"/v1/models/{adapter}", headers=headers).json()
    assert described["root"] == adapter and "s3://" not in json.dumps(described)

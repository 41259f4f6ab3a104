"""RAG ingestion on the session's Ray cluster: the real embedding model, real Ray Data, LanceDB.

``welip.rag.ingest`` (what ``jobs/ingest.py`` runs) runs in this process on the session's
cluster (as ``ray job submit`` would run it there), on the shipped documents, into a table
in a temporary folder, then with documents and table on S3 (moto). Questions are embedded
through the session gateway's ``/v1/embeddings`` (the same model, served), as the RAG
agent does.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.integration.conftest import ADMIN_KEY, EMBEDDING_MODEL
from welip.config import load_config
from welip.rag import (
    GatewayEmbeddings,
    IngestConfig,
    Retriever,
    VectorStore,
    ingest,
    list_documents,
)

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "configs" / "rag" / "welip_docs.yaml"
DOCS = REPO_ROOT / "data" / "docs"
# A question a user would ask, and the document that answers it.
QUESTIONS = {
    "How do I revoke an API key?": "auth-keys-roles.md",
    "How are LoRA adapters hot-loaded into the running engine?": "adapters-and-promotion.md",
    "What happens to audit rows while the database is unreachable?": "audit-and-usage.md",
}


@pytest.fixture(scope="module")
def embeddings(base_url: str) -> GatewayEmbeddings:
    """The served model the job embedded with, through the gateway, as the agents call it."""
    return GatewayEmbeddings(f"{base_url}/v1", EMBEDDING_MODEL, ADMIN_KEY)


@pytest.fixture(scope="module")
def storage(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A storage root of this module; the job runs from the repository root, as a user runs it."""
    saved = os.getcwd()
    os.chdir(REPO_ROOT)
    yield tmp_path_factory.mktemp("ingest")
    os.chdir(saved)


def config(*overrides: str) -> IngestConfig:
    return load_config(IngestConfig, CONFIG, list(overrides))


@pytest.fixture(scope="module")
def first_run(storage: Path) -> dict[str, Any]:
    return ingest(config(f"storage_url={storage}/rag"))


def retrieve(store: VectorStore, embeddings: GatewayEmbeddings, question: str) -> list[str]:
    retriever = Retriever(store=store, embeddings=embeddings, top_k=3, mode="hybrid")
    return [chunk.source for chunk in asyncio.run(retriever.retrieve(question))]


def test_ingest_embeds_every_shipped_document_into_the_table(
    first_run: dict[str, Any], storage: Path
) -> None:
    shipped = list_documents(str(DOCS), config().include)
    assert first_run["documents"] == len(shipped) >= 12
    assert first_run["failed_documents"] == {}
    assert first_run["new_chunks"] == first_run["chunks"] == first_run["rows"] > len(shipped)
    store = VectorStore.open("welip_docs", f"{storage}/rag")
    assert store.count() == first_run["rows"]
    assert store.embedding_model == "all-minilm-l6-v2" and store.dimensions == 384
    sources = set(store.rows(["source"])["source"])
    assert sources == {d.source for d in shipped}, "every document, the PDF and the text file included"


def test_rerun_adds_nothing(first_run: dict[str, Any], storage: Path) -> None:
    again = ingest(config(f"storage_url={storage}/rag"))
    assert (again["new_chunks"], again["deleted_chunks"]) == (0, 0)
    assert again["skipped_chunks"] == first_run["chunks"]
    assert again["rows"] == first_run["rows"]


@pytest.mark.parametrize(("question", "source"), QUESTIONS.items())
def test_hybrid_search_answers_from_the_right_document(
    first_run: dict[str, Any], storage: Path, embeddings: GatewayEmbeddings, question: str, source: str
) -> None:
    sources = retrieve(VectorStore.open("welip_docs", f"{storage}/rag"), embeddings, question)
    assert sources[0] == source, sources


def test_an_edited_and_a_removed_document_replace_their_chunks(
    first_run: dict[str, Any], storage: Path, tmp_path: Path, embeddings: GatewayEmbeddings
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for path in DOCS.iterdir():
        (docs / path.name).write_bytes(path.read_bytes())
    url = f"{tmp_path}/rag"
    base = ingest(config(f"documents={docs}", f"storage_url={url}"))
    (docs / "kuberay.md").unlink()
    with (docs / "guardrails.md").open("a") as f:
        f.write("\n## Bank accounts\n\nThe quokka guardrail blocks IBAN account numbers in prompts.\n")
    changed = ingest(config(f"documents={docs}", f"storage_url={url}"))
    assert changed["new_chunks"] == 1
    assert changed["deleted_chunks"] > 0
    assert changed["rows"] == base["rows"] + 1 - changed["deleted_chunks"]
    store = VectorStore.open("welip_docs", url)
    assert "kuberay.md" not in set(store.rows(["source"])["source"])
    assert retrieve(store, embeddings, "Which guardrail blocks IBAN numbers? quokka")[0] == "guardrails.md"


def test_documents_and_table_on_s3(
    first_run: dict[str, Any], storage: Path, s3_endpoint: str, embeddings: GatewayEmbeddings
) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="welip-rag")
    for path in DOCS.iterdir():
        s3.put_object(Bucket="welip-rag", Key=f"docs/{path.name}", Body=path.read_bytes())
    overrides = ["documents=s3://welip-rag/docs", "storage_url=s3://welip-rag/rag"]
    summary = ingest(config(*overrides))
    assert summary["failed_documents"] == {}
    assert summary["rows"] == first_run["rows"]
    # The same documents give the same chunks wherever they are read from.
    on_s3 = VectorStore.open("welip_docs", "s3://welip-rag/rag")
    assert on_s3.content_hashes() == VectorStore.open("welip_docs", f"{storage}/rag").content_hashes()
    assert ingest(config(*overrides))["new_chunks"] == 0
    question, source = next(iter(QUESTIONS.items()))
    assert retrieve(on_s3, embeddings, question)[0] == source
    listed = s3.list_objects_v2(Bucket="welip-rag", Prefix="rag/welip_docs.lance/")
    assert listed["KeyCount"] > 0

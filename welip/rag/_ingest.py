"""Documents into a LanceDB table, kept up to date: what ``jobs/ingest.py`` runs.

:func:`ingest` lists the documents, reads and chunks them (Ray Data ``flat_map``), embeds
only the chunks the table lacks on actors holding the embedding model (``map_batches``),
adds them, deletes the chunks no document produces any more and rebuilds the full-text
index. Chunks are identified by their content hash, so a second run adds nothing.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import ray

from welip.rag._config import IngestConfig
from welip.rag._documents import DocumentFile, list_documents, read_chunks
from welip.rag._stages import ChunkEmbedder
from welip.rag._store import VectorStore
from welip.store import join_url, storage_url_from_env

if TYPE_CHECKING:
    from ray.data import Dataset

# The job's logger name, which its JSON log lines carry.
logger = logging.getLogger("welip.ingest")
# Rows per LanceDB append: one fragment each, so few and large.
ADD_BATCH_ROWS = 4096


def ingest(cfg: IngestConfig) -> dict[str, Any]:
    """Bring the table up to date with the documents; return the summary (also printed as one line).

    Steps: list the documents (local folder or s3:// prefix), read the content hashes
    the table already holds, read and chunk every document, embed and add the chunks
    the table lacks, delete the chunks no document produces any more (a document
    changed or removed; a document that failed to read keeps its chunks), rebuild the
    full-text index.

    Raises:
        FileNotFoundError: ``documents`` is not a folder, or no document matches ``include``.
        ValueError: the table holds vectors of another embedding model.
    """
    started = time.perf_counter()
    storage_url = cfg.storage_url or join_url(storage_url_from_env(), "rag")
    store = open_table(cfg, storage_url)

    documents = list_documents(cfg.documents, cfg.include)
    if not documents:
        # An empty listing is a wrong path far more often than an empty corpus; deleting
        # every chunk of the table on it would be the worst reading.
        raise FileNotFoundError(f"no documents under {cfg.documents!r} match {cfg.include}")
    known = store.content_hashes()
    logger.info("%d documents; table %s holds %d chunks", len(documents), cfg.table, len(known))

    chunks = chunk_documents(cfg, documents)
    current, failed = chunk_index(chunks)
    added = embed_and_add(cfg, store, chunks, current - known)
    # Chunks no document produces any more go; failed documents keep their old chunks.
    stale: set[str] = set()
    if cfg.delete_stale:
        stale = known - current
        if failed:
            stale -= chunk_hashes_of(store, set(failed))
    deleted = store.delete(stale)
    reindexed = store.reindex(if_missing=not (added or deleted)) if store.exists() else False
    elapsed_s = time.perf_counter() - started

    summary: dict[str, Any] = {
        "table": cfg.table,
        "storage_url": storage_url,
        "embedding_model": cfg.embedding_model_id,
        "documents": len(documents),
        "failed_documents": failed,
        "chunks": len(current),
        "new_chunks": added,
        "skipped_chunks": len(current & known),
        "deleted_chunks": deleted,
        "rows": store.count(),
        "fts_reindexed": reindexed,
        "elapsed_s": round(elapsed_s, 3),
        "documents_per_s": round(len(documents) / elapsed_s, 3) if elapsed_s > 0 else 0.0,
    }
    print(summary_line(summary, elapsed_s))
    return summary


def open_table(cfg: IngestConfig, storage_url: str) -> VectorStore:
    """The table, refused when it holds vectors of another embedding model than ``cfg``'s."""
    store = VectorStore.open(cfg.table, storage_url)
    if store.exists() and store.embedding_model != cfg.embedding_model_id:
        raise ValueError(
            f"table {cfg.table!r} in {storage_url} holds vectors of {store.embedding_model!r}, "
            f"not {cfg.embedding_model_id!r}: pick another table or embedding model"
        )
    return store


def chunk_documents(cfg: IngestConfig, documents: list[DocumentFile]) -> Dataset:
    """Every document read and chunked by Ray Data tasks (a quarter CPU each, a few at once), materialized."""
    env = s3_env() if documents[0].url.startswith("s3://") else {}
    remote_args: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
    return (
        ray.data.from_items(
            [asdict(d) for d in documents], override_num_blocks=min(len(documents), 4 * cfg.read_concurrency)
        )
        .flat_map(
            _read_row,  # type: ignore[arg-type]  # Ray's annotations do not know fn_kwargs fills the rest
            fn_kwargs={
                "chunk_size_chars": cfg.chunk_size_chars,
                "chunk_overlap_chars": cfg.chunk_overlap_chars,
            },
            num_cpus=0.25,
            concurrency=cfg.read_concurrency,
            **remote_args,
        )
        .materialize()
    )


def _read_row(
    row: dict[str, Any], *, chunk_size_chars: int, chunk_overlap_chars: int
) -> list[dict[str, Any]]:
    # Ray Data hands rows over as dicts.
    return read_chunks(
        DocumentFile(**row), chunk_size_chars=chunk_size_chars, chunk_overlap_chars=chunk_overlap_chars
    )


def chunk_index(chunks: Dataset) -> tuple[set[str], dict[str, str]]:
    """The content hashes the documents produce, and each document that failed with its error (logged)."""
    index = chunks.select_columns(["source", "content_hash", "error"]).take_all()
    failed = {row["source"]: row["error"] for row in index if row["error"]}
    for source, error in sorted(failed.items()):
        logger.warning("document %s skipped: %s", source, error)
    return {row["content_hash"] for row in index if not row["error"]}, failed


def embed_and_add(cfg: IngestConfig, store: VectorStore, chunks: Dataset, new: set[str]) -> int:
    """Embed the ``new`` chunks on actors holding the model and add them from here; the rows added."""
    if not new:
        return 0
    from ray.data.expressions import col  # ray.data loads only where a job uses it

    embedded = chunks.filter(expr=col("content_hash").is_in(sorted(new))).map_batches(
        ChunkEmbedder,
        fn_constructor_kwargs={"source": cfg.embedding_source, "embedding_model": cfg.embedding_model_id},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.embed_concurrency),
        num_cpus=cfg.embed_num_cpus,
    )
    added = 0
    for batch in embedded.iter_batches(batch_size=ADD_BATCH_ROWS, batch_format="pyarrow"):
        added += store.add(batch, reindex=False)
    return added


def summary_line(summary: dict[str, Any], elapsed_s: float) -> str:
    """The one line a run prints: documents, chunks new, kept and deleted, rows, time and speed."""
    return (
        f"{summary['table']} ({summary['storage_url']}, {summary['embedding_model']}):"
        f" {summary['documents']} documents ({len(summary['failed_documents'])} failed),"
        f" {summary['chunks']} chunks: {summary['new_chunks']} new, {summary['skipped_chunks']}"
        f" already there, {summary['deleted_chunks']} deleted; {summary['rows']} rows in the table;"
        f" {elapsed_s:.1f}s, {summary['documents_per_s']} documents/s"
    )


def s3_env() -> dict[str, str]:
    """The S3 endpoint and AWS settings of this shell, for the read tasks: workers of an
    existing cluster do not inherit the driver's environment."""
    return {n: v for n, v in os.environ.items() if n == "WELIP_S3_ENDPOINT_URL" or n.startswith("AWS_")}


def chunk_hashes_of(store: VectorStore, sources: set[str]) -> set[str]:
    """Content hashes of the rows of these documents (kept when their document failed to read)."""
    if not store.exists():
        return set()
    rows = store.rows(["source", "content_hash"])
    return {h for s, h in zip(rows["source"], rows["content_hash"], strict=True) if s in sources}

"""Ingest documents into a LanceDB table for retrieval: a Ray Job over Ray Data.

    python jobs/ingest.py --config configs/rag/welip_docs.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/ingest.py --config configs/rag/welip_docs.yaml

Steps, top to bottom: list the documents (local folder or s3:// prefix), read the content
hashes the table already holds, read and chunk every document (Ray Data ``flat_map``),
embed the chunks the table lacks on actors holding the embedding model (``map_batches``),
add them, delete the chunks no document produces any more (a document changed or
removed), rebuild the full-text index, and print a summary. A second run adds nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

import ray
from pydantic import ValidationError
from ray.data.expressions import col

from welip.cluster import connect_ray
from welip.config import load_config
from welip.observability import configure_job_logging
from welip.rag import (
    ChunkEmbedder,
    IngestConfig,
    VectorStore,
    list_documents,
    read_chunks,
)
from welip.store import join_url, storage_url_from_env

logger = logging.getLogger("welip.ingest")
# Rows per LanceDB append: one fragment each, so few and large.
ADD_BATCH_ROWS = 4096


def main(cfg: IngestConfig) -> dict[str, Any]:
    """Bring the table up to date with the documents; return the summary it prints."""
    started = time.perf_counter()
    storage_url = cfg.storage_url or join_url(storage_url_from_env(), "rag")
    store = VectorStore.open(cfg.table, storage_url)
    if store.exists() and store.embedding_model != cfg.embedding_model_id:
        raise ValueError(
            f"table {cfg.table!r} in {storage_url} holds vectors of {store.embedding_model!r}, "
            f"not {cfg.embedding_model_id!r}: pick another table or embedding model"
        )

    # 1. The documents, and what the table already has.
    documents = list_documents(cfg.documents, cfg.include)
    if not documents:
        # An empty listing is a wrong path far more often than an empty corpus; deleting
        # every chunk of the table on it would be the worst reading.
        raise FileNotFoundError(f"no documents under {cfg.documents!r} match {cfg.include}")
    known = store.content_hashes()
    logger.info("%d documents; table %s holds %d chunks", len(documents), cfg.table, len(known))

    # 2. Read and chunk every document (Ray Data tasks, a quarter CPU each, a few at once).
    env = s3_env() if documents[0]["url"].startswith("s3://") else {}
    chunks = (
        ray.data.from_items(documents, override_num_blocks=min(len(documents), 4 * cfg.read_concurrency))
        .flat_map(
            read_chunks,
            fn_kwargs={
                "chunk_size_chars": cfg.chunk_size_chars,
                "chunk_overlap_chars": cfg.chunk_overlap_chars,
            },
            num_cpus=0.25,
            concurrency=cfg.read_concurrency,
            **({"runtime_env": {"env_vars": env}} if env else {}),
        )
        .materialize()
    )
    index = chunks.select_columns(["source", "content_hash", "error"]).take_all()
    failed = {row["source"]: row["error"] for row in index if row["error"]}
    for source, error in sorted(failed.items()):
        logger.warning("document %s skipped: %s", source, error)
    current = {row["content_hash"] for row in index if not row["error"]}
    new = current - known

    # 3. Embed what the table lacks on actors holding the model, and add it from here.
    added = 0
    if new:
        embedded = chunks.filter(expr=col("content_hash").is_in(sorted(new))).map_batches(
            ChunkEmbedder,
            fn_constructor_kwargs={
                "source": cfg.embedding_source,
                "embedding_model": cfg.embedding_model_id,
            },
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=cfg.embed_concurrency),
            num_cpus=cfg.embed_num_cpus,
        )
        for batch in embedded.iter_batches(batch_size=ADD_BATCH_ROWS, batch_format="pyarrow"):
            added += store.add(batch, reindex=False)

    # 4. Chunks no document produces any more go; failed documents keep their old chunks.
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
    print(
        f"{cfg.table} ({storage_url}, {cfg.embedding_model_id}): {len(documents)} documents"
        f" ({len(failed)} failed), {len(current)} chunks: {added} new, {summary['skipped_chunks']}"
        f" already there, {deleted} deleted; {summary['rows']} rows in the table;"
        f" {elapsed_s:.1f}s, {summary['documents_per_s']} documents/s"
    )
    return summary


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


def parse_args(argv: list[str]) -> IngestConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="Ingestion YAML (configs/rag/<name>.yaml).")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (documents=s3://bucket/docs).")
    args = parser.parse_args(argv)
    try:
        return load_config(IngestConfig, args.config, args.overrides)
    except (OSError, ValueError, ValidationError) as exc:
        parser.exit(2, f"error: invalid config {args.config}: {exc}\n")


if __name__ == "__main__":
    configure_job_logging()  # JSON lines on stderr, with the trace id
    config = parse_args(sys.argv[1:])
    connect_ray()
    try:
        main(config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)

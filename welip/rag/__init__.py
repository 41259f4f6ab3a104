"""Retrieval-augmented generation: documents into a LanceDB table, and searching it.

Ingestion (:func:`ingest`, run by ``jobs/ingest.py``): :func:`list_documents` ->
:func:`read_chunks` (read and chunk one document) -> :class:`ChunkEmbedder` (vectors) ->
:meth:`VectorStore.add`.
Queries: :class:`Retriever` embeds the question with :class:`GatewayEmbeddings` and
calls :meth:`VectorStore.search` (vector, full-text, or both fused).
"""

from welip.rag._config import IngestConfig
from welip.rag._documents import (
    Chunk,
    DocumentFile,
    chunk_document,
    content_hash,
    document_text,
    list_documents,
    read_chunks,
    resolve_documents,
)
from welip.rag._embeddings import Embeddings, EmbeddingsError, GatewayEmbeddings
from welip.rag._ingest import ingest
from welip.rag._retriever import Retriever
from welip.rag._stages import ChunkEmbedder, embed_chunks
from welip.rag._store import RetrievedChunk, SearchMode, TableNotFound, VectorStore, table_schema

__all__ = [
    "Chunk",
    "ChunkEmbedder",
    "DocumentFile",
    "Embeddings",
    "EmbeddingsError",
    "GatewayEmbeddings",
    "IngestConfig",
    "RetrievedChunk",
    "Retriever",
    "SearchMode",
    "TableNotFound",
    "VectorStore",
    "chunk_document",
    "content_hash",
    "document_text",
    "embed_chunks",
    "ingest",
    "list_documents",
    "read_chunks",
    "resolve_documents",
    "table_schema",
]

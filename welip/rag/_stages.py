"""The embedding step of ingestion: chunk rows in, rows with their vectors out.

:func:`embed_chunks` is the step itself (any embedder with ``embed(texts).vectors``);
:class:`ChunkEmbedder` holds one :class:`welip.serving.Embedder` per Ray Data actor.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from welip.rag._store import TEXT_COLUMNS


class TextEmbedder(Protocol):
    """What :func:`embed_chunks` needs: ``welip.serving.Embedder``, or a fake in tests."""

    def embed(self, texts: list[str]) -> Any:
        """An object whose ``vectors`` holds one unit-length vector per text."""
        ...


def embed_chunks(embedder: TextEmbedder, chunks: pa.Table, embedding_model: str) -> pa.Table:
    """``chunks`` (the text columns of the table) with ``vector`` and ``embedding_model`` added."""
    rows = chunks.select(list(TEXT_COLUMNS))
    if rows.num_rows == 0:
        return rows
    vectors = np.asarray(embedder.embed(rows.column("text").to_pylist()).vectors, dtype=np.float32)
    dimensions = int(vectors.shape[1])
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dimensions)
    return rows.append_column(pa.field("vector", column.type), column).append_column(
        "embedding_model", pa.array([embedding_model] * rows.num_rows, pa.string())
    )


class ChunkEmbedder:
    """Ray Data ``map_batches`` class: loads the embedding model once per actor, embeds pyarrow batches."""

    def __init__(self, source: str, embedding_model: str) -> None:
        """
        Args:
            source: the model to load (``welip.serving.Embedder.load``).
            embedding_model: the id recorded on every row (the served id of the same model).
        """
        from welip.serving import Embedder

        self._embedder = Embedder.load(source)
        self._embedding_model = embedding_model

    def __call__(self, batch: pa.Table) -> pa.Table:
        return embed_chunks(self._embedder, batch, self._embedding_model)

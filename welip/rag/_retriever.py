"""The question in, the best chunks out: embed the query, search the table."""

from __future__ import annotations

import asyncio

from welip.rag._embeddings import Embeddings
from welip.rag._store import SEARCH_MODES, RetrievedChunk, SearchMode, VectorStore


class Retriever:
    """Retrieval over one :class:`VectorStore`.

    Example::

        retriever = Retriever(
            store=VectorStore.open("welip_docs"),
            embeddings=GatewayEmbeddings("http://localhost:8000/v1", "all-minilm-l6-v2"),
            top_k=4,
            mode="hybrid",
        )
        chunks = await retriever.retrieve("How do I revoke an API key?")
    """

    def __init__(
        self,
        store: VectorStore,
        embeddings: Embeddings | None = None,
        top_k: int = 4,
        mode: SearchMode = "hybrid",
    ) -> None:
        """
        Args:
            store: the table to search.
            embeddings: embeds the query with the model that built the table (its ``model``
                attribute, when it has one, is checked against the table's); ``fts`` needs none.
            top_k: chunks per query.
            mode: ``hybrid`` (vector + full text, RRF), ``vector`` or ``fts``.

        Raises:
            ValueError: an unknown mode, ``top_k`` below 1, or no embeddings for a mode that needs them.
        """
        if mode not in SEARCH_MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}; one of {', '.join(SEARCH_MODES)}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        if embeddings is None and mode != "fts":
            raise ValueError(f"{mode} retrieval embeds the query: pass embeddings (or use mode='fts')")
        self.store = store
        self.embeddings = embeddings
        self.top_k = top_k
        self.mode: SearchMode = mode

    async def retrieve(self, query: str) -> list[RetrievedChunk]:
        """The ``top_k`` best chunks for ``query``, best first.

        Raises:
            TableNotFound: the table has not been built; ValueError: the embeddings come
            from another model than the table's; EmbeddingsError: the query could not be embedded.
        """
        vector: list[float] | None = None
        if self.mode != "fts":
            if self.embeddings is None:  # __init__ refuses it, but the attribute may be reassigned
                raise ValueError(f"{self.mode} retrieval embeds the query: it has no embeddings")
            model = getattr(self.embeddings, "model", None)
            table_model = await asyncio.to_thread(lambda: self.store.embedding_model)
            if model is not None and table_model is not None and model != table_model:
                raise ValueError(
                    f"table {self.store.name!r} was embedded with {table_model!r}, "
                    f"but queries would be embedded with {model!r}"
                )
            (vector,) = await self.embeddings.embed([query])
        return await asyncio.to_thread(self.store.search, query, vector, self.top_k, self.mode)
